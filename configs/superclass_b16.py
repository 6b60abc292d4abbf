r"""SuperClass ViT-B/16: the token classifier alone, no text tower (docs/method.md).

  python -m superclip_jax.main --config configs/superclass_b16.py --workdir gs://BUCKET/superclass_b16

Expected (published, SuperClass paper): no zero-shot without a second LiT stage; ViT-B/16
linear probe 76.0 on ImageNet-1k with IDF (75.6 without).
"""

from superclip_jax import config_defaults


def get_config(arg: str = ''):
  c = config_defaults.sibling_config(__file__, 'superclip_b16.py', arg)
  c.model.variant = 'superclass'
  c.loss.contrastive = 'none'
  return c
