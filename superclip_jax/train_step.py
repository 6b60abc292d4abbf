"""The one jitted train step.

It fuses everything a SuperCLIP update needs: the caption token bags, the online IDF
update from the global batch, both towers, every loss term (losses.LOSS_TERMS), the
optax update and the temperature clamp.

With `optim.accum_steps = K` the global batch runs in K micro-batches inside the same
jit: the towers run micro-batch by micro-batch under remat, keeping only the embeddings
and the per-example losses; the contrastive loss then sees all B x B pairs, and the
backward pass recomputes each micro-batch. The gradient equals the full batch's,
`logit_scale`'s included (OpenCLIP's --accum-freq gives that one K times too much).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from superclip_jax import idf, losses, metrics, platform_defaults, sharding
from superclip_jax.errors import UserError
from superclip_jax.models.superclip import ModelDef
from superclip_jax.train_state import TrainState

EMBEDDINGS = ('image_embedding', 'text_embedding')


def _token_targets(config: ml_collections.ConfigDict, cfg, state: TrainState, batch: dict):
  """(targets for the classifier, updated IDF counts): token bags and weights from the global batch."""
  if not cfg.has_token_head:
    return {}, state.idf_counts
  tok = config.tokenizer
  # The long caption (the paper's "Dual" setting) feeds only the classifier when present.
  ids = batch.get('token_ids', batch.get('text'))
  bag = losses.first_occurrences(
    ids,
    losses.caption_positions(
      ids, sot_id=tok.sot_id, eot_id=tok.eot_id, pad_id=tok.pad_id, mask_special=config.loss.mask_special_tokens
    ),
  )
  counts = state.idf_counts
  if config.loss.idf == 'online':
    counts = idf.update(counts, ids.shape[0], losses.document_frequency(ids, bag, cfg.vocab_size))
  weights = idf.weights(counts) if counts else jnp.ones((cfg.vocab_size,), jnp.float32)
  return {'token_ids': ids, 'bag': bag, 'token_weights': jax.lax.stop_gradient(weights)}, counts


def _to_micro(x: jax.Array, k: int) -> jax.Array:
  """(B, ...) -> (K, B/K, ...): micro-batch j takes rows j, j+K, ..., so each device's rows split evenly."""
  x = x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
  return sharding.constrain(x, (None, 'batch') + (None,) * (x.ndim - 2))


def _from_micro(x: jax.Array) -> jax.Array:
  """The inverse of _to_micro. (Reshaping (K, B/K, D) straight to (B, D) would make XLA
  gather the whole batch on every device.)"""
  x = sharding.constrain(x, (None, 'batch') + (None,) * (x.ndim - 2))
  x = x.swapaxes(0, 1)
  return sharding.constrain(x.reshape(-1, *x.shape[2:]), ('batch',) + (None,) * (x.ndim - 2))


def make_loss_fn(model_def: ModelDef, config: ml_collections.ConfigDict, rules) -> Callable:
  """loss_fn(params, batch, targets) -> (total, {term: value}), accumulating micro-batches when asked."""
  cfg = model_def.cfg
  terms = losses.active_terms(cfg)
  weights = losses.term_weights(config, cfg)
  opts = losses.LossOptions(contrastive=cfg.contrastive, chunked=bool(config.loss.chunked), batch_axes=sharding.batch_axes(rules))
  k = int(config.optim.accum_steps)

  def full(params, batch, targets):
    outputs = model_def.bind(params)(batch['images'], batch.get('text'))
    parts = losses.compute_terms(outputs, targets, terms, opts)
    return losses.total_loss(parts, weights), parts

  def accumulated(params, batch, targets):
    per_micro = {key: _to_micro(batch[key], k) for key in ('images', 'text') if key in batch}
    per_micro_targets = {key: _to_micro(targets[key], k) for key in ('token_ids', 'bag') if key in targets}

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def micro_step(_, inputs):
      mb, mt = inputs
      outputs = model_def.bind(params)(mb['images'], mb.get('text'))
      mt = {**mt, 'token_weights': targets['token_weights']} if mt else mt
      parts = losses.compute_terms(outputs, mt, terms, opts, per_example_only=True)
      return None, ({key: outputs[key] for key in EMBEDDINGS if key in outputs}, parts)

    _, (embeddings, micro_parts) = jax.lax.scan(micro_step, None, (per_micro, per_micro_targets))
    # Equal micro-batch sizes: the mean of micro-batch means is the full batch's mean.
    parts = {name: jnp.mean(v) for name, v in micro_parts.items()}
    outputs = {key: _from_micro(v) for key, v in embeddings.items()}
    for name in ('logit_scale', 'logit_bias'):
      if name in params:
        outputs[name] = params[name]
    parts.update(losses.compute_terms(outputs, targets, [t for t in terms if t.batch_fn], opts))
    parts = {t.name: parts[t.name] for t in terms}  # registry order
    return losses.total_loss(parts, weights), parts

  return full if k == 1 else accumulated


def _square_sum(x: jax.Array) -> jax.Array:
  letters = 'abcdefghijklmnopqrstuvwxyz'[: x.ndim]
  return jnp.einsum(f'{letters},{letters}->', x, x, preferred_element_type=jnp.float32)


def global_norm(tree) -> jax.Array:
  """The L2 norm over every leaf, each leaf's square sum as a dot over all its dimensions.

  A dot, not optax.tree.norm's x * x: that product is shared with Adam's second moment and
  materialised in full on XLA:CPU. Over all dimensions, not jnp.vdot's flattened vectors:
  flattening a sharded leaf made the partitioner all-gather every gradient in f32 (8 CPU
  devices); this form is a partial sum per device and one scalar all-reduce on every target.
  """
  return jnp.sqrt(sum(_square_sum(x) for x in jax.tree.leaves(tree)))


def make_train_step(
  model_def: ModelDef,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  config: ml_collections.ConfigDict,
  metrics_collection,
  rules,
) -> Callable:
  """The un-jitted step function (state, batch) -> (state, metrics collection)."""
  cfg = model_def.cfg
  loss_fn = make_loss_fn(model_def, config, rules)
  logit_scale_max = config.loss.logit_scale_max
  guard = config.nonfinite_guard
  if guard == 'auto':  # not resolved for a target by platform_defaults: the backend this process runs
    guard = platform_defaults.NONFINITE_GUARD.get(jax.default_backend(), 'select')

  def step_fn(state: TrainState, batch: dict[str, jax.Array]):
    with sharding.use_rules(rules):
      # The host fed the batch split over every mesh axis; reshard it by the 'batch' rule.
      batch = {key: sharding.constrain(v, ('batch',) + (None,) * (v.ndim - 1)) for key, v in batch.items()}
      targets, counts = _token_targets(config, cfg, state, batch)
      (total, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, targets)
    grad_norm = global_norm(grads)
    finite = jnp.isfinite(total) & jnp.isfinite(grad_norm)

    def update(params, opt_state, counts):
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      if cfg.contrastive == 'softmax':
        # CLIP clamps the log-temperature to [0, ln 100] after every optimiser step.
        params = {**params, 'logit_scale': jnp.clip(params['logit_scale'], 0.0, logit_scale_max)}
      return params, opt_state, counts

    # A NaN/Inf loss or gradient never reaches the state: the update (and the batch's IDF
    # counts) are dropped and the step recorded; the host stops or goes on (config.nonfinite).
    old = (state.params, state.opt_state, state.idf_counts)
    if guard == 'cond':  # the skipped branch costs nothing (CPU)
      params, opt_state, counts = jax.lax.cond(finite, update, lambda *_: old, state.params, state.opt_state, counts)
    else:  # a select fuses into the update's elementwise ops: no branch, so no host round trip (GPU)
      new = update(state.params, state.opt_state, counts)
      params, opt_state, counts = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    outputs = {'loss': total, **parts, 'grad_norm': grad_norm, 'learning_rate': schedule(state.step)}
    if 'logit_scale' in params:
      outputs['logit_scale'] = jnp.exp(params['logit_scale'])
    new_state = state.replace(
      step=state.step + 1,
      params=params,
      opt_state=opt_state,
      idf_counts=counts,
      nonfinite_updates=state.nonfinite_updates + (~finite).astype(jnp.int32),
      first_nonfinite_step=jnp.where((state.first_nonfinite_step < 0) & ~finite, state.step + 1, state.first_nonfinite_step),
    )
    return new_state, metrics_collection.single_from_model_output(**outputs)

  return step_fn


def metric_names(model_def: ModelDef) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(averaged, last-value) metric keys the step emits for this model."""
  averaged = ['loss', 'grad_norm'] + [t.name for t in losses.active_terms(model_def.cfg)]
  last = ['learning_rate'] + (['logit_scale'] if model_def.cfg.contrastive != 'none' else [])
  return tuple(averaged), tuple(last)


def check_accumulation(config: ml_collections.ConfigDict, mesh: Mesh, rules) -> None:
  """Each device's rows must split into accum_steps equal micro-batches."""
  k = int(config.optim.accum_steps)
  per_shard = config.data.global_batch_size // max(sharding.num_batch_shards(mesh, rules), 1)
  if k > 1 and per_shard % k:
    raise UserError(
      f'optim.accum_steps={k} does not divide the {per_shard} rows of each batch shard '
      f'(data.global_batch_size={config.data.global_batch_size}, mesh {dict(mesh.shape)})'
    )


def jit_train_step(model_def: ModelDef, tx, schedule, config, shardings: TrainState, mesh: Mesh, rules=None):
  """The step jitted with the state donated and sharded in and out; returns (fn, collection class)."""
  rules = tuple(tuple(r) for r in (rules if rules is not None else config.mesh.rules))
  check_accumulation(config, mesh, rules)
  collection = metrics.train_metrics_collection(*metric_names(model_def))
  step_fn = make_train_step(model_def, tx, schedule, config, collection, rules)
  jitted = jax.jit(
    step_fn,
    in_shardings=(shardings, sharding.input_sharding(mesh)),
    out_shardings=(shardings, sharding.replicated(mesh)),
    donate_argnums=(0,),
  )
  return jitted, collection
