"""The SuperCLIP trainer, top to bottom: guard rails, mesh, model + optimizer in their sharded
layout, restore, data, the jitted step, evaluators, the loop with metrics and checkpoints."""

from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections
from absl import logging

from superclip_jax import (
  checkpoint,
  flops,
  init_from,
  metric_writers,
  metrics,
  run_setup,
  sharding,
  storage,
  train_state,
  train_step,
  workdir_lock,
)
from superclip_jax.data import inputs
from superclip_jax.errors import UserError
from superclip_jax.evals import embed, registry
from superclip_jax.models.superclip import count_params


class NonFiniteError(RuntimeError):
  """A NaN or Inf loss or gradient with config.nonfinite='stop'."""


class DegradedRun(UserError):
  """Too many updates dropped as non-finite, or too many examples replaced as undecodable."""


def check_degradation(config: ml_collections.ConfigDict, done: int, skipped_updates: int, replaced: int, read: int) -> None:
  """Stop a run that would otherwise finish with exit 0 having mostly not trained, or not on its data.

  `replaced` and `read` are examples over every process. Each limit is a fraction with a floor
  (10 updates, 100 examples), so a short run is not stopped by a handful of bad steps or images.
  """
  if config.nonfinite == 'skip' and skipped_updates > max(10, config.nonfinite_max_skipped * done):
    raise DegradedRun(
      f'{skipped_updates} of {done} updates were dropped as non-finite (more than '
      f'nonfinite_max_skipped={config.nonfinite_max_skipped:g}): lower the learning rate, or raise '
      'the limit'
    )
  if replaced > max(100, config.data.max_replaced_fraction * read):
    raise DegradedRun(
      f'{replaced} of {read} examples read were undecodable and replaced (more than '
      f'data.max_replaced_fraction={config.data.max_replaced_fraction:g}): rebuild the shards '
      '(python -m superclip_jax.data.build) or raise the limit'
    )


def _writers(config: ml_collections.ConfigDict, workdir: str, start_step: int, loop: dict) -> metric_writers.MultiWriter:
  """metrics.jsonl + TensorBoard (+ W&B) on process 0; nothing on the others."""
  if jax.process_index() != 0:
    return metric_writers.MultiWriter([])
  jsonl = metric_writers.JsonlWriter(workdir, resume_step=start_step)
  if start_step and jsonl.dropped:
    logging.info(
      '%d metric rows logged after step %d dropped (the run went on past its last checkpoint)', jsonl.dropped, start_step
    )
  writers: list[metric_writers.MetricWriter] = [jsonl, metric_writers.TensorBoardWriter(workdir)]
  if config.wandb.project:
    name = config.wandb.name or storage.absolute(workdir).rstrip('/').split('/')[-1]
    writers.append(
      metric_writers.WandbWriter(
        config.wandb.project, config.wandb.entity, name, config.to_dict(), resume_id=loop.get('wandb_id')
      )
    )
  return metric_writers.MultiWriter(writers)


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
  """Train as the config says (resuming from workdir's checkpoints); returns the logged rows."""
  # Mesh, model, optimizer, IDF counts and the abstract state (the 'auto' settings resolved for this backend).
  setup = run_setup.prepare(config)
  lock = workdir_lock.lock_for_job(workdir)  # one writer per workdir: a second run stops here
  try:
    return _train(setup, workdir)
  finally:  # after every checkpoint and metric is written (_train closes them)
    if lock is not None:
      lock.release()


def _train(setup: run_setup.RunSetup, workdir: str) -> list[dict[str, Any]]:
  """The run itself, with the workdir's lock held."""
  config, mesh, rules, model_def = setup.config, setup.mesh, setup.rules, setup.model_def
  tx, schedule, idf_counts, target, shardings = setup.tx, setup.schedule, setup.idf_counts, setup.target, setup.shardings
  total_steps, global_batch = setup.total_steps, config.data.global_batch_size
  logging.info('mesh %s over %d devices (%d processes)', dict(mesh.shape), jax.device_count(), jax.process_count())
  logging.info(
    'model %s: %.2fM parameters; %d steps of %d samples',
    model_def.cfg.variant,
    count_params(model_def.shapes()) / 1e6,
    total_steps,
    global_batch,
  )

  # ---- Restore: the newest usable checkpoint, else a fresh state (weights-only init) -------
  ckpt = checkpoint.Checkpointer(workdir, config)
  restored = ckpt.restore_latest(target, config)
  loop: dict[str, Any] = {}
  if restored is not None:
    state, loop = restored
  else:
    state, _ = train_state.create_train_state(model_def, tx, idf_counts, mesh, rules)
    if config.init_from:
      loaded, _ = init_from.restore_params(config.init_from, target.params, config.init_image_tower_only, model_cfg=model_def.cfg)
      state = state.replace(params=init_from.merge(state.params, loaded))
  start_step = int(jax.device_get(state.step))
  if start_step >= total_steps:
    return _already_complete(workdir, ckpt, start_step)
  if start_step:
    logging.info('resuming at step %d from %s', start_step, ckpt.path(start_step))

  # ---- Data: this process's rows of each global batch, from the restored step on ----------
  rows = sharding.local_rows(global_batch, mesh)
  data = inputs.training_batches(config, rows, start_step=start_step)  # one batch per step: the step is the position

  writer = _writers(config, workdir, start_step, loop)
  writer.write_hparams(config.to_dict())

  # ---- Evaluators (config.evals) --------------------------------------------------------------
  evaluators = None
  if config.evals:
    evaluators = registry.Evaluators(config, embed.Embedder(model_def, mesh, rules, shardings.params))

  # ---- The jitted train step --------------------------------------------------------------
  step_fn, collection = train_step.jit_train_step(model_def, tx, schedule, config, shardings, mesh, rules)
  flops_per_step = flops.analytic_step_flops(model_def.cfg, global_batch)
  peak = flops.total_peak_flops(jax.devices())  # every chip of the job: MFU is the job's, not one chip's

  # ---- The loop ---------------------------------------------------------------------------
  history = []
  preempted_at = None
  accumulated = metrics.restore_accumulator(collection, loop.get('metrics'))
  skipped_examples = int(loop.get('skipped_examples', 0))  # undecodable examples replaced (this process)
  clock = loop.get('throughput', {})
  throughput = None
  preemption = checkpoint.PreemptionWatcher(ckpt.manager, config.checkpoint.preemption_check_every)
  profiling = False
  t_start = time.perf_counter()

  def loop_state(done: int) -> dict[str, Any]:
    out = {
      'data': data.get_state(),
      'metrics': metrics.accumulator_state(accumulated),
      'throughput': throughput.state(done) if throughput else clock,
      'skipped_examples': skipped_examples,
    }
    wandb = [w for w in writer.writers if isinstance(w, metric_writers.WandbWriter)]
    if wandb:
      out['wandb_id'] = wandb[0].run_id
    return out

  try:
    with jax.set_mesh(mesh):
      for step in range(start_step, total_steps):
        if config.profile.num_steps and step == config.profile.first_step:
          # xplane.pb for TensorBoard's profile plugin, and a Perfetto trace (.trace.json.gz).
          jax.profiler.start_trace(storage.join(storage.absolute(workdir), 'profile'), create_perfetto_trace=True)
          profiling = True
        local = next(data)
        skipped_examples += int(local.pop('skipped_examples', 0))
        local.pop('valid', None)
        batch = sharding.global_batch(local, mesh, global_batch)
        # A stray host<->device transfer inside the step is a silent slowdown on accelerators.
        with jax.transfer_guard('disallow'):
          state, step_metrics = step_fn(state, batch)
        accumulated = step_metrics if accumulated is None else accumulated.merge(step_metrics)
        done = step + 1
        if profiling and done >= config.profile.first_step + config.profile.num_steps:
          jax.block_until_ready(state.step)
          jax.profiler.stop_trace()
          profiling = False
          logging.info(
            'profile of steps %d-%d written to %s', config.profile.first_step + 1, done, storage.join(workdir, 'profile')
          )
        if throughput is None:
          # The first step includes compilation: time the rest only.
          jax.block_until_ready(state.step)
          logging.info('first step (with compilation) took %.1fs', time.perf_counter() - t_start)
          throughput = metrics.Throughput(
            global_batch,
            total_steps,
            clock.get('last_step', done),
            flops_per_step,
            peak or 0.0,
            elapsed=clock.get('elapsed', 0.0),
            untimed_steps=1 if 'last_step' in clock else 0,
          )
        stop = preemption.should_stop(done)
        boundary = done % config.log_every_steps == 0 or done == total_steps
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
          check_degradation(config, done, row['nonfinite_updates'], _over_processes(skipped_examples), done * global_batch)
        if saving:
          writer.flush()
          ckpt.save(done, state, loop_state(done), config)
        due = evaluators.due(done, total_steps) if evaluators and not stop else []
        if due:
          results = evaluators.run(state.params, due)
          writer.write_scalars(done, results)
          writer.flush()
          for key, value in sorted(results.items()):
            logging.info('step %d | %s %.4f', done, key, value)
          history.append({'step': done, **results})
        if stop:
          ckpt.wait()
          logging.warning('preempted: checkpoint of step %d saved to %s; exiting', done, ckpt.path(done))
          preempted_at = done
          break
  finally:
    if profiling:
      jax.profiler.stop_trace()
    preemption.restore_handler()
    ckpt.close()
    writer.close()
    data.close()  # stop Grain workers now, not at garbage collection
  if preempted_at is not None:
    raise checkpoint.Preempted(preempted_at, ckpt.path(preempted_at), int(config.checkpoint.preempt_exit_code))
  if history and jax.process_index() == 0 and history[-1]['step'] == total_steps:
    logging.info('%s', summary_table(history))
  return history


def _already_complete(workdir: str, ckpt: checkpoint.Checkpointer, step: int) -> list[dict[str, Any]]:
  """A rerun of a finished run: say so and show its final metrics again; nothing is trained or written."""
  ckpt.close()
  history = metric_writers.read_rows(workdir)
  if jax.process_index() == 0:
    logging.info('already complete at step %d (%s); raise --config.total_steps to train further', step, ckpt.path(step))
    if history:
      logging.info('%s', summary_table(history))
  return history


def _over_processes(count: int) -> int:
  """A per-process count summed over every process of the job (each calls this at the same step)."""
  if jax.process_count() == 1:
    return count
  import numpy as np
  from jax.experimental import multihost_utils

  return int(np.sum(multihost_utils.process_allgather(np.asarray([count], np.int64))))


def summary_table(history: list[dict[str, Any]]) -> str:
  """The final value of every logged metric (losses, temperature, evaluations) as a small table."""
  final: dict[str, Any] = {}
  for row in history:
    final.update({k: v for k, v in row.items() if k != 'step'})
  skip = set(metrics.TIMING_KEYS) | {'eta_seconds'}
  keys = [k for k in sorted(final) if k not in skip and not k.endswith('/seconds')]
  width = max(len(k) for k in keys) if keys else 0
  lines = [f'final metrics (step {history[-1]["step"]}):']
  lines += [f'  {k:<{width}}  {final[k]:.4f}' if isinstance(final[k], float) else f'  {k:<{width}}  {final[k]}' for k in keys]
  return '\n'.join(lines)


def _check_finite(state, config: ml_collections.ConfigDict, ckpt: checkpoint.Checkpointer) -> None:
  """With nonfinite='stop', end the run at the first NaN/Inf step (its update was never applied)."""
  bad_step = int(jax.device_get(state.first_nonfinite_step))
  if bad_step >= 0 and config.nonfinite == 'stop':
    good = ckpt.last_verified()
    where = (
      f'the last good checkpoint is {good}'
      if good
      else 'no checkpoint of this run is known good (none saved by it, or restored with matching fingerprints)'
    )
    raise NonFiniteError(
      f'non-finite loss or gradient at step {bad_step}; {where}. '
      'Lower the learning rate, or set --config.nonfinite=skip to drop such updates.'
    )


__all__ = ['run', 'NonFiniteError', 'DegradedRun', 'UserError', 'summary_table']
