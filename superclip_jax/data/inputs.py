"""The trainer's input: synthetic batches or built shards, this process's rows of each global batch."""

from __future__ import annotations

import ml_collections

from superclip_jax import storage
from superclip_jax.data import pipeline, records, synthetic
from superclip_jax.errors import UserError


def shard_dirs(spec: str) -> list[str]:
  """Comma-separated shard directories as a list."""
  return [d.strip() for d in str(spec).split(',') if d.strip()]


def training_batches(config: ml_collections.ConfigDict, rows, start_step: int = 0):
  """Batches of this process's rows from `start_step` on: an iterator with get_state/set_state/close."""
  global_batch = config.data.global_batch_size
  if config.data.kind == 'synthetic':
    tok = config.tokenizer
    source = synthetic.SyntheticImageText(
      image_size=config.data.synthetic_image_size or config.model.image_size,
      vocab_size=config.model.vocab_size,
      context_length=config.model.context_length,
      sot_id=tok.sot_id,
      eot_id=tok.eot_id,
      pad_id=tok.pad_id,
      seed=config.seed,
    )
    return synthetic.SyntheticBatches(source, global_batch, rows, start_step)
  batches = pipeline.ShardBatches(
    pipeline.PipelineConfig(
      shard_dirs=shard_dirs(config.data.shards),
      weights=tuple(config.data.weights),
      global_batch_size=global_batch,
      rows=tuple(rows),
      image_size=config.model.image_size,
      context_length=config.model.context_length,
      long_context_length=config.data.long_context_length if config.data.long_captions else 0,
      train=True,
      seed=config.seed,
      workers=pipeline.resolve_workers(config.data.workers),
      threads=config.data.threads,
      prefetch=config.data.prefetch,
      crop_scale=tuple(config.data.crop_scale),
    ),
    start_step,
  )
  check_tokenizer_matches(config, batches.tokenizer, config.data.shards)
  return batches


def check_tokenizer_matches(config: ml_collections.ConfigDict, tokenizer: dict, where: str) -> None:
  """The shards' tokenizer must be the one the model and loss are configured for."""
  expected = {
    'model.vocab_size': (config.model.vocab_size, tokenizer['vocab_size']),
    'tokenizer.sot_id': (config.tokenizer.sot_id, tokenizer['sot_id']),
    'tokenizer.eot_id': (config.tokenizer.eot_id, tokenizer['eot_id']),
    'tokenizer.pad_id': (config.tokenizer.pad_id, tokenizer['pad_id']),
  }
  wrong = {k: v for k, v in expected.items() if v[0] != v[1]}
  if wrong:
    detail = ', '.join(f'config.{k}={a} but the shards have {b}' for k, (a, b) in wrong.items())
    raise UserError(f'tokenizer mismatch with {where}: {detail}')


def offline_idf_stats_path(config: ml_collections.ConfigDict) -> str:
  """An explicit stats file, else the document frequencies the shard builder wrote."""
  if config.loss.idf_offline_stats or config.loss.idf != 'offline':
    return config.loss.idf_offline_stats
  dirs = shard_dirs(config.data.shards)
  if len(dirs) != 1:
    raise UserError('loss.idf=offline over a mixture of shard sets needs loss.idf_offline_stats')
  return storage.join(dirs[0], records.DOC_FREQ)
