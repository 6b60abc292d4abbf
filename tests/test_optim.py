"""Weight-decay mask, schedule, freezing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superclip_jax import config_defaults, optim
from superclip_jax.models import presets
from superclip_jax.models.superclip import ModelConfig, ModelDef

MU = ModelConfig(
  image=presets.IMAGE_TOWERS['mu/8'],
  text=presets.TEXT_TOWERS['mu'],
  embed_dim=32,
  image_size=16,
  vocab_size=64,
  context_length=12,
  eot_id=63,
)

# Exactly the leaves that get weight decay: matrices, not biases, norms or the temperature.
DECAYED = {
  'image_tower/conv1',
  'image_tower/positional_embedding',
  'image_tower/proj',
  'image_tower/transformer/attn_in/kernel',
  'image_tower/transformer/attn_out/kernel',
  'image_tower/transformer/mlp_fc/kernel',
  'image_tower/transformer/mlp_proj/kernel',
  'text_tower/token_embedding',
  'text_tower/positional_embedding',
  'text_tower/text_projection',
  'text_tower/transformer/attn_in/kernel',
  'text_tower/transformer/attn_out/kernel',
  'text_tower/transformer/mlp_fc/kernel',
  'text_tower/transformer/mlp_proj/kernel',
  'token_classifier/head/kernel',
}


def _flat(tree):
  names = jax.tree.leaves(optim.path_names(tree))
  return dict(zip(names, jax.tree.leaves(tree)))


def test_weight_decay_mask_selects_exactly_the_matrices():
  md = ModelDef(MU)
  mask = _flat(optim.weight_decay_mask(md.shapes(), md.logical_axes()))
  assert {k for k, v in mask.items() if v} == DECAYED
  # Stacked per-layer LayerNorm scales are 2-D arrays but are not decayed.
  assert mask['image_tower/transformer/ln_1/scale'] is False
  assert mask['logit_scale'] is False and mask['image_tower/class_embedding'] is False


def _config(**optim_overrides):
  c = config_defaults.default_config()
  c.optim.update(optim_overrides)
  return c


def test_decay_applies_only_to_masked_leaves():
  md = ModelDef(MU)
  params = md.init()
  tx, _ = optim.make_optimizer(_config(learning_rate=0.1, warmup_steps=0, weight_decay=0.5), params, md.logical_axes(), 10)
  state = tx.init(params)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, state, params)
  for name, u in _flat(updates).items():
    p = _flat(params)[name]
    if name in DECAYED:
      np.testing.assert_allclose(u, -0.1 * 0.5 * p, rtol=1e-5, atol=1e-8)
    else:
      assert np.all(np.asarray(u) == 0), name


def test_schedule_warmup_then_cosine_to_end():
  sched = optim.learning_rate_schedule(_config(learning_rate=1e-3, warmup_steps=10), 110)
  assert float(sched(0)) == 0.0
  assert float(sched(5)) == pytest.approx(5e-4)
  assert float(sched(10)) == pytest.approx(1e-3)
  assert float(sched(60)) == pytest.approx(5e-4, rel=1e-3)
  assert float(sched(110)) == pytest.approx(0.0, abs=1e-9)


def test_freezing_by_regex_and_clipping():
  md = ModelDef(MU)
  params = md.init()
  tx, _ = optim.make_optimizer(
    _config(frozen='image_tower/.*', warmup_steps=0, grad_clip_norm=1.0), params, md.logical_axes(), 10
  )
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  for name, u in _flat(updates).items():
    assert np.all(np.asarray(u) == 0) == name.startswith('image_tower/'), name
  with pytest.raises(ValueError, match='matches no parameter'):
    optim.make_optimizer(_config(frozen='nothing/.*'), params, md.logical_axes(), 10)
