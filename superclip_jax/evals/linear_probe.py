"""Linear probe: logistic regression on frozen features, weight decay chosen on a held-out split."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _fit(x: jax.Array, y: jax.Array, num_classes: int, weight_decay: float, steps: int) -> tuple:
  """Full-batch L-BFGS on mean cross-entropy + weight_decay/2 |W|^2 (bias not decayed)."""
  params = (jnp.zeros((x.shape[1], num_classes)), jnp.zeros((num_classes,)))

  def loss(p):
    logits = x @ p[0] + p[1]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return ce + 0.5 * weight_decay * jnp.sum(p[0] ** 2)

  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def body(carry, _):
    p, state = carry
    value, grad = value_and_grad(p, state=state)
    updates, state = solver.update(grad, state, p, value=value, grad=grad, value_fn=loss)
    return (optax.apply_updates(p, updates), state), None

  (params, _), _ = jax.lax.scan(body, (params, solver.init(params)), None, length=steps)
  return params


def _accuracy(params, x, y) -> float:
  return float(jnp.mean(jnp.argmax(x @ params[0] + params[1], -1) == y))


def linear_probe(
  train_x: np.ndarray,
  train_y: np.ndarray,
  test_x: np.ndarray,
  test_y: np.ndarray,
  weight_decays: Sequence[float] = (1e-6, 1e-4, 1e-2, 1.0),
  val_fraction: float = 0.2,
  steps: int = 200,
  seed: int = 0,
) -> dict[str, float]:
  """Pick weight decay on a held-out part of train, refit on all of train, report test accuracy."""
  train_x, test_x = np.asarray(train_x, np.float32), np.asarray(test_x, np.float32)
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6  # standardise with train statistics only
  train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
  train_y, test_y = np.asarray(train_y), np.asarray(test_y)
  num_classes = int(max(train_y.max(), test_y.max())) + 1
  order = np.random.default_rng(seed).permutation(len(train_x))
  n_val = max(1, int(len(order) * val_fraction))
  val, fit = order[:n_val], order[n_val:]
  fit_fn = jax.jit(_fit, static_argnums=(2, 4))
  val_acc = {
    wd: _accuracy(fit_fn(train_x[fit], train_y[fit], num_classes, wd, steps), train_x[val], train_y[val]) for wd in weight_decays
  }
  best = max(weight_decays, key=lambda wd: (val_acc[wd], wd))
  params = fit_fn(train_x, train_y, num_classes, best, steps)
  return {'top1': _accuracy(params, test_x, test_y), 'val_top1': val_acc[best], 'weight_decay': best}


# Evaluator keys of this kind beyond the common ones (registry.COMMON).
DEFAULTS = {
  'train_shards': '',  # the labelled shards the classifier is fit on (`shards` is the test set)
}


class Evaluator:
  """Logistic regression on the frozen pre-projection image feature: fit on train_shards, test on shards."""

  def __init__(self, ev, embedder, seed: int = 0):
    if not ev.train_shards:
      raise ValueError('a linear probe needs train_shards')
    self.ev = ev
    self.embedder = embedder
    self.seed = seed

  def run(self, params) -> dict[str, float]:
    ev = self.ev
    train = self.embedder.images(params, ev.train_shards, ev.batch_size, ev.max_examples)
    test = self.embedder.images(params, ev.shards, ev.batch_size, ev.max_examples)
    return linear_probe(train['feature'], train['label'], test['feature'], test['label'], seed=self.seed)
