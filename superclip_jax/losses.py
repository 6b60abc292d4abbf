"""The losses: CLIP softmax contrastive, SigLIP sigmoid, and IDF-weighted token classification.

All are written on the global batch inside jit: with a sharded batch XLA inserts the
gathers, so every device sees all B x B negatives (OpenCLIP's local loss with
gather-with-grad). The token-classification loss never builds the B x V target: with
q = w * y / sum(w * y), -sum_c q_c log softmax(z)_c = logsumexp(z) - sum_c q_c z_c, and
the second term only needs the caption's (at most L) distinct tokens.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp


def softmax_contrastive_loss(image_emb: jax.Array, text_emb: jax.Array, log_scale: jax.Array) -> jax.Array:
  """CLIP: mean of image->text and text->image cross-entropies, logits exp(log_scale) F G^T."""
  logits = jnp.exp(log_scale) * (image_emb.astype(jnp.float32) @ text_emb.astype(jnp.float32).T)
  diag = jnp.diagonal(logits)
  image_to_text = jnp.mean(jax.nn.logsumexp(logits, axis=1) - diag)
  text_to_image = jnp.mean(jax.nn.logsumexp(logits, axis=0) - diag)
  return 0.5 * (image_to_text + text_to_image)


def sigmoid_contrastive_loss(image_emb: jax.Array, text_emb: jax.Array, log_scale: jax.Array,
                             bias: jax.Array) -> jax.Array:
  """SigLIP: -(1/B) sum_ij log sigmoid(z_ij (t F G^T + b)_ij), z = +1 on the diagonal, -1 elsewhere."""
  logits = jnp.exp(log_scale) * (image_emb.astype(jnp.float32) @ text_emb.astype(jnp.float32).T) + bias
  z = 2.0 * jnp.eye(logits.shape[0], dtype=jnp.float32) - 1.0
  return -jnp.sum(jax.nn.log_sigmoid(z * logits)) / logits.shape[0]


def caption_positions(ids: jax.Array, *, sot_id: int, eot_id: int, pad_id: int,
                      mask_special: bool) -> jax.Array:
  """Bool (B, L): positions holding the caption's own tokens.

  With mask_special, SOT, the first EOT and everything after it, and a trailing run of
  padding are excluded, so a genuine pad-id token inside the caption ("!" in CLIP's BPE)
  still counts. Without it every position counts, as the reference implementation does.
  """
  if not mask_special:
    return jnp.ones(ids.shape, bool)
  at_or_after_eot = jnp.cumsum(ids == eot_id, axis=1) > 0
  is_pad = ids == pad_id
  trailing_pad = jnp.flip(jnp.cumprod(jnp.flip(is_pad, 1), axis=1), 1).astype(bool)
  return ~at_or_after_eot & ~trailing_pad & (ids != sot_id)


def first_occurrences(ids: jax.Array, valid: jax.Array) -> jax.Array:
  """Bool (B, L): valid positions whose token has not occurred at an earlier valid position.

  A token counts once per caption however often it occurs (the K-hot target).
  """
  length = ids.shape[1]
  same = ids[:, :, None] == ids[:, None, :]  # [b, j, k]: token j equals token k
  earlier = jnp.tril(jnp.ones((length, length), bool), k=-1)  # k < j
  seen_before = jnp.any(same & earlier[None] & valid[:, None, :], axis=2)
  return valid & ~seen_before


def document_frequency(ids: jax.Array, bag: jax.Array, vocab_size: int) -> jax.Array:
  """int32 (V,): number of captions in the batch that contain each token."""
  return jnp.zeros((vocab_size,), jnp.int32).at[ids.reshape(-1)].add(bag.reshape(-1).astype(jnp.int32))


def token_classification_loss(logits: jax.Array, ids: jax.Array, bag: jax.Array,
                              token_weights: jax.Array) -> jax.Array:
  """Mean over the batch of -sum_c q_c log softmax(logits)_c with q = w y / sum(w y).

  `bag` marks each distinct caption token once; a caption with no weighted token has
  q = 0 and contributes 0 (and no NaN, also in the gradient).
  """
  logits = logits.astype(jnp.float32)
  w = jnp.where(bag, token_weights[ids], 0.0)
  total = jnp.sum(w, axis=1)
  has_target = total > 0
  q = w / jnp.where(has_target, total, 1.0)[:, None]
  target_logit = jnp.sum(q * jnp.take_along_axis(logits, ids, axis=1), axis=1)
  per_example = jnp.where(has_target, jax.nn.logsumexp(logits, axis=1) - target_logit, 0.0)
  return jnp.mean(per_example)


def total_loss(losses: Mapping[str, jax.Array], weights: Mapping[str, float]) -> jax.Array:
  """The weighted sum of the `*_loss` entries (a missing weight counts 1)."""
  return sum(weights.get(k, 1.0) * v for k, v in losses.items() if k.endswith('_loss'))


def superclip_losses(outputs: Mapping[str, jax.Array], cls_ids: jax.Array | None, bag: jax.Array | None,
                     token_weights: jax.Array | None, contrastive: str) -> dict[str, jax.Array]:
  """Both losses from the model's outputs; each present part adds a `*_loss` entry."""
  losses = {}
  if contrastive == 'softmax':
    losses['contrastive_loss'] = softmax_contrastive_loss(
        outputs['image_embedding'], outputs['text_embedding'], outputs['logit_scale'])
  elif contrastive == 'sigmoid':
    losses['contrastive_loss'] = sigmoid_contrastive_loss(
        outputs['image_embedding'], outputs['text_embedding'], outputs['logit_scale'], outputs['logit_bias'])
  if 'cls_logits' in outputs:
    losses['cls_loss'] = token_classification_loss(outputs['cls_logits'], cls_ids, bag, token_weights)
  return losses
