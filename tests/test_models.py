"""Towers and the token classifier: placement, pooling, init, variants, precision and remat switches."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from superclip_jax.models import presets
from superclip_jax.models.superclip import ModelConfig, ModelDef, SuperCLIP, TokenClassifier

MU = ModelConfig(
  image=presets.IMAGE_TOWERS['mu/8'],
  text=presets.TEXT_TOWERS['mu'],
  embed_dim=32,
  image_size=16,
  vocab_size=64,
  context_length=12,
  eot_id=63,
)


def _batch(b=3, cfg=MU):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (b, cfg.image_size, cfg.image_size, 3)).astype(np.uint8)
  text = rng.integers(1, 60, (b, cfg.context_length)).astype(np.int32)
  text[:, 0] = 62
  text[:, 5] = cfg.eot_id
  text[:, 6:] = 0
  return jnp.asarray(images), jnp.asarray(text)


def test_pooling_excludes_cls_and_averages_every_patch():
  width = 8
  head = TokenClassifier(width, 16, jnp.float32, rngs=nnx.Rngs(0))
  tokens = np.zeros((1, 5, width), np.float32)
  tokens[0, 0] = 1000.0  # CLS: must not leak into the pooled feature
  tokens[0, 1] = 4.0  # the first patch: the reference dropped it until 2025-12-17
  tokens[0, 2:] = np.arange(3)[:, None]
  pooled = np.asarray(head.pool(jnp.asarray(tokens)))
  np.testing.assert_allclose(pooled, np.full((1, width), (4.0 + 0 + 1 + 2) / 4))
  # And the logits are LayerNorm(pooled) @ W + b.
  tokens = np.random.default_rng(1).normal(size=(2, 5, width)).astype(np.float32)
  mean = tokens[:, 1:].mean(1)
  normed = (mean - mean.mean(-1, keepdims=True)) / np.sqrt(mean.var(-1, keepdims=True) + 1e-5)
  ref = normed @ np.asarray(head.head.kernel[...]) + np.asarray(head.head.bias[...])
  np.testing.assert_allclose(head(jnp.asarray(tokens)), ref, rtol=1e-4, atol=1e-5)


def test_classifier_sees_patch_tokens_after_ln_post_and_contrastive_sees_cls():
  model = SuperCLIP(MU, rngs=nnx.Rngs(0))
  images, text = _batch()
  out = model(images, text)
  tokens = model.image_tower.tokens(images)
  np.testing.assert_allclose(out['token_logits'], model.token_classifier(tokens), rtol=1e-5, atol=1e-5)
  cls_embedding = tokens[:, 0] @ model.image_tower.proj[...]
  cls_embedding /= jnp.linalg.norm(cls_embedding, axis=-1, keepdims=True)
  np.testing.assert_allclose(out['image_embedding'], cls_embedding, rtol=1e-5, atol=1e-5)
  # ln_post output: zero mean per token (the LayerNorm's bias is 0 at init).
  np.testing.assert_allclose(np.asarray(tokens).mean(-1), 0.0, atol=1e-5)


def test_classifier_init_matches_method():
  width, vocab = 256, 4096
  head = TokenClassifier(width, vocab, jnp.float32, rngs=nnx.Rngs(0))
  kernel = np.asarray(head.head.kernel[...])
  assert kernel.shape == (width, vocab)
  assert abs(kernel.std() - width**-0.5) < 0.01 * width**-0.5
  assert abs(kernel.mean()) < 1e-3
  assert np.all(np.asarray(head.head.bias[...]) == 0)


def test_text_tower_pools_at_first_eot_and_is_causal():
  model = SuperCLIP(MU, rngs=nnx.Rngs(0))
  images, text = _batch()
  base = model.encode_text(text)
  # Tokens after EOT cannot change the embedding (causal attention, EOT pooling).
  changed = text.at[:, 7:].set(17)
  np.testing.assert_allclose(model.encode_text(changed), base, rtol=1e-5, atol=1e-6)
  # A token before EOT does.
  assert not np.allclose(model.encode_text(text.at[:, 2].set(17)), base, atol=1e-4)


@pytest.mark.parametrize(
  'variant,parts',
  [
    ('superclip', {'image_embedding', 'text_embedding', 'token_logits', 'logit_scale'}),
    ('clip', {'image_embedding', 'text_embedding', 'logit_scale'}),
    ('superclass', {'token_logits'}),
  ],
)
def test_variants(variant, parts):
  cfg = dataclasses.replace(
    MU,
    variant=variant,
    text=None if variant == 'superclass' else MU.text,
    contrastive='none' if variant == 'superclass' else 'softmax',
  )
  model = SuperCLIP(cfg, rngs=nnx.Rngs(0))
  images, text = _batch()
  out = model(images, text)
  assert set(out) == parts
  if variant == 'superclass':
    # No text tower and no contrastive projection: every parameter is trained.
    assert model.text_tower is None and model.image_tower.proj is None
    assert 'proj' not in ModelDef(cfg).shapes()['image_tower']
  if 'token_logits' in out:
    assert out['token_logits'].shape == (3, MU.vocab_size)


def test_sigmoid_variant_has_bias_and_scale():
  model = SuperCLIP(dataclasses.replace(MU, contrastive='sigmoid'), rngs=nnx.Rngs(0))
  out = model(*_batch())
  assert float(out['logit_scale']) == pytest.approx(np.log(10.0))
  assert float(out['logit_bias']) == pytest.approx(-10.0)


def test_embeddings_are_unit_norm_and_quick_gelu_changes_output():
  images, text = _batch()
  a = SuperCLIP(MU, rngs=nnx.Rngs(0))
  b = SuperCLIP(dataclasses.replace(MU, quick_gelu=True), rngs=nnx.Rngs(0))
  ea, eb = a.encode_image(images), b.encode_image(images)
  np.testing.assert_allclose(np.linalg.norm(ea, axis=-1), 1.0, rtol=1e-5)
  assert not np.allclose(ea, eb, atol=1e-4)


def test_bfloat16_compute_keeps_float32_params_and_stays_close():
  images, text = _batch()
  f32 = ModelDef(MU)
  bf16 = ModelDef(dataclasses.replace(MU, compute_dtype='bfloat16'))
  params = f32.init()
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  a = f32.bind(params)(images, text)
  b = bf16.bind(params)(images, text)
  assert b['token_logits'].dtype == jnp.float32
  np.testing.assert_allclose(a['image_embedding'], b['image_embedding'], atol=0.05)
  np.testing.assert_allclose(a['text_embedding'], b['text_embedding'], atol=0.05)


@pytest.mark.parametrize('remat', ['full', 'dots', 'elementwise'])
def test_remat_gives_the_same_gradients(remat):
  images, text = _batch()
  plain, rematted = ModelDef(MU), ModelDef(dataclasses.replace(MU, remat=remat))
  params = plain.init()

  def loss(model_def, p):
    out = model_def.bind(p)(images, text)
    return jnp.sum(out['image_embedding'] * out['text_embedding']) + jnp.mean(out['token_logits'] ** 2)

  g1 = jax.jit(jax.grad(lambda p: loss(plain, p)))(params)
  g2 = jax.jit(jax.grad(lambda p: loss(rematted, p)))(params)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), g1, g2)


def test_uint8_and_prenormalised_images_agree():
  model = SuperCLIP(MU, rngs=nnx.Rngs(0))
  images, _ = _batch()
  mean = np.array([0.48145466, 0.4578275, 0.40821073])
  std = np.array([0.26862954, 0.26130258, 0.27577711])
  normalised = jnp.asarray((np.asarray(images) / 255.0 - mean) / std, jnp.float32)
  np.testing.assert_allclose(model.encode_image(images), model.encode_image(normalised), rtol=1e-4, atol=1e-5)


def test_wrong_image_size_is_a_clear_error():
  model = SuperCLIP(MU, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='16px'):
    model.encode_image(jnp.zeros((1, 24, 24, 3), jnp.uint8))


@pytest.mark.parametrize('name', ['B/32', 'B/16', 'L/14', 'L/16'])
def test_paper_sizes_build_abstractly(name):
  cfg = ModelConfig(
    image=presets.IMAGE_TOWERS[name], text=presets.TEXT_TOWERS['L' if 'L' in name else 'B'], embed_dim=768 if 'L' in name else 512
  )
  shapes = ModelDef(cfg).shapes()
  n = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
  width = presets.IMAGE_TOWERS[name].width
  assert shapes['token_classifier']['head']['kernel'].shape == (width, 49408)
  # ViT-B/16 SuperCLIP ~ 150M + 38M head; ViT-L/16 ~ 428M + 51M head (OpenCLIP's counts + head).
  expected = {'B/32': 151.3e6, 'B/16': 149.6e6, 'L/14': 427.6e6, 'L/16': 427.9e6}[name]
  assert abs(n - (width + 1) * 49408 - 2 * width - expected) / expected < 0.01, n
