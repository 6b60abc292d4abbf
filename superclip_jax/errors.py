"""The one exception type for mistakes a user can fix, and how command lines report them.

A `UserError` (a bad config key, a missing path, a wrong shard set, an impossible mesh,
an incompatible checkpoint) is printed as one line naming what to change, with no
traceback, and the command exits with status 2. Anything else is a bug or an outage
and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys

PROG = ['superclip_jax']  # the command's name in error lines (commands.run sets it)


class UserError(ValueError):
  """A mistake in what the user asked for: reported in one line, without a traceback."""


def report(error: BaseException, prog: str) -> None:
  """Print `prog: error: message` on stderr (the message's first lines only)."""
  message = str(error).strip() or type(error).__name__
  print(f'{prog}: error: {message}', file=sys.stderr, flush=True)


@contextlib.contextmanager
def user_errors(prog: str | None = None):
  """Report a UserError as one line on stderr and exit with status 2."""
  try:
    yield
  except UserError as e:
    report(e, prog or PROG[0])
    sys.exit(2)
  except OSError as e:
    if e.errno != errno.ENOSPC:
      raise
    # A full disk: one line naming the file and what is left, not a traceback per thread.
    where = e.filename or os.getcwd()
    folder = os.path.dirname(os.path.abspath(where))
    while not os.path.isdir(folder) and folder != os.path.dirname(folder):
      folder = os.path.dirname(folder)
    try:
      free = shutil.disk_usage(folder).free
      left = f'{free / 2**20:.0f} MiB free'
    except OSError:
      left = 'free space unknown'
    report(
      UserError(f'no space left on the device writing {where} ({left}): free some space, or use another directory'),
      prog or PROG[0],
    )
    sys.exit(1)
