"""The full config schema: every valid key with its default, and start-up validation.

Config files start from `default_config()` and change values; `validate` rejects any
key that is not here (naming the closest valid one), so a misspelled override fails at
start-up instead of being silently ignored for a week-long run.
"""

from __future__ import annotations

import difflib

import ml_collections

from superclip_jax.models import presets

# CLIP BPE: 49,406 = <start_of_text>, 49,407 = <end_of_text>, pad = 0 (METHOD.md).
CLIP_VOCAB_SIZE = 49408
CLIP_SOT_ID = 49406
CLIP_EOT_ID = 49407
CLIP_PAD_ID = 0


def default_config() -> ml_collections.ConfigDict:
  """Every key the trainer reads, with the SuperCLIP B/16 recipe's values as defaults."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.variant = 'superclip'  # 'superclip' | 'clip' (no head) | 'superclass' (no text tower)
  c.model.image = 'B/16'  # a preset name from models/presets.py
  c.model.text = 'B'  # a preset name, or 'none'
  c.model.embed_dim = 512
  c.model.image_size = 224
  c.model.vocab_size = CLIP_VOCAB_SIZE
  c.model.context_length = 77
  c.model.quick_gelu = False  # OpenAI's released weights need QuickGELU
  c.model.compute_dtype = 'float32'  # 'bfloat16' for accelerators; params stay float32
  c.model.remat = 'none'  # 'none' | 'full' | 'dots' (save matmul outputs)
  # Per-tower overrides of the preset sizes (0 keeps the preset).
  c.model.image_width = 0
  c.model.image_depth = 0
  c.model.image_heads = 0
  c.model.patch_size = 0
  c.model.text_width = 0
  c.model.text_depth = 0
  c.model.text_heads = 0

  c.loss = ml_collections.ConfigDict()
  c.loss.contrastive = 'softmax'  # 'softmax' (CLIP) | 'sigmoid' (SigLIP) | 'none'
  c.loss.cls_weight = 1.0  # lambda; 0 gives plain CLIP
  c.loss.idf = 'online'  # 'online' | 'offline' | 'none'
  c.loss.idf_offline_stats = ''  # .npz with doc_freq (V,) and num_samples, for idf='offline'
  c.loss.mask_special_tokens = True  # False reproduces the reference (SOT/EOT/pad positives)
  c.loss.sot_id = CLIP_SOT_ID
  c.loss.eot_id = CLIP_EOT_ID
  c.loss.pad_id = CLIP_PAD_ID
  c.loss.logit_scale_init = 2.6592600878  # ln(1/0.07)
  c.loss.logit_scale_max = 4.6051701860  # ln(100)
  c.loss.sigmoid_scale_init = 2.302585093  # ln(10)
  c.loss.sigmoid_bias_init = -10.0

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-3
  c.optim.b1 = 0.9
  c.optim.b2 = 0.98
  c.optim.eps = 1e-6
  c.optim.weight_decay = 0.2
  c.optim.warmup_steps = 500
  c.optim.schedule = 'cosine'  # 'cosine' | 'constant'
  c.optim.end_learning_rate = 0.0
  c.optim.grad_clip_norm = 0.0  # 0 disables clipping (the reference does not clip)
  c.optim.frozen = ''  # regex over parameter paths ('image_tower/.*') that get no updates

  c.data = ml_collections.ConfigDict()
  c.data.source = 'synthetic'  # 'synthetic' | 'shards' (built by python -m superclip_jax.data.build)
  c.data.shards = ''  # shard directories, comma-separated; several make a weighted mixture
  c.data.weights = ()  # mixture weights, one per shard directory (default equal)
  c.data.workers = 0  # Grain worker processes per host (0: decode in the training process)
  c.data.worker_buffer = 2  # batches buffered per worker
  c.data.crop_scale = (0.9, 1.0)  # RandomResizedCrop area range (METHOD.md)
  c.data.long_captions = False  # the "Dual" setting: long captions feed only the classifier
  c.data.long_context_length = 256
  c.data.global_batch_size = 16384
  c.data.num_train_samples = 512_000_000  # samples seen; sets the number of steps
  c.data.synthetic_image_size = 0  # 0: model.image_size

  c.mesh = ml_collections.ConfigDict()
  # ('data', 'fsdp', 'tensor'); -1 takes the devices left over.
  c.mesh.shape = (-1, 1, 1)
  # Logical axis -> mesh axes. A dimension whose size the mesh axes do not divide is
  # replicated instead (logged once), so tiny test models run on any mesh.
  c.mesh.rules = (
      ('batch', ('data', 'fsdp')),
      ('embed', 'fsdp'),
      ('mlp', 'tensor'),
      ('heads', 'tensor'),
      ('vocab', 'tensor'),
  )

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 1000  # 0: only at the end (and on preemption)
  c.checkpoint.keep = 3  # the newest K ...
  c.checkpoint.keep_every = 0  # ... plus every M-th step forever (0: none)
  c.checkpoint.async_save = True
  c.checkpoint.preemption_check_every = 10  # steps between multi-host SIGTERM agreements

  # Weights-only initialisation (LiT-style runs, fine-tuning): a workdir with checkpoints or
  # an export; optionally only the image tower. Combine with optim.frozen to lock it.
  c.init_from = ''
  c.init_image_tower_only = False

  c.nonfinite = 'stop'  # a NaN/Inf loss or gradient: 'stop' the run, or 'skip' the update and count it

  # Named evaluators (evals/runner.py: evaluator(kind=..., shards=..., every_steps=...)).
  c.evals = ml_collections.ConfigDict()

  c.log_every_steps = 50
  c.total_steps = 0  # 0: num_train_samples // global_batch_size
  return c


def resolved_total_steps(config: ml_collections.ConfigDict) -> int:
  """Number of optimiser steps: explicit, or samples seen / global batch size."""
  if config.total_steps:
    return int(config.total_steps)
  return int(config.data.num_train_samples // config.data.global_batch_size)


_CHOICES = {
    'model.variant': ('superclip', 'clip', 'superclass'),
    'model.compute_dtype': ('float32', 'bfloat16'),
    'model.remat': ('none', 'full', 'dots'),
    'loss.contrastive': ('softmax', 'sigmoid', 'none'),
    'loss.idf': ('online', 'offline', 'none'),
    'optim.schedule': ('cosine', 'constant'),
    'data.source': ('synthetic', 'shards'),
    'nonfinite': ('stop', 'skip'),
}


def _flat_keys(cfg, prefix=''):
  keys = {}
  for k, v in cfg.items():
    name = f'{prefix}{k}'
    if isinstance(v, ml_collections.ConfigDict):
      keys.update(_flat_keys(v, name + '.'))
    else:
      keys[name] = v
  return keys


def validate(config: ml_collections.ConfigDict) -> None:
  """Raise ValueError for an unknown key (naming the closest valid one) or a bad value."""
  valid = _flat_keys(default_config())
  given = _flat_keys(config)
  if config.evals:
    from superclip_jax.evals import runner  # imported on use: it pulls in jax and grain
    runner.validate(config.evals)
  for key in given:
    if key.startswith('evals.'):
      continue
    if key not in valid:
      close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
      hint = f"; did you mean '{close[0]}'?" if close else ''
      raise ValueError(f"Unknown config key '{key}'{hint}")
  for key, choices in _CHOICES.items():
    if given[key] not in choices:
      raise ValueError(f"config.{key}={given[key]!r} is not one of {choices}")
  if config.model.image not in presets.IMAGE_TOWERS:
    raise ValueError(
        f'config.model.image={config.model.image!r} is not one of {sorted(presets.IMAGE_TOWERS)}')
  if config.model.variant == 'superclass':
    if config.loss.cls_weight <= 0:
      raise ValueError("model.variant='superclass' trains only the classifier: loss.cls_weight must be > 0")
  else:
    if config.model.text not in presets.TEXT_TOWERS:
      raise ValueError(
          f'config.model.text={config.model.text!r} is not one of {sorted(presets.TEXT_TOWERS)}')
    if config.loss.contrastive == 'none':
      raise ValueError(f"model.variant={config.model.variant!r} needs a contrastive loss")
  if config.model.variant == 'clip' and config.loss.cls_weight != 0:
    raise ValueError("model.variant='clip' has no token classifier: set loss.cls_weight=0")
  if config.loss.idf == 'offline' and not config.loss.idf_offline_stats and config.data.source != 'shards':
    raise ValueError("loss.idf='offline' needs loss.idf_offline_stats (an .npz path) or shards")
  if config.data.source == 'shards' and not config.data.shards:
    raise ValueError("data.source='shards' needs data.shards (a directory made by superclip_jax.data.build)")
  if config.data.global_batch_size <= 0:
    raise ValueError('data.global_batch_size must be positive')
  if len(tuple(config.mesh.shape)) != 3:
    raise ValueError(f'mesh.shape must have 3 entries (data, fsdp, tensor), got {config.mesh.shape}')


def load_config_file(path: str, arg: str = '') -> ml_collections.ConfigDict:
  """Run a config file's get_config(arg): how one config file builds on another."""
  import importlib.util
  import inspect
  import os
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  if spec is None or not os.path.exists(path):
    raise FileNotFoundError(f'config file {path} not found')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  takes_arg = len(inspect.signature(module.get_config).parameters) > 0
  return module.get_config(arg) if takes_arg else module.get_config()


def sibling_config(this_file: str, name: str, arg: str = '') -> ml_collections.ConfigDict:
  """The config of file `name` in the same directory as `this_file`."""
  import os
  return load_config_file(os.path.join(os.path.dirname(os.path.abspath(this_file)), name), arg)
