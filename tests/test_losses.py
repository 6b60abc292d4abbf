"""Each loss against a plain NumPy reference written here (not calling the code under test)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superclip_jax import losses

SOT, EOT, PAD, V = 30, 31, 0, 32


def _log_softmax(x, axis):
  x = x - x.max(axis=axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def _unit(rng, shape):
  x = rng.normal(size=shape)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_softmax_contrastive_matches_numpy():
  rng = np.random.default_rng(0)
  a, b = _unit(rng, (6, 8)), _unit(rng, (6, 8))
  theta = np.log(1 / 0.07)
  logits = np.exp(theta) * a @ b.T
  i2t = -np.mean(np.diag(_log_softmax(logits, 1)))
  t2i = -np.mean(np.diag(_log_softmax(logits, 0)))
  got = losses.softmax_contrastive_loss(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), theta)
  np.testing.assert_allclose(got, (i2t + t2i) / 2, rtol=1e-5)


def test_sigmoid_contrastive_matches_numpy():
  rng = np.random.default_rng(1)
  a, b = _unit(rng, (5, 8)), _unit(rng, (5, 8))
  t, bias = np.log(10.0), -10.0
  logits = np.exp(t) * a @ b.T + bias
  ref = 0.0
  for i in range(5):
    for j in range(5):
      z = 1.0 if i == j else -1.0
      ref += np.log(1.0 / (1.0 + np.exp(-z * logits[i, j])))
  ref = -ref / 5
  got = losses.sigmoid_contrastive_loss(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), t, bias)
  np.testing.assert_allclose(got, ref, rtol=1e-5)


def _reference_bag(ids, mask_special):
  """The caption's distinct tokens, by the rule in docs/method.md, in plain Python."""
  ids = list(ids)
  if not mask_special:
    return set(ids)
  end = ids.index(EOT) if EOT in ids else len(ids)
  while end > 0 and ids[end - 1] == PAD and EOT not in ids:
    end -= 1
  return {t for t in ids[:end] if t != SOT}


def _reference_token_loss(logits, ids, w, mask_special):
  out = []
  for z, row in zip(logits, ids):
    y = np.zeros(V)
    for t in _reference_bag(row, mask_special):
      y[t] = 1.0
    s = (w * y).sum()
    if s == 0:
      out.append(0.0)
      continue
    q = w * y / s
    out.append(-(q * _log_softmax(z[None], 1)[0]).sum())
  return np.mean(out)


CAPTIONS = np.array(
  [
    [SOT, 5, 6, 5, 7, EOT, PAD, PAD, PAD, PAD],  # repeated token counts once
    [SOT, 0, 3, EOT, PAD, PAD, PAD, PAD, PAD, PAD],  # a genuine pad-id token ("!") inside the caption
    [SOT, 9, 9, 9, 9, 9, 9, 9, 9, EOT],  # full length
    [SOT, EOT, PAD, PAD, PAD, PAD, PAD, PAD, PAD, PAD],  # empty caption
    [SOT, 4, 8, 12, 16, 20, 24, 28, 29, 2],  # truncated without EOT
  ],
  np.int32,
)


@pytest.mark.parametrize('mask_special', [True, False])
def test_token_classification_matches_numpy(mask_special):
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(len(CAPTIONS), V)).astype(np.float32) * 3
  w = rng.uniform(0.1, 5.0, size=V).astype(np.float32)
  ids = jnp.asarray(CAPTIONS)
  valid = losses.caption_positions(ids, sot_id=SOT, eot_id=EOT, pad_id=PAD, mask_special=mask_special)
  bag = losses.first_occurrences(ids, valid)
  got = losses.token_classification_loss(jnp.asarray(logits), ids, bag, jnp.asarray(w))
  np.testing.assert_allclose(got, _reference_token_loss(logits, CAPTIONS, w, mask_special), rtol=1e-5)


def test_token_bag_and_document_frequency():
  ids = jnp.asarray(CAPTIONS)
  valid = losses.caption_positions(ids, sot_id=SOT, eot_id=EOT, pad_id=PAD, mask_special=True)
  bag = np.asarray(losses.first_occurrences(ids, valid))
  for row, marks in zip(CAPTIONS, bag):
    assert sorted(row[marks].tolist()) == sorted(_reference_bag(row, True))
  df = np.asarray(losses.document_frequency(ids, jnp.asarray(bag), V))
  expected = np.zeros(V, int)
  for row in CAPTIONS:
    for t in _reference_bag(row, True):
      expected[t] += 1
  np.testing.assert_array_equal(df, expected)
  # The reference mode counts SOT, EOT and padding too.
  ref_bag = losses.first_occurrences(ids, losses.caption_positions(ids, sot_id=SOT, eot_id=EOT, pad_id=PAD, mask_special=False))
  df_ref = np.asarray(losses.document_frequency(ids, ref_bag, V))
  assert df_ref[SOT] == len(CAPTIONS) and df_ref[EOT] == 4 and df_ref[PAD] == 3


def test_special_tokens_only_caption_gives_zero_loss_and_finite_grads():
  ids = jnp.asarray([[SOT, EOT] + [PAD] * 8] * 3, jnp.int32)
  logits = jnp.asarray(np.random.default_rng(3).normal(size=(3, V)), jnp.float32)
  w = jnp.ones((V,), jnp.float32)

  def f(z):
    valid = losses.caption_positions(ids, sot_id=SOT, eot_id=EOT, pad_id=PAD, mask_special=True)
    return losses.token_classification_loss(z, ids, losses.first_occurrences(ids, valid), w)

  value, grad = jax.value_and_grad(f)(logits)
  assert float(value) == 0.0
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad) == 0)
  # Zero weights on every present token (IDF of tokens in every caption) behave the same.
  valid = losses.caption_positions(jnp.asarray(CAPTIONS), sot_id=SOT, eot_id=EOT, pad_id=PAD, mask_special=True)
  zero = losses.token_classification_loss(
    logits[:1].repeat(5, 0),
    jnp.asarray(CAPTIONS),
    losses.first_occurrences(jnp.asarray(CAPTIONS), valid),
    jnp.zeros((V,), jnp.float32),
  )
  assert float(zero) == 0.0


def test_gradients_are_finite():
  rng = np.random.default_rng(4)
  a = jnp.asarray(_unit(rng, (4, 8)), jnp.float32)
  b = jnp.asarray(_unit(rng, (4, 8)), jnp.float32)
  ids = jnp.asarray(CAPTIONS[:4])
  bag = losses.first_occurrences(ids, losses.caption_positions(ids, sot_id=SOT, eot_id=EOT, pad_id=PAD, mask_special=True))

  targets = {'token_ids': ids, 'bag': bag, 'token_weights': jnp.ones((V,))}
  terms = losses.LOSS_TERMS

  def f(a, b, scale, bias, z):
    out = {'image_embedding': a, 'text_embedding': b, 'logit_scale': scale, 'logit_bias': bias, 'token_logits': z}
    soft = losses.compute_terms(out, targets, terms, losses.LossOptions('softmax'))
    sig = losses.compute_terms(out, targets, terms, losses.LossOptions('sigmoid'))
    return losses.total_loss(soft, {'token_loss': 1.0}) + sig['contrastive_loss']

  grads = jax.grad(f, argnums=(0, 1, 2, 3, 4))(
    a, b, jnp.float32(2.66), jnp.float32(-10.0), jnp.asarray(rng.normal(size=(4, V)), jnp.float32)
  )
  assert all(np.all(np.isfinite(g)) for g in grads)


def test_total_is_weighted_sum_of_the_terms():
  parts = {'contrastive_loss': jnp.float32(2.0), 'token_loss': jnp.float32(3.0)}
  assert float(losses.total_loss(parts, {'token_loss': 0.5})) == pytest.approx(3.5)


def test_registry_gives_each_variant_its_terms_and_weights():
  from superclip_jax import config_defaults
  from superclip_jax.models.superclip import ModelConfig

  config = config_defaults.default_config()
  config.loss.token_weight = 0.25
  names = lambda cfg: [t.name for t in losses.active_terms(cfg)]
  assert names(ModelConfig(variant='superclip')) == ['contrastive_loss', 'token_loss']
  assert names(ModelConfig(variant='clip')) == ['contrastive_loss']
  assert names(ModelConfig(variant='superclass', text=None, contrastive='none')) == ['token_loss']
  assert losses.term_weights(config, ModelConfig()) == {'contrastive_loss': 1.0, 'token_loss': 0.25}
