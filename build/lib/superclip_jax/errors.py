"""The one exception type for mistakes a user can fix, and how command lines report them.

A `UserError` (a bad config key, a missing path, a wrong shard set, an impossible mesh,
an incompatible checkpoint) is printed as one line naming what to change, with no
traceback, and the command exits with status 2. Anything else is a bug or an outage
and keeps its traceback.
"""

from __future__ import annotations

import sys


class UserError(ValueError):
  """A mistake in what the user asked for: reported in one line, without a traceback."""


def report(error: BaseException, prog: str) -> None:
  """Print `prog: error: message` on stderr (the message's first lines only)."""
  message = str(error).strip() or type(error).__name__
  print(f'{prog}: error: {message}', file=sys.stderr, flush=True)
