r"""SuperCLIP ViT-L/16, the paper's L-512M recipe (docs/method.md).
Arguments as configs/superclip_b16.py (superclip_jax/recipes.py).

  python -m superclip_jax.main --config configs/superclip_l16.py:data=/mnt/shards/datacomp,\
imagenet=/mnt/shards/imagenet_val --workdir gs://BUCKET/superclip_l16

Expected (published, DataComp-1B, 512M samples seen at batch 16,384): ImageNet-1k zero-shot
top-1 70.1 (CLIP baseline 66.1), ImageNet-v2 62.5, COCO t->i / i->t R@1 35.9 / 52.2,
Flickr30k t->i / i->t R@1 62.4 / 79.3.

Memory (docs/performance.md): with the default remat ('dots' on GPUs and TPUs) the step
fits 4 nodes of 8 H200s (53.7 GiB per GPU) and TPU pods of 256 chips; on one 8-GPU node
(211 GiB per GPU with 'dots') add --config.model.remat=full (53 GiB: an H200 node, or an
H100 node at 53.3 of 72.8 GiB usable).
"""

from superclip_jax import config_defaults


def get_config(arg: str = ''):
  c = config_defaults.sibling_config(__file__, 'superclip_b16.py', arg)
  c.model.image = 'L/16'
  c.model.text = 'L'
  c.model.embed_dim = 768
  return c
