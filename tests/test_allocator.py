"""The entry points' malloc: re-executed once with mimalloc preloaded, as SUPERCLIP_JAX_ALLOCATOR says."""

import os
import subprocess
import sys

import pytest

from superclip_jax import allocator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = allocator.mimalloc_path()
pytestmark = pytest.mark.skipif(
  not (sys.platform.startswith('linux') and LIB), reason='mimalloc is preloaded on Linux, from the cmeel-mimalloc wheel'
)

# An entry point in miniature: 'start' is printed by every execution of the program, then what it ran on.
PROGRAM = (
  'import os; print("start", os.getpid(), flush=True); from superclip_jax import allocator; '
  'allocator.reexec_with_mimalloc(); '
  'print(allocator.in_use(), repr(os.environ.get("LD_PRELOAD")), "SUPERCLIP_JAX_PRELOAD_WAS" in os.environ)'
)


def _python(program, **env):
  """Runs `program` with the test session's environment minus what picks or tunes the malloc, plus `env`."""
  base = {
    k: v
    for k, v in os.environ.items()
    if k not in ('LD_PRELOAD', 'JAX_PLATFORMS', allocator.CHOICE_ENV, *allocator.MIMALLOC_OPTIONS)
  }
  return subprocess.run([sys.executable, '-c', program], cwd=ROOT, env=base | env, capture_output=True, text=True, timeout=120)


def _run(**env):
  proc = _python(PROGRAM, **env)
  lines = proc.stdout.splitlines()
  starts = [line for line in lines if line.startswith('start ')]
  assert len(set(starts)) <= 1, starts  # os.execve: one process, one PID, however often it starts
  return proc, ['start'] * len(starts) + [w for line in lines if not line.startswith('start ') for w in line.split()]


def test_reexecutes_once_with_mimalloc_and_gives_children_the_users_preload():
  proc, out = _run()
  assert proc.returncode == 0, proc.stderr
  # Two executions of one process, the second on mimalloc; its children
  # get LD_PRELOAD as the user had it (none), and the re-exec marker is gone.
  assert out[:3] == ['start', 'start', 'mimalloc'] and out[3] == 'None' and out[4] == 'False'


def test_keeps_a_users_own_preload_after_mimalloc():
  # The user's LD_PRELOAD (here libc itself: loaded anyway, so harmless) stays in the process and for its children.
  libc = '/lib/x86_64-linux-gnu/libc.so.6' if os.path.exists('/lib/x86_64-linux-gnu/libc.so.6') else 'libc.so.6'
  proc, out = _run(LD_PRELOAD=libc)
  assert proc.returncode == 0, proc.stderr
  assert out[:3] == ['start', 'start', 'mimalloc'] and out[3] == repr(libc)


@pytest.mark.parametrize(
  'env',
  [{allocator.CHOICE_ENV: 'system'}, {'JAX_PLATFORMS': 'tpu'}, {'LD_PRELOAD': LIB or ''}],
  ids=['system', 'tpu', 'preloaded'],
)
def test_runs_on_as_it_is_when_not_wanted_or_already_loaded(env):
  proc, out = _run(**env)
  assert proc.returncode == 0, proc.stderr
  assert out.count('start') == 1  # no re-exec
  assert out[1] == ('mimalloc' if 'LD_PRELOAD' in env else 'system')


def test_mimalloc_is_forced_on_any_backend_when_asked():
  proc, out = _run(**{allocator.CHOICE_ENV: 'mimalloc', 'JAX_PLATFORMS': 'tpu'})
  assert proc.returncode == 0, proc.stderr
  assert out[:3] == ['start', 'start', 'mimalloc']


def test_a_bad_choice_is_one_clear_line():
  proc, _ = _run(**{allocator.CHOICE_ENV: 'jemalloc'})
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert "SUPERCLIP_JAX_ALLOCATOR='jemalloc': expected one of auto, mimalloc, system" in proc.stderr


def test_preload_env_leaves_the_callers_environment_alone():
  env = {'PATH': '/bin', 'JAX_PLATFORMS': 'cpu'}
  out = allocator.preload_env(env)
  assert out['LD_PRELOAD'] == LIB and 'LD_PRELOAD' not in env
  assert 'LD_PRELOAD' not in allocator.preload_env(env | {allocator.CHOICE_ENV: 'system'})


# Frees 64 MiB and, after a pause longer than mimalloc's default purge delay (10 ms), allocates
# and writes it again: the page faults of the second touch show whether freed memory went back.
REFAULT_PROGRAM = (
  'import os, resource, time; from superclip_jax import allocator; allocator.reexec_with_mimalloc(); '
  'import numpy as np; faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt; '
  'a = np.empty(64 << 20, np.uint8); a.fill(1); del a; time.sleep(0.3); '
  'f = faults(); a = np.empty(64 << 20, np.uint8); a.fill(1); '
  'print(allocator.in_use(), os.environ.get("MIMALLOC_PURGE_DELAY"), faults() - f)'
)


@pytest.mark.parametrize('purge', [None, '0'], ids=['default', 'users_own'])
def test_freed_memory_is_kept_for_the_next_step_unless_the_user_says_otherwise(purge):
  # XLA's CPU step frees and reallocates the same temporaries every step: with mimalloc's own
  # default they were faulted in again as huge pages, seconds of kernel time per step.
  proc = _python(REFAULT_PROGRAM, **({} if purge is None else {'MIMALLOC_PURGE_DELAY': purge}))
  assert proc.returncode == 0, proc.stderr
  malloc, delay, faults = proc.stdout.split()
  assert malloc == 'mimalloc'
  if purge is None:
    assert delay == '-1' and int(faults) <= 2, proc.stdout
  else:  # the user's value is kept, and with it the memory goes back and faults in again
    assert delay == '0' and int(faults) > 2, proc.stdout
