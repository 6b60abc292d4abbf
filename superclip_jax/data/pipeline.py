"""The Grain input pipeline: tokenized ArrayRecord shards -> per-process uint8 batches.

Order of operations (Grain `MapDataset`, measured faster than its `DataLoader` here):
source -> seeded global shuffle, reshuffled every epoch (repeat) -> weighted mixture of
shard sets -> this process's slice (index p::P) -> decode + crop with a per-element seed
-> skip-and-count undecodable images while batching -> worker processes -> prefetch.
Every element is a function of (seed, global index), so `get_state`/`set_state` resume
exactly, mid-epoch or across an epoch boundary, with or without workers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import grain
import numpy as np
from absl import flags, logging

from superclip_jax.data import records, transforms


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  shard_dirs: Sequence[str]
  batch_size: int  # per process
  image_size: int
  context_length: int
  weights: Sequence[float] = ()  # mixture weights, one per shard dir (default: equal)
  long_context_length: int = 0  # > 0: emit 'cls_text' from the long caption (or the short one)
  train: bool = True  # shuffle + repeat + random crop; else one ordered pass with centre crops
  seed: int = 0
  process_index: int = 0
  process_count: int = 1
  workers: int = 0
  worker_buffer: int = 2
  crop_scale: tuple[float, float] = (0.9, 1.0)
  drop_remainder: bool = True


def check_compatible(manifests: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """All shard sets must share one tokenizer; returns its description."""
  first = manifests[0]['tokenizer']
  for m in manifests[1:]:
    if {k: v for k, v in m['tokenizer'].items() if k != 'spec'} != {k: v for k, v in first.items() if k != 'spec'}:
      raise ValueError(f"shards in {m['directory']} use tokenizer {m['tokenizer']}, but "
                       f"{manifests[0]['directory']} uses {first}")
  return first


def _source(manifest: dict[str, Any]) -> grain.MapDataset:
  paths = [s['path'] for s in manifest['shards'] if s['num_records']]
  if not paths:
    raise ValueError(f"{manifest['directory']}: the manifest lists no records")
  try:
    source = grain.sources.ArrayRecordDataSource(paths)
  except Exception as e:  # array_record raises bare RuntimeErrors naming nothing
    raise ValueError(f"cannot open the shards of {manifest['directory']}: {e}") from e
  return grain.MapDataset.source(source)


class _Parse:
  """Record bytes -> training element, or a skip marker when the image does not decode."""

  def __init__(self, config: PipelineConfig, tokenizer: dict[str, Any]):
    self.config = config
    self.eot_id, self.pad_id = tokenizer['eot_id'], tokenizer['pad_id']

  def __call__(self, data: bytes, rng: np.random.Generator | None = None) -> dict[str, Any]:
    c = self.config
    try:
      record = records.decode_record(data)
    except Exception as e:  # a damaged record: msgpack raises several types
      return {'_skip': 'corrupt_record', '_key': f'{type(e).__name__}: {e}'}
    try:
      image = transforms.decode_jpeg(record['image'], min_side=c.image_size)
    except transforms.DecodeError as e:
      return {'_skip': 'corrupt_image', '_key': f"{record['key']}: {e}"}
    if rng is not None:
      image = transforms.random_resized_crop(image, c.image_size, rng, scale=c.crop_scale)
    else:
      image = transforms.resize_center_crop(image, c.image_size)
    out = {'images': image,
           'text': records.fit_ids(record['tokens'], c.context_length, eot_id=self.eot_id, pad_id=self.pad_id),
           'label': np.int32(record['label'])}
    if c.long_context_length:
      ids = record['long_tokens'] if len(record['long_tokens']) else record['tokens']
      out['cls_text'] = records.fit_ids(ids, c.long_context_length, eot_id=self.eot_id, pad_id=self.pad_id)
    return out


class SkipBadAndBatch(grain.IterDataset):
  """Batches elements, leaving out skip markers; each batch says how many it left out."""

  def __init__(self, parent: grain.IterDataset, batch_size: int, drop_remainder: bool):
    super().__init__(parent)
    self.batch_size = batch_size
    self.drop_remainder = drop_remainder

  def __iter__(self):
    return _SkipBadAndBatchIterator(self._parent.__iter__(), self.batch_size, self.drop_remainder)


class _SkipBadAndBatchIterator(grain.DatasetIterator):

  def __init__(self, parent, batch_size: int, drop_remainder: bool):
    super().__init__(parent)
    self.batch_size = batch_size
    self.drop_remainder = drop_remainder
    self._warned = 0

  def __next__(self) -> dict[str, np.ndarray]:
    items, skipped = [], 0
    while len(items) < self.batch_size:
      try:
        element = next(self._parent)
      except StopIteration:
        if items and not self.drop_remainder:
          break
        raise
      if '_skip' in element:
        skipped += 1
        if self._warned < 10:
          self._warned += 1
          logging.warning('skipping a training example (%s): %s', element['_skip'], element['_key'])
        continue
      items.append(element)
    batch = {k: np.stack([x[k] for x in items]) for k in items[0]}
    batch['skipped_examples'] = np.int64(skipped)
    return batch

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(state)


def _mark_flags_parsed(worker_index: int, worker_count: int) -> None:
  # Worker processes import absl-using code before any flags are parsed there.
  del worker_index, worker_count
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def make_dataset(config: PipelineConfig) -> tuple[grain.IterDataset, list[dict[str, Any]]]:
  """The pipeline as a Grain IterDataset, and the manifests of its shard sets."""
  manifests = [records.read_manifest(d) for d in config.shard_dirs]
  tokenizer = check_compatible(manifests)
  datasets = []
  for i, manifest in enumerate(manifests):
    ds = _source(manifest)
    if config.train:
      ds = ds.shuffle(seed=config.seed + 7919 * i).repeat(None)
    datasets.append(ds)
  if len(datasets) == 1:
    ds = datasets[0]
  else:
    if not config.train:
      raise ValueError('a weighted mixture of shard sets is for training only')
    weights = list(config.weights) or [1.0] * len(datasets)
    if len(weights) != len(datasets):
      raise ValueError(f'{len(weights)} mixture weights for {len(datasets)} shard sets')
    ds = grain.MapDataset.mix(datasets, weights=weights)
  ds = ds[config.process_index::config.process_count]
  parse = _Parse(config, tokenizer)
  if config.train:
    ds = ds.random_map(lambda data, rng: parse(data, rng), seed=config.seed)
  else:
    ds = ds.map(parse)
  it = SkipBadAndBatch(ds.to_iter_dataset(), config.batch_size, config.drop_remainder or config.train)
  if config.workers > 0:
    # Grain reads absl flags when it starts workers; outside an absl app (a notebook, a
    # test) nothing parsed them, in this process or in the workers.
    _mark_flags_parsed(0, 1)
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.workers,
                                                     per_worker_buffer_size=config.worker_buffer),
                        worker_init_fn=_mark_flags_parsed)
  return it, manifests


class ShardBatches:
  """Iterator of local batches with get_state/set_state, for the trainer and evaluators."""

  def __init__(self, config: PipelineConfig):
    self.config = config
    self.dataset, self.manifests = make_dataset(config)
    self._iterator = iter(self.dataset)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._iterator)

  def close(self) -> None:
    """Stop worker processes and prefetch threads now, rather than whenever GC gets to them."""
    close = getattr(self._iterator, 'close', None)
    if close is not None:
      close()

  def __enter__(self) -> 'ShardBatches':
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def get_state(self) -> Any:
    return self._iterator.get_state()

  def set_state(self, state: Any) -> None:
    self._iterator.set_state(state)

  @property
  def tokenizer(self) -> dict[str, Any]:
    return self.manifests[0]['tokenizer']
