"""Remote inputs through fsspec: gs://, s3://, http(s)://, and webdataset's `pipe:CMD`.

A tar is downloaded whole into a temporary file (retried with backoff; a permanent
"not found" is not retried) and then read like a local one, so a download that fails
half-way never yields a sample twice. A tar that cannot be fetched is skipped and
counted as 'unreadable_tar', like any bad sample. Folder sources list with fsspec too:
captions.jsonl / captions.csv, or class sub-folders (HTTP: the server's index pages).
gs:// needs gcsfs and s3:// needs s3fs installed; http(s) needs aiohttp.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import tempfile
import time
from typing import Any, BinaryIO, Iterator

from superclip_jax.errors import UserError

REMOTE_PREFIXES = ('gs://', 's3://', 'http://', 'https://', 'pipe:')
RETRIES = int(os.environ.get('SUPERCLIP_DOWNLOAD_RETRIES', '3'))  # attempts after the first
BACKOFF_S = float(os.environ.get('SUPERCLIP_DOWNLOAD_BACKOFF_S', '1.0'))  # doubled per retry
# A server that accepts and then says nothing fails an attempt after these, never hangs a build.
CONNECT_TIMEOUT_S = float(os.environ.get('SUPERCLIP_CONNECT_TIMEOUT_S', '30'))
READ_TIMEOUT_S = float(os.environ.get('SUPERCLIP_READ_TIMEOUT_S', '60'))  # with no byte arriving
_CHUNK = 1 << 20


def is_remote(path: str) -> bool:
  """Whether a source path is a URL or a pipe: command (read through fsspec / a shell)."""
  return path.startswith(REMOTE_PREFIXES)


def check_driver(url: str) -> None:
  """A UserError now, rather than every download failing later, if url's fsspec driver is missing."""
  if url.startswith('pipe:'):
    return
  import fsspec
  protocol = url.split('://', 1)[0]
  try:
    fsspec.get_filesystem_class(protocol)
  except ImportError as e:
    raise UserError(f'{url}: {e}') from None


def expand(pattern: str) -> list[str]:
  """Brace ranges of a remote pattern, then globs on object stores (gs://, s3://); URLs as given."""
  from superclip_jax.data import sources
  paths = sources.expand_braces(pattern, use_glob=False)
  if not pattern.startswith(('gs://', 's3://')):
    return paths  # '?' and '*' are part of http URLs and shell commands
  import fsspec
  out = []
  for path in paths:
    if any(c in path for c in '*?['):
      fs, _ = fsspec.core.url_to_fs(path, **_timeouts(path))
      protocol = path.split('://', 1)[0]
      out.extend(f'{protocol}://{p}' for p in sorted(fs.glob(path)))
    else:
      out.append(path)
  return out


def _copy_once(url: str, out: BinaryIO) -> None:
  if url.startswith('pipe:'):
    # webdataset's convention: the command's stdout is the file; a non-zero status is a failure.
    proc = subprocess.Popen(url[len('pipe:'):], shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _copy_pipe(proc, out)
    err = proc.stderr.read().decode('utf-8', 'replace').strip()
    if proc.wait() != 0:
      raise OSError(f'command exited with status {proc.returncode}: {err[-300:]}')
    return
  import fsspec
  with fsspec.open(url, 'rb', **_timeouts(url)) as f:
    shutil.copyfileobj(f, out, _CHUNK)


def _timeouts(url: str) -> dict[str, Any]:
  """fsspec options that bound connecting and each read, per protocol."""
  if url.startswith(('http://', 'https://')):
    import aiohttp
    # block_size=0: stream HTTP bodies instead of ranged reads (plain servers do not do ranges).
    return {'block_size': 0, 'client_kwargs': {'timeout': aiohttp.ClientTimeout(
        total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S)}}
  if url.startswith('gs://'):
    return {'requests_timeout': READ_TIMEOUT_S}  # gcsfs: each HTTP request
  if url.startswith('s3://'):
    return {'config_kwargs': {'connect_timeout': CONNECT_TIMEOUT_S, 'read_timeout': READ_TIMEOUT_S}}
  return {}


def _copy_pipe(proc: subprocess.Popen, out: BinaryIO) -> None:
  """A command's stdout into out; a command silent for READ_TIMEOUT_S is killed (an OSError)."""
  import select
  fd = proc.stdout.fileno()
  while True:
    ready, _, _ = select.select([fd], [], [], READ_TIMEOUT_S)
    if not ready:
      proc.kill()
      proc.wait()
      raise OSError(f'command wrote nothing for {READ_TIMEOUT_S:g} s: killed')
    chunk = os.read(fd, _CHUNK)
    if not chunk:
      return
    out.write(chunk)


def _not_there(error: Exception) -> bool:
  """A permanent "not found" (not retried). fsspec's HTTP raises FileNotFoundError for any failure
  to open, a timeout or a refused connection included: its cause says which."""
  if not isinstance(error, FileNotFoundError):
    return False
  cause = error.__cause__
  status = getattr(cause, 'status', None)
  if status is not None:
    return status in (404, 410)
  return cause is None or isinstance(cause, FileNotFoundError)


def check_reachable(url: str) -> None:
  """A UserError now if url's store cannot be reached at all (no network, no credentials),
  instead of every input failing after its retries. A missing object is fine here: that one
  input is counted when it is read."""
  if url.startswith('pipe:'):
    return
  import logging

  import fsspec
  quiet = logging.getLogger('gcsfs')  # it logs a traceback when its own retries (about 30 s) run out
  level = quiet.level
  quiet.setLevel(logging.CRITICAL)
  try:
    fs, path = fsspec.core.url_to_fs(url, **_timeouts(url))
    fs.info(path)
  except Exception as e:  # network stacks raise many types (aiohttp, botocore, google-auth)
    if _not_there(e) or isinstance(e, FileNotFoundError) and e.__cause__ is None:
      return
    cause = e.__cause__ if isinstance(e, FileNotFoundError) and e.__cause__ is not None else e
    if getattr(cause, 'status', None) is not None and cause.status not in (401, 403):
      return  # the server answered: per-input errors are counted later
    raise UserError(f'{url}: cannot reach it ({type(cause).__name__}: {str(cause)[:200]}); check the network and '
                    'credentials') from None
  finally:
    quiet.setLevel(level)


def download(url: str, out: BinaryIO, retries: int | None = None) -> None:
  """Copy url into out, retrying failed attempts from the start; raises OSError when all fail."""
  retries = RETRIES if retries is None else retries
  for attempt in range(retries + 1):
    out.seek(0)
    out.truncate()
    try:
      _copy_once(url, out)
      return
    except Exception as e:  # network stacks raise many types (aiohttp, botocore, google-auth)
      if _not_there(e):
        raise
      cause = e.__cause__ if isinstance(e, FileNotFoundError) and e.__cause__ is not None else e
      if attempt == retries:
        raise OSError(f'{type(cause).__name__}: {cause} (after {retries + 1} attempts)') from e
      time.sleep(BACKOFF_S * 2 ** attempt)


def read_bytes(url: str) -> bytes:
  """The whole file at url (retried)."""
  buf = io.BytesIO()
  download(url, buf)
  return buf.getvalue()


def read_webdataset_url(url: str, max_member_bytes: int | None = None) -> Iterator[dict[str, Any]]:
  """Items of a remote tar; a tar that cannot be downloaded is one 'unreadable_tar' skip."""
  from superclip_jax.data import sources
  max_member_bytes = max_member_bytes or sources.MAX_MEMBER_BYTES
  with tempfile.TemporaryFile(prefix='superclip_tar_') as f:
    try:
      download(url, f)
    except OSError as e:
      yield {'key': url, 'skip': 'unreadable_tar', 'detail': f'{url}: {e}'}
      return
    f.seek(0)
    yield from sources.read_webdataset_tar(url, fileobj=f, max_member_bytes=max_member_bytes)


def _join(base: str, *parts: str) -> str:
  return '/'.join([base.rstrip('/'), *parts])


def list_folder(url: str, template: str = 'a photo of a {}.') -> tuple[list[dict[str, Any]], list[str]]:
  """sources.list_folder for a URL: items with image URLs (fetched by the workers), class names."""
  import fsspec

  from superclip_jax.data import sources
  check_driver(url)
  try:
    fs, root = fsspec.core.url_to_fs(url, **_timeouts(url))
  except (ImportError, ValueError) as e:
    raise UserError(f'folder source {url}: {e}') from None
  for name in ('captions.jsonl', 'captions.csv'):
    if fs.exists(_join(root, name)):
      text = read_bytes(_join(url, name)).decode('utf-8')
      if name.endswith('jsonl'):
        rows = sources.parse_jsonl(text.splitlines(), _join(url, name))
      else:
        rows = list(csv.DictReader(io.StringIO(text, newline='')))
      return sources.items_from_rows(rows, url, join=_join, exists=None), []
  try:
    entries = fs.ls(root, detail=True)
  except FileNotFoundError:
    raise UserError(f'folder source {url} does not exist') from None
  dirs = sorted(os.path.basename(e['name'].rstrip('/')) for e in entries if e['type'] == 'directory')
  if not dirs:
    raise UserError(f'{url}: neither captions.jsonl, captions.csv nor class sub-folders')
  items = []
  for label, name in enumerate(dirs):
    files = sorted(os.path.basename(e['name']) for e in fs.ls(_join(root, name), detail=True) if e['type'] == 'file')
    for fname in files:
      if fname.rsplit('.', 1)[-1].lower() in sources.IMAGE_EXTENSIONS:
        items.append({'key': f'{name}/{fname}', 'image_path': _join(url, name, fname),
                      'caption': template.format(name.replace('_', ' ')), 'label': label})
  return items, dirs

