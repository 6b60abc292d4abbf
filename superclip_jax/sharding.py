"""Device mesh, logical-axis rules, parameter shardings and global batch assembly.

`config.mesh.rules` maps logical axis names ('batch', 'embed', 'mlp', ...) onto the mesh
axes ('data', 'fsdp', 'tensor'). It is the only place that says how anything is split:
parameters, their optimizer moments, activations (through `constrain`) and the batch.

The host feeds each batch split over *every* mesh axis (each device its own rows), so
the global batch is the same rows in the same order on any mesh and any number of
processes; inside the jitted step it is resharded to the 'batch' rule (big_vision's and
MaxText's way). Feeding it split over the batch axes alone would let processes that hold
replicas of one shard feed different rows, silently.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from superclip_jax.errors import UserError

MESH_AXES = ('data', 'fsdp', 'tensor')

Rules = Sequence[tuple[str, Any]]

# The rules in force while a model function is traced (`use_rules`); none: no constraints.
_RULES: contextvars.ContextVar[tuple | None] = contextvars.ContextVar('superclip_rules', default=None)


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh; one -1 entry takes the devices left over.

  Axis types are Auto: `jax.make_mesh` defaults to Explicit on new jax, which breaks
  FSDP + tensor-parallel models that rely on sharding propagation.
  """
  devices = list(devices if devices is not None else jax.devices())
  shape = list(shape)
  if shape.count(-1) > 1:
    raise UserError(f'mesh.shape {tuple(shape)} has more than one -1')
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if len(devices) % known:
      raise UserError(f'mesh.shape {tuple(shape)} does not divide {len(devices)} devices')
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise UserError(f'mesh.shape {tuple(shape)} needs {math.prod(shape)} devices, have {len(devices)}')
  if any(getattr(d, 'core_on_chip', 0) for d in devices):
    # One device per TensorCore (a v4/v5p topology described without megacore): jax.make_mesh
    # refuses such devices; they are used in the order given.
    return Mesh(np.asarray(devices, dtype=object).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3)
  return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def _table(rules: Rules) -> dict[str, tuple[str, ...]]:
  table = {}
  for name, axes in rules:
    if axes is None:
      table[name] = ()
    elif isinstance(axes, str):
      table[name] = (axes,)
    else:
      table[name] = tuple(axes)
  return table


def batch_axes(rules: Rules) -> tuple[str, ...]:
  """The mesh axes the 'batch' rule splits activations and losses over."""
  return _table(rules).get('batch', ())


def logical_to_spec(logical: Sequence[str | None], shape: Sequence[int] | None, mesh: Mesh, rules: Rules, name: str = '') -> P:
  """PartitionSpec for one array; a dimension the mapped mesh axes do not divide is replicated."""
  table = _table(rules)
  used: set[str] = set()
  spec = []
  for i, axis in enumerate(logical):
    names = table.get(axis, ()) if axis is not None else ()
    names = tuple(a for a in names if a not in used and mesh.shape.get(a, 1) > 1)
    if names and shape is not None and shape[i] % math.prod(mesh.shape[a] for a in names):
      logging.log_first_n(
        logging.INFO, 'replicating %s dim %d (%s): not divisible by mesh axes %s', 10, name, shape[i], axis, names
      )
      names = ()
    used.update(names)
    spec.append(names[0] if len(names) == 1 else (names or None))
  return P(*spec)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def input_sharding(mesh: Mesh) -> NamedSharding:
  """How the host feeds a batch: rows split over every mesh axis, one block per device."""
  return NamedSharding(mesh, P(mesh.axis_names))


def num_batch_shards(mesh: Mesh, rules: Rules) -> int:
  return math.prod(mesh.shape[a] for a in batch_axes(rules) if a in mesh.axis_names)


@contextlib.contextmanager
def use_rules(rules: Rules):
  """While tracing a model function: activations are constrained by these rules."""
  token = _RULES.set(tuple((n, a) for n, a in rules))
  try:
    yield
  finally:
    _RULES.reset(token)


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
  """Constrain an activation's sharding by logical axis names (no-op outside `use_rules` or a mesh)."""
  rules = _RULES.get()
  mesh = jax.sharding.get_abstract_mesh()
  if rules is None or mesh.empty:
    return x
  table = _table(rules)
  spec = []
  for axis in logical:
    names = tuple(a for a in table.get(axis, ()) if a in mesh.axis_names) if axis else ()
    spec.append(names or None)
  return jax.lax.with_sharding_constraint(x, P(*spec))


def check_batch_divides(global_batch: int, mesh: Mesh, what: str = 'data.global_batch_size') -> None:
  """The global batch must split into equal rows per device (and so per process)."""
  devices = mesh.devices.size
  if global_batch % devices:
    raise UserError(
      f'{what}={global_batch} does not divide over the {devices} devices of mesh '
      f'{dict(mesh.shape)} ({jax.process_count()} processes): use a multiple of {devices}'
    )


def local_rows(global_batch: int, mesh: Mesh) -> list[tuple[int, int]]:
  """Row ranges [start, stop) of the global batch that this process's devices hold, in order.

  Contiguous ranges are merged; a process whose devices are not adjacent in the mesh
  (a tensor axis spanning hosts) holds several ranges.
  """
  check_batch_divides(global_batch, mesh)
  index_map = input_sharding(mesh).addressable_devices_indices_map((global_batch,))
  ranges = sorted({(s[0].start or 0, s[0].stop if s[0].stop is not None else global_batch) for s in index_map.values()})
  merged: list[tuple[int, int]] = []
  for start, stop in ranges:
    if merged and merged[-1][1] == start:
      merged[-1] = (merged[-1][0], stop)
    else:
      merged.append((start, stop))
  return merged


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh, global_size: int) -> dict[str, jax.Array]:
  """This process's rows (those of `local_rows`, concatenated in order) -> global arrays split over every axis."""
  sharding = input_sharding(mesh)
  n = sum(stop - start for start, stop in local_rows(global_size, mesh))
  out = {}
  for key, value in local.items():
    value = np.asarray(value)
    if len(value) != n:
      raise ValueError(f'batch field {key!r} has {len(value)} rows; this process holds {n} of {global_size}')
    out[key] = jax.make_array_from_process_local_data(sharding, value, (global_size, *value.shape[1:]))
  return out


def tree_shardings(logical_tree: Mapping, shape_tree: Mapping, mesh: Mesh, rules: Rules) -> Any:
  """NamedShardings for a pure dict of arrays, given the matching dict of logical axes."""

  def one(path, axes, sds):
    return NamedSharding(mesh, logical_to_spec(axes, sds.shape, mesh, rules, jax.tree_util.keystr(path)))

  return jax.tree_util.tree_map_with_path(one, logical_tree, shape_tree, is_leaf=lambda x: isinstance(x, tuple))


@jax.tree_util.register_pytree_with_keys_class
class Logical:
  """A leaf annotated with its logical axes; a pytree node, so optax builds its moments inside it.

  Optimizer state initialised from annotated parameters carries the same annotation on
  every leaf derived from a parameter (Adam's mu and nu, inside any masking), which is how
  its shardings are found (as flax linen's `Partitioned` boxes do).
  """

  def __init__(self, value, axes: tuple):
    self.value = value
    self.axes = tuple(axes)

  def tree_flatten_with_keys(self):
    return ((jax.tree_util.GetAttrKey('value'), self.value),), self.axes

  @classmethod
  def tree_unflatten(cls, axes, children):
    return cls(children[0], axes)


def annotate(tree: Mapping, logical_tree: Mapping) -> Any:
  """Wrap every leaf of a pure dict in `Logical` with its axes."""
  return jax.tree.map(lambda axes, x: Logical(x, axes), logical_tree, tree, is_leaf=lambda x: isinstance(x, tuple))


def shardings_from_annotations(tree: Any, mesh: Mesh, rules: Rules) -> Any:
  """Shardings for a tree built from annotated leaves: annotated ones by their axes, others replicated."""

  def one(x):
    if isinstance(x, Logical):
      return NamedSharding(mesh, logical_to_spec(x.axes, getattr(x.value, 'shape', None), mesh, rules))
    return replicated(mesh)

  return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, Logical))
