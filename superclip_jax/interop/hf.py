"""transformers' CLIPModel layout <-> the OpenAI/OpenCLIP layout (and so superclip_jax params).

HF splits attention into q/k/v/out projections (nn.Linear), stores both projections as
bias-free nn.Linear (`visual_projection`, `text_projection`: (embed, width)) and spells
`pre_layrnorm`. Heads, activation, LayerNorm eps and the text pooling rule come from
config.json. HF pools text at the first `eos_token_id`, except for the legacy value 2,
where it takes argmax(ids) (first largest id) as OpenAI does.
"""

from __future__ import annotations

import re

import numpy as np

from superclip_jax.errors import UserError
from superclip_jax.models.superclip import ModelConfig

_LEGACY_EOS = 2
_LAYER = re.compile(r'^(vision_model|text_model)\.encoder\.layers\.(\d+)\.(.+)$')
_RENAMES = {
  'vision_model.embeddings.class_embedding': 'visual.class_embedding',
  'vision_model.embeddings.patch_embedding.weight': 'visual.conv1.weight',
  'vision_model.embeddings.position_embedding.weight': 'visual.positional_embedding',
  'vision_model.pre_layrnorm.weight': 'visual.ln_pre.weight',
  'vision_model.pre_layrnorm.bias': 'visual.ln_pre.bias',
  'vision_model.post_layernorm.weight': 'visual.ln_post.weight',
  'vision_model.post_layernorm.bias': 'visual.ln_post.bias',
  'text_model.embeddings.token_embedding.weight': 'token_embedding.weight',
  'text_model.embeddings.position_embedding.weight': 'positional_embedding',
  'text_model.final_layer_norm.weight': 'ln_final.weight',
  'text_model.final_layer_norm.bias': 'ln_final.bias',
  'logit_scale': 'logit_scale',
}
_LAYER_RENAMES = {
  'layer_norm1': 'ln_1',
  'layer_norm2': 'ln_2',
  'mlp.fc1': 'mlp.c_fc',
  'mlp.fc2': 'mlp.c_proj',
  'self_attn.out_proj': 'attn.out_proj',
}
# Tensors stored the other way round in the two layouts (HF's nn.Linear keeps (out, in)).
_TRANSPOSED = {'visual_projection.weight': 'visual.proj', 'text_projection.weight': 'text_projection'}
_IGNORED = ('text_model.embeddings.position_ids', 'vision_model.embeddings.position_ids')


def _activation(config: dict) -> bool:
  acts = {config.get(k, {}).get('hidden_act', 'quick_gelu') for k in ('text_config', 'vision_config')}
  if len(acts) > 1 or not acts <= {'quick_gelu', 'gelu'}:
    raise UserError(f'hidden_act {sorted(acts)}: superclip_jax runs quick_gelu or gelu, the same in both towers')
  return acts == {'quick_gelu'}


def to_openclip(sd: dict, config: dict) -> tuple[dict, dict]:
  """(OpenAI-layout state dict, {'quick_gelu', 'image_heads', 'text_heads', 'eot_id'}) from an HF CLIPModel."""
  for k in ('text_config', 'vision_config'):
    eps = config.get(k, {}).get('layer_norm_eps', 1e-5)
    if abs(eps - 1e-5) > 1e-12:
      raise UserError(f'{k}.layer_norm_eps={eps}: superclip_jax uses 1e-5 (as CLIP)')
  out, unknown = {}, []
  qkv: dict = {}
  for k, v in sd.items():
    m = _LAYER.match(k)
    if k in _RENAMES:
      out[_RENAMES[k]] = v
    elif k in _TRANSPOSED:
      out[_TRANSPOSED[k]] = np.ascontiguousarray(v.T)
    elif m:
      tower = 'visual.transformer' if m.group(1) == 'vision_model' else 'transformer'
      block, rest = f'{tower}.resblocks.{m.group(2)}', m.group(3)
      qm = re.match(r'self_attn\.([qkv])_proj\.(weight|bias)$', rest)
      if qm:
        qkv.setdefault((block, qm.group(2)), {})[qm.group(1)] = v
        continue
      for a, b in _LAYER_RENAMES.items():
        if rest.startswith(a + '.'):
          out[f'{block}.{b}{rest[len(a) :]}'] = v
          break
      else:
        unknown.append(k)
    elif k not in _IGNORED:
      unknown.append(k)
  for (block, kind), parts in qkv.items():
    if set(parts) != {'q', 'k', 'v'}:
      unknown.append(f'{block}: incomplete q/k/v {kind}')
      continue
    out[f'{block}.attn.in_proj_{kind}'] = np.concatenate([parts['q'], parts['k'], parts['v']], 0)
  if unknown:
    raise UserError('cannot convert: unknown key ' + '; unknown key '.join(sorted(unknown)[:20]))
  tc, vc = config.get('text_config', {}), config.get('vision_config', {})
  eos = tc.get('eos_token_id', 49407)  # transformers writes only non-default values; its default is CLIP's EOT
  vocab = out['token_embedding.weight'].shape[0] if 'token_embedding.weight' in out else 49408
  hints = {
    'quick_gelu': _activation(config),
    'image_heads': vc.get('num_attention_heads', 12),
    'text_heads': tc.get('num_attention_heads', 8),
    'eot_id': vocab - 1 if eos == _LEGACY_EOS else eos,
  }
  return out, hints


def from_openclip(sd: dict) -> dict:
  """HF CLIPModel state dict from an OpenAI-layout one (the inverse of to_openclip)."""
  inverse = {v: k for k, v in _RENAMES.items()}
  transposed = {v: k for k, v in _TRANSPOSED.items()}
  out = {}
  for k, v in sd.items():
    m = re.match(r'^(visual\.transformer|transformer)\.resblocks\.(\d+)\.(.+)$', k)
    if k in inverse:
      out[inverse[k]] = v
    elif k in transposed:
      out[transposed[k]] = np.ascontiguousarray(v.T)
    elif m:
      layer = f'{"vision_model" if m.group(1) == "visual.transformer" else "text_model"}.encoder.layers.{m.group(2)}'
      rest = m.group(3)
      if rest.startswith('attn.in_proj_'):
        kind = rest[len('attn.in_proj_') :]
        for name, part in zip('qkv', np.split(v, 3, axis=0)):
          out[f'{layer}.self_attn.{name}_proj.{kind}'] = np.ascontiguousarray(part)
        continue
      for a, b in _LAYER_RENAMES.items():
        if rest.startswith(b + '.'):
          out[f'{layer}.{a}{rest[len(b) :]}'] = v
          break
    elif k != 'logit_bias':
      raise ValueError(f'no HF name for {k}')
  return out


def hf_config(cfg: ModelConfig, logit_scale: float) -> dict:
  """config.json of a transformers CLIPModel with this model's sizes."""
  act = 'quick_gelu' if cfg.quick_gelu else 'gelu'
  if cfg.text is None:
    raise UserError('a SuperClass model (no text tower) has no HF CLIPModel form')
  text = {
    'vocab_size': cfg.vocab_size,
    'hidden_size': cfg.text.width,
    'intermediate_size': int(cfg.text.width * cfg.text.mlp_ratio),
    'num_hidden_layers': cfg.text.depth,
    'num_attention_heads': cfg.text.heads,
    'max_position_embeddings': cfg.context_length,
    'hidden_act': act,
    'layer_norm_eps': 1e-5,
    'projection_dim': cfg.embed_dim,
    'bos_token_id': 49406 if cfg.vocab_size == 49408 else cfg.vocab_size - 2,
    'eos_token_id': cfg.eot_id,
    'pad_token_id': 1,
    'model_type': 'clip_text_model',
  }
  vision = {
    'hidden_size': cfg.image.width,
    'intermediate_size': int(cfg.image.width * cfg.image.mlp_ratio),
    'num_hidden_layers': cfg.image.depth,
    'num_attention_heads': cfg.image.heads,
    'num_channels': 3,
    'image_size': cfg.image_size,
    'patch_size': cfg.image.patch_size,
    'hidden_act': act,
    'layer_norm_eps': 1e-5,
    'projection_dim': cfg.embed_dim,
    'model_type': 'clip_vision_model',
  }
  return {
    'architectures': ['CLIPModel'],
    'model_type': 'clip',
    'projection_dim': cfg.embed_dim,
    'logit_scale_init_value': logit_scale,
    'initializer_factor': 1.0,
    'torch_dtype': 'float32',
    'text_config': text,
    'vision_config': vision,
  }
