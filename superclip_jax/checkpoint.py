"""Orbax checkpoints: async saves, exact auto-resume with fallback, preemption, weights-only init.

A checkpoint (one Orbax step directory, written to a temporary name and renamed when
complete, so a crash mid-save leaves the previous one usable) holds:
  state   the TrainState (params, optimizer, IDF counts, step, RNG), restored onto any mesh
          through ShapeDtypeStruct targets that carry the new sharding
  data    every process's input-iterator position (one JSON file per process)
  config  the run's config, to detect an incompatible checkpoint before restoring it
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

# Config keys that change the parameter tree or its shapes: a checkpoint written with other
# values cannot be restored into this run.
STRUCTURAL_KEYS = (
    'model.variant', 'model.image', 'model.text', 'model.embed_dim', 'model.image_size',
    'model.vocab_size', 'model.context_length', 'model.image_width', 'model.image_depth',
    'model.image_heads', 'model.patch_size', 'model.text_width', 'model.text_depth',
    'model.text_heads', 'loss.contrastive', 'loss.idf', 'optim.grad_clip_norm', 'optim.frozen')


class DataStateHandler(ocp.CheckpointHandler):
  """Saves each process's input-iterator state as process_<i>-of-<n>.json."""

  def save(self, directory: epath.Path, args: 'DataStateSave'):
    name = f'process_{jax.process_index()}-of-{jax.process_count()}.json'
    (directory / name).write_text(json.dumps(args.state))

  def restore(self, directory: epath.Path, args: 'DataStateRestore' = None):
    path = directory / f'process_{jax.process_index()}-of-{jax.process_count()}.json'
    if not path.exists():
      raise FileNotFoundError(f'{path}: no input state for this process (was the checkpoint written '
                              'with another number of processes?)')
    return json.loads(path.read_text())

  def metadata(self, directory):
    return None

  def structure(self, directory):
    return None

  def finalize(self, directory):
    pass

  def close(self):
    pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  state: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  pass


def _flat(d: dict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def incompatibilities(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """Structural config keys whose saved value differs from this run's, as readable lines."""
  saved_flat = _flat(saved)
  now_flat = _flat(json.loads(json.dumps(config.to_dict())))
  return [f'{k}: checkpoint {saved_flat.get(k)!r}, this run {now_flat.get(k)!r}'
          for k in STRUCTURAL_KEYS if saved_flat.get(k) != now_flat.get(k)]


class IncompatibleCheckpoint(ValueError):
  pass


class Checkpointer:
  """Save every N steps (async) keeping the last K plus every M-th; restore the newest usable one."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict):
    c = config.checkpoint
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    self.every = int(c.every_steps)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(self.every, 1), max_to_keep=c.keep or None,
        keep_period=c.keep_every or None, enable_async_checkpointing=c.async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def due(self, step: int, total_steps: int) -> bool:
    """Whether `step` is a regular save point: every `every_steps` and the last step."""
    return step == total_steps or (self.every > 0 and step % self.every == 0)

  def save(self, step: int, state, data, config: ml_collections.ConfigDict) -> bool:
    """Start saving this step (asynchronously); the caller decides when (see `due`)."""
    return self.manager.save(step, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=DataStateSave(data.get_state()),
        config=ocp.args.JsonSave(json.loads(json.dumps(config.to_dict())))))

  def restore_latest(self, target, data, config: ml_collections.ConfigDict):
    """The newest checkpoint that restores, else None if there is none.

    A corrupt or incompatible newest checkpoint is skipped with a warning naming it and the
    one before is tried; if checkpoints exist but none restores, that is an error (a fresh
    start would silently overwrite them).
    """
    steps = self.steps()
    problems = []
    for step in reversed(steps):
      try:
        return self.restore(step, target, data, config)
      except Exception as e:  # Orbax/TensorStore raise many types for damaged files
        problems.append(f'step {step}: {e}')
        logging.warning('checkpoint %s cannot be restored (%s); trying the previous one', self.path(step), e)
    if steps:
      raise RuntimeError(f'no usable checkpoint in {self.directory}:\n  ' + '\n  '.join(problems))
    return None

  def restore(self, step: int, target, data, config: ml_collections.ConfigDict):
    """Restore one step onto `target`'s shardings and the data iterator; returns the state."""
    saved_config = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']
    problems = incompatibilities(saved_config, config)
    if problems:
      raise IncompatibleCheckpoint(f'written with another model or optimizer config: {"; ".join(problems)}')
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=DataStateRestore()))
    if data is not None:
      data.set_state(restored['data'])
    logging.info('restored %s', self.path(step))
    return restored['state']

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
    flags = multihost_utils.process_allgather(jax.numpy.asarray(self.requested))
    return bool(flags.any())

  def restore_handler(self):
    signal.signal(signal.SIGTERM, self._previous)


def read_numpy_tree(path: str) -> dict:
  """A saved pytree as host numpy arrays, whatever mesh wrote it."""
  import numpy as np
  meta = ocp.StandardCheckpointer().metadata(path)
  tree = getattr(getattr(meta, 'item_metadata', meta), 'tree', None)
  if tree is None:
    tree = meta.item_metadata
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))


def latest_checkpoint_dir(workdir: str) -> tuple[str, int]:
  """(path of the newest finished step directory, its step) under workdir/checkpoints."""
  directory = os.path.join(workdir, 'checkpoints')
  steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(directory) else []
  if not steps:
    raise FileNotFoundError(f'no finished checkpoint under {directory}')
  return os.path.join(directory, str(steps[-1])), steps[-1]


def load_init_params(path: str) -> dict:
  """Parameters of an export directory or of a workdir's newest checkpoint, as numpy."""
  if os.path.exists(os.path.join(path, 'model_config.json')):
    return read_numpy_tree(os.path.join(path, 'params'))
  step_dir, _ = latest_checkpoint_dir(path)
  return read_numpy_tree(os.path.join(step_dir, 'state'))['params']


def merge_init_params(params: dict, loaded: dict, image_tower_only: bool, source: str) -> dict:
  """params with the loaded values put in; every shape must match, named in the error if not.

  Parameters the source lacks (an export has no token classifier) keep their fresh values.
  """
  flat_now = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(params)}
  flat_loaded = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(loaded)}
  taken, problems = set(), []
  for name, value in flat_loaded.items():
    if image_tower_only and not name.startswith("['image_tower']"):
      continue
    if name not in flat_now:
      problems.append(f'{name}: in {source} but not in this model')
    elif tuple(value.shape) != tuple(flat_now[name].shape):
      problems.append(f'{name}: shape {tuple(value.shape)} in {source}, {tuple(flat_now[name].shape)} here')
    else:
      taken.add(name)
  if problems:
    raise ValueError('init_from does not fit this model:\n  ' + '\n  '.join(problems))
  if not taken:
    raise ValueError(f'init_from {source}: no parameter taken')

  def pick(path, leaf):
    name = jax.tree_util.keystr(path)
    return flat_loaded[name].astype(leaf.dtype) if name in taken else leaf
  logging.info('init_from %s: %d of %d parameter arrays loaded', source, len(taken), len(flat_now))
  return jax.tree_util.tree_map_with_path(pick, params)
