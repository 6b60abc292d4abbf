"""Remote inputs through fsspec: gs://, s3://, http(s)://, and webdataset's `pipe:CMD`.

A tar is downloaded whole into a temporary file (retried with backoff; a permanent
"not found" is not retried) and then read like a local one, so a download that fails
half-way never yields a sample twice. A tar that cannot be fetched is skipped and
counted as 'unreadable_tar', like any bad sample. What a remote source holds (its tars, its
folder's captions or class sub-folders) is listed and read in sources.py, through these bytes.
gs:// needs gcsfs and s3:// needs s3fs installed; http(s) needs aiohttp.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import time
from typing import Any, BinaryIO

from superclip_jax.errors import UserError

REMOTE_PREFIXES = ('gs://', 's3://', 'http://', 'https://', 'pipe:')
RETRIES = int(os.environ.get('SUPERCLIP_DOWNLOAD_RETRIES', '3'))  # attempts after the first
BACKOFF_S = float(os.environ.get('SUPERCLIP_DOWNLOAD_BACKOFF_S', '1.0'))  # doubled per retry
# A server that accepts and then says nothing fails an attempt after these, never hangs a build.
CONNECT_TIMEOUT_S = float(os.environ.get('SUPERCLIP_CONNECT_TIMEOUT_S', '30'))
READ_TIMEOUT_S = float(os.environ.get('SUPERCLIP_READ_TIMEOUT_S', '60'))  # with no byte arriving
_CHUNK = 1 << 20


def is_fetched(path: str) -> bool:
  """Whether a source's bytes are fetched: a URL (fsspec) or a pipe: command (a shell), not a local file."""
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


def _copy_once(url: str, out: BinaryIO) -> None:
  if url.startswith('pipe:'):
    # webdataset's convention: the command's stdout is the file; a non-zero status is a failure.
    proc = subprocess.Popen(url[len('pipe:') :], shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _copy_pipe(proc, out)
    err = proc.stderr.read().decode('utf-8', 'replace').strip()
    if proc.wait() != 0:
      raise OSError(f'command exited with status {proc.returncode}: {err[-300:]}')
    return
  import fsspec

  with fsspec.open(url, 'rb', **timeouts(url)) as f:
    shutil.copyfileobj(f, out, _CHUNK)


def timeouts(url: str) -> dict[str, Any]:
  """fsspec options that bound connecting and each read, per protocol."""
  if url.startswith(('http://', 'https://')):
    import aiohttp

    # block_size=0: stream HTTP bodies instead of ranged reads (plain servers do not do ranges).
    return {
      'block_size': 0,
      'client_kwargs': {'timeout': aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S)},
    }
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
    fs, path = fsspec.core.url_to_fs(url, **timeouts(url))
    fs.info(path)
  except Exception as e:  # network stacks raise many types (aiohttp, botocore, google-auth)
    if _not_there(e) or isinstance(e, FileNotFoundError) and e.__cause__ is None:
      return
    cause = e.__cause__ if isinstance(e, FileNotFoundError) and e.__cause__ is not None else e
    if getattr(cause, 'status', None) is not None and cause.status not in (401, 403):
      return  # the server answered: per-input errors are counted later
    raise UserError(
      f'{url}: cannot reach it ({type(cause).__name__}: {str(cause)[:200]}); check the network and credentials'
    ) from None
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
      time.sleep(BACKOFF_S * 2**attempt)


def read_bytes(url: str) -> bytes:
  """The whole file at url (retried)."""
  buf = io.BytesIO()
  download(url, buf)
  return buf.getvalue()
