"""mimalloc under the CPU train step: the entry points re-execute themselves with it preloaded.

Why: XLA's CPU runtime allocates a step's temporaries afresh every step, and glibc's malloc hands
blocks that large back to the kernel when they are freed, so every step page-faulted all of them in
again. mimalloc keeps the freed pages for the next step. It runs with MIMALLOC_PURGE_DELAY=-1 (never
hand freed memory back) unless the user set it: with its default the temporaries were still faulted
in every other step, as transparent huge pages. The price is a caching allocator's: the process keeps
its peak of host memory, which the next step needs anyway. Figures: docs/performance.md.

A malloc can only be replaced before the process starts (LD_PRELOAD), hence the re-exec (os.execve:
same PID, so launchers and signals see one process). Only when the step runs on the CPU: on TPU and
GPU the step's memory is the device's. SUPERCLIP_JAX_ALLOCATOR chooses: 'auto' (default: mimalloc
when the step runs on CPU), 'mimalloc' (whatever the backend), 'system' (never). mimalloc comes from
the cmeel-mimalloc wheel (Linux); without it, or elsewhere, the process runs on as it is.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import sys

CHOICE_ENV = 'SUPERCLIP_JAX_ALLOCATOR'
CHOICES = ('auto', 'mimalloc', 'system')
# Set across the re-exec to the LD_PRELOAD the user had ('' for none): tells the new process
# that the preload was tried (no second re-exec, whatever happened) and what to give children.
_REEXEC_ENV = 'SUPERCLIP_JAX_PRELOAD_WAS'
# mimalloc's own settings for the step (see the module docstring); a user's value wins.
MIMALLOC_OPTIONS = {'MIMALLOC_PURGE_DELAY': '-1'}


def mimalloc_path() -> str | None:
  """The shared library from the cmeel-mimalloc wheel, or None when it is not installed."""
  try:
    files = importlib.metadata.files('cmeel-mimalloc') or []
  except importlib.metadata.PackageNotFoundError:
    return None
  for f in files:
    if f.name.startswith('libmimalloc.so'):
      path = str(f.locate())
      if os.path.exists(path):
        return os.path.realpath(path)
  return None


def in_use() -> str:
  """The malloc this process runs on: 'mimalloc', 'jemalloc' or 'tcmalloc' when one is loaded, else 'system'."""
  try:
    with open('/proc/self/maps') as f:
      found = re.search(r'/lib(mimalloc|jemalloc|tcmalloc)', f.read())
  except OSError:  # not Linux
    return 'system'
  return found.group(1) if found else 'system'


def _step_runs_on_cpu(environ) -> bool:
  """Whether JAX will pick the CPU: JAX_PLATFORMS says so, or no TPU/GPU plugin is installed."""
  platforms = environ.get('JAX_PLATFORMS', '').strip()
  if platforms:
    return platforms.split(',')[0].strip() == 'cpu'
  has_plugin = bool(importlib.metadata.entry_points(group='jax_plugins')) or importlib.util.find_spec('libtpu')
  return not has_plugin


def wanted(environ=None) -> bool:
  """Whether a process with this environment (default os.environ) should run on mimalloc."""
  environ = os.environ if environ is None else environ
  choice = environ.get(CHOICE_ENV, 'auto').strip() or 'auto'
  if choice not in CHOICES:
    sys.stderr.write(f'superclip_jax: error: {CHOICE_ENV}={choice!r}: expected one of {", ".join(CHOICES)}\n')
    raise SystemExit(2)
  return choice == 'mimalloc' or (choice == 'auto' and _step_runs_on_cpu(environ))


def preload_env(environ: dict[str, str] | None = None) -> dict[str, str]:
  """A copy of `environ` (default os.environ) whose processes start with mimalloc, when wanted and installed."""
  env = dict(os.environ if environ is None else environ)
  lib = mimalloc_path()
  if sys.platform.startswith('linux') and lib and wanted(env):
    env['LD_PRELOAD'] = ':'.join(p for p in (lib, env.get('LD_PRELOAD', '')) if p)
    for key, value in MIMALLOC_OPTIONS.items():
      env.setdefault(key, value)
  return env


def reexec_with_mimalloc() -> None:
  """Call first in an entry point's __main__ block: re-executes the command line with mimalloc preloaded.

  Returns (and does nothing) when it is not wanted, not installed, already loaded, or in the
  process it re-executed. There LD_PRELOAD is put back as it was, so that the programs this
  one starts (Grain's workers, tools) keep the user's allocator.
  """
  if _REEXEC_ENV in os.environ:
    was = os.environ.pop(_REEXEC_ENV)
    if was:
      os.environ['LD_PRELOAD'] = was
    else:
      os.environ.pop('LD_PRELOAD', None)
    return
  if in_use() == 'mimalloc':
    return
  env = preload_env()
  if env.get('LD_PRELOAD') == os.environ.get('LD_PRELOAD'):
    return
  env[_REEXEC_ENV] = os.environ.get('LD_PRELOAD', '')
  sys.stdout.flush()
  sys.stderr.flush()
  # sys.orig_argv: the command as typed, interpreter options (-X, -W) included.
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
