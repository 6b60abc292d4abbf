"""The full config schema: every valid key with its default and meaning, and start-up validation.

Config files start from `default_config()` and change values; `validate` rejects any
key that is not here (naming the closest valid one), so a misspelled override fails at
start-up instead of being silently ignored for a week-long run. The comment on each key
is its documentation: `python -m superclip_jax.config_reference` turns them into
docs/config.md.
"""

from __future__ import annotations

import copy
import difflib
import os

import ml_collections

from superclip_jax.errors import UserError
from superclip_jax.models import presets, variants

# CLIP BPE: 49,406 = <start_of_text>, 49,407 = <end_of_text>, pad = 0 (docs/method.md).
CLIP_VOCAB_SIZE = 49408
CLIP_SOT_ID = 49406
CLIP_EOT_ID = 49407
CLIP_PAD_ID = 0


def default_config() -> ml_collections.ConfigDict:
  """Every key the trainer reads, with the SuperCLIP B/16 recipe's values as defaults."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # seeds parameter init, data order and augmentation

  c.model = ml_collections.ConfigDict()
  # 'superclip' | 'clip' (no token classifier) | 'superclass' (no text tower): the parts it has
  # (models/variants.py) decide which loss keys are read; `clip_baseline(config)` makes a CLIP run of any config.
  c.model.variant = 'superclip'
  c.model.image = 'B/16'  # image tower preset (models/presets.py): mu/8, tiny/8, S/16, B/32, B/16, L/16, L/14, H/14
  c.model.text = 'B'  # text tower preset: mu, tiny, S, B, L, H
  c.model.embed_dim = 512  # width of the shared image-text embedding
  c.model.image_size = 224  # input resolution in pixels (square)
  c.model.vocab_size = CLIP_VOCAB_SIZE  # token vocabulary: text embedding rows and token classifier outputs
  c.model.context_length = 77  # text tower positions; captions are padded or truncated to it
  c.model.quick_gelu = False  # QuickGELU x*sigmoid(1.702x) as in OpenAI's released weights; else exact GELU
  c.model.compute_dtype = 'float32'  # 'float32' | 'bfloat16' (accelerators); parameters stay float32
  # What the backward recomputes: 'auto' (per backend, platform_defaults.py: 'elementwise' on
  # CPU, 'dots' on GPU and TPU) | 'elementwise' (keep every matmul output, recompute LayerNorm,
  # GELU, softmax) | 'dots' (keep the weight matmuls' outputs; attention is recomputed too) |
  # 'full' (keep only each block's input: least memory) | 'none' (keep everything).
  c.model.remat = 'auto'
  # 'auto' (cuDNN's fused attention on GPUs in bf16, the einsum elsewhere) | 'xla' (the einsum) | 'cudnn'.
  c.model.attention = 'auto'
  c.model.scan_layers = True  # run blocks under lax.scan (compile time flat in depth) or unrolled
  c.model.image_width = 0  # override the image preset's width (0: keep)
  c.model.image_depth = 0  # override the image preset's depth (0: keep)
  c.model.image_heads = 0  # override the image preset's heads (0: keep)
  c.model.patch_size = 0  # override the image preset's patch size (0: keep)
  c.model.text_width = 0  # override the text preset's width (0: keep)
  c.model.text_depth = 0  # override the text preset's depth (0: keep)
  c.model.text_heads = 0  # override the text preset's heads (0: keep)

  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.sot_id = CLIP_SOT_ID  # start-of-text id (must equal the shards' tokenizer's)
  c.tokenizer.eot_id = CLIP_EOT_ID  # end-of-text id: the text tower pools here; never a classifier target
  c.tokenizer.pad_id = CLIP_PAD_ID  # padding id after EOT

  c.loss = ml_collections.ConfigDict()
  c.loss.contrastive = 'softmax'  # 'softmax' (CLIP) | 'sigmoid' (SigLIP); not read without a text tower (superclass)
  # lambda, the token classification loss's weight; read only by variants with the token head.
  c.loss.token_weight = 1.0
  # Token weights, with the token head: 'online' (counted from the batches seen) | 'offline' (dataset counts) | 'none'.
  c.loss.idf = 'online'
  c.loss.idf_offline_stats = ''  # .npz with doc_freq (V,) and num_samples for idf='offline' (default: the shards')
  c.loss.mask_special_tokens = True  # exclude SOT/EOT/padding from targets; False reproduces the reference code
  c.loss.chunked = False  # ring contrastive loss (shard_map, ppermute): O(local^2) memory per device, not O(local*B)
  c.loss.logit_scale_init = 2.6592600878  # CLIP log-temperature at init, ln(1/0.07)
  c.loss.logit_scale_max = 4.6051701860  # CLIP log-temperature clamp after every step, ln(100)
  c.loss.sigmoid_scale_init = 2.302585093  # SigLIP log-temperature at init, ln(10)
  c.loss.sigmoid_bias_init = -10.0  # SigLIP logit bias at init

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-3  # peak learning rate after warm-up
  c.optim.b1 = 0.9  # AdamW beta1
  c.optim.b2 = 0.98  # AdamW beta2
  c.optim.eps = 1e-6  # AdamW epsilon
  c.optim.weight_decay = 0.2  # decoupled weight decay, on matrices only (not biases, norms, temperature)
  c.optim.warmup_steps = 500  # linear warm-up from 0
  c.optim.schedule = 'cosine'  # after warm-up: 'cosine' (to end_learning_rate) | 'constant'
  c.optim.end_learning_rate = 0.0  # learning rate at the last step of the cosine
  c.optim.grad_clip_norm = 0.0  # clip the global gradient norm (0: off; the reference does not clip)
  c.optim.frozen = ''  # regex over parameter paths ('image_tower/.*') that get no updates
  c.optim.accum_steps = 1  # micro-batches per global batch; the contrastive loss still sees all B x B pairs

  c.data = ml_collections.ConfigDict()
  c.data.kind = 'synthetic'  # 'synthetic' (generated shapes) | 'shards' (built by python -m superclip_jax.data.build)
  c.data.shards = ''  # shard directories, comma-separated; several make a weighted mixture
  c.data.weights = ()  # mixture weights, one per shard directory (default: equal)
  # Grain worker processes per training process: 'auto' (every core this process has but one;
  # data/pipeline.py resolve_workers) or N (0: decode in threads of the training process).
  c.data.workers = ml_collections.FieldReference('auto', field_type=object)
  # Stop the run when more than this fraction of the examples read (and more than 100) were
  # undecodable and replaced: a damaged or truncated shard set, not a few bad images.
  c.data.max_replaced_fraction = 0.01
  c.data.threads = 4  # decoding threads per host when workers=0
  c.data.prefetch = 2  # batches decoded ahead of the step
  c.data.crop_scale = (0.9, 1.0)  # RandomResizedCrop area range
  c.data.long_captions = False  # the paper's "Dual" setting: long captions feed only the classifier
  c.data.long_context_length = 256  # token length of the long captions
  c.data.global_batch_size = 16384  # samples per step over all devices
  c.data.num_train_samples = 512_000_000  # samples seen in all; sets the number of steps
  c.data.synthetic_image_size = 0  # synthetic data's image size (0: model.image_size)

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1, 1)  # ('data', 'fsdp', 'tensor') sizes; one -1 takes the devices left over
  # Logical axis -> mesh axes: how parameters, activations and the batch are split. A
  # dimension whose size the mesh axes do not divide is replicated (logged once).
  c.mesh.rules = (
    ('batch', ('data', 'fsdp')),
    ('embed', 'fsdp'),
    ('classifier_embed', 'fsdp'),  # the token classifier's input axis (see docs/performance.md)
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('vocab', 'tensor'),
  )

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 1000  # save every N steps (0: only at the end and on preemption)
  c.checkpoint.keep = 3  # keep the newest K checkpoints ...
  c.checkpoint.keep_every = 0  # ... plus every M-th step forever (0: none)
  c.checkpoint.async_save = True  # write checkpoints in the background while training goes on
  c.checkpoint.preemption_check_every = 10  # steps between the processes' agreements on a SIGTERM
  # Exit status after a SIGTERM's checkpoint is saved: non-zero, so SLURM (--requeue) and
  # Kubernetes (restartPolicy OnFailure, Job backoffLimit) run it again; 143 = 128 + SIGTERM.
  c.checkpoint.preempt_exit_code = 143
  # A damaged step found at resume is moved aside to N.damaged (False) or deleted (True).
  c.checkpoint.delete_damaged = False
  # OCDBT packs every array into a few large files (Orbax's default); False writes one zarr
  # folder per array, which also works on object stores without conditional writes.
  c.checkpoint.ocdbt = True

  c.init_from = ''  # weights-only start: a workdir with checkpoints or an export / converted model
  c.init_image_tower_only = False  # with init_from: take only the image tower (LiT, or a new text tower)

  c.nonfinite = 'stop'  # a NaN/Inf loss or gradient: 'stop' the run, or 'skip' the update and count it
  # How the step drops such an update: 'auto' (per backend) | 'cond' (a branch: free on CPU) |
  # 'select' (elementwise over the state: no host round trip on GPUs, where a branch has one).
  c.nonfinite_guard = 'auto'
  # With nonfinite='skip': stop the run when more than this fraction of its updates (and more
  # than 10) were dropped, instead of finishing a run that mostly did not train.
  c.nonfinite_max_skipped = 0.01

  c.evals = ml_collections.ConfigDict()  # named evaluators: evals/registry.py evaluator(kind=..., ...)

  c.profile = ml_collections.ConfigDict()
  c.profile.first_step = 0  # first step traced by jax.profiler into WORKDIR/profile
  c.profile.num_steps = 0  # steps traced (0: no trace)

  c.wandb = ml_collections.ConfigDict()
  c.wandb.project = ''  # a Weights & Biases project also receives the metrics (pip install wandb)
  c.wandb.entity = ''  # W&B entity (team or user; default: yours)
  c.wandb.name = ''  # W&B run name (default: the workdir's name)

  c.log_every_steps = 50  # steps averaged into one metrics row
  c.total_steps = 0  # optimiser steps (0: data.num_train_samples // data.global_batch_size)
  return c


def clip_baseline(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The same run as plain CLIP: no token classifier, so no token loss and no IDF counts (the paper's baseline)."""
  baseline = copy.deepcopy(config)  # the caller's config is left as it was
  baseline.model.variant = 'clip'
  if baseline.loss.contrastive == 'none':  # from SuperClass, which has none; CLIP needs one
    baseline.loss.contrastive = 'softmax'
  return baseline


def resolved_total_steps(config: ml_collections.ConfigDict) -> int:
  """Number of optimiser steps: explicit, or samples seen / global batch size."""
  if config.total_steps:
    return int(config.total_steps)
  return int(config.data.num_train_samples // config.data.global_batch_size)


_ZERO_MEANS = {
  'every_steps': 'save only at the end and on preemption',
  'keep': 'keep every checkpoint',
  'keep_every': 'no permanent checkpoints',
}

_CHOICES = {
  'model.variant': tuple(variants.VARIANTS),
  'model.compute_dtype': ('float32', 'bfloat16'),
  'model.remat': ('auto', 'none', 'full', 'dots', 'elementwise'),
  'model.attention': ('auto', 'xla', 'cudnn'),
  'nonfinite_guard': ('auto', 'cond', 'select'),
  'loss.contrastive': ('softmax', 'sigmoid', 'none'),
  'loss.idf': ('online', 'offline', 'none'),
  'optim.schedule': ('cosine', 'constant'),
  'data.kind': ('synthetic', 'shards'),
  'nonfinite': ('stop', 'skip'),
}


def flat_keys(cfg, prefix='') -> dict:
  """{'model.image': 'B/16', ...}: every leaf key of a (nested) config with its value."""
  keys = {}
  for k, v in cfg.items():
    name = f'{prefix}{k}'
    if isinstance(v, (ml_collections.ConfigDict, dict)):
      keys.update(flat_keys(v, name + '.'))
    else:
      keys[name] = v
  return keys


RENAMED_KEYS = {'loss.cls_weight': 'loss.token_weight'}  # old name -> new, named in the error


def unknown_key_message(key: str, valid, flag: str = '') -> str:
  """'unknown config key ...' with the new name of a renamed key, or the closest valid one."""
  where = f' ({flag})' if flag else ''
  if key in RENAMED_KEYS:
    return f"config key '{key}'{where} was renamed '{RENAMED_KEYS[key]}'"
  close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
  hint = f"; did you mean '{close[0]}'?" if close else ''
  return f"unknown config key '{key}'{where}{hint}"


def validate(config: ml_collections.ConfigDict, training: bool = True) -> None:
  """Raise UserError for an unknown key (naming the closest valid one) or a bad value.

  training=False (a --dry_run) does not ask for the training data. The evaluators in
  `config.evals` are checked by their registry (evals/registry.validate), where the
  config is loaded: cli.config_value, run_setup.prepare.
  """
  valid = flat_keys(default_config())
  given = flat_keys(config)
  for key in given:
    if key.startswith('evals.'):
      continue
    if key not in valid:
      raise UserError(unknown_key_message(key, valid))
  for key, choices in _CHOICES.items():
    if given[key] not in choices:
      raise UserError(f'config.{key}={given[key]!r} is not one of {choices}')
  if config.model.image not in presets.IMAGE_TOWERS:
    raise UserError(f'config.model.image={config.model.image!r} is not one of {sorted(presets.IMAGE_TOWERS)}')
  if variants.has_text_tower(config.model.variant):
    if config.model.text not in presets.TEXT_TOWERS:
      raise UserError(f'config.model.text={config.model.text!r} is not one of {sorted(presets.TEXT_TOWERS)}')
    if config.loss.contrastive == 'none':
      raise UserError(f"model.variant={config.model.variant!r} needs a contrastive loss ('softmax' or 'sigmoid')")
  elif config.loss.token_weight <= 0:
    raise UserError(f'model.variant={config.model.variant!r} trains only the token classifier: loss.token_weight must be > 0')
  if config.loss.idf == 'offline' and not config.loss.idf_offline_stats and config.data.kind != 'shards':
    raise UserError("loss.idf='offline' needs loss.idf_offline_stats (an .npz path) or shards")
  if training and config.data.kind == 'shards' and not config.data.shards:
    raise UserError(
      'no training data: data.shards is empty; build shards with python -m superclip_jax.data.build '
      'and give them as --config.data.shards=DIR (for a recipe config: CONFIG.py:data=DIR)'
    )
  if config.data.global_batch_size <= 0:
    raise UserError('data.global_batch_size must be positive')
  if not (config.data.workers == 'auto' or str(config.data.workers).isdigit()):
    raise UserError(f"data.workers={config.data.workers!r}: use 'auto' or a number of worker processes (0: threads)")
  if config.optim.accum_steps < 1:
    raise UserError('optim.accum_steps must be >= 1')
  if config.log_every_steps < 1:
    raise UserError(f'log_every_steps={config.log_every_steps}: must be >= 1 (steps averaged into one metrics row)')
  if config.total_steps < 0:
    raise UserError(f'total_steps={config.total_steps}: must be > 0, or 0 for data.num_train_samples // data.global_batch_size')
  if training and resolved_total_steps(config) <= 0:
    raise UserError(
      f'no steps to train: total_steps is 0 and data.num_train_samples={config.data.num_train_samples} '
      f'is below one global batch of {config.data.global_batch_size}'
    )
  for key in ('every_steps', 'keep', 'keep_every'):
    if config.checkpoint[key] < 0:
      raise UserError(f'checkpoint.{key}={config.checkpoint[key]}: must be >= 0 (0: {_ZERO_MEANS[key]})')
  for key, value in (
    ('nonfinite_max_skipped', config.nonfinite_max_skipped),
    ('data.max_replaced_fraction', config.data.max_replaced_fraction),
  ):
    if not 0 <= value <= 1:
      raise UserError(f'{key}={value}: a fraction between 0 and 1')
  if not 0 <= config.checkpoint.preempt_exit_code <= 255:
    raise UserError(f'checkpoint.preempt_exit_code={config.checkpoint.preempt_exit_code}: an exit status is 0-255')
  if len(tuple(config.mesh.shape)) != 3:
    raise UserError(f'mesh.shape must have 3 entries (data, fsdp, tensor), got {config.mesh.shape}')
  if not any(name == 'batch' for name, _ in config.mesh.rules):
    raise UserError("mesh.rules has no 'batch' rule (which mesh axes split the batch)")


def load_config_file(path: str, arg: str = '') -> ml_collections.ConfigDict:
  """Run a config file's get_config(arg): how one config file builds on another."""
  import importlib.util
  import inspect

  if not os.path.isfile(path):
    raise UserError(f'config file {path} not found')
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  takes_arg = len(inspect.signature(module.get_config).parameters) > 0
  return module.get_config(arg) if takes_arg else module.get_config()


def sibling_config(this_file: str, name: str, arg: str = '') -> ml_collections.ConfigDict:
  """The config of file `name` in the same directory as `this_file`."""
  return load_config_file(os.path.join(os.path.dirname(os.path.abspath(this_file)), name), arg)


def parse_config_args(arg: str, known: dict[str, type], where: str) -> dict:
  """'key=value,key=value' config-file arguments, typed; unknown keys are a UserError naming the valid ones.

  A part without '=' continues the previous value, so 'data=/a,/b,bs=64' gives data='/a,/b'
  (a mixture of two shard sets).
  """
  raw: dict[str, str] = {}
  last = None
  for part in filter(None, (p.strip() for p in (arg or '').split(','))):
    key, sep, value = part.partition('=')
    if not sep:
      if last is None:
        raise UserError(f'{where}: config argument {part!r} is not key=value (known: {", ".join(known)})')
      raw[last] += ',' + part
      continue
    if key not in known:
      raise UserError(f'{where}: unknown config argument {key!r} (known: {", ".join(known)})')
    raw[key], last = value, key
  out = {}
  for key, value in raw.items():
    try:
      out[key] = known[key](value)
    except ValueError as e:
      raise UserError(f'{where}: config argument {key}={value!r}: {e}') from e
  return out
