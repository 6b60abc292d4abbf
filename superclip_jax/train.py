"""The SuperCLIP trainer, top to bottom: guard rails, mesh, data, model + optimizer in their
sharded layout, the jitted step, the loop with metrics."""

from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from superclip_jax import config_defaults, metrics, optim, sharding, train_state
from superclip_jax.data import synthetic
from superclip_jax.models.superclip import ModelConfig, ModelDef, count_params


def build_data(config: ml_collections.ConfigDict):
  """The training data source: an object with batch(step, global_batch, process_index, process_count)."""
  if config.data.source == 'synthetic':
    return synthetic.SyntheticImageText(
        image_size=config.data.synthetic_image_size or config.model.image_size,
        vocab_size=config.model.vocab_size, context_length=config.model.context_length,
        sot_id=config.loss.sot_id, eot_id=config.loss.eot_id, pad_id=config.loss.pad_id,
        seed=config.seed)
  raise ValueError(f'unknown data.source {config.data.source!r}')


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
  """Train as the config says, writing metrics to workdir; returns the logged metric rows."""
  # ---- Guard rails --------------------------------------------------------------------
  # Random bits generated shard-locally: sharded init gives the same values on any mesh.
  jax.config.update('jax_threefry_partitionable', True)

  config_defaults.validate(config)
  total_steps = config_defaults.resolved_total_steps(config)
  is_main = jax.process_index() == 0
  writer = metrics.JsonlTensorBoardWriter(workdir, enabled=is_main)
  writer.write_hparams(config.to_dict())

  # ---- Mesh -----------------------------------------------------------------------------
  mesh = sharding.make_mesh(config.mesh.shape)
  rules = tuple(tuple(r) for r in config.mesh.rules)
  global_batch = config.data.global_batch_size
  if global_batch % sharding.num_batch_shards(mesh):
    raise ValueError(f'data.global_batch_size={global_batch} is not divisible by the '
                     f'{sharding.num_batch_shards(mesh)} batch shards of mesh {dict(mesh.shape)}')
  logging.info('mesh %s over %d devices (%d processes)', dict(mesh.shape), jax.device_count(),
               jax.process_count())

  # ---- Data -----------------------------------------------------------------------------
  data = build_data(config)

  # ---- Model and optimizer, created directly in their sharded layout ----------------------
  model_def = ModelDef(ModelConfig.from_config(config), seed=config.seed)
  tx, schedule = optim.make_optimizer(config, model_def.shapes(), model_def.logical_axes(), total_steps)
  idf_counts = train_state.initial_idf_counts(config, model_def.cfg.variant)
  state, shardings = train_state.create_train_state(model_def, tx, idf_counts, mesh, rules, config.seed)
  logging.info('model %s: %.2fM parameters; %d steps of %d samples', model_def.cfg.variant,
               count_params(model_def.shapes()) / 1e6, total_steps, global_batch)

  # ---- The jitted train step --------------------------------------------------------------
  train_step, _ = train_state.jit_train_step(model_def, tx, schedule, config, shardings, mesh)

  # ---- The loop ---------------------------------------------------------------------------
  history = []
  accumulated = None
  start_step = int(jax.device_get(state.step))
  throughput = None
  t_start = time.perf_counter()
  with jax.set_mesh(mesh):
    for step in range(start_step, total_steps):
      local = data.batch(step, global_batch, jax.process_index(), jax.process_count())
      batch = sharding.global_batch(local, mesh)
      # A stray host<->device transfer inside the step is a silent slowdown on accelerators.
      with jax.transfer_guard('disallow'):
        state, step_metrics = train_step(state, batch)
      accumulated = step_metrics if accumulated is None else accumulated.merge(step_metrics)
      done = step + 1
      if throughput is None:
        # The first step includes compilation: time the rest only.
        jax.block_until_ready(state.step)
        logging.info('first step (with compilation) took %.1fs', time.perf_counter() - t_start)
        throughput = metrics.Throughput(global_batch, total_steps, done)
      if done % config.log_every_steps == 0 or done == total_steps:
        row = {k: float(v) for k, v in jax.device_get(accumulated.compute()).items()}
        if done > throughput.last_step:
          row.update(throughput.update(done))
        accumulated = None
        writer.write_scalars(done, row)
        metrics.log_console(metrics.console_line(done, total_steps, row))
        history.append({'step': done, **row})
  writer.close()
  return history
