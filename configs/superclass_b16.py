r"""SuperClass ViT-B/16: the token classifier alone, no text tower (docs/method.md).
Arguments as configs/superclip_b16.py (superclip_jax/recipes.py); with no text tower only
the linear probe applies (probe_train= and imagenet=).

  python -m superclip_jax.main --config configs/superclass_b16.py:data=/mnt/shards/datacomp,\
imagenet=/mnt/shards/imagenet_val,probe_train=/mnt/shards/imagenet_train_subset --workdir gs://BUCKET/superclass_b16

SuperClass's own B/16 recipe (x-cls/superclass) uses learning rate 5e-4, not CLIP's 1e-3; the
image tower has no contrastive projection (nothing would train it). Expected (published,
SuperClass paper): no zero-shot without a second LiT stage; ViT-B/16 linear probe 76.0 on
ImageNet-1k with IDF (75.6 without).
"""

from superclip_jax import config_defaults, recipes


def get_config(arg: str = ''):
  c = config_defaults.sibling_config(__file__, 'superclip_b16.py')
  c.model.variant = 'superclass'
  c.loss.contrastive = 'none'
  c.optim.learning_rate = 5e-4
  return recipes.apply(c, arg, 'configs/superclass_b16.py', text_tower=False)
