"""Names for the leaves of parameter and state trees: one spelling for every module that needs one.

Orbax stores a leaf under its dotted path ('params.image_tower.proj'), init_from and the
converters match those names, and the optimizer's masks match '/'-joined paths against the
user's regex (`optim.frozen='image_tower/.*'`). Nested dicts and their flat forms convert with
flax.traverse_util.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import traverse_util


def key(k) -> Any:
  """A path entry's own key: a dict key, a dataclass field's name or a sequence index."""
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return getattr(k, attr)
  return k


def path_name(path, sep: str = '.') -> str:
  """'image_tower.proj' for the path jax.tree_util gives a leaf."""
  return sep.join(str(key(k)) for k in path)


def flat(tree: Any, sep: str = '.', is_leaf: Callable[[Any], bool] | None = None) -> dict[str, Any]:
  """{name: leaf} over any pytree (dicts, TrainState, nnx State); None leaves are left out."""
  return {
    path_name(path, sep): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree, is_leaf=is_leaf) if leaf is not None
  }


def nest(named: dict, sep: str | None = '.') -> dict:
  """The nested dict of {name: leaf} (or of {tuple path: leaf} with sep=None)."""
  return traverse_util.unflatten_dict(named, sep=sep)


def names(tree: Any, sep: str = '/', is_leaf: Callable[[Any], bool] | None = None) -> Any:
  """The same tree with each leaf replaced by its name."""
  return jax.tree_util.tree_map_with_path(lambda path, _: path_name(path, sep), tree, is_leaf=is_leaf)
