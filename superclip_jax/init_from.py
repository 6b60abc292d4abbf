"""Weights-only starts (`config.init_from`): fine-tuning, LiT, continued training from another model.

The source is a training workdir (its newest checkpoint) or an export / converted model
(`model_config.json` + `params/`). Its arrays are restored by Orbax straight into this
run's sharded layout, whatever mesh or number of processes wrote them: no host ever
gathers the model. Parameters the source lacks (an export has no token classifier)
keep their fresh initialisation; a parameter of another shape is an error naming it.
"""

from __future__ import annotations

from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from superclip_jax import checkpoint, storage, tree_names
from superclip_jax.errors import UserError

MODEL_CONFIG = 'model_config.json'


def locate(path: str, step: int | None = None) -> tuple[str, str]:
  """(Orbax directory holding the parameters, the prefix of their names inside it).

  path: an export (model_config.json + params/) or a workdir (its newest checkpoint, or `step`).
  """
  if storage.exists(storage.join(path, MODEL_CONFIG)):
    return storage.join(path, 'params'), ''
  if not storage.exists(path):
    raise UserError(f'{path}: no such directory')
  step_dir, _ = checkpoint.checkpoint_dir(path, step)
  return storage.join(step_dir, 'state'), 'params.'


def restore_params(
  path: str,
  params_target: dict,
  image_tower_only: bool = False,
  step: int | None = None,
  ignore: tuple[str, ...] = (),
  model_cfg=None,
) -> tuple[dict, list[str]]:
  """Arrays of the source for this run's parameters, sharded as `params_target` says.

  params_target: ShapeDtypeStructs with shardings (the run's abstract parameters).
  ignore: name prefixes of source parameters to leave out ('token_classifier.').
  model_cfg: this run's ModelConfig; an export's activation and EOT id must then agree with it.
  Returns ({dotted name: array} of the parameters taken, their names).
  """
  directory, prefix = locate(path, step)
  wanted = checkpoint.flat_names(params_target)
  if prefix == '':
    _check_fits(path, wanted, image_tower_only, model_cfg)
  saved = {
    name[len(prefix) :]: leaf
    for name, leaf in checkpoint.flat_names(checkpoint.tree_metadata(directory)).items()
    if name.startswith(prefix)
  }
  problems, taken = [], []
  if not any(n.startswith('token_classifier.') for n in wanted):
    ignore = (*ignore, 'token_classifier.')  # a CLIP run from a SuperCLIP: the head is simply not used
  for name, leaf in sorted(saved.items()):
    if (image_tower_only and not name.startswith('image_tower.')) or name.startswith(tuple(ignore)):
      continue
    if name not in wanted:
      problems.append(f'{name}: in {path} but not in this model')
    elif tuple(leaf.shape) != tuple(wanted[name].shape):
      problems.append(f'{name}: shape {tuple(leaf.shape)} in {path}, {tuple(wanted[name].shape)} here')
    else:
      taken.append(name)
  if problems:
    raise UserError(f'init_from {path} does not fit this model: ' + '; '.join(problems))
  if not taken:
    raise UserError(f'init_from {path}: no parameter of this model found there')
  item = tree_names.nest({prefix + n: wanted[n] for n in taken})
  restore_args = jax.tree.map(
    lambda sds: ocp.ArrayRestoreArgs(sharding=sds.sharding, global_shape=sds.shape, dtype=sds.dtype), item
  )
  restored = checkpoint.restore_item(
    directory, ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)
  )
  flat = checkpoint.flat_names(restored)
  logging.info('init_from %s: %d of %d parameter arrays loaded', path, len(taken), len(wanted))
  return {n: flat[prefix + n] for n in taken}, taken


def _check_fits(path: str, wanted: dict[str, Any], image_tower_only: bool, model_cfg) -> None:
  """An export or converted model that differs from this run's config in what shapes cannot show
  (activation, EOT id) or in vocabulary / context / image size: name the config keys to set."""
  import json

  model = json.loads(storage.read_text(storage.join(path, MODEL_CONFIG)))['model']
  if model_cfg is not None:
    # QuickGELU vs GELU changes no shape: fine-tuning OpenAI weights with GELU would silently start off.
    checks = {'model.quick_gelu': (model['quick_gelu'], model_cfg.quick_gelu)}
    if not image_tower_only and model_cfg.text is not None:
      checks['tokenizer.eot_id'] = (model['eot_id'], model_cfg.eot_id)
    wrong = {k: v for k, v in checks.items() if v[0] != v[1]}
    if wrong:
      raise UserError(
        f'init_from {path}: its model has '
        + ', '.join(f'{k}={a}' for k, (a, _) in wrong.items())
        + '; this config has '
        + ', '.join(f'{k}={b}' for k, (_, b) in wrong.items())
        + ': set '
        + ' '.join(f'--config.{k}={a}' for k, (a, _) in wrong.items())
      )
  if image_tower_only:
    return
  here = {}
  if 'text_tower.token_embedding' in wanted:
    here['model.vocab_size'] = wanted['text_tower.token_embedding'].shape[0]
    here['model.context_length'] = wanted['text_tower.positional_embedding'].shape[0]
  elif 'token_classifier.head.kernel' in wanted:
    here['model.vocab_size'] = wanted['token_classifier.head.kernel'].shape[-1]
  there = {'model.vocab_size': model['vocab_size'], 'model.context_length': model['context_length']}
  if 'image_tower.positional_embedding' in wanted and model['image']['patch_size'] == wanted['image_tower.conv1'].shape[0]:
    here['model.image_size'] = (
      round((wanted['image_tower.positional_embedding'].shape[0] - 1) ** 0.5) * model['image']['patch_size']
    )
    there['model.image_size'] = model['image_size']
  wrong = {k: (there[k], v) for k, v in here.items() if there[k] != v}
  if wrong:
    raise UserError(
      f'init_from {path}: its model has '
      + ', '.join(f'{k.split(".")[1]} {a}' for k, (a, _) in wrong.items())
      + '; this config has '
      + ', '.join(f'{k}={b}' for k, (_, b) in wrong.items())
      + ': set '
      + ' '.join(f'--config.{k}={a}' for k, (a, _) in wrong.items())
      + ' (and a tokenizer with those ids), or init_image_tower_only=True'
    )


def merge(params: dict, loaded: dict[str, Any]) -> dict:
  """params with the loaded arrays (by dotted name) put in their place."""

  def pick(path, leaf):
    return loaded.get(tree_names.path_name(path), leaf)

  return jax.tree_util.tree_map_with_path(pick, params)
