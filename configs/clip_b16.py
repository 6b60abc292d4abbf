r"""The CLIP ViT-B/16 baseline: the B-512M recipe with no token classifier (docs/method.md).
Arguments as configs/superclip_b16.py (superclip_jax/recipes.py).

  python -m superclip_jax.main --config configs/clip_b16.py:data=/mnt/shards/datacomp,\
imagenet=/mnt/shards/imagenet_val --workdir gs://BUCKET/clip_b16

Expected (published, DataComp-1B, 512M samples seen at batch 16,384): ImageNet-1k zero-shot
top-1 60.5, ImageNet-v2 53.0, COCO t->i / i->t R@1 29.0 / 46.7, Flickr30k 54.5 / 73.3.
"""

from superclip_jax import config_defaults


def get_config(arg: str = ''):
  return config_defaults.clip_baseline(config_defaults.sibling_config(__file__, 'superclip_b16.py', arg))
