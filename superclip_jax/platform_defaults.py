"""What the settings left at 'auto' become on each backend, chosen from each target's compiled program.

- model.attention: cuDNN's fused attention on GPUs (16-bit, head dim a multiple of 8 up
  to 128); the einsum elsewhere (layers.attention_implementation).
- model.remat: 'elementwise' on CPU (keep every matmul output, recompute LayerNorm, GELU
  and softmax: the fastest CPU step measured); 'dots' on GPU and TPU (keep the weight
  matmuls' outputs, recompute attention and the elementwise ops: MaxText's 'minimal',
  big_vision's 'dots_with_no_batch_dims'), which executes about 18% fewer FLOPs than
  'full'. Where it does not fit, the dry run says so; 'full' or optim.accum_steps then do.
- nonfinite_guard: 'cond' on CPU (a skipped branch costs nothing there); 'select'
  elsewhere, since XLA:GPU copies a conditional's predicate to the host and waits, every
  step, while a select fuses into the optimizer's elementwise update.

docs/performance.md has the compiled figures behind each choice.
"""

from __future__ import annotations

import ml_collections

from superclip_jax.models import layers
from superclip_jax.models.superclip import ModelConfig

NONFINITE_GUARD = {'cpu': 'cond', 'gpu': 'select', 'tpu': 'select'}


def resolve(config: ml_collections.ConfigDict, platform: str) -> ml_collections.ConfigDict:
  """A copy of `config` with its 'auto' settings made concrete for `platform` ('cpu', 'gpu', 'tpu')."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.remat = layers.remat_setting(config.model.remat, platform)
    if config.nonfinite_guard == 'auto':
      config.nonfinite_guard = NONFINITE_GUARD.get(platform, 'select')
    if config.model.attention == 'auto':
      cfg = ModelConfig.from_config(config)
      towers = [t for t in (cfg.image, cfg.text) if t is not None]
      choices = {layers.attention_implementation('auto', platform, cfg.compute_dtype, t.width // t.heads) for t in towers}
      # One setting for both towers: cuDNN only where it takes both.
      config.model.attention = 'cudnn' if choices == {'cudnn'} else 'xla'
  return config
