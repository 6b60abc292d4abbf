"""Tower sizes by name (OpenCLIP's model configs), so a config says 'L/16' and not six numbers."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TowerSize:
  width: int
  depth: int
  heads: int
  mlp_ratio: float = 4.0
  patch_size: int = 0  # image towers only


IMAGE_TOWERS = {
  'mu/8': TowerSize(width=64, depth=2, heads=2, patch_size=8),
  'tiny/8': TowerSize(width=128, depth=4, heads=4, patch_size=8),
  'S/16': TowerSize(width=384, depth=12, heads=6, patch_size=16),
  'B/32': TowerSize(width=768, depth=12, heads=12, patch_size=32),
  'B/16': TowerSize(width=768, depth=12, heads=12, patch_size=16),
  'L/16': TowerSize(width=1024, depth=24, heads=16, patch_size=16),
  'L/14': TowerSize(width=1024, depth=24, heads=16, patch_size=14),
  'H/14': TowerSize(width=1280, depth=32, heads=16, patch_size=14),
}

TEXT_TOWERS = {
  'mu': TowerSize(width=64, depth=2, heads=2),
  'tiny': TowerSize(width=128, depth=4, heads=4),
  'S': TowerSize(width=384, depth=12, heads=6),
  'B': TowerSize(width=512, depth=12, heads=8),
  'L': TowerSize(width=768, depth=12, heads=12),
  'H': TowerSize(width=1024, depth=24, heads=16),
}


def image_tower_size(name: str, width=0, depth=0, heads=0, patch_size=0) -> TowerSize:
  """The named image preset with any non-zero override applied."""
  base = IMAGE_TOWERS[name]
  return dataclasses.replace(
    base,
    width=width or base.width,
    depth=depth or base.depth,
    heads=heads or base.heads,
    patch_size=patch_size or base.patch_size,
  )


def text_tower_size(name: str, width=0, depth=0, heads=0) -> TowerSize:
  """The named text preset with any non-zero override applied."""
  base = TEXT_TOWERS[name]
  return dataclasses.replace(base, width=width or base.width, depth=depth or base.depth, heads=heads or base.heads)
