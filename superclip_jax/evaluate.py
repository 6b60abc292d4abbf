"""Run a config's evaluators on a checkpoint or an export and print one JSON object.

  python -m superclip_jax.evaluate --config configs/demo_mnist.py --workdir DIR   # newest checkpoint
  python -m superclip_jax.evaluate --config configs/demo_mnist.py --model MODEL   # an export
"""

from __future__ import annotations

import json
import os

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config whose evals to run.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir: evaluate its newest checkpoint.')
_STEP = flags.DEFINE_integer('step', None, 'With --workdir: this checkpoint step instead of the newest.')
_MODEL = flags.DEFINE_string('model', None, 'An export (python -m superclip_jax.export) to evaluate.')
flags.mark_flags_as_required(['config'])


def evaluate(config, workdir: str | None = None, model_dir: str | None = None, step: int | None = None) -> dict:
  """All of config.evals on the parameters of a checkpoint or an export."""
  import jax

  from superclip_jax import checkpoint, config_defaults, sharding
  from superclip_jax.evals import runner
  from superclip_jax.models.superclip import ModelConfig, ModelDef
  config_defaults.validate(config)
  if not config.evals:
    raise ValueError('the config lists no evaluators (config.evals)')
  mesh = sharding.make_mesh(config.mesh.shape)
  rules = tuple(tuple(r) for r in config.mesh.rules)
  if model_dir:
    with open(os.path.join(model_dir, 'model_config.json')) as f:
      cfg = ModelConfig.from_dict(json.load(f)['model'])
    params = checkpoint.read_numpy_tree(os.path.join(model_dir, 'params'))
    source = {'model': model_dir}
  else:
    step_dir, found = (checkpoint.latest_checkpoint_dir(workdir) if step is None
                       else (os.path.join(workdir, 'checkpoints', str(step)), step))
    cfg = ModelConfig.from_config(config)
    params = checkpoint.read_numpy_tree(os.path.join(step_dir, 'state'))['params']
    source = {'workdir': workdir, 'step': found}
  model_def = ModelDef(cfg, seed=config.seed)
  shapes = model_def.shapes()
  params = {k: v for k, v in params.items() if k in shapes}  # an export has no token classifier
  missing = set(shapes) - set(params)
  if missing - {'token_classifier'}:
    raise ValueError(f'parameters missing for {sorted(missing)}')
  if 'token_classifier' in missing:
    model_def = ModelDef(ModelConfig.from_dict({**cfg.to_dict(), 'variant': 'clip'}), seed=config.seed)
  shardings = sharding.tree_shardings(model_def.logical_axes(), model_def.shapes(), mesh, rules)
  params = jax.device_put(params, shardings)
  results = runner.Evaluators(config, model_def, mesh, shardings).run(params)
  return {**source, **results}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if bool(_WORKDIR.value) == bool(_MODEL.value):
    raise app.UsageError('give exactly one of --workdir and --model')
  print(json.dumps(evaluate(_CONFIG.value, _WORKDIR.value, _MODEL.value, _STEP.value), sort_keys=True))


if __name__ == '__main__':
  app.run(main)
