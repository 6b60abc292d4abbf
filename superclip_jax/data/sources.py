"""Readers for the formats users already have; each yields raw items for the shard builder.

An item is a dict: key, image (bytes) or image_path (read by the worker), caption (bytes/str/None),
long_caption (optional), label (int, -1 if none), or a dict with only 'skip': reason for an
input that is bad before any record exists (unsafe tar path, duplicate key, missing pair).
"""

from __future__ import annotations

import collections
import csv
import glob
import io
import json
import os
import re
import tarfile
import tempfile
from typing import Any, Iterator, NamedTuple

from superclip_jax import storage
from superclip_jax.data import remote
from superclip_jax.errors import UserError

IMAGE_EXTENSIONS = ('jpg', 'jpeg', 'png', 'webp', 'bmp', 'gif', 'tif', 'tiff')
LONG_CAPTION_EXT = 'long.txt'


def expand_braces(pattern: str, use_glob: bool = True) -> list[str]:
  """'/d/{00000..00002}.tar' -> three paths (zero padding kept); '{a,b}' lists; then glob (if use_glob)."""
  match = re.search(r'\{([^{}]*)\}', pattern)
  if not match:
    found = sorted(glob.glob(pattern)) if use_glob and any(c in pattern for c in '*?[') else [pattern]
    return found
  body = match.group(1)
  rng = re.fullmatch(r'(\d+)\.\.(\d+)', body)
  if rng:
    lo, hi = rng.groups()
    width = len(lo)
    options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
  else:
    options = body.split(',')
  out = []
  for option in options:
    out.extend(expand_braces(pattern[: match.start()] + option + pattern[match.end() :], use_glob))
  return out


def _unsafe(name: str) -> bool:
  parts = name.replace('\\', '/').split('/')
  return name.startswith('/') or '..' in parts or re.match(r'^[A-Za-z]:', name) is not None


def _inside(path: str, root: str) -> bool:
  """Whether path, symlinks resolved, stays inside root (a link out would copy outside files in)."""
  real, top = os.path.realpath(path), os.path.realpath(root)
  return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def _split_key(name: str) -> tuple[str, str]:
  """WebDataset convention: the key is the path up to the first dot of the basename."""
  directory, base = os.path.split(name)
  stem, _, ext = base.partition('.')
  return (os.path.join(directory, stem) if directory else stem), ext.lower()


def _group_to_item(key: str, files: dict[str, bytes]) -> dict[str, Any]:
  image_ext = next((e for e in IMAGE_EXTENSIONS if e in files), None)
  meta = {}
  if 'json' in files:
    try:
      meta = json.loads(files['json'].decode('utf-8'))
      if not isinstance(meta, dict):
        meta = {}
    except (UnicodeDecodeError, ValueError):
      meta = {}
  caption = files.get('txt')
  if caption is None:
    caption = meta.get('caption') or meta.get('text')
  if image_ext is None:
    return {'key': key, 'skip': 'missing_image'}
  if caption is None:
    return {'key': key, 'skip': 'missing_caption'}
  return {
    'key': key,
    'image': files[image_ext],
    'caption': caption,
    'long_caption': files.get(LONG_CAPTION_EXT) or meta.get('long_caption') or '',
    'label': _label(meta.get('label', -1)),
  }


def _label(value: Any) -> Any:
  """An int label as given (the builder checks its range); digits in a string count; else -1."""
  if isinstance(value, bool):
    return -1
  if isinstance(value, int):
    return value
  if isinstance(value, str) and value.lstrip('-').isdigit():
    return int(value)
  return -1


# Tar members larger than this are skipped unread (an image is megabytes; a .tar.gz can
# expand a tiny download into gigabytes). data.build --max_member_bytes changes it.
MAX_MEMBER_BYTES = 256 * 2**20
_LINK_CACHE_BYTES = 64 * 2**20


def read_webdataset_tar(path: str, fileobj=None, max_member_bytes: int = MAX_MEMBER_BYTES) -> Iterator[dict[str, Any]]:
  """Items of one img2dataset-style tar (key.jpg + key.txt + key.json), streamed in order.

  Nothing is extracted to disk, so a path-traversal name is only skipped and counted. A
  key whose earlier group in this tar was complete (image and caption), or a repeated
  extension within a key, drops that group; after an incomplete group the next one of its
  key is read. `fileobj`, when given, holds the tar's bytes (a downloaded remote tar named by `path`).
  """
  seen: set[str] = set()  # keys of complete groups yielded so far

  def finish(key, group):
    item = _group_to_item(key, group)
    if 'skip' not in item:
      seen.add(key)
    return item

  # Recently read members by name: a hard link (a file stored once under two names) is read from
  # here, since a streamed tar cannot seek back to its target. Bounded: a target read long before is
  # counted as 'hardlink_target_not_recent'.
  recent: collections.OrderedDict[str, bytes] = collections.OrderedDict()
  recent_bytes = 0
  current_key, files, duplicate = None, {}, False
  try:
    with tarfile.open(None if fileobj else path, 'r|*', fileobj=fileobj) as tar:
      for member in tar:
        link = member.islnk()
        if not (member.isfile() or link):
          continue
        if _unsafe(member.name):
          yield {'key': member.name, 'skip': 'unsafe_path'}
          continue
        if member.size > max_member_bytes:  # passed over without reading it into memory
          yield {'key': member.name, 'skip': 'member_too_large', 'detail': f'{member.size} bytes'}
          continue
        key, ext = _split_key(member.name)
        if key != current_key:
          if current_key is not None and not duplicate:
            yield finish(current_key, files)
          current_key, files, duplicate = key, {}, key in seen
          if duplicate:
            yield {'key': key, 'skip': 'duplicate_key'}
        if link:
          data = recent.get(os.path.normpath(member.linkname))
          if data is None:
            yield {'key': member.name, 'skip': 'hardlink_target_not_recent', 'detail': member.linkname}
            continue
        else:
          data = tar.extractfile(member).read()
          recent[os.path.normpath(member.name)] = data
          recent_bytes += len(data)
          while recent_bytes > _LINK_CACHE_BYTES:
            recent_bytes -= len(recent.popitem(last=False)[1])
        tar.members = []  # streaming: do not keep every header in memory
        if duplicate:
          continue
        if ext in files:
          duplicate = True
          yield {'key': key, 'skip': 'duplicate_key'}
          continue
        files[ext] = data
  except (tarfile.TarError, OSError, EOFError) as e:
    yield {'key': path, 'skip': 'truncated_tar', 'detail': f'{path}: {e}'}
  if current_key is not None and files and not duplicate:
    yield finish(current_key, files)


class _BadRow(NamedTuple):
  """A captions.jsonl line that is not JSON: where it is, and why."""

  where: str
  reason: str
  detail: str


def parse_jsonl(lines, name: str) -> list[Any]:
  """Rows of a captions.jsonl (blank lines ignored); a line that is not JSON becomes a skip
  marker naming it (items_from_rows counts it), so one bad line does not stop a build."""
  rows = []
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except ValueError as e:
      rows.append(_BadRow(f'{name}:{n}', 'row_not_json', str(e)))
  return rows


def items_from_rows(rows: list[dict[str, Any]], directory: str, local: bool = True) -> list[dict[str, Any]]:
  """Items of caption rows ({"image": relative path, "caption": ...}).

  In a local folder each image must exist and stay inside the folder (symlinks resolved); at a URL
  they are fetched by the workers, where a missing one is skipped and counted.

  Rows naming an image again (more captions of it) are keyed 'IMAGE#1', 'IMAGE#2', ... as the
  Karpathy sources do: keys stay unique, so no caption is taken for a duplicate sample, and the
  retrieval evaluator groups the captions of one image by the part before '#'.
  """
  items = []
  repeats: dict[str, int] = {}
  for n, row in enumerate(rows):
    if isinstance(row, _BadRow):
      items.append({'key': row.where, 'skip': row.reason, 'detail': row.detail})
      continue
    if not isinstance(row, dict):
      items.append({'key': f'{directory}: row {n}', 'skip': 'row_not_object', 'detail': type(row).__name__})
      continue
    rel = row.get('image') or row.get('file') or row.get('filename')
    if not isinstance(rel, str) or not rel:
      items.append({'key': f'{directory}: row {n}', 'skip': 'row_without_image', 'detail': repr(rel)[:80]})
      continue
    path = storage.join(directory, rel)
    if _unsafe(rel):
      items.append({'key': rel, 'skip': 'unsafe_path'})
      continue
    k = repeats[rel] = repeats.get(rel, -1) + 1
    key = f'{rel}#{k}' if k else rel
    if local and not _inside(path, directory):
      items.append({'key': key, 'skip': 'outside_source', 'detail': 'a symlink out of the source folder'})
      continue
    if local and not os.path.exists(path):
      items.append({'key': key, 'skip': 'missing_image'})
      continue
    items.append(
      {
        'key': key,
        'image_path': path,
        'caption': row.get('caption', row.get('text')),
        'long_caption': row.get('long_caption') or '',
        'label': _label(row.get('label', -1)),
      }
    )
  return items


def list_folder(directory: str, template: str = 'a photo of a {}.') -> tuple[list[dict[str, Any]], list[str]]:
  """Items of a folder, local or at a URL (gs://, s3://, http(s)://, through fsspec): images and
  captions.jsonl / captions.csv, else the ImageFolder layout (one sub-folder per class).

  Returns (items with image paths or URLs, read later by the workers; class names for ImageFolder or []).
  """
  import fsspec

  local = not remote.is_fetched(directory)
  if local and not os.path.isdir(directory):
    raise UserError(f'folder source {directory} does not exist')
  if not local:
    remote.check_driver(directory)
  try:
    fs, root = fsspec.core.url_to_fs(directory, **({} if local else remote.timeouts(directory)))
  except (ImportError, ValueError) as e:
    raise UserError(f'folder source {directory}: {e}') from None
  for name in ('captions.jsonl', 'captions.csv'):
    if fs.exists(storage.join(root, name)):
      path = storage.join(directory, name)
      text = _read_text(path) if local else remote.read_bytes(path).decode('utf-8')
      rows = (
        parse_jsonl(text.splitlines(), path) if name.endswith('jsonl') else list(csv.DictReader(io.StringIO(text, newline='')))
      )
      return items_from_rows(rows, directory, local), []
  try:
    entries = fs.ls(root, detail=True)
  except FileNotFoundError:
    raise UserError(f'folder source {directory} does not exist') from None
  classes = sorted(os.path.basename(e['name'].rstrip('/')) for e in entries if e['type'] == 'directory')
  if not classes:
    raise UserError(f'{directory}: neither captions.jsonl, captions.csv nor class sub-folders')
  items = []
  for label, name in enumerate(classes):
    files = sorted(os.path.basename(e['name']) for e in fs.ls(storage.join(root, name), detail=True) if e['type'] == 'file')
    for fname in files:
      if fname.rsplit('.', 1)[-1].lower() not in IMAGE_EXTENSIONS:
        continue
      path = storage.join(directory, name, fname)
      if local and not _inside(path, directory):
        items.append({'key': f'{name}/{fname}', 'skip': 'outside_source', 'detail': 'a symlink out of the source folder'})
        continue
      items.append(
        {'key': f'{name}/{fname}', 'image_path': path, 'caption': template.format(name.replace('_', ' ')), 'label': label}
      )
  return items, classes


def _read_text(path: str) -> str:
  with open(path, encoding='utf-8', newline='') as f:
    return f.read()


# Remote sources: the bytes come through remote.py (fsspec, retries, pipe:); their globs and tar reading are here.
def expand_remote(pattern: str) -> list[str]:
  """Brace ranges of a remote pattern, then globs on object stores (gs://, s3://); URLs as given."""
  paths = expand_braces(pattern, use_glob=False)
  if not pattern.startswith(('gs://', 's3://')):
    return paths  # '?' and '*' are part of http URLs and shell commands
  import fsspec

  out = []
  for path in paths:
    if any(c in path for c in '*?['):
      fs, _ = fsspec.core.url_to_fs(path, **remote.timeouts(path))
      protocol = path.split('://', 1)[0]
      out.extend(f'{protocol}://{p}' for p in sorted(fs.glob(path)))
    else:
      out.append(path)
  return out


def read_webdataset_url(url: str, max_member_bytes: int | None = None) -> Iterator[dict[str, Any]]:
  """Items of a remote tar; a tar that cannot be downloaded is one 'unreadable_tar' skip."""
  max_member_bytes = max_member_bytes or MAX_MEMBER_BYTES
  with tempfile.TemporaryFile(prefix='superclip_tar_') as f:
    try:
      remote.download(url, f)
    except OSError as e:
      yield {'key': url, 'skip': 'unreadable_tar', 'detail': f'{url}: {e}'}
      return
    f.seek(0)
    yield from read_webdataset_tar(url, fileobj=f, max_member_bytes=max_member_bytes)
