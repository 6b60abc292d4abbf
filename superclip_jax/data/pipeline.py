"""The Grain input pipeline: tokenized ArrayRecord shards -> this process's rows of each global batch.

The records form one global sequence (Grain `MapDataset`): every shard set shuffled
with its seed and reshuffled every epoch, then mixed by weight. Global batch t is the
records [t*B, (t+1)*B) of that sequence, whatever the number of processes, devices or
worker processes. A process decodes only the rows its devices hold (sharding.local_rows).

So the position in the data is the step alone: resuming at step t on any number of
processes continues with exactly the batches an unbroken run would have seen, and the
checkpoint needs no per-process iterator state.

An image that fails to decode during training is replaced by a spare record far out
in the sequence (index + k * SPARE_STRIDE, beyond any run's length), chosen by the index
alone, and counted; an evaluation pass leaves it out instead (`valid` = False).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import sys
from typing import Any, Iterator, Sequence

import grain
import numpy as np
from absl import flags, logging

from superclip_jax.data import records, transforms
from superclip_jax.errors import UserError

SPARE_STRIDE = 10**12  # farther than any run reads (the 12.8B-sample recipe reads 1.28e10)
MAX_SPARES = 8  # consecutive bad spares before the data is declared unusable


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  shard_dirs: Sequence[str]
  global_batch_size: int
  rows: Sequence[tuple[int, int]]  # this process's row ranges [start, stop) of each global batch
  image_size: int
  context_length: int
  weights: Sequence[float] = ()  # mixture weights, one per shard dir (default: equal)
  long_context_length: int = 0  # > 0: emit 'token_ids' from the long caption (or the short one)
  train: bool = True  # shuffled, repeated, random crops; else one ordered pass with centre crops
  seed: int = 0
  workers: int = 0  # worker processes (each decodes whole batches)
  threads: int = 4  # decoding threads in this process when workers == 0
  prefetch: int = 2  # batches decoded ahead
  crop_scale: tuple[float, float] = (0.9, 1.0)
  max_examples: int = 0  # evaluation: only the first N records (0: all)


def host_cores() -> int:
  """Cores this training process may use: its CPU affinity (SLURM's --cpus-per-task binds it), or
  the machine's cores shared by the training processes on this host (LOCAL_WORLD_SIZE,
  SLURM_NTASKS_PER_NODE) when nothing binds it."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
  if cores == (os.cpu_count() or cores):
    for name in ('LOCAL_WORLD_SIZE', 'SLURM_NTASKS_PER_NODE'):
      value = os.environ.get(name, '').split('(')[0]  # SLURM may write '8(x2)'
      if value.isdigit() and int(value) > 1:
        return max(1, cores // int(value))
  return cores


def resolve_workers(workers: int | str) -> int:
  """data.workers as a number of Grain worker processes: 'auto' is every core this process has but
  one (the training loop's own), 0 (decode in threads) on a single core."""
  if isinstance(workers, str):
    if workers == 'auto':
      return host_cores() - 1
    if not workers.isdigit():
      raise UserError(f"data.workers={workers!r}: use 'auto' or a number of worker processes (0: threads)")
    workers = int(workers)
  if workers < 0:
    raise UserError(f"data.workers={workers}: use 'auto' or a number of worker processes >= 0 (0: threads)")
  return int(workers)


def check_compatible(manifests: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """All shard sets must share one tokenizer; returns its description."""
  first = manifests[0]['tokenizer']
  for m in manifests[1:]:
    if {k: v for k, v in m['tokenizer'].items() if k != 'spec'} != {k: v for k, v in first.items() if k != 'spec'}:
      raise UserError(f'shards in {m["directory"]} use tokenizer {m["tokenizer"]}, but {manifests[0]["directory"]} uses {first}')
  return first


def _source(manifest: dict[str, Any]) -> grain.MapDataset:
  paths = [s['path'] for s in manifest['shards'] if s['num_records']]
  if not paths:
    raise UserError(f'{manifest["directory"]}: the manifest lists no records')
  try:
    source = grain.sources.ArrayRecordDataSource(paths)
  except Exception as e:  # array_record raises bare RuntimeErrors naming nothing
    raise UserError(f'cannot open the shards of {manifest["directory"]}: {e}') from e
  return grain.MapDataset.source(source)


def record_sequence(config: PipelineConfig, manifests: Sequence[dict[str, Any]]) -> grain.MapDataset:
  """The global sequence of raw records: shuffled + repeated + mixed for training, ordered otherwise."""
  datasets = []
  for i, manifest in enumerate(manifests):
    ds = _source(manifest)
    if config.train:
      ds = ds.shuffle(seed=config.seed + 7919 * i).repeat(None)
    datasets.append(ds)
  if len(datasets) == 1:
    return datasets[0]
  if not config.train:
    raise UserError('a weighted mixture of shard sets is for training only')
  weights = list(config.weights) or [1.0] * len(datasets)
  if len(weights) != len(datasets):
    raise UserError(f'{len(weights)} mixture weights (data.weights) for {len(datasets)} shard sets')
  return grain.MapDataset.mix(datasets, weights=weights)


def group_id(key: str) -> tuple[int, int]:
  """Two non-negative int32 words identifying the image of a record key ('img#2' -> 'img').

  Retrieval sets keep several captions of an image as records 'KEY#i'; the evaluator
  groups them by this id after gathering from every process.
  """
  digest = hashlib.blake2b(key.split('#')[0].encode('utf-8'), digest_size=8).digest()
  value = int.from_bytes(digest, 'little')
  return value & 0x7FFFFFFF, (value >> 31) & 0x7FFFFFFF


class _BatchMaker:
  """Step t -> this process's rows of global batch t, decoded (runs in threads or worker processes)."""

  def __init__(self, config: PipelineConfig, records_ds: grain.MapDataset, tokenizer: dict[str, Any], num_records: int):
    self.config = config
    self.records = records_ds
    self.eot_id, self.pad_id = tokenizer['eot_id'], tokenizer['pad_id']
    self.num_records = num_records
    self._warned = 0

  def _parse(self, index: int) -> tuple[dict[str, Any] | None, str]:
    """The element at a global index, or (None, why) when it cannot be used."""
    c = self.config
    data = self.records[index]
    try:
      record = records.decode_record(data)
    except Exception as e:  # a damaged record: msgpack raises several types
      return None, f'record {index}: corrupt record ({type(e).__name__}: {e})'
    try:
      image = transforms.decode_jpeg(record['image'], min_side=c.image_size)
    except transforms.DecodeError as e:
      return None, f'record {index} ({record["key"]}): undecodable image ({e})'
    if c.train:
      image = transforms.random_resized_crop(image, c.image_size, np.random.default_rng([c.seed, index]), scale=c.crop_scale)
    else:
      image = transforms.resize_center_crop(image, c.image_size)
    out = {
      'images': image,
      'text': records.fit_ids(record['tokens'], c.context_length, eot_id=self.eot_id, pad_id=self.pad_id),
      'label': np.int32(record['label']),
    }
    if c.long_context_length:
      ids = record['long_tokens'] if len(record['long_tokens']) else record['tokens']
      out['token_ids'] = records.fit_ids(ids, c.long_context_length, eot_id=self.eot_id, pad_id=self.pad_id)
    if not c.train:
      out['group'] = np.asarray(group_id(str(record['key'])), np.int32)
    return out, ''

  def _warn(self, why: str) -> None:
    if self._warned < 10:
      self._warned += 1
      logging.warning('skipping a %s example: %s', 'training' if self.config.train else 'evaluation', why)

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    c = self.config
    elements, skipped = [], 0
    for start, stop in c.rows:
      for row in range(start, stop):
        index = step * c.global_batch_size + row
        if not c.train and index >= self.num_records:
          elements.append(None)  # padding past the end of an evaluation set
          continue
        element, why = self._parse(index)
        spare = index
        while element is None and c.train:
          skipped += 1
          self._warn(why)
          if spare - index >= MAX_SPARES * SPARE_STRIDE:
            raise RuntimeError(
              f'{MAX_SPARES} consecutive undecodable records from index {index} of '
              f'{list(c.shard_dirs)}: the shards look damaged ({why})'
            )
          spare += SPARE_STRIDE
          element, why = self._parse(spare)
        if element is None:
          skipped += 1
          self._warn(why)
        elements.append(element)
    return _stack(elements, skipped)


def _stack(elements: list[dict[str, Any] | None], skipped: int) -> dict[str, np.ndarray]:
  """Stack elements into a batch; a missing one (None) becomes zeros with valid = False."""
  template = next((e for e in elements if e is not None), None)
  if template is None:
    raise RuntimeError('a batch without a single usable example')
  batch = {k: np.stack([e[k] if e is not None else np.zeros_like(v) for e in elements]) for k, v in template.items()}
  batch['valid'] = np.asarray([e is not None for e in elements])
  batch['skipped_examples'] = np.int64(skipped)
  return batch


def _mark_flags_parsed(worker_index: int, worker_count: int) -> None:
  # Worker processes import absl-using code before any flags are parsed there.
  del worker_index, worker_count
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def num_batches(config: PipelineConfig, num_records: int) -> int:
  """Batches in one ordered pass (evaluation); training is unbounded."""
  if config.train:
    return sys.maxsize
  n = min(num_records, config.max_examples) if config.max_examples else num_records
  return math.ceil(n / config.global_batch_size)


class ShardBatches:
  """This process's batches from step `start_step` on; `get_state` is the next step."""

  def __init__(self, config: PipelineConfig, start_step: int = 0):
    self.config = config
    self.manifests = [records.read_manifest(d) for d in config.shard_dirs]
    check_compatible(self.manifests)
    self.num_records = sum(m['num_records'] for m in self.manifests)
    if config.max_examples and not config.train:
      self.num_records = min(self.num_records, config.max_examples)
    self._records = record_sequence(config, self.manifests)
    self._iterator = None
    self.set_state({'step': start_step})

  def _open(self, start: int) -> Iterator[dict[str, np.ndarray]]:
    c = self.config
    stop = num_batches(c, self.num_records)
    maker = _BatchMaker(c, self._records, self.tokenizer, self.num_records)
    ds = grain.MapDataset.range(start, max(stop, start)).map(maker)
    if c.workers > 0:
      # Grain reads absl flags when it starts workers; outside an absl app (a notebook, a
      # test) nothing parsed them, in this process or in the workers.
      _mark_flags_parsed(0, 1)
      it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)).mp_prefetch(
        grain.MultiprocessingOptions(num_workers=c.workers, per_worker_buffer_size=max(c.prefetch, 1)),
        worker_init_fn=_mark_flags_parsed,
      )
    else:
      # Each thread decodes a whole batch; the buffer holds at least one batch per thread.
      it = ds.to_iter_dataset(grain.ReadOptions(num_threads=c.threads, prefetch_buffer_size=max(c.prefetch, c.threads, 1)))
    return iter(it)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._iterator)
    self._step += 1
    return batch

  def close(self) -> None:
    """Stop worker processes and prefetch threads now, rather than whenever GC gets to them."""
    close = getattr(self._iterator, 'close', None)
    if close is not None:
      close()

  def __enter__(self) -> 'ShardBatches':
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def get_state(self) -> dict[str, int]:
    return {'step': self._step}

  def set_state(self, state: dict[str, Any]) -> None:
    if self._iterator is not None:
      self.close()
    self._step = int(state['step'])
    self._iterator = self._open(self._step)

  @property
  def tokenizer(self) -> dict[str, Any]:
    return self.manifests[0]['tokenizer']

  @property
  def class_names(self) -> list[str]:
    return list(self.manifests[0].get('class_names') or ())
