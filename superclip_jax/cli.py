"""Command-line plumbing shared by the entry points: config files with overrides, one-line errors.

  --config configs/NAME.py[:ARG]   a config file (its get_config(ARG))
  --config.KEY=VALUE               an override; KEY must exist (a near miss is named)

Overrides are taken out of argv before absl parses the other flags, and applied after
the file is loaded, so every mistake (a missing file, an unknown key, a value of the
wrong type) is one line naming what to change, not a traceback. Mistakes made deeper
(UserError) are reported the same way; anything else keeps its traceback.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import sys
from typing import Any, Callable

import ml_collections
from absl import app, flags
from absl import logging as absl_logging

from superclip_jax import config_defaults, errors
from superclip_jax.errors import UserError

_OVERRIDES: list[tuple[str, str]] = []
_HELP_FLAGS = ('help', '?', 'helpshort', 'helpfull', 'helpxml')  # absl's; each exits 1 after printing


class _ConfigFlag:
  """The --config flag's value: the file (and its argument) plus the --config.KEY overrides."""

  def __init__(self, flag):
    self.flag = flag


def define_config_flag(help_text: str) -> _ConfigFlag:
  """--config PATH[:ARG]; overrides --config.KEY=VALUE are collected by `parse_flags`.

  Registered as the calling module's flag (as absl names a __main__ module: by sys.argv[0]), so
  `--help`, which lists the main module's flags, shows it.
  """
  caller = sys._getframe(1).f_globals.get('__name__', '')
  module = sys.argv[0] if caller == '__main__' else caller
  return _ConfigFlag(
    flags.DEFINE_string(
      'config', None, '(required) ' + help_text + ' PATH[:ARG]; override keys with --config.KEY=VALUE.', module_name=module
    )
  )


def parse_flags(argv: list[str]) -> list[str]:
  """absl flags parser that first takes out --config.KEY overrides (and reports bad flags in one line)."""
  rest = [argv[0]]
  i = 1
  while i < len(argv):
    arg = argv[i]
    if arg.startswith('--config.'):
      body = arg[len('--config.') :]
      if '=' in body:
        key, value = body.split('=', 1)
      elif i + 1 < len(argv):
        key, value = body, argv[i + 1]
        i += 1
      else:
        _fail(f'{arg} has no value')
      _OVERRIDES.append((key, value))
    else:
      rest.append(arg)
    i += 1
  try:
    return flags.FLAGS(rest)
  except flags.Error as e:
    _fail(str(e).splitlines()[0] + ' (try --helpfull)')
  except SystemExit as e:
    # absl's --help / --helpfull print the help and exit 1; asking for help is not a failure.
    if e.code == 1 and any(a.lstrip('-').split('=')[0] in _HELP_FLAGS for a in rest[1:]):
      sys.exit(0)
    raise


def _fail(message: str):
  print(f'{errors.PROG[0]}: error: {message}', file=sys.stderr, flush=True)
  sys.exit(2)


def _convert(key: str, current: Any, text: str) -> Any:
  """Text of an override -> a value of the current value's type."""
  if isinstance(current, str) or current is None:
    return text
  if isinstance(current, bool):
    lowered = text.lower()
    if lowered in ('true', '1', 'yes'):
      return True
    if lowered in ('false', '0', 'no'):
      return False
    raise UserError(f'--config.{key}={text!r}: expected True or False')
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    raise UserError(f'--config.{key}={text!r}: expected a {type(current).__name__} like {current!r}') from None
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if isinstance(current, (tuple, list)) and isinstance(value, (tuple, list)):
    return tuple(value)
  if isinstance(current, int) and isinstance(value, int) and not isinstance(value, bool):
    return value
  if type(value) is not type(current):
    raise UserError(f'--config.{key}={text!r}: expected a {type(current).__name__} like {current!r}')
  return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: list[tuple[str, str]]) -> ml_collections.ConfigDict:
  """Set each KEY=VALUE on the config; an unknown key is a UserError naming the closest valid one."""
  valid = config_defaults.flat_keys(config)
  for key, text in overrides:
    if key not in valid:
      raise UserError(config_defaults.unknown_key_message(key, valid, f'--config.{key}'))
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
      node = node[p]
    with node.ignore_type() if hasattr(node, 'ignore_type') else contextlib.nullcontext():
      node[leaf] = _convert(key, valid[key], text)
  return config


def config_value(flag: _ConfigFlag, training: bool = True) -> ml_collections.ConfigDict:
  """Load --config (PATH[:ARG]) and apply the --config.KEY overrides; validated (see config_defaults.validate)."""
  spec = flag.flag.value
  if not spec:
    raise UserError('--config is required (a config file such as configs/tiny.py)')
  path, _, arg = spec.partition(':')
  config = config_defaults.load_config_file(path, arg)
  config = apply_overrides(config, _OVERRIDES)
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
  """absl's app.run with the override-aware flags parser; errors are reported as `prog: error: ...`."""
  errors.PROG[0] = prog

  def quiet_main(argv):
    absl_logging.get_absl_handler().addFilter(_OwnInfoOnly())  # app.run has installed the handler by now
    return main(argv)

  app.run(quiet_main, flags_parser=parse_flags)
