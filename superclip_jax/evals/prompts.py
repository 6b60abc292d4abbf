"""Class names and prompt templates for zero-shot classification.

The standard CLIP ImageNet protocol, OpenAI's 1,000 curated class names and 80-template
ensemble (OpenAI CLIP's notebook `Prompt_Engineering_for_ImageNet.ipynb`), ships with the
package in data/imagenet_zero_shot.json.
"""

from __future__ import annotations

from superclip_jax.data import eval_sources
from superclip_jax.errors import UserError


def resolve_templates(spec) -> tuple[str, ...]:
  """'imagenet' (the 80), 'simple' (a photo of a {}.), or a sequence of '{}' format strings."""
  if spec in ('imagenet', 'openai'):
    return tuple(eval_sources.imagenet_templates())
  if spec in ('simple', '', None):
    return ('a photo of a {}.',)
  templates = tuple(spec)
  for t in templates:
    if t.count('{}') != 1:
      raise UserError(f"prompt template {t!r} must contain exactly one '{{}}'")
  return templates


def resolve_classnames(spec, manifest_classes=()) -> tuple[str, ...]:
  """'imagenet' (the 1,000), 'manifest' (the shard manifest's class folders), or a sequence."""
  if spec == 'imagenet':
    return tuple(eval_sources.imagenet_classnames())
  if spec in ('manifest', '', None):
    if not manifest_classes:
      raise UserError('no class names: the shards have none in their manifest; set class_names')
    return tuple(c.replace('_', ' ') for c in manifest_classes)
  return tuple(spec)
