"""What the paper's recipe configs share: their data arguments and their evaluations.

  configs/superclip_b16.py:data=DIR[,DIR2],imagenet=DIR,imagenet_v2=DIR,coco=DIR,flickr=DIR,probe_train=DIR,bs=N

Training shards are required to train (not for --dry_run); each evaluation is configured
when its shards are given (built with python -m superclip_jax.data.build, see docs/data.md):
  imagenet     ImageNet-1k zero-shot with OpenAI's 1,000 class names and 80 templates
  imagenet_v2  the same on ImageNet-v2
  coco         COCO 5k Karpathy test retrieval (5 captions per image)
  flickr       Flickr30k 1k Karpathy test retrieval
  probe_train  a linear probe fit on these shards (e.g. an ImageNet train subset), tested on imagenet
Evaluations run every `eval_every` steps (default 5,000: six times over the 31,250 steps) and at the end.
"""

from __future__ import annotations

import ml_collections

from superclip_jax import config_defaults
from superclip_jax.evals.registry import evaluator

ARGS = {
  'data': str,
  'imagenet': str,
  'imagenet_v2': str,
  'coco': str,
  'flickr': str,
  'probe_train': str,
  'bs': int,
  'eval_every': int,
}
EVAL_EVERY = 5000


def apply(config: ml_collections.ConfigDict, arg: str, where: str, text_tower: bool = True) -> ml_collections.ConfigDict:
  """Set the training shards, the batch size (keeping the samples seen) and the evaluations from `arg`."""
  args = config_defaults.parse_config_args(arg, ARGS, where)
  config.data.kind = 'shards'
  config.data.shards = args.get('data', '')
  if 'bs' in args:
    config.data.global_batch_size = args['bs']
  every = args.get('eval_every', EVAL_EVERY)
  zeroshot = dict(kind='zeroshot', class_names='imagenet', templates='imagenet', every_steps=every, batch_size=1024)
  if text_tower and args.get('imagenet'):
    config.evals.imagenet = evaluator(shards=args['imagenet'], **zeroshot)
  if text_tower and args.get('imagenet_v2'):
    config.evals.imagenet_v2 = evaluator(shards=args['imagenet_v2'], **zeroshot)
  for name in ('coco', 'flickr'):
    if text_tower and args.get(name):
      config.evals[name] = evaluator(kind='retrieval', shards=args[name], every_steps=every, batch_size=1024)
  if args.get('probe_train') and args.get('imagenet'):
    config.evals.linear_probe = evaluator(
      kind='linear_probe', shards=args['imagenet'], train_shards=args['probe_train'], every_steps=every, batch_size=1024
    )
  return config
