"""Paths that may be local or in a bucket (gs://, s3://): one place decides how to reach them.

Every file the trainer writes outside Orbax (metrics.jsonl, config.json, TensorBoard
events, exports) goes through `etils.epath`, whose fsspec backend reaches gs:// through
gcsfs and s3:// through s3fs without TensorFlow. Orbax writes checkpoints to the same
URLs itself (tensorstore for arrays). Object stores cannot append, so files that grow
are rewritten whole (they are small) or staged locally and uploaded.
"""

from __future__ import annotations

import os
import re

from etils import epath

_URL = re.compile(r'^[a-zA-Z][a-zA-Z0-9+.-]*://')


def is_remote(path: str) -> bool:
  """True for a URL such as gs://bucket/run or s3://bucket/run."""
  return bool(_URL.match(str(path)))


def absolute(path: str) -> str:
  """A local path made absolute; a URL as given (os.path.abspath would turn gs:// into gs:/)."""
  path = str(path)
  return path if is_remote(path) else os.path.abspath(path)


def join(base: str, *parts: str) -> str:
  """base/part/...; for URLs too (os.path.join works on both once the base is absolute)."""
  return os.path.join(str(base), *parts)


def Path(path: str) -> epath.Path:  # pylint: disable=invalid-name
  """An epath.Path for a local path or a URL."""
  return epath.Path(absolute(path))


def read_text(path: str) -> str:
  return Path(path).read_text()


def read_bytes(path: str) -> bytes:
  return Path(path).read_bytes()


def write_text(path: str, text: str) -> None:
  """Write a whole file: atomically (temporary + rename) locally; one object upload in a bucket."""
  write_bytes(path, text.encode())


def write_bytes(path: str, data: bytes) -> None:
  """Write a whole file: atomically (temporary + rename) locally; one object upload in a bucket."""
  if is_remote(path):
    Path(path).write_bytes(data)
    return
  os.makedirs(os.path.dirname(absolute(path)) or '.', exist_ok=True)
  tmp = absolute(path) + '.tmp'
  with open(tmp, 'wb') as f:
    f.write(data)
  os.replace(tmp, absolute(path))


def upload(local_path: str, path: str) -> None:
  """Copy a local file to path (a URL, or a local path) without reading it into memory."""
  if not is_remote(path):
    import shutil

    os.makedirs(os.path.dirname(absolute(path)) or '.', exist_ok=True)
    shutil.copyfile(local_path, absolute(path))
    return
  import fsspec

  fs, target = fsspec.core.url_to_fs(path)
  fs.put_file(local_path, target)


def exists(path: str) -> bool:
  return Path(path).exists()


def makedirs(path: str) -> None:
  """Create a local directory (and parents); buckets have no directories to create."""
  if not is_remote(path):
    os.makedirs(absolute(path), exist_ok=True)
