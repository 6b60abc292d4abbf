"""The jitted train step on 8 fake CPU devices equals the single-device step.

Meshes (8,1,1) (pure data parallel), (2,4,1) (data + FSDP) and (2,2,2) (data + FSDP +
tensor parallel) must give the same losses, parameters and IDF counts as one device,
up to float32 reduction-order noise.
"""

import copy

import jax
import numpy as np
import pytest

from superclip_jax import config_defaults, idf, run_setup, sharding, train_state, train_step
from superclip_jax.data import synthetic

STEPS = 3
BATCH = 16


def small_config(**loss):
  c = config_defaults.default_config()
  c.model.image, c.model.text = 'mu/8', 'mu'
  c.model.embed_dim, c.model.image_size, c.model.context_length = 32, 16, 16
  c.model.vocab_size, c.tokenizer.sot_id, c.tokenizer.eot_id = 64, 62, 63
  c.loss.update(loss)
  c.data.global_batch_size = BATCH
  c.optim.warmup_steps = 0
  # The attention key bias has an exactly zero gradient (softmax is shift-invariant), so
  # Adam with eps=1e-6 turns reduction-order noise of ~1e-9 into full lr-sized steps of
  # random sign. eps=1e-3 keeps such noise at noise level; every real gradient here is
  # far above it, so a sharding bug still moves parameters by ~lr.
  c.optim.eps = 1e-3
  c.total_steps = STEPS
  return c


def small_data(seed=1):
  """Synthetic image-text batches of small_config's shapes."""
  return synthetic.SyntheticImageText(image_size=16, vocab_size=64, context_length=16, sot_id=62, eot_id=63, pad_id=0, seed=seed)


def jitted_step(config, mesh_shape, devices=None, steps=STEPS):
  """(run set-up, jitted train step) of config on a mesh for `steps` steps, set up as train.run sets a run up."""
  config = copy.deepcopy(config)
  config.mesh.shape, config.total_steps = mesh_shape, steps
  setup = run_setup.prepare(config, devices=devices, training=False)
  step_fn, _ = train_step.jit_train_step(
    setup.model_def, setup.tx, setup.schedule, setup.config, setup.shardings, setup.mesh, setup.rules
  )
  return setup, step_fn


def fresh_state(setup):
  """(initial train state, its shardings) of a run set-up."""
  return train_state.create_train_state(setup.model_def, setup.tx, setup.idf_counts, setup.mesh, setup.rules)


def run_steps(config, mesh_shape, devices, steps=STEPS):
  """Train `steps` steps on a mesh; returns (losses, params, idf counts, state shardings)."""
  setup, step_fn = jitted_step(config, mesh_shape, devices, steps)
  mesh = setup.mesh
  state, shardings = fresh_state(setup)
  data = small_data()
  losses = []
  with jax.set_mesh(mesh):
    for s in range(steps):
      rows = sharding.local_rows(BATCH, mesh)
      state, m = step_fn(state, sharding.global_batch(data.batch(s, BATCH, rows), mesh, BATCH))
      losses.append({k: float(v) for k, v in jax.device_get(m.compute()).items()})
  return losses, jax.device_get(state.params), state.idf_counts, shardings


@pytest.fixture(scope='module')
def single_device():
  return run_steps(small_config(), (1, 1, 1), jax.devices()[:1])


@pytest.mark.parametrize('mesh_shape', [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8)])
def test_sharded_step_equals_single_device(single_device, mesh_shape):
  assert jax.device_count() == 8
  ref_losses, ref_params, ref_counts, _ = single_device
  losses, params, counts, shardings = run_steps(small_config(), mesh_shape, jax.devices())
  for ref, got in zip(ref_losses, losses):
    for key in ('loss', 'contrastive_loss', 'token_loss', 'grad_norm'):
      assert got[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), key
  # One step moves a parameter by up to lr = 1e-3; agreement to 2e-6 rules out a wrong gradient.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6), ref_params, params)
  assert idf.to_ints(counts)[0] == STEPS * BATCH
  np.testing.assert_array_equal(idf.to_ints(counts)[1], idf.to_ints(ref_counts)[1])
  # The model really is partitioned the way the mesh says.
  spec = shardings.params['image_tower']['transformer']['mlp_fc']['kernel'].spec
  expected = {
    (8, 1, 1): (None, None, None),
    (2, 4, 1): (None, 'fsdp', None),
    (2, 2, 2): (None, 'fsdp', 'tensor'),
    (1, 1, 8): (None, None, 'tensor'),
  }[mesh_shape]
  assert tuple(spec) + (None,) * (3 - len(spec)) == expected
  # Adam's moments are sharded like their parameter.
  moments = [
    sh.spec
    for path, sh in jax.tree_util.tree_leaves_with_path(shardings.opt_state)
    if jax.tree_util.keystr(path).endswith("['image_tower']['transformer']['mlp_fc']['kernel']")
  ]
  assert len(moments) == 2 and all(m == spec for m in moments)


def test_online_idf_after_steps_matches_float64():
  config = small_config()
  _, _, counts, _ = run_steps(config, (1, 1, 1), jax.devices()[:1], steps=2)
  data = small_data()
  df = np.zeros(64, np.int64)
  for s in range(2):
    for row in data.batch(s, BATCH)['text']:
      row = row.tolist()
      for t in set(row[1 : row.index(63)]):
        df[t] += 1
  n, got_df = idf.to_ints(counts)
  assert n == 2 * BATCH
  np.testing.assert_array_equal(got_df, df)
  w = np.asarray(idf.weights(counts))
  np.testing.assert_allclose(w, np.log((n + 1.0) / (df + 1.0)), rtol=1e-6)


def test_logit_scale_clamp_holds():
  # A huge learning rate drives the temperature past ln 100 within a step or two.
  config = small_config(logit_scale_init=4.6)
  config.optim.learning_rate = 5.0
  config.optim.weight_decay = 0.0
  _, params, _, _ = run_steps(config, (1, 1, 1), jax.devices()[:1], steps=2)
  assert 0.0 <= float(params['logit_scale']) <= np.log(100.0) + 1e-6
  config = small_config(logit_scale_init=0.05)
  config.optim.learning_rate = 5.0
  _, params, _, _ = run_steps(config, (1, 1, 1), jax.devices()[:1], steps=2)
  assert 0.0 <= float(params['logit_scale']) <= np.log(100.0) + 1e-6


def test_other_variants_and_idf_modes_step(tmp_path):
  for overrides in [dict(contrastive='sigmoid'), dict(idf='none'), dict(mask_special_tokens=False)]:
    losses, _, _, _ = run_steps(small_config(**overrides), (2, 2, 2), jax.devices(), steps=2)
    assert all(np.isfinite(v) for row in losses for v in row.values())
  stats = tmp_path / 'idf.npz'
  np.savez(stats, doc_freq=np.arange(64), num_samples=1000)
  config = small_config(idf='offline', idf_offline_stats=str(stats))
  _, _, counts, _ = run_steps(config, (1, 1, 1), jax.devices()[:1], steps=2)
  assert idf.to_ints(counts)[0] == 1000  # offline counts are fixed
  config.model.variant = 'superclass'
  config.loss.contrastive = 'none'
  losses, params, _, _ = run_steps(config, (2, 2, 2), jax.devices(), steps=2)
  assert 'text_tower' not in params and np.isfinite(losses[-1]['token_loss'])
