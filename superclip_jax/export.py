"""Export inference weights from a training workdir, and load them back ready to use.

  python -m superclip_jax.export --workdir DIR --out MODEL [--step N]

MODEL holds `params/` (Orbax; towers and temperature only: no optimizer, no token
classifier, no IDF counts) and `model_config.json` (the ModelConfig, the tokenizer and
the image preprocessing). `superclip_jax.load(MODEL)` returns encode_image / encode_text
/ tokenizer / preprocess. `python -m superclip_jax.convert` writes the same format from
PyTorch weights; a converted SuperCLIP keeps its token classifier in `params/` (for
fine-tuning), which `load` sets aside as `LoadedModel.token_classifier`.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import flags

from superclip_jax import checkpoint, commands, storage
from superclip_jax.errors import UserError, user_errors
from superclip_jax.models import vit
from superclip_jax.models.superclip import ModelConfig, ModelDef

TRAINING_ONLY = ('token_classifier',)
CLIP_MEAN, CLIP_STD = vit.CLIP_MEAN_RGB, vit.CLIP_STD_RGB  # written into export metadata


def _tokenizer_description(config: dict) -> dict[str, Any]:
  data = config['data']
  if data['kind'] == 'synthetic':
    return {
      'kind': 'synthetic',
      'context_length': config['model']['context_length'],
      'sot_id': config['tokenizer']['sot_id'],
      'eot_id': config['tokenizer']['eot_id'],
      'vocab_size': config['model']['vocab_size'],
    }
  from superclip_jax.data import inputs, records

  tok = records.read_manifest(inputs.shard_dirs(data['shards'])[0])['tokenizer']
  return {'kind': 'spec', 'spec': tok.get('spec', 'clip'), 'context_length': config['model']['context_length']}


def export(workdir: str, out: str, step: int | None = None) -> str:
  """Write MODEL from the workdir's newest (or given) checkpoint; returns out."""
  step_dir, step = checkpoint.checkpoint_dir(workdir, step)
  config = json.loads(storage.read_text(storage.join(step_dir, 'config', 'metadata')))
  cfg = ModelConfig.from_config(ml_collections.ConfigDict(config))
  params = checkpoint.read_numpy_tree(storage.join(step_dir, 'state'))['params']
  params = {k: v for k, v in params.items() if k not in TRAINING_ONLY}
  tokenizer = _tokenizer_description(config)
  out = storage.absolute(out)
  if tokenizer['kind'] == 'spec' and os.path.exists(tokenizer['spec']):
    storage.makedirs(out)
    storage.Path(storage.join(out, 'tokenizer.json')).write_bytes(open(tokenizer['spec'], 'rb').read())
    tokenizer['spec'] = 'tokenizer.json'
  return write_export(out, cfg, params, tokenizer, step)


def write_export(
  out: str,
  cfg: ModelConfig,
  params: dict,
  tokenizer: dict[str, Any],
  step: int | None = None,
  image_mean=CLIP_MEAN,
  image_std=CLIP_STD,
  **extra,
) -> str:
  """Write MODEL (params/ via Orbax + model_config.json) from a params dict; returns out."""
  out = storage.absolute(out)
  params_dir = storage.Path(storage.join(out, 'params'))
  if params_dir.exists():
    params_dir.rmtree()
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(storage.join(out, 'params'), params)
  ckptr.wait_until_finished()
  storage.write_text(
    storage.join(out, 'model_config.json'),
    json.dumps(
      {
        'model': cfg.to_dict(),
        'tokenizer': tokenizer,
        'step': step,
        'image_mean': [float(x) for x in image_mean],
        'image_std': [float(x) for x in image_std],
        **extra,
      },
      indent=1,
    ),
  )
  return out


class _SyntheticTokenizer:
  """The word-level tokenizer of the synthetic data, for models trained on it."""

  def __init__(self, description):
    from superclip_jax.data import synthetic

    self._source = synthetic.SyntheticImageText(
      image_size=8,
      vocab_size=description['vocab_size'],
      context_length=description['context_length'],
      sot_id=description['sot_id'],
      eot_id=description['eot_id'],
      pad_id=0,
    )
    self.context_length = description['context_length']

  def __call__(self, texts, context_length=None):
    if isinstance(texts, str):
      texts = [texts]
    return np.stack([self._source.tokenize(t) for t in texts])


class LoadedModel:
  """An exported model: encode_image(uint8 or normalised images), encode_text(texts or ids)."""

  def __init__(self, directory: str):
    meta = json.loads(storage.read_text(storage.join(directory, 'model_config.json')))
    self.config = ModelConfig.from_dict(meta['model']).for_inference()
    self.model_def = ModelDef(self.config)
    params = checkpoint.read_numpy_tree(storage.join(directory, 'params'))
    # A converted SuperCLIP keeps its token classifier (for fine-tuning); inference leaves it out.
    self.token_classifier = params.pop('token_classifier', None)
    self.params = jax.tree.map(jnp.asarray, params)
    self.step = meta.get('step')
    self.image_mean = np.asarray(meta.get('image_mean', CLIP_MEAN), np.float32)
    self.image_std = np.asarray(meta.get('image_std', CLIP_STD), np.float32)
    tok = meta['tokenizer']
    if tok['kind'] == 'none':
      self.tokenizer = None
    elif tok['kind'] == 'synthetic':
      self.tokenizer = _SyntheticTokenizer(tok)
    else:
      from superclip_jax.data import tokenizer as tokenizer_lib

      spec = tok['spec']
      if spec == 'tokenizer.json':
        spec = storage.join(directory, spec)
      self.tokenizer = tokenizer_lib.load_tokenizer(spec, tok['context_length'])

  @functools.cached_property
  def _image_fn(self):
    return jax.jit(lambda p, x: self.model_def.bind(p).encode_image(x))

  @functools.cached_property
  def _text_fn(self):
    return jax.jit(lambda p, t: self.model_def.bind(p).encode_text(t))

  def encode_image(self, images) -> np.ndarray:
    """(N, H, W, 3) uint8 pixels or CLIP-normalised floats -> L2-normalised embeddings."""
    return np.asarray(self._image_fn(self.params, jnp.asarray(images)))

  def preprocess(self, images) -> np.ndarray:
    """PIL images or uint8 arrays (any size) -> (N, S, S, 3) float32, as CLIP's eval transform.

    Shorter side to S with PIL bicubic (antialiased), centre crop, then this model's mean/std:
    OpenCLIP's `image_transform(S, is_train=False)` to within one grey level.
    """
    from superclip_jax.data import transforms

    return transforms.clip_preprocess(images, self.config.image_size, self.image_mean, self.image_std)

  def encode_text(self, texts: str | Sequence[str] | np.ndarray) -> np.ndarray:
    """Texts (tokenized here) or int token ids (N, L) -> L2-normalised embeddings."""
    if isinstance(texts, str) or (isinstance(texts, (list, tuple)) and texts and isinstance(texts[0], str)):
      if self.tokenizer is None:
        raise UserError("this model has no tokenizer (its vocabulary is not CLIP's): pass token ids")
      texts = self.tokenizer(list(texts) if not isinstance(texts, str) else texts, context_length=self.config.context_length)
    return np.asarray(self._text_fn(self.params, jnp.asarray(texts, jnp.int32)))

  @property
  def logit_scale(self) -> float:
    return float(np.exp(self.params['logit_scale'])) if 'logit_scale' in self.params else 1.0


def load(directory: str) -> LoadedModel:
  """Load an export made by `python -m superclip_jax.export`."""
  if not storage.exists(storage.join(directory, 'model_config.json')):
    raise UserError(f'{directory}: no model_config.json (not an export of superclip_jax.export)')
  return LoadedModel(directory)


def _define_flags(v: flags.FlagValues) -> None:
  flags.DEFINE_string('workdir', None, 'Training workdir whose checkpoint to export.', required=True, flag_values=v)
  flags.DEFINE_string('out', None, 'Where the export goes (MODEL).', required=True, flag_values=v)
  flags.DEFINE_integer('step', None, 'This checkpoint step (default: the newest).', flag_values=v)


def _export(v: flags.FlagValues, _args: list[str]) -> None:
  with user_errors('superclip_jax.export'):
    print(export(v.workdir, v.out, v.step))


def main(argv: list[str] | None = None):
  """`python -m superclip_jax.export` (argv None), or its flags as a list, in this process."""
  commands.command('superclip_jax.export', _define_flags, _export, argv)


if __name__ == '__main__':
  main()
