"""Command-line plumbing shared by the entry points: absl flags, the config flag, one-line errors.

  --config configs/NAME.py[:ARG]   a config file (its get_config(ARG)), ml_collections' config_flags
  --config.KEY=VALUE               an override, typed by the key's current value; KEY must exist

config_flags does the loading and the overrides; this module only turns their failures
(a missing file, an unknown key, a value of the wrong type, a UserError from get_config)
into one line naming what to change, `PROG: error: ...` with exit status 2, instead of a
traceback. Anything that is not the user's mistake keeps its traceback.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

import ml_collections
from absl import flags
from ml_collections import config_flags

from superclip_jax import commands, config_defaults
from superclip_jax.errors import UserError

# The config flag is defined here for the entry point that calls define_config_flag: absl's
# --help lists only the main module's flags, so it must be attributed to that caller.
flags.disclaim_key_flags()

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


def _config_spec(argv: list[str]) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith(('--config=', '-config=')):
      return arg.split('=', 1)[1]
    if arg in ('--config', '-config') and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _explain(error: Exception, argv: list[str]) -> str | None:
  """commands.explain, plus what only the config flag can get wrong: its file, an unknown key."""
  spec = _config_spec(argv)
  if spec and not os.path.isfile(spec.split(':', 1)[0]):
    return f'config file {spec.split(":", 1)[0]} not found'
  if isinstance(error, (KeyError, AttributeError)):
    # config_flags names only the last part of an unknown key; the schema knows the whole key's neighbours.
    valid = config_defaults.flat_keys(config_defaults.default_config())
    for match in filter(None, map(_OVERRIDE.match, argv[1:])):
      key = match.group(1)
      if key not in valid and not key.startswith('evals.'):
        return config_defaults.unknown_key_message(key, valid, f'--config.{key}')
    return None
  return commands.explain(error, argv)


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """commands.parse_flags, with the config flag's mistakes explained."""
  return commands.parse_flags(argv, flag_values, _explain)


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


def run(main: Callable[[list[str]], Any], prog: str) -> None:
  """commands.run (absl's app.run, one-line errors as `prog: error: ...`) for an entry point with --config."""
  commands.run(main, prog, _explain)
