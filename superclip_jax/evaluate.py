"""Run a config's evaluators on a checkpoint or an export and print one JSON object.

  python -m superclip_jax.evaluate --config configs/demo_mnist.py --workdir DIR   # newest checkpoint
  python -m superclip_jax.evaluate --config configs/demo_mnist.py --model MODEL   # an export

Parameters are restored straight into the evaluation mesh's layout (any process count).
"""

from __future__ import annotations

import json

from absl import flags

from superclip_jax import cli
from superclip_jax.errors import user_errors

_CONFIG = cli.define_config_flag('Config whose evals to run.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir: evaluate its newest checkpoint.')
_STEP = flags.DEFINE_integer('step', None, 'With --workdir: this checkpoint step instead of the newest.')
_MODEL = flags.DEFINE_string('model', None, 'An export (python -m superclip_jax.export) or converted model.')


def evaluate(config, workdir: str | None = None, model_dir: str | None = None, step: int | None = None) -> dict:
  """All of config.evals on the parameters of a checkpoint or an export."""
  from superclip_jax import checkpoint, init_from, run_setup, storage
  from superclip_jax.errors import UserError
  from superclip_jax.evals import embed, registry
  from superclip_jax.models.superclip import ModelConfig

  if not config.evals:
    raise UserError('the config lists no evaluators (config.evals)')
  cfg = None
  if model_dir:
    cfg = ModelConfig.from_dict(json.loads(storage.read_text(storage.join(model_dir, init_from.MODEL_CONFIG)))['model'])
    source, found = model_dir, {'model': model_dir}
  else:
    source, found = workdir, {'workdir': workdir}
  # Inference needs no token classifier (an export has none).
  setup = run_setup.prepare(config, training=False, model_cfg=cfg, inference=True)
  config, mesh, rules, model_def, target, shardings = (
    setup.config,
    setup.mesh,
    setup.rules,
    setup.model_def,
    setup.target,
    setup.shardings,
  )
  # A checkpoint holds the token classifier too; it plays no part in evaluation.
  loaded, taken = init_from.restore_params(
    source, target, step=step, ignore=('token_classifier.',) if not model_def.cfg.has_token_head else ()
  )
  missing = set(checkpoint.flat_names(target)) - set(taken)
  if missing:
    raise UserError(f'{source}: parameters missing: {sorted(missing)[:8]}')
  params = init_from.merge(target, loaded)
  if not model_dir:
    found['step'] = step if step is not None else checkpoint.latest_checkpoint_dir(workdir)[1]
  results = registry.Evaluators(config, embed.Embedder(model_def, mesh, rules, shardings)).run(params)
  return {**found, **results}


def main(argv):
  from absl import app

  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  with user_errors():
    if bool(_WORKDIR.value) == bool(_MODEL.value):
      from superclip_jax.errors import UserError

      raise UserError('give exactly one of --workdir and --model')
    config = cli.config_value(_CONFIG, training=False)
    print(json.dumps(evaluate(config, _WORKDIR.value, _MODEL.value, _STEP.value), sort_keys=True))


if __name__ == '__main__':
  cli.run(main, 'superclip_jax.evaluate')
