"""Command-line plumbing shared by the entry points: absl flags, the config flag, one-line errors.

  --config configs/NAME.py[:ARG]   a config file (its get_config(ARG)), ml_collections' config_flags
  --config.KEY=VALUE               an override, typed by the key's current value; KEY must exist

config_flags does the loading and the overrides; this module only turns their failures
(a missing file, an unknown key, a value of the wrong type, a UserError from get_config)
into one line naming what to change, `PROG: error: ...` with exit status 2, instead of a
traceback. Anything that is not the user's mistake keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any, Callable

import ml_collections
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from superclip_jax import config_defaults, errors
from superclip_jax.errors import UserError

# The config flag is defined here for the entry point that calls define_config_flag: absl's
# --help lists only the main module's flags, so it must be attributed to that caller.
flags.disclaim_key_flags()

_HELP_FLAGS = ('help', '?', 'helpshort', 'helpfull', 'helpxml')  # absl's; each exits 1 after printing
_OVERRIDE = re.compile(r'-{1,2}(?:no)?config\.([^=]+)')  # config_flags' own pattern for an override


def define_config_flag(
  help_text: str, flag_values: flags.FlagValues = flags.FLAGS, argv: list[str] | None = None
) -> flags.FlagHolder:
  """--config PATH[:ARG] with --config.KEY=VALUE overrides (found in `argv`, default sys.argv); read it with `config_value`."""
  return config_flags.DEFINE_config_file(
    'config',
    None,
    f'(required) {help_text} PATH[:ARG]; override keys with --config.KEY=VALUE.',
    flag_values=flag_values,
    lock_config=True,
    sys_argv=argv,
  )


def _fail(message: str):
  print(f'{errors.PROG[0]}: error: {message}', file=sys.stderr, flush=True)
  sys.exit(2)


def _chain(error: BaseException):
  while error is not None:
    yield error
    error = error.__cause__ or error.__context__


def _config_spec(argv: list[str]) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith(('--config=', '-config=')):
      return arg.split('=', 1)[1]
    if arg in ('--config', '-config') and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _explain(error: Exception, argv: list[str]) -> str | None:
  """The one-line message for a failure of absl's parse, or None for a failure that is not the user's."""
  spec = _config_spec(argv)
  if spec and not os.path.isfile(spec.split(':', 1)[0]):
    return f'config file {spec.split(":", 1)[0]} not found'
  raised = [e for e in _chain(error) if isinstance(e, UserError)]
  if raised:  # by a config file's get_config; config_flags re-raises it as the same type with a traceback as message
    return str(raised[-1]).strip()
  if isinstance(error, (KeyError, AttributeError)):
    # config_flags names only the last part of an unknown key; the schema knows the whole key's neighbours.
    valid = config_defaults.flat_keys(config_defaults.default_config())
    for match in filter(None, map(_OVERRIDE.match, argv[1:])):
      key = match.group(1)
      if key not in valid and not key.startswith('evals.'):
        return config_defaults.unknown_key_message(key, valid, f'--config.{key}')
    return None
  if isinstance(error, flags.Error):
    text = str(error).strip()
    if 'Traceback' in text:  # get_config failed, not with a UserError: config_flags put its traceback in the message
      return text
    return f'{text.splitlines()[0]} (try --helpfull)' if isinstance(error, flags.UnrecognizedFlagError) else text.splitlines()[0]
  return None


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """absl's flag parse, reporting a mistake in one line (exit 2) and --help with exit status 0."""
  try:
    return flag_values(argv)
  except SystemExit as e:
    # absl's --help / --helpfull print the help and exit 1; asking for help is not a failure.
    if e.code == 1 and any(a.lstrip('-').split('=')[0] in _HELP_FLAGS for a in argv[1:]):
      sys.exit(0)
    raise
  except Exception as e:
    message = _explain(e, argv)
    if message is None:
      raise
    _fail(message)


def config_value(
  flag: flags.FlagHolder, training: bool = True, flag_values: flags.FlagValues = flags.FLAGS
) -> ml_collections.ConfigDict:
  """The loaded --config with its overrides, validated (config_defaults.validate, the evaluators' registry)."""
  config = flag.value
  if config is None:
    raise UserError('--config is required (a config file such as configs/tiny.py)')
  spec = config_flags.get_config_filename(flag_values[flag.name])
  path = spec.split(':', 1)[0]
  if not os.path.isfile(path):
    raise UserError(f'config file {path} not found')
  if not isinstance(config, ml_collections.ConfigDict):
    config.lock()  # config_flags keeps a get_config's OSError until the config is used: it is raised here
    raise UserError(f'--config={spec}: get_config() returned {type(config).__name__}, not a ConfigDict')
  config_defaults.validate(config, training=training)
  from superclip_jax.evals import registry  # imported on use: it pulls in jax

  registry.validate(config.evals)
  return config


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class _OwnInfoOnly(logging.Filter):
  """INFO from this package only: Orbax alone logs about 35 INFO lines per checkpoint save.

  Warnings and errors from anywhere still show; --verbosity=1 (absl's flag) shows everything.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or absl_logging.get_verbosity() >= 1 or record.pathname.startswith(_PACKAGE_DIR)


def run(main: Callable[[list[str]], Any], prog: str) -> None:
  """absl's app.run with one-line flag errors; errors are reported as `prog: error: ...`."""
  errors.PROG[0] = prog

  def quiet_main(argv):
    absl_logging.get_absl_handler().addFilter(_OwnInfoOnly())  # app.run has installed the handler by now
    return main(argv)

  app.run(quiet_main, flags_parser=parse_flags)
