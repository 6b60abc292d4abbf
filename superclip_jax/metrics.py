"""Training metrics: a clu collection accumulated on device, its state for exact resume,
throughput and the console line."""

from __future__ import annotations

import time
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging
from clu import metrics as clu_metrics

from superclip_jax import losses


def train_metrics_collection(averaged: tuple[str, ...], last: tuple[str, ...]) -> type[clu_metrics.Collection]:
  """A clu Collection: `averaged` keys are means over the steps between two log lines,
  `last` keys the latest step's value. Built per run, since CLIP has no token_loss and
  SuperClass no contrastive_loss."""
  fields = {k: clu_metrics.Average.from_output(k) for k in averaged}
  fields.update({k: clu_metrics.LastValue.from_output(k) for k in last})
  return clu_metrics.Collection.create(**fields)


def accumulator_state(accumulated) -> list[list[Any]] | None:
  """The accumulated metrics between two log points as JSON-able [dtype, value] pairs (exact)."""
  if accumulated is None:
    return None
  return [[str(np.asarray(x).dtype), np.asarray(x).tolist()] for x in jax.tree.leaves(jax.device_get(accumulated))]


def restore_accumulator(collection: type[clu_metrics.Collection], state: list[list[Any]] | None):
  """The accumulated metrics saved by `accumulator_state` (None stays None)."""
  if state is None:
    return None
  treedef = jax.tree.structure(collection.empty())
  return jax.tree.unflatten(treedef, [np.asarray(v, dtype) for dtype, v in state])


class Throughput:
  """Images/s and ETA from wall-clock time between log points, and model FLOP utilisation.

  `elapsed` carries the time of steps run before a preemption, so the first row after a
  resume still averages the whole window (its timing comes from two processes' clocks).
  """

  def __init__(
    self,
    global_batch_size: int,
    total_steps: int,
    start_step: int,
    flops_per_step: float = 0.0,
    peak_flops: float = 0.0,
    elapsed: float = 0.0,
    untimed_steps: int = 0,
  ):
    # untimed_steps: steps of the window whose time `elapsed` does not hold (a resumed run's
    # first step, which compiles): left out of the first row's count, not counted as free.
    self.untimed = untimed_steps
    self.batch = global_batch_size
    self.total = total_steps
    self.last_step = start_step
    self.elapsed_before = elapsed
    self.last_time = time.perf_counter()
    self.flops_per_step = flops_per_step
    self.peak_flops = peak_flops

  def state(self, step: int) -> dict[str, Any]:
    """What a checkpoint at `step` keeps: the window's start and the time already spent in it."""
    return {'last_step': self.last_step, 'elapsed': self.elapsed_before + time.perf_counter() - self.last_time, 'step': step}

  def update(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    dt = max(now - self.last_time + self.elapsed_before, 1e-9)
    steps = step - self.last_step - self.untimed
    self.last_step, self.last_time, self.elapsed_before, self.untimed = step, now, 0.0, 0
    if steps <= 0:  # a row right after a resume's first step: no timed step yet
      return {}
    steps_per_sec = steps / dt
    row = {
      'steps_per_sec': steps_per_sec,
      'images_per_sec': steps_per_sec * self.batch,
      'eta_seconds': (self.total - step) / steps_per_sec,
    }
    if self.flops_per_step:
      row['model_tflops_per_sec'] = self.flops_per_step * steps_per_sec / 1e12
      if self.peak_flops:
        row['mfu'] = self.flops_per_step * steps_per_sec / self.peak_flops
    return row


TIMING_KEYS = ('steps_per_sec', 'images_per_sec', 'eta_seconds', 'model_tflops_per_sec', 'mfu')


def console_line(step: int, total: int, row: Mapping[str, float]) -> str:
  """One human-readable line: step, losses, throughput, ETA."""
  eta = row.get('eta_seconds', 0.0)
  parts = [f'step {step}/{total}']
  for key in ('loss', *(t.name for t in losses.LOSS_TERMS)):
    if key in row:
      parts.append(f'{key} {row[key]:.4f}')
  if 'logit_scale' in row:
    parts.append(f'scale {row["logit_scale"]:.2f}')
  if 'images_per_sec' in row:
    parts.append(f'{row["images_per_sec"]:.1f} img/s')
  if 'mfu' in row:
    parts.append(f'MFU {100 * row["mfu"]:.1f}%')
  parts.append(f'eta {int(eta) // 3600}h{int(eta) % 3600 // 60:02d}m{int(eta) % 60:02d}s')
  return ' | '.join(parts)


def log_console(line: str):
  logging.info('%s', line)
