"""Online IDF counts stay exact past 2^24 and 2^32 samples; weights match float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superclip_jax import idf, losses

V = 40


def _float64_weights(n, df):
  return np.log((float(n) + 1.0) / (np.asarray(df, np.float64) + 1.0))


@pytest.mark.parametrize('start', [0, 2**24 + 3, 2**32 - 7, 3 * 2**32 + 11, 12_800_000_000])
def test_online_counts_exact_and_weights_match_float64(start):
  rng = np.random.default_rng(start % 1000)
  # Start from counts where some tokens appear in (almost) every sample, some in none.
  df0 = np.array([start, max(start - 1, 0), start // 2, 0] + list(rng.integers(0, start + 1, V - 4)), dtype=np.uint64)
  counts = idf.from_ints(start, df0)
  n_ref, df_ref = start, df0.astype(object)
  update = jax.jit(idf.update)
  for _ in range(6):
    batch = 4096
    batch_df = rng.integers(0, batch + 1, V).astype(np.int32)
    batch_df[0] = batch  # token 0 in every caption
    counts = update(counts, batch, jnp.asarray(batch_df))
    n_ref += batch
    df_ref = df_ref + batch_df.astype(object)
  n, df = idf.to_ints(counts)
  assert n == n_ref
  assert [int(x) for x in df] == [int(x) for x in df_ref]
  w = np.asarray(jax.jit(idf.weights)(counts))
  ref = _float64_weights(n_ref, np.array(df_ref, np.float64))
  np.testing.assert_allclose(w, ref, rtol=2e-6, atol=1e-30)
  assert w[0] == pytest.approx(ref[0], rel=1e-6)  # df == N: weight 0 exactly
  assert w[0] == 0.0


def test_single_increments_past_two_to_the_24_are_not_lost():
  # A float32 counter would stay at 2^24 here; the uint32-pair counter must not.
  counts = idf.from_ints(2**24, np.array([2**24, 7]))
  step = jax.jit(idf.update)
  for _ in range(3):
    counts = step(counts, 1, jnp.asarray([1, 0], jnp.int32))
  n, df = idf.to_ints(counts)
  assert n == 2**24 + 3 and df.tolist() == [2**24 + 3, 7]


def test_carry_across_words():
  c = idf.from_ints(2**32 - 1, np.array([2**32 - 1, 5]))
  c = idf.update(c, 2, jnp.asarray([2, 1], jnp.int32))
  n, df = idf.to_ints(c)
  assert n == 2**32 + 1 and list(df) == [2**32 + 1, 6]


def test_document_frequency_feeds_counts_like_numpy():
  rng = np.random.default_rng(0)
  ids = rng.integers(1, V - 2, size=(16, 10)).astype(np.int32)
  ids[:, 0] = V - 2  # SOT
  ids[:, 7] = V - 1  # EOT
  ids[:, 8:] = 0
  bag = losses.first_occurrences(
    jnp.asarray(ids), losses.caption_positions(jnp.asarray(ids), sot_id=V - 2, eot_id=V - 1, pad_id=0, mask_special=True)
  )
  df = np.asarray(losses.document_frequency(jnp.asarray(ids), bag, V))
  expected = np.zeros(V, int)
  for row in ids:
    for t in set(row[1:7].tolist()):
      expected[t] += 1
  np.testing.assert_array_equal(df, expected)


def test_offline_weights_from_stats():
  w = idf.weights(idf.from_ints(100, np.array([0, 50, 100])))  # what offline IDF gives the step
  np.testing.assert_allclose(w, np.log(101.0 / np.array([1.0, 51.0, 101.0])), rtol=1e-6)
