r"""SuperSigLIP ViT-B/16: the sigmoid contrastive loss plus the token classifier (docs/method.md).
Arguments as configs/superclip_b16.py (superclip_jax/recipes.py).

  python -m superclip_jax.main --config configs/supersiglip_b16.py:data=/mnt/shards/datacomp,\
imagenet=/mnt/shards/imagenet_val --workdir gs://BUCKET/supersiglip_b16

Expected (published, DataComp-1B, 512M samples seen at batch 16,384): ImageNet-1k zero-shot
top-1 64.1 (SigLIP baseline 60.4), ImageNet-v2 55.9, COCO t->i / i->t R@1 32.5 / 48.6,
Flickr30k 56.8 / 75.9.
"""

from superclip_jax import config_defaults


def get_config(arg: str = ''):
  c = config_defaults.sibling_config(__file__, 'superclip_b16.py', arg)
  c.loss.contrastive = 'sigmoid'  # t' = ln 10, b = -10 at init
  return c
