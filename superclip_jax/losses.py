"""The losses: CLIP softmax contrastive, SigLIP sigmoid, and IDF-weighted token classification.

All are written on the global batch inside jit: with a sharded batch XLA inserts the
gathers, so every device sees all B x B negatives (OpenCLIP's local loss with
gather-with-grad). The token-classification loss never builds the B x V target: with
q = w * y / sum(w * y), -sum_c q_c log softmax(z)_c = logsumexp(z) - sum_c q_c z_c, and
the second term only needs the caption's (at most L) distinct tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from superclip_jax import ring_loss


def softmax_contrastive_loss(image_emb: jax.Array, text_emb: jax.Array, log_scale: jax.Array) -> jax.Array:
  """CLIP: mean of image->text and text->image cross-entropies, logits exp(log_scale) F G^T."""
  logits = jnp.exp(log_scale) * (image_emb.astype(jnp.float32) @ text_emb.astype(jnp.float32).T)
  diag = jnp.diagonal(logits)
  image_to_text = jnp.mean(jax.nn.logsumexp(logits, axis=1) - diag)
  text_to_image = jnp.mean(jax.nn.logsumexp(logits, axis=0) - diag)
  return 0.5 * (image_to_text + text_to_image)


def sigmoid_contrastive_loss(image_emb: jax.Array, text_emb: jax.Array, log_scale: jax.Array, bias: jax.Array) -> jax.Array:
  """SigLIP: -(1/B) sum_ij log sigmoid(z_ij (t F G^T + b)_ij), z = +1 on the diagonal, -1 elsewhere."""
  logits = jnp.exp(log_scale) * (image_emb.astype(jnp.float32) @ text_emb.astype(jnp.float32).T) + bias
  z = 2.0 * jnp.eye(logits.shape[0], dtype=jnp.float32) - 1.0
  return -jnp.sum(jax.nn.log_sigmoid(z * logits)) / logits.shape[0]


def caption_positions(ids: jax.Array, *, sot_id: int, eot_id: int, pad_id: int, mask_special: bool) -> jax.Array:
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


def token_classification_loss(logits: jax.Array, ids: jax.Array, bag: jax.Array, token_weights: jax.Array) -> jax.Array:
  """Mean over the batch of -sum_c q_c log softmax(logits)_c with q = w y / sum(w y).

  `bag` marks each distinct caption token once; a caption with no weighted token has
  q = 0 and contributes 0 (and no NaN, also in the gradient).
  """
  return jnp.mean(per_example_token_classification_loss(logits, ids, bag, token_weights))


def per_example_token_classification_loss(
  logits: jax.Array, ids: jax.Array, bag: jax.Array, token_weights: jax.Array
) -> jax.Array:
  """(B,): -sum_c q_c log softmax(logits)_c per example; 0 for a caption with no weighted token."""
  logits = logits.astype(jnp.float32)
  w = jnp.where(bag, token_weights[ids], 0.0)
  total = jnp.sum(w, axis=1)
  has_target = total > 0
  q = w / jnp.where(has_target, total, 1.0)[:, None]
  target_logit = jnp.sum(q * jnp.take_along_axis(logits, ids, axis=1), axis=1)
  return jnp.where(has_target, jax.nn.logsumexp(logits, axis=1) - target_logit, 0.0)


@dataclasses.dataclass(frozen=True)
class LossOptions:
  """What the loss functions need to know beyond the model outputs."""

  contrastive: str = 'softmax'  # 'softmax' | 'sigmoid' | 'none'
  chunked: bool = False  # the ring variant of the contrastive loss (ring_loss.py)
  batch_axes: tuple[str, ...] = ()  # mesh axes the batch is split over (for the ring)


def contrastive_loss(outputs: Mapping[str, jax.Array], targets: Mapping[str, jax.Array], opts: LossOptions) -> jax.Array:
  """The configured contrastive loss over the global batch of normalised embeddings."""
  del targets
  args = (outputs['image_embedding'], outputs['text_embedding'], outputs['logit_scale'])
  if opts.chunked and ring_loss.ring_size(opts.batch_axes) > 1:  # on one device the ring is the plain loss
    return ring_loss.contrastive(*args, outputs.get('logit_bias'), kind=opts.contrastive, batch_axes=opts.batch_axes)
  if opts.contrastive == 'softmax':
    return softmax_contrastive_loss(*args)
  return sigmoid_contrastive_loss(*args, outputs['logit_bias'])


def token_classification_per_example(
  outputs: Mapping[str, jax.Array], targets: Mapping[str, jax.Array], opts: LossOptions
) -> jax.Array:
  """(B,) token classification loss of each example (its batch mean is L_cls)."""
  del opts
  return per_example_token_classification_loss(
    outputs['token_logits'], targets['token_ids'], targets['bag'], targets['token_weights']
  )


@dataclasses.dataclass(frozen=True)
class LossTerm:
  """One term of the training loss: everything the trainer needs to know about it.

  Adding a loss means one entry here (and its weight key in config_defaults.py): the
  step, the metrics, the console line and the accumulation all read this table.
  """

  name: str  # its metric key, e.g. 'token_loss'
  weight_key: str | None  # the config key of its weight ('loss.token_weight'); None: weight 1
  applies: Callable[[Any], bool]  # given the ModelConfig: is the term part of this model's loss?
  # Exactly one of the two: a loss over the whole global batch (it needs every pair, as the
  # contrastive loss does), or a loss per example whose batch mean is the term.
  batch_fn: Callable[..., jax.Array] | None = None
  per_example_fn: Callable[..., jax.Array] | None = None


LOSS_TERMS = (
  LossTerm('contrastive_loss', None, lambda cfg: cfg.contrastive != 'none', batch_fn=contrastive_loss),
  LossTerm('token_loss', 'loss.token_weight', lambda cfg: cfg.has_token_head, per_example_fn=token_classification_per_example),
)


def active_terms(model_cfg) -> tuple[LossTerm, ...]:
  """The loss terms of this model, in registry order."""
  return tuple(t for t in LOSS_TERMS if t.applies(model_cfg))


def term_weights(config, model_cfg) -> dict[str, float]:
  """{term name: weight} from the config, for this model's terms."""
  out = {}
  for term in active_terms(model_cfg):
    value = 1.0
    if term.weight_key:
      section, key = term.weight_key.split('.')
      value = float(config[section][key])
    out[term.name] = value
  return out


def compute_terms(
  outputs: Mapping[str, jax.Array], targets: Mapping[str, jax.Array], terms, opts: LossOptions, per_example_only: bool = False
) -> dict[str, jax.Array]:
  """{name: loss} for the given terms; per-example terms as batch means.

  per_example_only: leave out batch-level terms (micro-batches compute those on the full batch).
  """
  out = {}
  for term in terms:
    if term.per_example_fn is not None:
      out[term.name] = jnp.mean(term.per_example_fn(outputs, targets, opts))
    elif not per_example_only:
      out[term.name] = term.batch_fn(outputs, targets, opts)
  return out


def total_loss(losses: Mapping[str, jax.Array], weights: Mapping[str, float]) -> jax.Array:
  """The weighted sum of the terms (a missing weight counts 1)."""
  return sum(weights.get(k, 1.0) * v for k, v in losses.items())
