"""Orbax checkpoints: async saves, exact auto-resume, preemption, on any mesh and process count.

A checkpoint (one Orbax step directory, written to a temporary name and renamed when
complete, so a crash mid-save leaves the previous one usable) holds:
  state   the TrainState, restored onto any mesh and any number of processes through
          ShapeDtypeStruct targets that carry the new sharding
  loop    the loop's position: the next batch (the data position is the step alone; see
          data/pipeline.py), the metrics accumulated since the last log row and the
          throughput clock, so a resumed run logs exactly what an unbroken one would
  config  the run's config, shown when a checkpoint does not fit this run

Whether a checkpoint fits is read from Orbax's saved tree metadata against the abstract
target: a parameter or optimizer leaf missing, extra or of another shape is named.
"""

from __future__ import annotations

import json
import signal
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from superclip_jax import config_defaults, storage, tree_names
from superclip_jax.errors import UserError


class IncompatibleCheckpoint(UserError):
  """A checkpoint whose tree does not fit this run's model or optimizer."""


class OtherBatch(UserError):
  """A checkpoint trained at another global batch size than this run's."""


class DamagedCheckpoint(RuntimeError):
  """A checkpoint whose arrays read back other than they were saved (a changed byte)."""


def _leaf_fingerprint(x: jax.Array) -> jax.Array:
  """A uint32 checksum of an array's bits: sum over elements of bits x (2 * index + 1), mod 2^32.

  Each element's weight is odd, so any single flipped bit changes the sum.
  """
  bits = x.dtype.itemsize * 8
  if x.dtype == np.bool_:
    words = x.astype(jnp.uint32)
  else:
    words = jax.lax.bitcast_convert_type(x, jnp.dtype(f'uint{bits}'))
    if bits > 32:
      words = (words ^ (words >> 32)).astype(jnp.uint32)
    words = words.astype(jnp.uint32)
  index = jnp.arange(x.size, dtype=jnp.uint32).reshape(x.shape)
  return jnp.sum(words * (2 * index + 1), dtype=jnp.uint32)


_fingerprint_all = jax.jit(lambda leaves: [_leaf_fingerprint(x) for x in leaves])


def fingerprints(state: Any) -> dict[str, int]:
  """{leaf name: uint32 checksum} of a (sharded) train state, computed on its devices in one program."""
  named = flat_names(state)
  names = sorted(named)
  values = jax.device_get(_fingerprint_all([named[n] for n in names]))
  return {n: int(v) for n, v in zip(names, values)}


class Preempted(Exception):
  """The run was asked to stop (SIGTERM, a preemption notice) and saved its checkpoint.

  The command exits with `exit_code` (checkpoint.preempt_exit_code, 143 by default): not 0,
  so a scheduler that requeues failed jobs runs it again, and it resumes.
  """

  def __init__(self, step: int, path: str, exit_code: int):
    super().__init__(f'preempted at step {step}: checkpoint saved to {path}; run the same command to resume')
    self.step, self.path, self.exit_code = step, path, exit_code


def flat_names(tree: Any) -> dict[str, Any]:
  """{'params.image_tower.proj': leaf, ...}: leaves by the dotted names Orbax stores them under."""
  return tree_names.flat(tree)


def tree_mismatches(saved: dict[str, Any], target: dict[str, Any]) -> list[str]:
  """Readable lines for leaves missing, extra or of another shape/dtype between two flat trees."""
  problems = []
  # Parameters first: they say what changed; optimizer leaves follow them.
  for name in sorted(set(saved) | set(target), key=lambda n: (not n.startswith('params.'), n)):
    if name not in target:
      problems.append(f'{name}: in the checkpoint, not in this run')
    elif name not in saved:
      problems.append(f'{name}: in this run, not in the checkpoint')
    else:
      a, b = saved[name], target[name]
      if tuple(a.shape) != tuple(b.shape) or str(a.dtype) != str(b.dtype):
        problems.append(f'{name}: checkpoint {tuple(a.shape)} {a.dtype}, this run {tuple(b.shape)} {b.dtype}')
  return problems


def config_differences(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """model.*, loss.* and optim.* keys whose saved value differs from this run's (hints only)."""
  old = config_defaults.flat_keys(saved)
  new = config_defaults.flat_keys(json.loads(json.dumps(config.to_dict())))
  return [
    f'{k}: checkpoint {old.get(k)!r}, this run {new.get(k)!r}'
    for k in sorted(new)
    if k.split('.')[0] in ('model', 'loss', 'optim', 'tokenizer') and old.get(k) != new.get(k)
  ]


class Checkpointer:
  """Save every N steps (async) keeping the last K plus every M-th; restore the newest usable one."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict):
    c = config.checkpoint
    self.workdir = storage.absolute(workdir)
    self.directory = storage.join(self.workdir, 'checkpoints')
    self.every = int(c.every_steps)
    options = ocp.CheckpointManagerOptions(
      save_interval_steps=max(self.every, 1),
      max_to_keep=c.keep or None,
      keep_period=c.keep_every or None,
      enable_async_checkpointing=c.async_save,
      create=True,
    )
    # Handlers named up front, so a fresh process can read the saved items' metadata.
    handlers = {
      'state': ocp.StandardCheckpointHandler(use_ocdbt=bool(c.ocdbt)),
      'loop': ocp.JsonCheckpointHandler(),
      'config': ocp.JsonCheckpointHandler(),
    }
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
    # Steps known good: saved by this process from a state checked finite, or restored with
    # matching fingerprints. Only these are named as "the last good checkpoint".
    self.verified: set[int] = set()

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def path(self, step: int) -> str:
    return storage.join(self.directory, str(step))

  def due(self, step: int, total_steps: int) -> bool:
    """Whether `step` is a regular save point: every `every_steps` and the last step."""
    return step == total_steps or (self.every > 0 and step % self.every == 0)

  def save(self, step: int, state, loop: dict[str, Any], config: ml_collections.ConfigDict) -> bool:
    """Start saving this step (asynchronously); the caller decides when (see `due`).

    The loop item also records a fingerprint of every state leaf, which `restore` checks.
    """
    loop = dict(loop, fingerprints=fingerprints(state))
    self.verified.add(step)
    return self.manager.save(
      step,
      force=True,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        loop=ocp.args.JsonSave(loop),
        config=ocp.args.JsonSave(json.loads(json.dumps(config.to_dict()))),
      ),
    )

  def check_fits(self, step: int, target, config: ml_collections.ConfigDict | None = None) -> None:
    """Raise IncompatibleCheckpoint naming every leaf that does not fit `target`."""
    meta = self.manager.item_metadata(step)['state']
    if meta is None:
      raise ValueError(f'{self.path(step)}: no readable state metadata')
    saved = flat_names(getattr(meta, 'tree', meta))
    problems = tree_mismatches(saved, flat_names(target))
    if problems:
      hint = ''
      if config is not None:
        try:
          saved_config = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']
          diff = config_differences(saved_config, config)
          hint = ('\nconfig keys that differ: ' + '; '.join(diff[:12])) if diff else ''
        except Exception:  # a hint only; the tree mismatch is the error
          pass
      shown = problems[:12] + ([f'... and {len(problems) - 12} more'] if len(problems) > 12 else [])
      raise IncompatibleCheckpoint(
        f'checkpoint {self.path(step)} does not fit this run ({len(problems)} leaves differ: '
        + '; '.join(shown)
        + ')'
        + hint
        + '\nuse another --workdir, or the config it was written with'
      )

  def restore_latest(self, target, config: ml_collections.ConfigDict) -> tuple[Any, dict] | None:
    """(state, loop position) of the newest checkpoint that restores, else None if there is none.

    A damaged step (unreadable metadata, a failed restore, an empty folder) is moved aside
    to N.damaged (deleted with checkpoint.delete_damaged) with one warning line, and the one
    before is tried: left in place, Orbax would refuse to save step N again when the run
    gets there, and the run would crash there on every restart. One that does not fit this
    run's model stops the run (IncompatibleCheckpoint): falling back to an older one would
    hide the mistake. If checkpoints exist but none restores, that is an error (a fresh
    start would silently overwrite them).
    """
    steps = self.steps()
    problems = []
    for step in reversed(steps):
      try:
        self.check_fits(step, target, config)
        self.check_same_batch(step, config)
        return self.restore(step, target)
      except (IncompatibleCheckpoint, OtherBatch):
        raise
      except Exception as e:  # Orbax/TensorStore raise many types for damaged files
        reason = _one_line(e)
        problems.append(f'step {step}: {reason}')
        self._set_aside(step, reason, bool(config.checkpoint.delete_damaged))
    if steps:
      raise UserError(f'no usable checkpoint in {self.directory}:\n  ' + '\n  '.join(problems))
    return None

  def check_same_batch(self, step: int, config: ml_collections.ConfigDict) -> None:
    """Raise OtherBatch if the checkpoint was trained at another global batch size.

    Batches are indexed by step (batch s holds samples s*B .. (s+1)*B - 1), so resuming at
    another B would skip or repeat samples: refused, with the two ways forward.
    """
    saved = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']
    before = saved['data']['global_batch_size']
    if before != config.data.global_batch_size:
      raise OtherBatch(
        f'checkpoint {self.path(step)} was trained at data.global_batch_size={before}, this run has '
        f'{config.data.global_batch_size}: resuming would read other samples than an unbroken run. '
        f'Resume with --config.data.global_batch_size={before}, or start a new workdir from its weights '
        f'with --config.init_from={self.workdir}'
      )

  def _set_aside(self, step: int, reason: str, delete: bool) -> None:
    """Move an unusable step out of Orbax's sight (process 0 moves, every process waits for it)."""
    where = 'deleted' if delete else 'moved to ' + set_aside_name(self.path(step))
    if jax.process_index() == 0:
      path = storage.Path(self.path(step))
      if delete:
        path.rmtree(missing_ok=True)
      else:
        path.rename(set_aside_name(self.path(step)))
      logging.warning('checkpoint %s is damaged (%s): %s; trying the previous one', self.path(step), reason, where)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f'checkpoint {step} set aside')
    self.manager.reload()

  def restore(self, step: int, target) -> tuple[Any, dict]:
    """Restore one step onto `target`'s shardings; returns (state, loop position)."""
    restored = self.manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), loop=ocp.args.JsonRestore())
    )
    loop = dict(restored['loop'] or {})
    saved = loop.pop('fingerprints', None)
    if saved is None:
      logging.info('%s has no fingerprints (written before they were recorded): not verified', self.path(step))
    else:
      wrong = sorted(name for name, value in fingerprints(restored['state']).items() if saved.get(name) != value)
      if wrong:
        raise DamagedCheckpoint(
          f'{len(wrong)} arrays differ from their fingerprints at save: {", ".join(wrong[:4])}'
          + (' ...' if len(wrong) > 4 else '')
        )
    if saved is not None:
      self.verified.add(step)
    logging.info('restored %s', self.path(step))
    return restored['state'], loop

  def last_verified(self) -> str | None:
    """The path of the newest step still on disk that is known good (see `verified`), or None."""
    good = sorted(self.verified & set(self.steps()))
    return self.path(good[-1]) if good else None

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


class PreemptionWatcher:
  """SIGTERM (SLURM, Kubernetes, spot VMs) or JAX's preemption sync point ask for a save-and-exit.

  The signal only sets a flag; the loop acts on it at the next step boundary. With several
  processes the flag is agreed on collectively so every host saves at the same step.
  """

  def __init__(self, manager: ocp.CheckpointManager | None, check_every: int = 10):
    self.requested = False
    self.manager = manager
    self.check_every = max(int(check_every), 1)
    self._previous = signal.signal(signal.SIGTERM, self._on_signal)

  def _on_signal(self, signum, frame):
    del frame
    logging.warning('received signal %d: will checkpoint at the next step boundary and exit', signum)
    self.requested = True

  def should_stop(self, step: int) -> bool:
    if self.manager is not None and self.manager.reached_preemption(step):
      return True
    if jax.process_count() == 1:
      return self.requested
    if step % self.check_every:
      return False
    from jax.experimental import multihost_utils

    # A host-local numpy flag (a jnp array made under the mesh would be a global array).
    flags = multihost_utils.process_allgather(np.asarray([self.requested]))
    return bool(np.asarray(flags).any())

  def restore_handler(self):
    signal.signal(signal.SIGTERM, self._previous)


def checkpoint_dir(workdir: str, step: int | None = None) -> tuple[str, int]:
  """(step directory, step): the given step's, or the newest readable one, under workdir/checkpoints."""
  if step is None:
    return latest_checkpoint_dir(workdir)
  path = storage.join(storage.absolute(workdir), 'checkpoints', str(step))
  if not storage.exists(path):
    raise UserError(f'{workdir}: no checkpoint of step {step}')
  problem = unreadable_reason(path)
  if problem is not None:
    raise UserError(f'checkpoint {path} is damaged: {problem}')
  return path, step


def latest_checkpoint_dir(workdir: str) -> tuple[str, int]:
  """(path of the newest readable step directory, its step) under workdir/checkpoints.

  Tools (export, evaluate, init_from, convert) read a workdir that a run may still own, so a
  damaged step is passed over with a warning but left where it is (the run sets it aside).
  """
  directory = storage.join(storage.absolute(workdir), 'checkpoints')
  path = storage.Path(directory)
  steps = sorted(int(d.name) for d in path.iterdir() if d.name.isdigit()) if path.exists() else []
  problems = []
  for step in reversed(steps):
    step_dir = storage.join(directory, str(step))
    problem = unreadable_reason(step_dir)
    if problem is None:
      return step_dir, step
    problems.append(f'step {step}: {problem}')
    logging.warning('checkpoint %s is damaged (%s); trying the previous one', step_dir, problem)
  if problems:
    raise UserError(f'no usable checkpoint in {directory}:\n  ' + '\n  '.join(problems))
  raise UserError(f'no finished checkpoint under {directory}')


def unreadable_reason(step_dir: str) -> str | None:
  """Why a step directory cannot be read (None if its state's tree metadata reads)."""
  if not storage.exists(storage.join(step_dir, 'state')):
    return 'no state'
  try:
    tree_metadata(storage.join(step_dir, 'state'))
  except Exception as e:  # Orbax raises many types for damaged metadata
    return _one_line(e)
  return None


def set_aside_name(path: str) -> str:
  """PATH.damaged, or PATH.damaged.K where that exists already (a step damaged twice)."""
  candidate, k = f'{path}.damaged', 1
  while storage.exists(candidate):
    candidate, k = f'{path}.damaged.{k}', k + 1
  return candidate


def _one_line(error: BaseException) -> str:
  # TensorStore appends its whole spec ("See full TensorStore details: <bound method ...>").
  text = ' '.join(str(error).split()).split(' See full TensorStore details')[0] or type(error).__name__
  return text if len(text) <= 300 else text[:297] + '...'


def read_numpy_tree(path: str) -> dict:
  """A saved pytree as host numpy arrays, whatever mesh wrote it (small trees, tools and tests)."""
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree_metadata(path))
  return restore_item(path, ocp.args.PyTreeRestore(restore_args=restore_args))


# A saved pytree (a step's `state`, an export's `params`) is read with its item handler, not a
# Checkpointer: a manager's step keeps _CHECKPOINT_METADATA one level up, and a Checkpointer
# on the item folder warns on every healthy step that the file is missing.
def tree_metadata(path: str) -> dict:
  """The saved pytree's structure, with each array's shape and dtype."""
  return ocp.PyTreeCheckpointHandler().metadata(storage.Path(path)).tree


def restore_item(path: str, args: ocp.args.PyTreeRestore):
  """The saved pytree at path, restored as args say."""
  return ocp.PyTreeCheckpointHandler().restore(storage.Path(path), args=args)
