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

import json  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One persistent XLA compilation cache for the whole run: the tests and every process they
# start (the environment is inherited) compile the same tiny steps again and again; from the
# cache a configs/tiny.py run starts in well under half the time. Entries are keyed by the
# program and the compile options, so a changed step compiles afresh.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(ROOT, '.cache', 'jax_tests'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')

_SECONDS = os.path.join(ROOT, 'tests', 'file_seconds.json')
# Test files that must not be skipped where CI runs (CI=true): each covers an extra that CI installs.
MUST_RUN_IN_CI = (
  'test_interop.py',
  'test_stock_clients.py',
  'test_beam_runner.py',
  'test_tfds_source.py',
  'test_bucket_workdir.py',
)


def pytest_addoption(parser):
  parser.addoption('--record-seconds', action='store_true', help="write each test file's seconds to tests/file_seconds.json")


def pytest_collection_modifyitems(config, items):
  """The longest files first (tests/file_seconds.json), so that no worker finishes a long file alone at the end."""
  try:
    with open(_SECONDS) as f:
      known = json.load(f)
  except (OSError, ValueError):
    known = {}
  items.sort(key=lambda item: -known.get(item.nodeid.split('::')[0], 60.0))  # stable: a file keeps its order


_FILE_SECONDS: dict[str, float] = {}
_BAD_SKIPS: list[str] = []


def pytest_runtest_logreport(report):
  path = report.nodeid.split('::')[0]
  _FILE_SECONDS[path] = _FILE_SECONDS.get(path, 0.0) + report.duration
  if report.skipped and os.environ.get('CI'):
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if os.path.basename(path) in MUST_RUN_IN_CI or not reason.replace('Skipped:', '').strip():
      _BAD_SKIPS.append(f'{report.nodeid}: {reason}')


def pytest_sessionfinish(session, exitstatus):
  if hasattr(session.config, 'workerinput'):  # an xdist worker: the controller sees every report
    return
  if _BAD_SKIPS:
    print('\nCI: these tests skipped, but CI installs what they need (or the skip names no reason):', file=sys.stderr)
    for line in _BAD_SKIPS:
      print('  ' + line, file=sys.stderr)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
  if session.config.getoption('--record-seconds') and exitstatus == 0:
    with open(_SECONDS, 'w') as f:
      json.dump({k: round(v, 1) for k, v in sorted(_FILE_SECONDS.items())}, f, indent=1)
      f.write('\n')
