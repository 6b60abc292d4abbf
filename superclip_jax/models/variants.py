"""The model variants and the parts each has: the one place that knows what a variant name means.

superclip   both towers and the token classifier (contrastive + token loss)
clip        both towers, no token classifier: the CLIP baseline
superclass  the image tower and the token classifier only: no text tower, no contrastive loss
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Parts:
  text_tower: bool
  token_head: bool


VARIANTS = {
  'superclip': Parts(text_tower=True, token_head=True),
  'clip': Parts(text_tower=True, token_head=False),
  'superclass': Parts(text_tower=False, token_head=True),
}


def has_text_tower(variant: str) -> bool:
  return VARIANTS[variant].text_tower


def has_token_head(variant: str) -> bool:
  return VARIANTS[variant].token_head


def variant_with(*, text_tower: bool, token_head: bool) -> str:
  """The variant that has exactly these parts (how a converted checkpoint's variant is recognised)."""
  for name, parts in VARIANTS.items():
    if parts == Parts(text_tower=text_tower, token_head=token_head):
      return name
  raise ValueError(f'no variant has text_tower={text_tower} and token_head={token_head}')
