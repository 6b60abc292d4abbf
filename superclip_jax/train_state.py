"""The train state, and its creation directly in its sharded layout.

Parameters stay a plain dict (what optax, Orbax and weight converters want); the NNX
module is rebuilt from it inside jit (models/superclip.ModelDef.bind).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from superclip_jax import idf, sharding
from superclip_jax.data import records
from superclip_jax.errors import UserError
from superclip_jax.models import variants
from superclip_jax.models.superclip import ModelDef


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimiser steps taken
  params: dict
  opt_state: Any
  idf_counts: dict  # exact 64-bit counts (idf.py); empty for a model without a token classifier
  nonfinite_updates: jax.Array  # int32: updates skipped for a NaN/Inf loss or gradient
  first_nonfinite_step: jax.Array  # int32: the first such step (counted from 1, as logged), -1 if none


def initial_idf_counts(
  config: ml_collections.ConfigDict, variant: str, offline_stats: str | None = None, shapes_only: bool = False
) -> dict[str, np.ndarray]:
  """Zero counts for online IDF, the dataset's counts for offline IDF, nothing otherwise.

  offline_stats: the .npz of document frequencies (default config.loss.idf_offline_stats).
  shapes_only: zeros for offline IDF too (the same shapes), to compile or time the step without the file.
  """
  if not variants.has_token_head(variant) or config.loss.idf == 'none':
    return {}
  if config.loss.idf == 'offline' and not shapes_only:
    path = offline_stats or config.loss.idf_offline_stats
    num_samples, doc_freq = records.load_doc_freq(path)
    if doc_freq.shape != (config.model.vocab_size,):
      raise UserError(f'{path}: doc_freq has shape {doc_freq.shape}, model vocab is {config.model.vocab_size}')
    return jax.tree.map(np.asarray, idf.from_ints(num_samples, doc_freq))
  return jax.tree.map(np.asarray, idf.zeros(config.model.vocab_size))


def _init_fn(model_def: ModelDef, tx: optax.GradientTransformation, idf_counts: dict):
  def init():
    params = model_def.init()
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      idf_counts=jax.tree.map(jnp.asarray, idf_counts),
      nonfinite_updates=jnp.zeros((), jnp.int32),
      first_nonfinite_step=jnp.full((), -1, jnp.int32),
    )

  return init


def state_shardings(abstract: TrainState, model_def: ModelDef, tx: optax.GradientTransformation, mesh: Mesh, rules) -> TrainState:
  """Shardings for every leaf, all from the parameters' logical axes.

  The optimizer is initialised (abstractly) on parameters annotated with their axes, so
  every optimizer leaf derived from a parameter (Adam's moments, also inside masks and
  multi_transform) carries that parameter's annotation; the rest is replicated.
  """
  logical = model_def.logical_axes()
  param_sh = sharding.tree_shardings(logical, abstract.params, mesh, rules)
  annotated = jax.eval_shape(tx.init, sharding.annotate(abstract.params, logical))
  opt_sh = sharding.shardings_from_annotations(annotated, mesh, rules)
  rep = sharding.replicated(mesh)
  return TrainState(
    step=rep,
    params=param_sh,
    opt_state=opt_sh,
    idf_counts=jax.tree.map(lambda _: rep, abstract.idf_counts),
    nonfinite_updates=rep,
    first_nonfinite_step=rep,
  )


def abstract_train_state(
  model_def: ModelDef, tx: optax.GradientTransformation, idf_counts: dict, mesh: Mesh, rules
) -> tuple[TrainState, TrainState]:
  """(ShapeDtypeStructs carrying their shardings, the shardings): nothing allocated."""
  abstract = jax.eval_shape(_init_fn(model_def, tx, idf_counts))
  shardings = state_shardings(abstract, model_def, tx, mesh, rules)
  target = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), abstract, shardings)
  return target, shardings


def create_train_state(
  model_def: ModelDef, tx: optax.GradientTransformation, idf_counts: dict, mesh: Mesh, rules
) -> tuple[TrainState, TrainState]:
  """Initialise the state inside jit with sharded outputs: no host ever holds the full model (the
  ModelDef carries the seed)."""
  _, shardings = abstract_train_state(model_def, tx, idf_counts, mesh, rules)
  with jax.set_mesh(mesh):
    state = jax.jit(_init_fn(model_def, tx, idf_counts), out_shardings=shardings)()
  return state, shardings
