"""Test setup: 8 fake CPU devices, so sharding tests run meshes such as (2, 2, 2) on one host."""

import os

# Must be set before jax is first imported anywhere in the test session.
# The 8 devices share this machine's cores. On a loaded 2-core machine one device's thread can
# reach a collective long after the others, and XLA's CPU runtime then aborts the whole process
# ("Termination timeout ... Exiting to ensure a consistent program state"): CI saw that abort in
# tests/test_sharded_step.py's (2, 2, 2) mesh. Late is not stuck here, so the tests wait longer.
_FLAGS = ('--xla_force_host_platform_device_count=8', '--xla_cpu_collective_call_terminate_timeout_seconds=1800',
          '--xla_cpu_collective_timeout_seconds=1800')
for _flag in _FLAGS:
  if _flag.split('=')[0] not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _flag).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
