"""Training metrics: a clu collection accumulated on device, written to JSONL, TensorBoard and the console.

clu's `metric_writers` package imports TensorFlow in its __init__; only its interface
module is loaded here (it needs nothing but numpy), and the writer below implements it
with tensorboardX, so TensorFlow is never a dependency.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging
from clu import metrics as clu_metrics


def _load_clu_writer_interface():
  spec = importlib.util.find_spec('clu')
  path = os.path.join(spec.submodule_search_locations[0], 'metric_writers', 'interface.py')
  module_spec = importlib.util.spec_from_file_location('_clu_metric_writer_interface', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.MetricWriter


MetricWriter = _load_clu_writer_interface()


def train_metrics_collection(averaged: tuple[str, ...], last: tuple[str, ...]) -> type[clu_metrics.Collection]:
  """A clu Collection: `averaged` keys are means over the steps between two log lines,
  `last` keys the latest step's value. Built per run, since CLIP has no cls_loss and
  SuperClass no contrastive_loss."""
  fields = {k: clu_metrics.Average.from_output(k) for k in averaged}
  fields.update({k: clu_metrics.LastValue.from_output(k) for k in last})
  return clu_metrics.Collection.create(**fields)


class JsonlTensorBoardWriter(MetricWriter):
  """Appends one JSON object per step to DIR/metrics.jsonl and writes TensorBoard events to DIR."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      from tensorboardX import SummaryWriter  # imported lazily: only the writing process needs it
      self._tb = SummaryWriter(logdir=workdir, flush_secs=30)
      self._file = open(self.path, 'a')

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    if not self.enabled:
      return
    row = {'step': int(step)}
    row.update({k: _to_python(v) for k, v in scalars.items()})
    self._file.write(json.dumps(row) + '\n')
    self._file.flush()
    for k, v in row.items():
      if k != 'step' and isinstance(v, (int, float)):
        self._tb.add_scalar(k, v, int(step))

  def write_summaries(self, step, values, metadata=None):
    self.write_scalars(step, {k: v for k, v in values.items() if np.ndim(v) == 0})

  def write_texts(self, step, texts):
    if self.enabled:
      for k, v in texts.items():
        self._tb.add_text(k, v, int(step))

  def write_hparams(self, hparams):
    if self.enabled:
      with open(os.path.join(os.path.dirname(self.path), 'config.json'), 'w') as f:
        json.dump(hparams, f, indent=2, default=str)

  def write_images(self, step, images):
    if self.enabled:
      for k, v in images.items():
        self._tb.add_images(k, np.asarray(v), int(step), dataformats='NHWC')

  def write_histograms(self, step, arrays, num_buckets=None):
    if self.enabled:
      for k, v in arrays.items():
        self._tb.add_histogram(k, np.asarray(v), int(step))

  def write_videos(self, step, videos):
    raise NotImplementedError('videos are not written by this trainer')

  def write_audios(self, step, audios, *, sample_rate):
    raise NotImplementedError('audio is not written by this trainer')

  def flush(self):
    if self.enabled:
      self._file.flush()
      self._tb.flush()

  def close(self):
    if self.enabled:
      self._file.close()
      self._tb.close()


def truncate_jsonl(path: str, last_step: int) -> int:
  """Drop rows logged after `last_step` (a run that died after its last checkpoint); returns rows dropped."""
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    lines = f.readlines()
  keep = [line for line in lines if line.strip() and json.loads(line).get('step', 0) <= last_step]
  if len(keep) != len(lines):
    with open(path + '.tmp', 'w') as f:
      f.writelines(keep)
    os.replace(path + '.tmp', path)
  return len(lines) - len(keep)


def _to_python(v):
  v = np.asarray(jax.device_get(v))
  if v.ndim == 0:
    return v.item()
  return v.tolist()


class Throughput:
  """Images/s and ETA from wall-clock time between log points (measured on the host)."""

  def __init__(self, global_batch_size: int, total_steps: int, start_step: int):
    self.batch = global_batch_size
    self.total = total_steps
    self.last_step = start_step
    self.last_time = time.perf_counter()

  def update(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    dt = max(now - self.last_time, 1e-9)
    steps = max(step - self.last_step, 1)
    self.last_step, self.last_time = step, now
    steps_per_sec = steps / dt
    return {'steps_per_sec': steps_per_sec,
            'images_per_sec': steps_per_sec * self.batch,
            'eta_seconds': (self.total - step) / steps_per_sec}


def console_line(step: int, total: int, row: Mapping[str, float]) -> str:
  """One human-readable line: step, losses, throughput, ETA."""
  eta = row.get('eta_seconds', 0.0)
  parts = [f'step {step}/{total}']
  for key in ('loss', 'contrastive_loss', 'cls_loss'):
    if key in row:
      parts.append(f'{key} {row[key]:.4f}')
  if 'logit_scale' in row:
    parts.append(f'scale {row["logit_scale"]:.2f}')
  if 'images_per_sec' in row:
    parts.append(f'{row["images_per_sec"]:.1f} img/s')
  parts.append(f'eta {int(eta) // 3600}h{int(eta) % 3600 // 60:02d}m{int(eta) % 60:02d}s')
  return ' | '.join(parts)


def log_console(line: str):
  logging.info('%s', line)
