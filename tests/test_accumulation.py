"""Gradient accumulation (optim.accum_steps = K) gives the full batch's gradient: every
negative is kept, and logit_scale gets its exact gradient (not K times it)."""

import jax
import numpy as np
import pytest
from test_sharded_step import small_config, small_data

from superclip_jax import optim, sharding, train_state, train_step
from superclip_jax.errors import UserError
from superclip_jax.models.superclip import ModelConfig, ModelDef

BATCH = 32


def _grads(config, mesh_shape):
  mesh = sharding.make_mesh(mesh_shape)
  rules = tuple(tuple(r) for r in config.mesh.rules)
  model_def = ModelDef(ModelConfig.from_config(config), seed=0)
  tx, _ = optim.make_optimizer(config, model_def.shapes(), model_def.logical_axes(), 10)
  counts = train_state.initial_idf_counts(config, model_def.cfg.variant)
  state, shardings = train_state.create_train_state(model_def, tx, counts, mesh, rules)
  data = small_data(seed=2)
  batch = sharding.global_batch(data.batch(0, BATCH, sharding.local_rows(BATCH, mesh)), mesh, BATCH)
  loss_fn = train_step.make_loss_fn(model_def, config, rules)

  def grads(state, batch):
    with sharding.use_rules(rules):
      batch = {k: sharding.constrain(v, ('batch',) + (None,) * (v.ndim - 1)) for k, v in batch.items()}
      targets, _ = train_step._token_targets(config, model_def.cfg, state, batch)  # pylint: disable=protected-access
      return jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, targets)

  with jax.set_mesh(mesh):
    (total, parts), g = jax.jit(grads)(state, batch)
  return float(total), jax.device_get(g)


@pytest.mark.parametrize('contrastive', ['softmax', 'sigmoid'])
@pytest.mark.parametrize('mesh_shape', [(2, 2, 2), (8, 1, 1)])
def test_accumulated_gradient_equals_full_batch(contrastive, mesh_shape):
  full = small_config(contrastive=contrastive)
  full.data.global_batch_size = BATCH
  ref_loss, ref = _grads(full, mesh_shape)
  for k in (2, 4):
    acc = small_config(contrastive=contrastive)
    acc.data.global_batch_size = BATCH
    acc.optim.accum_steps = k
    loss, got = _grads(acc, mesh_shape)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    # logit_scale's gradient is exact, not K times it.
    np.testing.assert_allclose(got['logit_scale'], ref['logit_scale'], rtol=1e-5, atol=1e-7)
    # Every other leaf, to float32 reduction-order noise relative to its own scale.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max()), got, ref)


def test_accum_steps_must_divide_each_shard():
  config = small_config()
  config.data.global_batch_size = BATCH
  config.optim.accum_steps = 3
  with pytest.raises(UserError, match='accum_steps=3 does not divide'):
    train_step.check_accumulation(config, sharding.make_mesh((8, 1, 1)), config.mesh.rules)
