"""absl flags for every entry point: a mistake is one line, `PROG: error: ...` with exit status 2; --help exits 0.

`command` runs an entry point under `python -m` through absl's app.run, or in the same
process on flags of its own (tests, scripts that call `main([...])`). A config file's
flag, which needs the config schema, is cli.py's, built on this one.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable

from absl import app, flags
from absl import logging as absl_logging

from superclip_jax import errors
from superclip_jax.errors import UserError

_HELP_FLAGS = ('help', '?', 'helpshort', 'helpfull', 'helpxml')  # absl's; each exits 1 after printing

Explain = Callable[[Exception, list[str]], 'str | None']


def fail(message: str):
  print(f'{errors.PROG[0]}: error: {message}', file=sys.stderr, flush=True)
  sys.exit(2)


def explain(error: Exception, argv: list[str]) -> str | None:
  """The one-line message for a failed flag parse, or None for a failure that is not the user's."""
  chain, e = [], error
  while e is not None:
    chain.append(e)
    e = e.__cause__ or e.__context__
  raised = [e for e in chain if isinstance(e, UserError)]
  if raised:  # a flag's parser raised it (config_flags re-raises one as the same type, with a traceback as message)
    return str(raised[-1]).strip()
  if isinstance(error, flags.Error):
    text = str(error).strip()
    if 'Traceback' in text:  # a parser failed, not with a UserError: keep the traceback absl put in the message
      return text
    return f'{text.splitlines()[0]} (try --helpfull)' if isinstance(error, flags.UnrecognizedFlagError) else text.splitlines()[0]
  return None


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS, why: Explain = explain) -> list[str]:
  """absl's flag parse, reporting a mistake in one line (exit 2) and --help with exit status 0."""
  try:
    return flag_values(argv)
  except SystemExit as e:
    # absl's --help / --helpfull print the help and exit 1; asking for help is not a failure.
    if e.code == 1 and any(a.lstrip('-').split('=')[0] in _HELP_FLAGS for a in argv[1:]):
      sys.exit(0)
    raise
  except Exception as e:
    message = why(e, argv)
    if message is None:
      raise
    fail(message)


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class _OwnInfoOnly(logging.Filter):
  """INFO from this package only: Orbax alone logs about 35 INFO lines per checkpoint save.

  Warnings and errors from anywhere still show; --verbosity=1 (absl's flag) shows everything.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or absl_logging.get_verbosity() >= 1 or record.pathname.startswith(_PACKAGE_DIR)


def run(main: Callable[[list[str]], Any], prog: str, why: Explain = explain) -> None:
  """absl's app.run with one-line flag errors; errors are reported as `prog: error: ...`."""
  errors.PROG[0] = prog

  def quiet_main(argv):
    absl_logging.get_absl_handler().addFilter(_OwnInfoOnly())  # app.run has installed the handler by now
    return main(argv)

  app.run(quiet_main, flags_parser=lambda argv: parse_flags(argv, flags.FLAGS, why))


def command(
  prog: str,
  define: Callable[[flags.FlagValues], Any],
  body: Callable[[flags.FlagValues, list[str]], Any],
  argv: list[str] | None = None,
  positional: bool = False,
) -> Any:
  """An entry point on absl flags: `define(values)` declares them, `body(values, positional)` runs it.

  A command that takes no positional arguments (positional=False) refuses any in one line.
  argv None (`python -m`): absl's app.run over the global flags, so --help lists them. A list (a
  caller in the same process, such as a test): parsed on flags of their own, so that commands
  imported side by side neither collide over names like --out nor keep each other's values.
  """

  def call(values: flags.FlagValues, args: list[str]) -> Any:
    if args and not positional:
      fail(f'unexpected arguments: {args}')
    return body(values, args)

  if argv is None:
    define(flags.FLAGS)
    run(lambda args: call(flags.FLAGS, args[1:]) and None, prog)  # app.run would exit with a returned value
    return None
  errors.PROG[0] = prog
  values = flags.FlagValues()
  define(values)
  return call(values, parse_flags([prog, *argv], values)[1:])
