"""Claims checked at the jitted train step itself on the 8 fake CPU devices: the long caption feeds only the token
classifier, the ring contrastive loss (loss.chunked) equals the plain one, and the SuperClass recipe's learning rate is
what the optimizer applies."""

import os

import jax
import numpy as np
import pytest
from test_sharded_step import BATCH, fresh_state, jitted_step, small_config, small_data

from superclip_jax import config_defaults, sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Runner:
  """A config's real state and jitted step on an (8, 1, 1) mesh, set up as a training run sets them up
  (run_setup.prepare); each call starts from the same initial state."""

  def __init__(self, config, total_steps=3):
    setup, self.step_fn = jitted_step(config, (8, 1, 1), steps=total_steps)
    self.mesh, self.schedule = setup.mesh, setup.schedule
    self.make_state = lambda: fresh_state(setup)

  def __call__(self, local_batches, state=None):
    """(metrics of each step, final state) over the batches (numpy, global), from a fresh state unless given."""
    state = state if state is not None else self.make_state()[0]
    out = []
    with jax.set_mesh(self.mesh):
      for b in local_batches:
        state, m = self.step_fn(state, sharding.global_batch(b, self.mesh, BATCH))
        out.append({k: float(v) for k, v in jax.device_get(m.compute()).items()})
    return out, state

  def compiled_text(self, local_batch) -> str:
    """The optimized program of one step on this batch (what XLA runs)."""
    with jax.set_mesh(self.mesh):
      batch = sharding.global_batch(local_batch, self.mesh, BATCH)
      return self.step_fn.lower(self.make_state()[0], batch).compile().as_text()


def _batches(n, seed=1, **kw):
  data = small_data(seed)
  rows = [(0, BATCH)]
  return [dict(data.batch(s, BATCH, rows), **kw) for s in range(n)]


def _long_ids(seed, length=24):
  rng = np.random.default_rng(seed)
  ids = np.zeros((BATCH, length), np.int32)
  for r in range(BATCH):
    k = int(rng.integers(3, length - 2))
    ids[r, : k + 2] = [62, *rng.integers(1, 62, k), 63]
  return ids


def test_long_caption_feeds_only_the_token_loss():
  config = small_config()
  config.data.long_captions, config.data.long_context_length = True, 24
  run = Runner(config)
  base = _batches(1)[0]
  a = run([dict(base, token_ids=_long_ids(5))])[0][0]
  other_long = run([dict(base, token_ids=_long_ids(6))])[0][0]
  other_short = dict(base, text=_batches(1, seed=9)[0]['text'], token_ids=_long_ids(5))
  b = run([other_short])[0][0]
  # Only the long caption changed: the token loss moves, the contrastive loss is bit for bit the same.
  assert other_long['contrastive_loss'] == a['contrastive_loss'] and abs(other_long['token_loss'] - a['token_loss']) > 1e-3
  # Only the short caption changed: the contrastive loss moves, the token loss is the same.
  assert b['token_loss'] == a['token_loss'] and abs(b['contrastive_loss'] - a['contrastive_loss']) > 1e-3


def test_chunked_ring_loss_in_the_real_step_equals_the_plain_loss():
  batches = _batches(3)
  plain, plain_state = Runner(small_config())(batches)
  ring_runner = Runner(small_config(chunked=True))
  ring, ring_state = ring_runner(batches)
  # The ring really runs: its embeddings pass between neighbours (collective-permute), which the plain loss never does.
  assert 'collective-permute' in ring_runner.compiled_text(batches[0])
  assert 'collective-permute' not in Runner(small_config()).compiled_text(batches[0])
  for p, r in zip(plain, ring):
    for key in ('loss', 'contrastive_loss', 'token_loss', 'grad_norm'):
      assert r[key] == pytest.approx(p[key], rel=1e-5, abs=1e-6), (key, p, r)
  # The updates (hence the gradients) agree: parameters after 3 steps, to float32 reduction noise.
  for (path, p), r in zip(jax.tree_util.tree_leaves_with_path(plain_state.params), jax.tree.leaves(ring_state.params)):
    np.testing.assert_allclose(np.asarray(r), np.asarray(p), atol=2e-5, err_msg=jax.tree_util.keystr(path))


def test_superclass_recipe_applies_its_learning_rate():
  # configs/superclass_b16.py cites SuperClass's B/16 recipe (x-cls/superclass): AdamW peak lr 5e-4 (CLIP's 1e-3 in
  # METHOD.md), the 500 warm-up steps and cosine of the reference recipe. The recipe's optim section unchanged, its
  # model shrunk: the real optimizer's schedule, the step's logged rate, and the size of the first update it applies.
  config = config_defaults.load_config_file(os.path.join(ROOT, 'configs', 'superclass_b16.py'))
  m = config.model
  m.image, m.image_size, m.compute_dtype, m.remat = 'mu/8', 16, 'float32', 'none'
  m.vocab_size, config.tokenizer.sot_id, config.tokenizer.eot_id = 64, 62, 63
  m.context_length = 16
  assert config.data.global_batch_size == 16_384 and config.data.num_train_samples == 512_000_000
  assert config.optim.warmup_steps == 500
  total = 512_000_000 // 16_384  # the recipe's 31,250 steps
  config.data.global_batch_size = BATCH
  run = Runner(config, total_steps=total)
  assert float(run.schedule(250)) == pytest.approx(2.5e-4) and float(run.schedule(500)) == pytest.approx(5e-4)
  assert float(run.schedule(500 + (total - 500) // 2)) == pytest.approx(2.5e-4, rel=1e-3) and float(run.schedule(total)) < 1e-9
  state, _ = run.make_state()
  import optax

  def at_500(x):
    return jax.device_put(np.asarray(500, np.asarray(x).dtype), x.sharding)

  # Step 500 for the step counter and the schedule's own count in the optimizer state (Adam's moments stay fresh).
  def schedule_at_500(node):
    return node._replace(count=at_500(node.count)) if isinstance(node, optax.ScaleByScheduleState) else node

  opt_state = jax.tree.map(schedule_at_500, state.opt_state, is_leaf=lambda n: isinstance(n, optax.ScaleByScheduleState))
  state = state.replace(step=at_500(state.step), opt_state=opt_state)
  before = jax.device_get(state.params)
  metrics, after = run(_batches(1), state)
  assert metrics[0]['learning_rate'] == pytest.approx(5e-4)
  # Adam's first update of a parameter with no weight decay (a bias) is lr * sign(gradient): 5e-4 per element.
  bias = np.asarray(jax.device_get(after.params)['token_classifier']['head']['bias'])
  delta = np.abs(bias - before['token_classifier']['head']['bias'])
  assert np.median(delta) == pytest.approx(5e-4, rel=1e-2)
