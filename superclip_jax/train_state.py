"""The train state, created directly in its sharded layout, and the one jitted train step.

The step fuses everything a SuperCLIP update needs: the caption token bags, the online
IDF update from the global batch, both towers, both losses, the optax update and the
temperature clamp. Parameters stay a plain dict; the NNX module is rebuilt inside jit.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from superclip_jax import idf, losses, metrics, sharding
from superclip_jax.models.superclip import ModelDef


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimiser steps taken
  params: dict
  opt_state: Any
  idf_counts: dict  # exact 64-bit counts (idf.py); empty for a model without a token classifier
  rng: jax.Array  # uint32 PRNG key data, for stochastic parts added later (drop-path, masking)
  nonfinite_updates: jax.Array  # int32: updates skipped for a NaN/Inf loss or gradient
  first_nonfinite_step: jax.Array  # int32: the first such step (counted from 1, as logged), -1 if none


def initial_idf_counts(config: ml_collections.ConfigDict, variant: str,
                       offline_stats: str | None = None) -> dict[str, np.ndarray]:
  """Zero counts for online IDF, the dataset's counts for offline IDF, nothing otherwise.

  offline_stats: the .npz of document frequencies (default config.loss.idf_offline_stats).
  """
  if variant == 'clip' or config.loss.idf == 'none':
    return {}
  if config.loss.idf == 'offline':
    path = offline_stats or config.loss.idf_offline_stats
    try:
      stats = np.load(path)
      doc_freq, num_samples = stats['doc_freq'], int(stats['num_samples'])
    except (OSError, KeyError, ValueError) as e:
      raise ValueError(f'cannot read offline IDF statistics from {path!r} '
                       "(an .npz with 'doc_freq' (V,) and 'num_samples'): " + str(e)) from e
    if doc_freq.shape != (config.model.vocab_size,):
      raise ValueError(f'{path}: doc_freq has shape {doc_freq.shape}, model vocab is {config.model.vocab_size}')
    return jax.tree.map(np.asarray, idf.from_ints(num_samples, doc_freq))
  return jax.tree.map(np.asarray, idf.zeros(config.model.vocab_size))


def state_shardings(abstract: TrainState, model_def: ModelDef, tx: optax.GradientTransformation,
                    mesh: Mesh, rules) -> TrainState:
  """Shardings for every leaf: params by logical axes, optimizer moments like their params."""
  param_sh = sharding.tree_shardings(model_def.logical_axes(), abstract.params, mesh, rules)
  rep = sharding.replicated(mesh)
  by_path = {tuple(k.key for k in path): (sh, leaf.shape) for (path, sh), leaf in zip(
      jax.tree_util.tree_leaves_with_path(param_sh), jax.tree.leaves(abstract.params))}

  def like_its_param(path, leaf):
    # An optimizer leaf whose path ends in a parameter's path (Adam's mu/nu, also inside
    # multi_transform's masked states) is sharded like that parameter; the rest replicate.
    keys = []
    for k in reversed(path):
      if not isinstance(k, jax.tree_util.DictKey):
        break
      keys.insert(0, k.key)
    for start in range(len(keys)):
      match = by_path.get(tuple(keys[start:]))
      if match and match[1] == leaf.shape:
        return match[0]
    return rep

  opt_sh = jax.tree_util.tree_map_with_path(like_its_param, abstract.opt_state)
  return TrainState(step=rep, params=param_sh, opt_state=opt_sh,
                    idf_counts=jax.tree.map(lambda _: rep, abstract.idf_counts), rng=rep,
                    nonfinite_updates=rep, first_nonfinite_step=rep)


def create_train_state(model_def: ModelDef, tx: optax.GradientTransformation, idf_counts: dict,
                       mesh: Mesh, rules, seed: int) -> tuple[TrainState, TrainState]:
  """Initialise the state inside jit with sharded outputs: no host ever holds the full model."""
  def init():
    params = model_def.init()
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      idf_counts=jax.tree.map(jnp.asarray, idf_counts),
                      rng=jax.random.key_data(jax.random.key(seed)),
                      nonfinite_updates=jnp.zeros((), jnp.int32),
                      first_nonfinite_step=jnp.full((), -1, jnp.int32))

  abstract = jax.eval_shape(init)
  shardings = state_shardings(abstract, model_def, tx, mesh, rules)
  with jax.set_mesh(mesh):
    state = jax.jit(init, out_shardings=shardings)()
  return state, shardings


def make_train_step(model_def: ModelDef, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    config: ml_collections.ConfigDict, metrics_collection) -> Callable:
  """The un-jitted step function (state, batch) -> (state, metrics collection)."""
  cfg = model_def.cfg
  loss_cfg = config.loss
  has_classifier = cfg.variant != 'clip'
  loss_weights = {'contrastive_loss': 1.0, 'cls_loss': float(loss_cfg.cls_weight)}
  bag_of = functools.partial(losses.caption_positions, sot_id=loss_cfg.sot_id, eot_id=loss_cfg.eot_id,
                             pad_id=loss_cfg.pad_id, mask_special=loss_cfg.mask_special_tokens)

  def step_fn(state: TrainState, batch: dict[str, jax.Array]):
    # The long caption (the paper's "Dual" setting) feeds only the classifier when present.
    cls_ids = batch.get('cls_text', batch.get('text'))
    counts, bag, token_weights = state.idf_counts, None, None
    if has_classifier:
      bag = losses.first_occurrences(cls_ids, bag_of(cls_ids))
      if loss_cfg.idf == 'online':
        batch_df = losses.document_frequency(cls_ids, bag, cfg.vocab_size)
        counts = idf.update(counts, cls_ids.shape[0], batch_df)
      token_weights = (idf.weights(counts) if counts
                       else jnp.ones((cfg.vocab_size,), jnp.float32))
      token_weights = jax.lax.stop_gradient(token_weights)

    def loss_fn(params):
      outputs = model_def.bind(params)(batch['images'], batch.get('text'))
      parts = losses.superclip_losses(outputs, cls_ids, bag, token_weights, cfg.contrastive)
      return losses.total_loss(parts, loss_weights), parts

    (total, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if cfg.contrastive == 'softmax':
      # CLIP clamps the log-temperature to [0, ln 100] after every optimiser step.
      params = {**params, 'logit_scale': jnp.clip(params['logit_scale'], 0.0, loss_cfg.logit_scale_max)}
    # A NaN/Inf loss or gradient never reaches the state: the update (and the batch's IDF
    # counts) are dropped and the step recorded; the host stops or goes on (config.nonfinite).
    finite = jnp.isfinite(total) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    outputs = {'loss': total, **parts, 'grad_norm': grad_norm, 'learning_rate': schedule(state.step)}
    if 'logit_scale' in params:
      outputs['logit_scale'] = jnp.exp(params['logit_scale'])
    new_state = state.replace(
        step=state.step + 1, params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state),
        idf_counts=keep(counts, state.idf_counts),
        nonfinite_updates=state.nonfinite_updates + (~finite).astype(jnp.int32),
        first_nonfinite_step=jnp.where((state.first_nonfinite_step < 0) & ~finite, state.step + 1,
                                       state.first_nonfinite_step))
    return new_state, metrics_collection.single_from_model_output(**outputs)

  return step_fn


def metric_names(model_def: ModelDef) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(averaged, last-value) metric keys the step emits for this model."""
  averaged = ['loss', 'grad_norm']
  if model_def.cfg.contrastive != 'none':
    averaged.append('contrastive_loss')
  if model_def.cfg.variant != 'clip':
    averaged.append('cls_loss')
  last = ['learning_rate'] + (['logit_scale'] if model_def.cfg.contrastive != 'none' else [])
  return tuple(averaged), tuple(last)


def jit_train_step(model_def: ModelDef, tx, schedule, config, shardings: TrainState, mesh: Mesh):
  """The step jitted with the state donated and sharded in and out; returns (fn, collection class)."""
  collection = metrics.train_metrics_collection(*metric_names(model_def))
  step_fn = make_train_step(model_def, tx, schedule, config, collection)
  jitted = jax.jit(step_fn, in_shardings=(shardings, sharding.batch_sharding(mesh)),
                   out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=(0,))
  return jitted, collection
