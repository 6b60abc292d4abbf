"""Class names and prompt templates for zero-shot classification.

The standard CLIP ImageNet protocol (OpenAI's 1,000 curated class names and 80-template
ensemble, from OpenAI CLIP's notebook `Prompt_Engineering_for_ImageNet.ipynb`) is read
from `open_clip/zero_shot_metadata.py` in the open-clip-torch wheel (installed, cached,
or fetched on first use; see data/wheel_files.py). It is parsed, never executed: each
template `lambda c: f'a photo of a {c}.'` becomes 'a photo of a {}.'.
"""

from __future__ import annotations

import ast
import functools

from superclip_jax.data import wheel_files
from superclip_jax.errors import UserError

_METADATA = 'zero_shot_metadata.py'


def _template_of(node: ast.AST) -> str:
  if not (isinstance(node, ast.Lambda) and isinstance(node.body, ast.JoinedStr)):
    raise ValueError('unexpected template form in zero_shot_metadata.py')
  parts = []
  for value in node.body.values:
    if isinstance(value, ast.Constant):
      parts.append(str(value.value).replace('{', '{{').replace('}', '}}'))
    else:
      parts.append('{}')
  return ''.join(parts)


@functools.lru_cache(maxsize=1)
def _openclip_metadata() -> dict[str, tuple[str, ...]]:
  path = wheel_files.find('open-clip-torch', 'open_clip', _METADATA)
  with open(path, encoding='utf-8') as f:
    tree = ast.parse(f.read())
  out = {}
  for node in tree.body:
    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Tuple):
      name = node.targets[0].id
      if name.endswith('TEMPLATES'):
        out[name] = tuple(_template_of(e) for e in node.value.elts)
      elif name.endswith('CLASSNAMES'):
        out[name] = tuple(ast.literal_eval(e) for e in node.value.elts)
  return out


def imagenet_classnames() -> tuple[str, ...]:
  """OpenAI's 1,000 curated ImageNet-1k class names."""
  return _openclip_metadata()['IMAGENET_CLASSNAMES']


def imagenet_templates() -> tuple[str, ...]:
  """OpenAI's 80 ImageNet prompt templates, as format strings with one '{}'."""
  return _openclip_metadata()['OPENAI_IMAGENET_TEMPLATES']


def resolve_templates(spec) -> tuple[str, ...]:
  """'imagenet' (the 80), 'simple' (a photo of a {}.), or a sequence of '{}' format strings."""
  if spec in ('imagenet', 'openai'):
    return imagenet_templates()
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
    return imagenet_classnames()
  if spec in ('manifest', '', None):
    if not manifest_classes:
      raise UserError('no class names: the shards have none in their manifest; set class_names')
    return tuple(c.replace('_', ' ') for c in manifest_classes)
  return tuple(spec)
