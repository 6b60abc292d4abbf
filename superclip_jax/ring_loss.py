"""The contrastive losses computed around a ring of devices (`config.loss.chunked = True`).

The plain losses (losses.py) let XLA gather the whole batch of text embeddings onto every
device, so each device holds a (local x global) block of logits. Here, inside
`jax.shard_map` over the batch axes, each device keeps its image block and the text
blocks travel round the ring (`lax.ppermute`), one (local x local) block of logits at a
time, each hop under `jax.checkpoint` so the backward pass recomputes it instead of
keeping every block. Memory per device is O(local^2), not O(local x global).

Softmax keeps an online logsumexp per image row; each text block carries its column
logsumexp round the ring and brings it home. Sigmoid sums log-sigmoid terms, the
positive pairs being the block that is at home. Values and gradients equal the plain
losses up to float32 reduction order (tests/test_ring_loss.py).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


def ring_size(batch_axes) -> int:
  """Devices round the ring: those the batch is split over in the current mesh (1: no ring needed)."""
  return _ring_axes(batch_axes)[1]


def _ring_axes(batch_axes) -> tuple[tuple[str, ...], int]:
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return (), 1
  axes = tuple(a for a in batch_axes if a in mesh.axis_names and mesh.shape[a] > 1)
  return axes, math.prod(mesh.shape[a] for a in axes) if axes else 1


def _varying(x: jax.Array, axes) -> jax.Array:
  """Mark a per-device starting value as differing across the ring (shard_map's type check)."""
  if hasattr(jax.lax, 'pcast'):
    return jax.lax.pcast(x, axes, to='varying')
  return jax.lax.pvary(x, axes)  # older jax


def contrastive(
  image_emb: jax.Array, text_emb: jax.Array, log_scale: jax.Array, bias: jax.Array | None, *, kind: str, batch_axes
) -> jax.Array:
  """The softmax or sigmoid contrastive loss over the global batch, computed round a ring of at least two
  devices (losses.contrastive_loss computes the one-device case plainly)."""
  axes, n = _ring_axes(batch_axes)
  if n == 1:
    raise ValueError(f'no ring: the batch axes {batch_axes} span one device')
  mesh = jax.sharding.get_abstract_mesh()
  perm = [(i, (i + 1) % n) for i in range(n)]
  global_batch = image_emb.shape[0]
  bias = jnp.zeros((), jnp.float32) if bias is None else bias

  @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P(axes), P(axes), P(), P()), out_specs=P())
  def ring(img, txt, log_s, b):
    img, txt = img.astype(jnp.float32), txt.astype(jnp.float32)
    scale = jnp.exp(log_s)
    local = img.shape[0]

    if kind == 'softmax':
      diag = scale * jnp.sum(img * txt, axis=-1)

      @jax.checkpoint
      def hop(carry, _):
        block, col_lse, row_lse = carry
        logits = scale * img @ block.T
        row_lse = jnp.logaddexp(row_lse, jax.nn.logsumexp(logits, axis=1))
        col_lse = jnp.logaddexp(col_lse, jax.nn.logsumexp(logits, axis=0))
        # The text block moves on with its column statistics; after n hops it is home.
        block, col_lse = jax.lax.ppermute((block, col_lse), axes, perm)
        return (block, col_lse, row_lse), None

      start = _varying(jnp.full((local,), -jnp.inf, jnp.float32), axes)
      (_, col_lse, row_lse), _ = jax.lax.scan(hop, (txt, start, start), None, length=n)
      part = 0.5 * (jnp.sum(row_lse - diag) + jnp.sum(col_lse - diag))
      return jax.lax.psum(part, axes) / global_batch

    eye = jnp.eye(local, dtype=bool)

    @jax.checkpoint
    def hop_sigmoid(carry, k):
      block, total = carry
      logits = scale * img @ block.T + b
      # The block at home (hop 0) holds this device's positive pairs on its diagonal.
      z = jnp.where(eye & (k == 0), 1.0, -1.0)
      total = total + jnp.sum(jax.nn.log_sigmoid(z * logits))
      block = jax.lax.ppermute(block, axes, perm)
      return (block, total), None

    total = _varying(jnp.zeros((), jnp.float32), axes)
    (_, total), _ = jax.lax.scan(hop_sigmoid, (txt, total), jnp.arange(n))
    return -jax.lax.psum(total, axes) / global_batch

  return ring(image_emb, text_emb, log_scale, bias)
