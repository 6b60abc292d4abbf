"""Test setup: 8 fake CPU devices, so sharding tests run meshes such as (2, 2, 2) on one host."""

import os

# Must be set before jax is first imported anywhere in the test session.
# PJRT_NPROC sizes XLA's CPU thread pool (default: max(cores, devices), so 8 threads here).
# Each device's program runs on that pool, and when two collectives of one device are ready
# at once (an all-reduce and an all-gather) both take a thread and block until their peers
# arrive. With 8 threads for 8 devices, half the devices can hold every thread in one
# collective while the other half hold them in the other: a deadlock, seen in
# tests/test_sharded_step.py's (2, 2, 2) mesh on a loaded machine (gdb: 8 pool threads, 4 in
# AllReduce, 4 in AllGather, nothing runnable). Four threads per device leave room; the
# collective timeout then only has to cover slowness, and a real hang fails in minutes.
os.environ.setdefault('PJRT_NPROC', '32')
_FLAGS = (
  '--xla_force_host_platform_device_count=8',
  '--xla_cpu_collective_call_terminate_timeout_seconds=300',
  '--xla_cpu_collective_timeout_seconds=300',
)
for _flag in _FLAGS:
  if _flag.split('=')[0] not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _flag).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
