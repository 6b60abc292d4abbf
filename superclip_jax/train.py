"""The SuperCLIP trainer, top to bottom: guard rails, mesh, data, model + optimizer in their
sharded layout, the jitted step, the loop with metrics."""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import ml_collections
from absl import logging

from superclip_jax import checkpoint, config_defaults, metrics, optim, sharding, train_state
from superclip_jax.data import pipeline, records, synthetic
from superclip_jax.evals import runner
from superclip_jax.models.superclip import ModelConfig, ModelDef, count_params


def shard_dirs(config: ml_collections.ConfigDict) -> list[str]:
  """The comma-separated data.shards as a list of directories."""
  return [d.strip() for d in config.data.shards.split(',') if d.strip()]


def build_data(config: ml_collections.ConfigDict):
  """This process's training batches: an iterator with get_state/set_state."""
  global_batch = config.data.global_batch_size
  if global_batch % jax.process_count():
    raise ValueError(f'data.global_batch_size={global_batch} does not split over {jax.process_count()} processes')
  if config.data.source == 'synthetic':
    source = synthetic.SyntheticImageText(
        image_size=config.data.synthetic_image_size or config.model.image_size,
        vocab_size=config.model.vocab_size, context_length=config.model.context_length,
        sot_id=config.loss.sot_id, eot_id=config.loss.eot_id, pad_id=config.loss.pad_id,
        seed=config.seed)
    return synthetic.SyntheticBatches(source, global_batch, jax.process_index(), jax.process_count())
  batches = pipeline.ShardBatches(pipeline.PipelineConfig(
      shard_dirs=shard_dirs(config),
      weights=tuple(config.data.weights), batch_size=global_batch // jax.process_count(),
      image_size=config.model.image_size, context_length=config.model.context_length,
      long_context_length=config.data.long_context_length if config.data.long_captions else 0,
      train=True, seed=config.seed, process_index=jax.process_index(), process_count=jax.process_count(),
      workers=config.data.workers, worker_buffer=config.data.worker_buffer,
      crop_scale=tuple(config.data.crop_scale)))
  check_tokenizer_matches(config, batches.tokenizer, config.data.shards)
  return batches


def check_tokenizer_matches(config: ml_collections.ConfigDict, tokenizer: dict, where: str) -> None:
  """The shards' tokenizer must be the one the model and loss are configured for."""
  expected = {'model.vocab_size': (config.model.vocab_size, tokenizer['vocab_size']),
              'loss.sot_id': (config.loss.sot_id, tokenizer['sot_id']),
              'loss.eot_id': (config.loss.eot_id, tokenizer['eot_id']),
              'loss.pad_id': (config.loss.pad_id, tokenizer['pad_id'])}
  wrong = {k: v for k, v in expected.items() if v[0] != v[1]}
  if wrong:
    detail = ', '.join(f'config.{k}={a} but the shards have {b}' for k, (a, b) in wrong.items())
    raise ValueError(f'tokenizer mismatch with {where}: {detail}')


def offline_idf_stats_path(config: ml_collections.ConfigDict) -> str:
  """An explicit stats file, else the document frequencies the shard builder wrote."""
  if config.loss.idf_offline_stats or config.loss.idf != 'offline':
    return config.loss.idf_offline_stats
  dirs = shard_dirs(config)
  if len(dirs) != 1:
    raise ValueError('loss.idf=offline over a mixture of shard sets needs loss.idf_offline_stats')
  return os.path.join(dirs[0], records.DOC_FREQ)


class NonFiniteError(RuntimeError):
  """A NaN or Inf loss or gradient with config.nonfinite='stop'."""


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
  """Train as the config says (resuming from workdir's checkpoints); returns the logged rows."""
  # ---- Guard rails --------------------------------------------------------------------
  # Random bits generated shard-locally: sharded init gives the same values on any mesh.
  jax.config.update('jax_threefry_partitionable', True)

  config_defaults.validate(config)
  total_steps = config_defaults.resolved_total_steps(config)
  is_main = jax.process_index() == 0

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
  idf_counts = train_state.initial_idf_counts(config, model_def.cfg.variant, offline_idf_stats_path(config))
  state, shardings = train_state.create_train_state(model_def, tx, idf_counts, mesh, rules, config.seed)
  logging.info('model %s: %.2fM parameters; %d steps of %d samples', model_def.cfg.variant,
               count_params(model_def.shapes()) / 1e6, total_steps, global_batch)

  # ---- Restore: the newest usable checkpoint, else weights-only init ----------------------
  ckpt = checkpoint.Checkpointer(workdir, config)
  target = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), state, shardings)
  restored = ckpt.restore_latest(target, data, config)
  if restored is not None:
    state = restored
  elif config.init_from:
    loaded = checkpoint.load_init_params(config.init_from)
    params = checkpoint.merge_init_params(jax.device_get(state.params), loaded,
                                          config.init_image_tower_only, config.init_from)
    state = state.replace(params=jax.device_put(params, shardings.params))
  start_step = int(jax.device_get(state.step))
  writer = metrics.JsonlTensorBoardWriter(workdir, enabled=is_main)
  if is_main:
    dropped = metrics.truncate_jsonl(writer.path, start_step)
    if start_step:
      logging.info('resuming at step %d from %s%s', start_step, ckpt.path(start_step),
                   f' ({dropped} metric rows after it dropped)' if dropped else '')
  writer.write_hparams(config.to_dict())

  # ---- Evaluators (config.evals) --------------------------------------------------------------
  evaluators = runner.Evaluators(config, model_def, mesh, shardings.params) if config.evals else None

  # ---- The jitted train step --------------------------------------------------------------
  train_step, _ = train_state.jit_train_step(model_def, tx, schedule, config, shardings, mesh)

  # ---- The loop ---------------------------------------------------------------------------
  history = []
  accumulated = None
  skipped_examples = 0  # undecodable examples left out by this process's pipeline
  throughput = None
  preemption = checkpoint.PreemptionWatcher(ckpt.manager, config.checkpoint.preemption_check_every)
  t_start = time.perf_counter()
  try:
    with jax.set_mesh(mesh):
      for step in range(start_step, total_steps):
        local = next(data)
        skipped_examples += int(local.pop('skipped_examples', 0))
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
        stop = preemption.should_stop(done)
        boundary = done % config.log_every_steps == 0 or done == total_steps or stop
        saving = stop or ckpt.due(done, total_steps)
        if boundary or saving:
          _check_finite(state, config, ckpt)
        if boundary:
          row = {k: float(v) for k, v in jax.device_get(accumulated.compute()).items()}
          row['data/skipped_examples'] = skipped_examples
          row['nonfinite_updates'] = int(jax.device_get(state.nonfinite_updates))
          if done > throughput.last_step:
            row.update(throughput.update(done))
          accumulated = None
          writer.write_scalars(done, row)
          metrics.log_console(metrics.console_line(done, total_steps, row))
          history.append({'step': done, **row})
        if saving:
          ckpt.save(done, state, data, config)
        due = evaluators.due(done, total_steps) if evaluators and not stop else []
        if due:
          results = evaluators.run(state.params, due)
          writer.write_scalars(done, results)
          for key, value in sorted(results.items()):
            logging.info('step %d | %s %.4f', done, key, value)
          history.append({'step': done, **results})
        if stop:
          ckpt.wait()
          logging.warning('preempted: checkpoint of step %d saved to %s; exiting', done, ckpt.path(done))
          break
  finally:
    preemption.restore_handler()
    ckpt.close()
    writer.close()
    if hasattr(data, 'close'):
      data.close()  # stop Grain workers now, not at garbage collection
  return history


def _check_finite(state, config: ml_collections.ConfigDict, ckpt: checkpoint.Checkpointer) -> None:
  """With nonfinite='stop', end the run at the first NaN/Inf step (its update was never applied)."""
  bad_step = int(jax.device_get(state.first_nonfinite_step))
  if bad_step >= 0 and config.nonfinite == 'stop':
    steps = ckpt.steps()
    last = ckpt.path(steps[-1]) if steps else 'none yet'
    raise NonFiniteError(f'non-finite loss or gradient at step {bad_step}; the last good checkpoint is {last}. '
                         "Lower the learning rate, or set --config.nonfinite=skip to drop such updates.")
