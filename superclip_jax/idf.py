"""Exact 64-bit sample counters for online IDF, built from uint32 pairs.

JAX runs without x64 by default and float32 counts stop being exact at 2^24; the
B-12.8B recipe sees 1.28e10 samples. A counter is a uint32 array whose last axis is
(low word, high word); adding a per-step count (< 2^32) carries into the high word.
Differences are taken exactly in integers before converting to float, so IDF weights
keep full float32 relative precision even when df is within a few counts of N.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_WORD = 2.0**32


def zeros(vocab_size: int) -> dict[str, jax.Array]:
  """Empty counts: `num_samples` (2,) and `doc_freq` (V, 2), both (low, high) uint32 words."""
  return {'num_samples': jnp.zeros((2,), jnp.uint32), 'doc_freq': jnp.zeros((vocab_size, 2), jnp.uint32)}


def from_ints(num_samples: int, doc_freq) -> dict[str, jax.Array]:
  """Counts holding these (Python / int64) values exactly."""
  df = np.asarray(doc_freq, np.uint64)
  return {'num_samples': jnp.asarray(_split(np.uint64(num_samples))), 'doc_freq': jnp.asarray(_split(df))}


def to_ints(counts: dict[str, jax.Array]) -> tuple[int, np.ndarray]:
  """The counts as (int, uint64 array), for checks and reports."""

  def join(x):
    x = np.asarray(x, np.uint64)
    return x[..., 0] + (x[..., 1] << np.uint64(32))

  return int(join(counts['num_samples'])), join(counts['doc_freq'])


def _split(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.uint64)
  return np.stack([x & np.uint64(0xFFFFFFFF), x >> np.uint64(32)], axis=-1).astype(np.uint32)


def add(counter: jax.Array, increment: jax.Array) -> jax.Array:
  """counter + increment, exactly; increment is a non-negative count below 2^32."""
  inc = increment.astype(jnp.uint32)
  lo = counter[..., 0] + inc  # wraps modulo 2^32
  carry = (lo < inc).astype(jnp.uint32)
  return jnp.stack([lo, counter[..., 1] + carry], axis=-1)


def subtract(a: jax.Array, b: jax.Array) -> jax.Array:
  """a - b exactly, for a >= b."""
  lo = a[..., 0] - b[..., 0]
  borrow = (a[..., 0] < b[..., 0]).astype(jnp.uint32)
  return jnp.stack([lo, a[..., 1] - b[..., 1] - borrow], axis=-1)


def to_float(counter: jax.Array) -> jax.Array:
  """The counter's value as float32 (relative error ~1e-7)."""
  return counter[..., 1].astype(jnp.float32) * _WORD + counter[..., 0].astype(jnp.float32)


def update(counts: dict[str, jax.Array], batch_size, batch_doc_freq: jax.Array) -> dict[str, jax.Array]:
  """Add one global batch: its sample count and per-token document frequencies."""
  return {'num_samples': add(counts['num_samples'], jnp.asarray(batch_size)), 'doc_freq': add(counts['doc_freq'], batch_doc_freq)}


def weights(counts: dict[str, jax.Array]) -> jax.Array:
  """IDF weights log((N + 1) / (df + 1)) per token, float32 (V,).

  Written as log1p((N - df) / (df + 1)) with N - df exact, so tokens present in almost
  every caption get small weights with full relative precision rather than rounding noise.
  """
  n = jnp.broadcast_to(counts['num_samples'], counts['doc_freq'].shape)
  gap = to_float(subtract(n, counts['doc_freq']))
  return jnp.log1p(gap / (to_float(counts['doc_freq']) + 1.0))
