r"""A small SuperCLIP that trains on a laptop CPU in about a minute (synthetic data).

  python -m superclip_jax.main --config configs/tiny.py --workdir /tmp/tiny

Expected: contrastive loss falls from ln(64) = 4.16 to below 1.5 and the IDF-weighted
classification loss well below its start within 300 steps (see docs/performance.md for measured
figures). Overrides: --config.model.variant=clip (plain CLIP), --config.loss.contrastive=sigmoid.
"""

from superclip_jax import config_defaults


def get_config():
  c = config_defaults.default_config()
  c.model.image = 'tiny/8'
  c.model.text = 'tiny'
  c.model.embed_dim = 128
  c.model.image_size = 32
  c.model.context_length = 16
  # Synthetic captions use a 27-word vocabulary; a small id space keeps the head cheap.
  c.model.vocab_size = 64
  c.tokenizer.sot_id = 62
  c.tokenizer.eot_id = 63
  c.data.global_batch_size = 64
  c.total_steps = 300
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 30
  c.optim.weight_decay = 0.1
  c.log_every_steps = 25
  c.checkpoint.every_steps = 50  # interrupt it and run the same command again: it resumes exactly
  return c
