"""One writer per workdir (and per shard build's --out): a lock taken at start and held to the end.

Two runs in one workdir would interleave their metrics rows and replace each other's
checkpoints, both exiting 0. So the first takes DIR/.lock and a second stops at once with
one line naming the holder (host, process id, start time).

- Local paths: `fcntl.flock` on DIR/.lock. The kernel drops it when the process dies, so a
  killed run leaves no stale lock (the file stays, holding the last holder's name).
- Buckets (gs://): an object DIR/.lock created only if none exists (looked for, then
  written in gcsfs's create mode: GCS's ifGenerationMatch=0 precondition, which makes two
  simultaneous creates one success and one failure), rewritten by a heartbeat thread. A lock whose
  heartbeat is older than `stale_seconds` belongs to a run that died without releasing it
  and is taken over (with a warning naming it). Stores without a create-only write fall back
  to look-then-write, which two runs starting in the same second can both pass (a warning says so).
- A multi-host job is one writer: process 0 takes the lock and every process learns the outcome.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import threading
import time
import uuid

from absl import logging

from superclip_jax import storage
from superclip_jax.errors import UserError

LOCK_NAME = '.lock'


class InUse(UserError):
  """Another run (or build) holds the lock of this directory."""


def _holder(what: str, token: str) -> dict:
  now = time.time()
  return {
    'what': what,
    'host': socket.gethostname(),
    'pid': os.getpid(),
    'token': token,
    'started': datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat(timespec='seconds'),
    'heartbeat': now,
  }


def _describe(holder: dict | None) -> str:
  if not holder:
    return 'an unknown holder'
  return (
    f'a {holder.get("what", "run")} on host {holder.get("host", "?")}, process id {holder.get("pid", "?")}, '
    f'started {holder.get("started", "?")}'
  )


def _parse(data: bytes) -> dict | None:
  try:
    holder = json.loads(data.decode() or 'null')
  except (UnicodeDecodeError, ValueError):
    return None
  return holder if isinstance(holder, dict) else None


class _LocalLock:
  def __init__(self, path: str, holder: dict):
    import fcntl

    self.path = path
    self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      with open(path, 'rb') as f:
        other = _parse(f.read())
      os.close(self._fd)
      raise InUse(
        f'{os.path.dirname(path)} is in use by {_describe(other)} (lock {path}); wait for it to end, or use another directory'
      ) from None
    os.ftruncate(self._fd, 0)
    os.pwrite(self._fd, json.dumps(holder).encode(), 0)

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)  # closing the descriptor drops the flock
      self._fd = None


class _BucketLock:
  def __init__(self, path: str, holder: dict, heartbeat_seconds: float, stale_seconds: float):
    import fsspec

    self.path = path
    self.holder = holder
    self.fs, self._key = fsspec.core.url_to_fs(path)
    self.stale_seconds = stale_seconds
    self._stop = threading.Event()
    if not self._create():
      other = self._read()
      try:
        age = time.time() - float((other or {}).get('heartbeat', 0))
      except (TypeError, ValueError):  # an unreadable lock is a dead one
        age = float('inf')
      if age < stale_seconds:
        raise InUse(
          f'{path.rsplit("/", 1)[0]} is in use by {_describe(other)}, alive {age:.0f} s ago '
          f'(lock {path}); wait for it to end, or use another directory'
        )
      logging.warning('taking over the lock %s of %s: no heartbeat for %.0f s', path, _describe(other), age)
      try:
        self.fs.rm_file(self._key)
      except FileNotFoundError:
        pass
      if not self._create():
        raise InUse(f'{path}: another run took this lock over at the same moment; use another directory')
    self._thread = threading.Thread(target=self._beat, args=(heartbeat_seconds,), daemon=True, name='workdir-lock-heartbeat')
    self._thread.start()

  def _create(self) -> bool:
    """Write the lock only if it does not exist; False if it does.

    Looked for first, then created under the precondition: GCS makes the create atomic, and
    the look alone refuses a second writer on stores (and emulators) that ignore it.
    """
    if self._read() is not None:
      return False
    data = json.dumps(self.holder).encode()
    try:
      self.fs.pipe_file(self._key, data, mode='create')
      return True
    except TypeError:  # a filesystem without create-only writes (s3fs)
      logging.warning(
        '%s: this store cannot create a file only if absent; two runs starting in the same moment could both take the lock',
        self.path,
      )
      self.fs.pipe_file(self._key, data)
      return True
    except FileExistsError:
      return False
    except Exception as e:  # gcsfs raises an HttpError with code 412 for a failed precondition
      if getattr(e, 'code', None) == 412 or '412' in str(e) or 'precondition' in str(e).lower():
        return False
      raise

  def _read(self) -> dict | None:
    """The holder written in the lock object; None if there is none ({} if unreadable)."""
    try:
      return _parse(self.fs.cat_file(self._key)) or {}
    except FileNotFoundError:
      return None

  def _beat(self, every: float) -> None:
    while not self._stop.wait(every):
      try:
        current = self._read()
        if current is not None and current.get('token') != self.holder['token']:
          logging.error(
            'lock %s was taken over by %s (no heartbeat reached it for %.0f s); stop this run',
            self.path,
            _describe(current),
            self.stale_seconds,
          )
          return
        self.holder['heartbeat'] = time.time()
        self.fs.pipe_file(self._key, json.dumps(self.holder).encode())
      except Exception as e:  # a missed beat is retried; a lock seen stale is taken over, which the next beat reports
        logging.warning('lock %s: heartbeat failed (%s)', self.path, e)

  def release(self) -> None:
    self._stop.set()
    self._thread.join(timeout=10)
    try:
      current = self._read()
      if current is not None and current.get('token') == self.holder['token']:
        self.fs.rm_file(self._key)
    except Exception as e:  # the run is over; a lock left behind goes stale
      logging.warning('lock %s: not removed (%s); it goes stale after %.0f s', self.path, e, self.stale_seconds)


class DirectoryLock:
  """The lock of one directory, held from `acquire` to `release` (or the end of a `with`)."""

  def __init__(self, directory: str, what: str = 'run', heartbeat_seconds: float = 30.0, stale_seconds: float = 300.0):
    self.directory = storage.absolute(directory)
    self.path = storage.join(self.directory, LOCK_NAME)
    self.what = what
    self.heartbeat_seconds = heartbeat_seconds
    self.stale_seconds = stale_seconds
    self._lock = None

  def acquire(self) -> DirectoryLock:
    if storage.is_remote(self.directory):
      holder = _holder(self.what, uuid.uuid4().hex)
      self._lock = _BucketLock(self.path, holder, self.heartbeat_seconds, self.stale_seconds)
    else:
      if os.path.exists(self.directory) and not os.path.isdir(self.directory):
        raise UserError(f'{self.directory} is a file, not a directory')
      try:
        os.makedirs(self.directory, exist_ok=True)
        self._lock = _LocalLock(self.path, _holder(self.what, uuid.uuid4().hex))
      except PermissionError as e:
        raise UserError(f'{self.directory}: cannot write here ({e.strerror})') from None
    return self

  def release(self) -> None:
    if self._lock is not None:
      self._lock.release()
      self._lock = None

  def __enter__(self) -> DirectoryLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def lock_for_job(directory: str, what: str = 'run') -> DirectoryLock | None:
  """Process 0 of the job takes `directory`'s lock; every process raises InUse if it could not.

  Returns the lock on process 0 (release it at the end), None on the others.
  """
  import jax

  if jax.process_count() == 1:
    return DirectoryLock(directory, what).acquire()
  import numpy as np
  from jax.experimental import multihost_utils

  lock, error = None, None
  if jax.process_index() == 0:
    try:
      lock = DirectoryLock(directory, what).acquire()
    except UserError as e:
      error = e
  ok = multihost_utils.broadcast_one_to_all(np.asarray(error is None))
  if error is not None:
    raise error
  if not bool(ok):
    raise InUse(f'{directory} is in use by another run (process 0 of this job could not lock it; its log names the holder)')
  return lock
