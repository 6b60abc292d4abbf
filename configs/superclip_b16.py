r"""SuperCLIP ViT-B/16, the paper's B-512M recipe (docs/method.md).

  python -m superclip_jax.main --config configs/superclip_b16.py:data=/mnt/shards/datacomp,\
imagenet=/mnt/shards/imagenet_val,imagenet_v2=/mnt/shards/imagenet_v2,coco=/mnt/shards/coco_test,\
flickr=/mnt/shards/flickr_test --workdir gs://BUCKET/superclip_b16

Arguments (superclip_jax/recipes.py): data= the training shards (required to train; not for
--dry_run), imagenet=, imagenet_v2=, coco=, flickr=, probe_train= the evaluation shards (each
evaluation runs when its shards are given, every eval_every=5000 steps and at the end), bs=N
the global batch keeping 512M samples seen (the paper's batch-size study). docs/data.md "Real data"
gives the commands that build every shard set from the raw downloads.

Memory (compiled for the targets on a CPU, docs/performance.md): with the default remat
('auto': 'dots' on GPUs and TPUs) the step fits an 8 x H200 node (96.8 of 129.7 GiB usable
per GPU), 4 nodes of 8 and TPU pods of 256 chips; on an 8 x H100 node (93.7 of 72.8 GiB)
add --config.model.remat=full (32.8 GiB) or --config.optim.accum_steps=2. Check any
machine first with --dry_run --topology (h100:8, h200:8, v5e:16x16, ...).

Expected (published, DataComp-1B, 512M samples seen at batch 16,384): ImageNet-1k zero-shot
top-1 63.5 (CLIP baseline 60.5), ImageNet-v2 55.2, COCO t->i / i->t R@1 31.3 / 47.8,
Flickr30k t->i / i->t R@1 56.9 / 75.6.
"""

from superclip_jax import config_defaults, recipes


def get_config(arg: str = ''):
  c = config_defaults.default_config()
  c.model.variant = 'superclip'
  c.model.image = 'B/16'
  c.model.text = 'B'
  c.model.embed_dim = 512
  c.model.compute_dtype = 'bfloat16'
  c.loss.contrastive = 'softmax'
  c.loss.token_weight = 1.0
  c.loss.idf = 'online'
  c.data.global_batch_size = 16384
  c.data.num_train_samples = 512_000_000
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 500
  c.optim.weight_decay = 0.2
  c.mesh.shape = (1, -1, 1)  # FSDP over every device
  c.log_every_steps = 100
  c.checkpoint.every_steps = 1000
  return recipes.apply(c, arg, 'configs/superclip_b16.py')
