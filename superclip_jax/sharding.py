"""Device mesh, logical-axis rules, parameter shardings and global batch assembly."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh; one -1 entry takes the devices left over.

  Axis types are Auto: `jax.make_mesh` defaults to Explicit on new jax, which breaks
  FSDP + tensor-parallel models that rely on sharding propagation.
  """
  devices = list(devices if devices is not None else jax.devices())
  shape = list(shape)
  if shape.count(-1) > 1:
    raise ValueError(f'mesh.shape {tuple(shape)} has more than one -1')
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f'mesh.shape {tuple(shape)} does not divide {len(devices)} devices')
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(f'mesh.shape {tuple(shape)} needs {math.prod(shape)} devices, have {len(devices)}')
  return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def _mesh_axes_size(mesh: Mesh, axes) -> int:
  if axes is None:
    return 1
  if isinstance(axes, str):
    axes = (axes,)
  return math.prod(mesh.shape[a] for a in axes)


def logical_to_spec(logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Sequence[tuple[str, Any]], name: str = '') -> P:
  """PartitionSpec for one array; a dimension the mapped mesh axes do not divide is replicated."""
  table = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in rules}
  used: set[str] = set()
  spec = []
  for dim, axis in zip(shape, logical):
    mapped = table.get(axis) if axis is not None else None
    names = (mapped,) if isinstance(mapped, str) else (mapped or ())
    names = tuple(a for a in names if a not in used and mesh.shape.get(a, 1) > 1)
    if names and dim % _mesh_axes_size(mesh, names):
      logging.log_first_n(logging.INFO, 'replicating %s dim %d (%s): not divisible by mesh axes %s',
                          10, name, dim, axis, names)
      names = ()
    used.update(names)
    spec.append(names[0] if len(names) == 1 else (names or None))
  return P(*spec)


def tree_shardings(logical_tree: Mapping, shape_tree: Mapping, mesh: Mesh,
                   rules: Sequence[tuple[str, Any]]) -> Any:
  """NamedShardings for a pure dict of arrays, given the matching dict of logical axes."""
  def one(path, axes, sds):
    return NamedSharding(mesh, logical_to_spec(axes, sds.shape, mesh, rules, jax.tree_util.keystr(path)))
  return jax.tree_util.tree_map_with_path(one, logical_tree, shape_tree, is_leaf=lambda x: isinstance(x, tuple))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over data and fsdp; the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def num_batch_shards(mesh: Mesh) -> int:
  return mesh.shape['data'] * mesh.shape['fsdp']


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's slice of the batch -> global jax.Arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}
