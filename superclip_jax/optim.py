"""The optax chain: AdamW with warm-up + cosine, a weight-decay mask, optional clipping and freezing."""

from __future__ import annotations

import re
from typing import Mapping

import jax
import ml_collections
import optax

from superclip_jax import sharding, tree_names
from superclip_jax.errors import UserError
from superclip_jax.models import layers

# Leaves never decayed whatever their shape (OpenCLIP: norms, biases, the temperature).
_NO_DECAY_NAMES = ('scale', 'bias', 'logit_scale', 'logit_bias')


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to the peak, then cosine (or constant) to end_learning_rate."""
  o = config.optim
  warmup = min(int(o.warmup_steps), max(total_steps - 1, 0))
  if o.schedule == 'constant':
    main = optax.constant_schedule(o.learning_rate)
  else:
    main = optax.cosine_decay_schedule(
      o.learning_rate,
      decay_steps=max(total_steps - warmup, 1),
      alpha=o.end_learning_rate / o.learning_rate if o.learning_rate else 0.0,
    )
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, o.learning_rate, warmup), main], [warmup])


def path_names(params: Mapping) -> dict:
  """Pure dict with each leaf replaced by its '/'-joined path ('image_tower/proj').

  An annotated leaf (sharding.Logical) counts as one leaf, so the optimizer's masks also
  apply to the annotated parameters its state shardings are derived from.
  """
  return tree_names.names(params, '/', is_leaf=lambda x: isinstance(x, sharding.Logical))


def weight_decay_mask(params: Mapping, logical_axes: Mapping) -> dict:
  """True for matrices (>= 2 dims once a stacked 'layers' axis is discounted), except norms and biases."""

  def decide(path, axes, _):
    leaf = str(tree_names.key(path[-1]))
    real_dims = [a for a in axes if a != layers.LAYERS]
    return len(real_dims) >= 2 and leaf not in _NO_DECAY_NAMES

  return jax.tree_util.tree_map_with_path(decide, logical_axes, params, is_leaf=lambda x: isinstance(x, tuple))


def frozen_mask(params: Mapping, pattern: str) -> dict:
  """True for parameters whose path matches the regex (full match), e.g. 'image_tower/.*'."""
  regex = re.compile(pattern)
  return jax.tree.map(lambda name: bool(regex.fullmatch(name)), path_names(params))


def make_optimizer(
  config: ml_collections.ConfigDict, params: Mapping, logical_axes: Mapping, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer (AdamW, betas (0.9, 0.98), eps 1e-6 by default) and its schedule."""
  o = config.optim
  schedule = learning_rate_schedule(config, total_steps)
  parts = []
  if o.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(o.grad_clip_norm))
  decay = dict(zip(jax.tree.leaves(path_names(params)), jax.tree.leaves(weight_decay_mask(params, logical_axes))))

  def decay_mask(tree):
    # Looked up by path, so it also fits the partial trees multi_transform passes when freezing.
    return jax.tree.map(lambda name: decay[name], path_names(tree))

  parts.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=decay_mask))
  tx = optax.chain(*parts)
  if o.frozen:
    frozen = frozen_mask(params, o.frozen)
    if not any(jax.tree.leaves(frozen)):
      raise UserError(f'optim.frozen={o.frozen!r} matches no parameter')
    labels = jax.tree.map(lambda f: 'frozen' if f else 'trained', frozen)
    tx = optax.multi_transform({'trained': tx, 'frozen': optax.set_to_zero()}, labels)
  return tx, schedule
