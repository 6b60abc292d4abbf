"""Where metrics go: metrics.jsonl, TensorBoard event files, optionally Weights & Biases.

One small interface (`MetricWriter`) with one class per destination, combined by
`MultiWriter`. Only process 0 writes. Each destination works with a bucket workdir:
metrics.jsonl is rewritten whole (object stores cannot append), TensorBoard events are
written to a local staging folder and uploaded at every flush.
"""

from __future__ import annotations

import abc
import json
import os
import shutil
import tempfile
from typing import Any, Mapping

import numpy as np
from absl import logging

from superclip_jax import storage

METRICS_FILE = 'metrics.jsonl'
CONFIG_FILE = 'config.json'


class MetricWriter(abc.ABC):
  """Receives scalar rows and the run's hyper-parameters."""

  @abc.abstractmethod
  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """One row of scalars logged at `step`."""

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """The run's config (once, at start)."""

  def flush(self) -> None:
    """Make everything written so far durable."""

  def close(self) -> None:
    self.flush()


def _to_python(v):
  v = np.asarray(v)
  return v.item() if v.ndim == 0 else v.tolist()


def read_rows(workdir: str) -> list[dict[str, Any]]:
  """The rows of WORKDIR/metrics.jsonl (empty if there is none yet).

  A line that is not a JSON object (the last row torn by a kill mid-write) is dropped with a
  warning naming the file and line; the writer then rewrites the file without it.
  """
  return _read_rows(workdir)[0]


def _read_rows(workdir: str) -> tuple[list[dict[str, Any]], int]:
  """(rows, number of unreadable lines dropped)."""
  path = storage.join(workdir, METRICS_FILE)
  if not storage.exists(path):
    return [], 0
  rows, dropped = [], 0
  for number, line in enumerate(storage.read_text(path).splitlines(), 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except ValueError:
      row = None
    if not isinstance(row, dict):
      logging.warning('%s line %d is not a metrics row (torn by an interrupted write?); dropped: %.80s', path, number, line)
      dropped += 1
      continue
    rows.append(row)
  return rows, dropped


class JsonlWriter(MetricWriter):
  """One JSON object per row in WORKDIR/metrics.jsonl; rows after `resume_step` are dropped first."""

  def __init__(self, workdir: str, resume_step: int | None = None):
    self.path = storage.join(workdir, METRICS_FILE)
    self.remote = storage.is_remote(workdir)
    storage.makedirs(workdir)
    rows, unreadable = _read_rows(workdir)
    kept = rows if resume_step is None else [r for r in rows if r.get('step', 0) <= resume_step]
    self.dropped = len(rows) - len(kept)
    self._lines = [json.dumps(r) + '\n' for r in kept]
    if self.dropped or unreadable or self.remote:
      storage.write_text(self.path, ''.join(self._lines))
    self._file = None if self.remote else open(self.path, 'a')
    self._dirty = False

  def write_scalars(self, step, scalars):
    row = {'step': int(step), **{k: _to_python(v) for k, v in scalars.items()}}
    line = json.dumps(row) + '\n'
    if self._file is not None:
      self._file.write(line)
      self._file.flush()
    else:
      self._lines.append(line)
      self._dirty = True

  def write_hparams(self, hparams):
    storage.write_text(storage.join(os.path.dirname(self.path), CONFIG_FILE), json.dumps(hparams, indent=2, default=str))

  def flush(self):
    if self._file is not None:
      self._file.flush()
    elif self._dirty:
      storage.write_text(self.path, ''.join(self._lines))
      self._dirty = False

  def close(self):
    self.flush()
    if self._file is not None:
      self._file.close()
      self._file = None


class TensorBoardWriter(MetricWriter):
  """Scalars as TensorBoard events (tensorboardX, no TensorFlow): `tensorboard --logdir WORKDIR`."""

  def __init__(self, workdir: str):
    from tensorboardX import SummaryWriter  # imported lazily: only the writing process needs it

    self.workdir = workdir
    self.remote = storage.is_remote(workdir)
    self._staging = tempfile.mkdtemp(prefix='superclip_tb_') if self.remote else None
    self._tb = SummaryWriter(logdir=self._staging or storage.absolute(workdir), flush_secs=30)

  def write_scalars(self, step, scalars):
    for k, v in scalars.items():
      if isinstance(v, (int, float, np.number)) or (hasattr(v, 'ndim') and np.ndim(v) == 0):
        self._tb.add_scalar(k, float(v), int(step))

  def flush(self):
    self._tb.flush()
    if self.remote:
      for name in os.listdir(self._staging):
        with open(os.path.join(self._staging, name), 'rb') as src:
          storage.Path(storage.join(self.workdir, name)).write_bytes(src.read())

  def close(self):
    self._tb.close()
    self.flush()
    if self._staging:
      shutil.rmtree(self._staging, ignore_errors=True)


class WandbWriter(MetricWriter):
  """Rows to a Weights & Biases run (config.wandb.project; `pip install superclip_jax[wandb]`)."""

  def __init__(
    self, project: str, entity: str = '', name: str = '', config: Mapping[str, Any] | None = None, resume_id: str | None = None
  ):
    import wandb

    self._run = wandb.init(
      project=project,
      entity=entity or None,
      name=name or None,
      config=dict(config or {}),
      id=resume_id,
      resume='allow' if resume_id else None,
    )

  @property
  def run_id(self) -> str:
    return self._run.id

  def write_scalars(self, step, scalars):
    self._run.log({k: _to_python(v) for k, v in scalars.items()}, step=int(step))

  def close(self):
    self._run.finish()


class MultiWriter(MetricWriter):
  """Every row to every writer; does nothing when given none (processes other than 0)."""

  def __init__(self, writers: list[MetricWriter]):
    self.writers = writers

  def write_scalars(self, step, scalars):
    for w in self.writers:
      w.write_scalars(step, scalars)

  def write_hparams(self, hparams):
    for w in self.writers:
      w.write_hparams(hparams)

  def flush(self):
    for w in self.writers:
      w.flush()

  def close(self):
    for w in self.writers:
      w.close()
