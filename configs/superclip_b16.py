r"""SuperCLIP ViT-B/16, the paper's B-512M recipe (docs/method.md).

  python -m superclip_jax.main --config configs/superclip_b16.py --workdir gs://BUCKET/superclip_b16

Expected (published, DataComp-1B, 512M samples seen at batch 16,384): ImageNet-1k zero-shot
top-1 63.5 (CLIP baseline 60.5), ImageNet-v2 55.2, COCO t->i / i->t R@1 31.3 / 47.8,
Flickr30k t->i / i->t R@1 56.9 / 75.6. Needs the shard-based data pipeline (data issue);
until then data.source='synthetic' smoke-tests the full-size model and sharding.
"""

from superclip_jax import config_defaults


def get_config(arg: str = ''):
  """arg: 'bs=N' changes the global batch size keeping 512M samples seen (the paper's batch study)."""
  c = config_defaults.default_config()
  c.model.variant = 'superclip'
  c.model.image = 'B/16'
  c.model.text = 'B'
  c.model.embed_dim = 512
  c.model.compute_dtype = 'bfloat16'
  c.model.remat = 'full'
  c.loss.contrastive = 'softmax'
  c.loss.cls_weight = 1.0
  c.loss.idf = 'online'
  c.data.global_batch_size = 16384
  c.data.num_train_samples = 512_000_000
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 500
  c.optim.weight_decay = 0.2
  c.mesh.shape = (1, -1, 1)  # FSDP over every device
  c.log_every_steps = 100
  for part in filter(None, arg.split(',')):
    key, value = part.split('=')
    if key != 'bs':
      raise ValueError(f'unknown config argument {key!r} (known: bs)')
    c.data.global_batch_size = int(value)
  return c
