"""Test setup: 8 fake CPU devices, so sharding tests run meshes such as (2, 2, 2) on one host."""

import os

# Must be set before jax is first imported anywhere in the test session.
_FLAG = '--xla_force_host_platform_device_count=8'
if _FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _FLAG).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
