"""The record schema of tokenized image-text ArrayRecord shards, and their manifest.

A record is a msgpack map:
  key           str    the source's key (tar member stem, file path, TFDS index)
  image         bytes  JPEG (as given when already an RGB JPEG within max side; else re-encoded)
  caption       str    the cleaned-of-nothing original caption
  tokens        bytes  int32 little-endian ids: [SOT] + caption ids + [EOT], truncated keeping EOT
  long_caption  str    optional second caption (the paper's "Dual" setting), '' when absent
  long_tokens   bytes  its ids (longer context), empty when absent; feed only the classifier
  label         int    class index for class-labelled sources, -1 otherwise

Beside the shards, `manifest.json` holds the shard list with record counts, the tokenizer
identity, skip and repair counts by reason, and points to `doc_freq.npz` (per-token
document frequencies over the captions that feed the classifier; `loss.idf='offline'`).
"""

from __future__ import annotations

import io
import json
from typing import Any

import msgpack
import numpy as np

from superclip_jax import storage
from superclip_jax.errors import UserError

FORMAT = 'superclip_jax.records.v1'
MANIFEST = 'manifest.json'
DOC_FREQ = 'doc_freq.npz'


def encode_record(
  *, key: str, image: bytes, caption: str, tokens, long_caption: str = '', long_tokens=(), label: int = -1
) -> bytes:
  """Serialise one record."""
  return msgpack.packb(
    {
      'key': key,
      'image': image,
      'caption': caption,
      'tokens': np.asarray(tokens, '<i4').tobytes(),
      'long_caption': long_caption,
      'long_tokens': np.asarray(long_tokens, '<i4').tobytes(),
      'label': int(label),
    },
    use_bin_type=True,
  )


def decode_record(data: bytes) -> dict[str, Any]:
  """Parse one record; token fields become int32 arrays."""
  r = msgpack.unpackb(data, raw=False)
  r['tokens'] = np.frombuffer(r['tokens'], '<i4').astype(np.int32)
  r['long_tokens'] = np.frombuffer(r['long_tokens'], '<i4').astype(np.int32)
  return r


def read_manifest(directory: str) -> dict[str, Any]:
  """The manifest of a shard directory (a local path or a URL such as gs://), with each shard's path;
  clear errors naming the file."""
  path = storage.join(directory, MANIFEST)
  if not storage.exists(path):
    raise UserError(f'{path}: no manifest; build shards with `python -m superclip_jax.data.build`')
  try:
    manifest = json.loads(storage.read_text(path))
  except (OSError, ValueError) as e:
    raise UserError(f'{path}: unreadable manifest ({e})') from e
  if manifest.get('format') != FORMAT:
    raise UserError(f'{path}: format {manifest.get("format")!r}, expected {FORMAT!r}')
  for key in ('shards', 'num_records', 'tokenizer'):
    if key not in manifest:
      raise UserError(f'{path}: missing key {key!r}')
  for shard in manifest['shards']:
    name = shard.get('file') if isinstance(shard, dict) else None
    # A shard is a file of this folder: a manifest cannot point reads elsewhere (../, /abs, URLs).
    if not isinstance(name, str) or not name or '/' in name or '\\' in name or name in ('.', '..'):
      raise UserError(f'{path}: shard {name!r} is not a file name inside {directory}')
    shard['path'] = storage.join(directory, name)
    if not storage.exists(shard['path']):
      raise UserError(f'{shard["path"]} listed in {path} does not exist')
  manifest['directory'] = directory
  return manifest


def read_doc_freq(directory: str) -> tuple[int, np.ndarray]:
  """(number of captions, per-token document frequency) of a shard directory."""
  return load_doc_freq(storage.join(directory, DOC_FREQ))


def load_doc_freq(path: str) -> tuple[int, np.ndarray]:
  """(num_samples, doc_freq) of a document-frequency .npz, local or in a bucket (offline IDF reads it too)."""
  try:
    stats = np.load(io.BytesIO(storage.read_bytes(path)))
    return int(stats['num_samples']), stats['doc_freq']
  except (OSError, KeyError, ValueError) as e:
    raise UserError(f"{path}: unreadable document frequencies, an .npz with 'doc_freq' (V,) and 'num_samples' ({e})") from e


def write_json_atomic(path: str, obj: Any) -> None:
  """Write JSON so that a crash leaves either the old file or the new one, never half (a bucket: one upload)."""
  storage.write_text(path, json.dumps(obj, indent=1, ensure_ascii=False))


def fit_ids(ids, length: int, *, eot_id: int, pad_id: int) -> np.ndarray:
  """Pad with pad_id (or truncate) to `length`; a truncated sequence keeps EOT last."""
  ids = np.asarray(ids, np.int32)
  out = np.full((length,), pad_id, np.int32)
  if len(ids) > length:
    ids = ids[:length].copy()
    ids[-1] = eot_id
  out[: len(ids)] = ids
  return out
