"""The OpenAI CLIP / OpenCLIP state-dict layout <-> superclip_jax parameters.

OpenAI's `clip` and OpenCLIP's `CLIP` share key names (`visual.conv1.weight`,
`transformer.resblocks.N.attn.in_proj_weight`, `token_embedding.weight`, ...).
OpenCLIP's `CustomTextCLIP` and the SuperCLIP authors' fork (hustvl/SuperCLIP,
`open_clip/superclip_model.py`) keep the text tower under `text.` instead; both
prefixes are read, the plain one is written.

SuperCLIP's token classifier: the authors' fork names it `text_decoder`, a `MixClsHead`
whose config in SuperCLIP-ViT-B/L-16.json has `layers: 0`, i.e. exactly
`text_decoder.ln_mlp.{weight,bias}` (LayerNorm) then `text_decoder.text_projection.
{weight,bias}` (Linear width -> vocab). Those are the names read and written here; a head
with `text_decoder.mlps.*` (layers > 0) is not this method and is refused. The fork's IDF
buffers `cap_fq` / `num_samples` are dropped (an export holds no IDF counts).

Conventions, each checked numerically against the torch models in tests/test_interop.py:
- conv1 (W, 3, p, p) -> (p, p, 3, W): vit.py multiplies patches flattened (row, col, channel).
- in_proj (3W, W) rows are [q; k; v], each heads x head_dim -> kernel (W, 3, heads, head_dim).
- out_proj (W, W) acts as o @ weight.T, o flattened (head, head_dim) -> (heads, head_dim, W).
- nn.Linear weights (out, in) are transposed; `proj` / `text_projection` are already (in, out).
- Heads are not stored in a state dict: OpenAI's rule (width / 64) unless given.
- Text pooling: OpenAI/OpenCLIP take argmax(ids), the first occurrence of the largest id;
  ours takes the first eot_id, so eot_id = vocab - 1 (CLIP BPE: 49407) makes them equal.
"""

from __future__ import annotations

import re

import numpy as np

from superclip_jax.errors import UserError
from superclip_jax.models import presets, variants
from superclip_jax.models.superclip import ModelConfig

IGNORED = (
  'input_resolution',
  'context_length',
  'vocab_size',
  'cap_fq',
  'num_samples',
  'attn_mask',
  'text.attn_mask',
  'position_ids',
)
HEAD = 'text_decoder.'
_BLOCK = re.compile(r'^(.*transformer)\.resblocks\.(\d+)\.(.+)$')
_BLOCK_KEYS = (
  'ln_1.weight',
  'ln_1.bias',
  'attn.in_proj_weight',
  'attn.in_proj_bias',
  'attn.out_proj.weight',
  'attn.out_proj.bias',
  'ln_2.weight',
  'ln_2.bias',
  'mlp.c_fc.weight',
  'mlp.c_fc.bias',
  'mlp.c_proj.weight',
  'mlp.c_proj.bias',
)


def _depth(sd: dict, prefix: str) -> int:
  layers = {int(m.group(2)) for k in sd for m in [_BLOCK.match(k)] if m and m.group(1) == prefix}
  return max(layers) + 1 if layers else 0


def _heads(width: int, given: int, what: str) -> int:
  if given:
    return given
  if width % 64:
    raise UserError(
      f'{what} width {width} is not a multiple of 64: give its number of heads (--{what}_heads); a state dict does not store it'
    )
  return width // 64


def _mlp_ratio(fc, width: int) -> float:
  """A ratio r with int(width * r) == the MLP's hidden size, as layers.Transformer computes it."""
  if fc is None:
    return 4.0
  hidden = int(fc.shape[0])
  r = hidden / width
  while int(width * r) < hidden:  # 480 / 352 * 352 == 479.99999999999994
    r = float(np.nextafter(r, np.inf))
  return r


def text_prefix(sd: dict) -> str:
  """'' for CLIP's layout, 'text.' for CustomTextCLIP / SuperCLIP's."""
  return 'text.' if 'text.token_embedding.weight' in sd else ''


def infer_config(sd: dict, *, quick_gelu: bool, image_heads: int = 0, text_heads: int = 0) -> ModelConfig:
  """The ModelConfig the state dict's shapes imply (heads by OpenAI's width / 64 unless given)."""
  need = ['visual.conv1.weight', 'visual.positional_embedding', 'visual.proj']
  missing = [k for k in need if k not in sd]
  if missing:
    raise UserError(f'not an OpenAI/OpenCLIP ViT state dict: missing {missing}')
  width, _, patch, _ = sd['visual.conv1.weight'].shape
  grid = int(round((sd['visual.positional_embedding'].shape[0] - 1) ** 0.5))
  fc = sd.get('visual.transformer.resblocks.0.mlp.c_fc.weight')
  image = presets.TowerSize(
    width=int(width),
    depth=_depth(sd, 'visual.transformer'),
    heads=_heads(int(width), image_heads, 'image'),
    mlp_ratio=_mlp_ratio(fc, int(width)),
    patch_size=int(patch),
  )
  t = text_prefix(sd)
  text, vocab, ctx = None, 49408, 77
  if t + 'token_embedding.weight' in sd:
    vocab, tw = sd[t + 'token_embedding.weight'].shape
    ctx = sd[t + 'positional_embedding'].shape[0]
    tfc = sd.get(t + 'transformer.resblocks.0.mlp.c_fc.weight')
    text = presets.TowerSize(
      width=int(tw),
      depth=_depth(sd, t + 'transformer'),
      heads=_heads(int(tw), text_heads, 'text'),
      mlp_ratio=_mlp_ratio(tfc, int(tw)),
    )
  head = HEAD + 'text_projection.weight' in sd
  variant = variants.variant_with(text_tower=text is not None, token_head=head)
  if head:
    vocab = sd[HEAD + 'text_projection.weight'].shape[0]
  contrastive = 'sigmoid' if 'logit_bias' in sd else 'softmax' if text else 'none'
  return ModelConfig(
    variant=variant,
    image=image,
    text=text,
    embed_dim=int(sd['visual.proj'].shape[1]),
    image_size=int(grid * patch),
    vocab_size=int(vocab),
    context_length=int(ctx),
    eot_id=int(vocab) - 1,
    quick_gelu=quick_gelu,
    contrastive=contrastive,
  )


def _linear(w):
  return np.ascontiguousarray(np.asarray(w).T)


def _blocks_in(sd: dict, prefix: str, size: presets.TowerSize) -> dict:
  w, h = size.width, size.heads
  per = {k: [] for k in _BLOCK_KEYS}
  for i in range(size.depth):
    for k in _BLOCK_KEYS:
      per[k].append(np.asarray(sd[f'{prefix}.resblocks.{i}.{k}']))
  st = {k: np.stack(v) for k, v in per.items()}
  d = size.depth
  return {
    'ln_1': {'scale': st['ln_1.weight'], 'bias': st['ln_1.bias']},
    'attn_in': {
      'kernel': st['attn.in_proj_weight'].reshape(d, 3, h, w // h, w).transpose(0, 4, 1, 2, 3),
      'bias': st['attn.in_proj_bias'].reshape(d, 3, h, w // h),
    },
    'attn_out': {
      'kernel': st['attn.out_proj.weight'].transpose(0, 2, 1).reshape(d, h, w // h, w),
      'bias': st['attn.out_proj.bias'],
    },
    'ln_2': {'scale': st['ln_2.weight'], 'bias': st['ln_2.bias']},
    'mlp_fc': {'kernel': st['mlp.c_fc.weight'].transpose(0, 2, 1), 'bias': st['mlp.c_fc.bias']},
    'mlp_proj': {'kernel': st['mlp.c_proj.weight'].transpose(0, 2, 1), 'bias': st['mlp.c_proj.bias']},
  }


def _blocks_out(p: dict, prefix: str, copy: bool = True) -> dict:
  d, w = p['attn_in']['kernel'].shape[:2]
  tensors = {
    'ln_1.weight': p['ln_1']['scale'],
    'ln_1.bias': p['ln_1']['bias'],
    'attn.in_proj_weight': p['attn_in']['kernel'].transpose(0, 2, 3, 4, 1).reshape(d, 3 * w, w),
    'attn.in_proj_bias': p['attn_in']['bias'].reshape(d, 3 * w),
    'attn.out_proj.weight': p['attn_out']['kernel'].reshape(d, w, w).transpose(0, 2, 1),
    'attn.out_proj.bias': p['attn_out']['bias'],
    'ln_2.weight': p['ln_2']['scale'],
    'ln_2.bias': p['ln_2']['bias'],
    'mlp.c_fc.weight': p['mlp_fc']['kernel'].transpose(0, 2, 1),
    'mlp.c_fc.bias': p['mlp_fc']['bias'],
    'mlp.c_proj.weight': p['mlp_proj']['kernel'].transpose(0, 2, 1),
    'mlp.c_proj.bias': p['mlp_proj']['bias'],
  }
  take = np.ascontiguousarray if copy else (lambda x: x)
  return {f'{prefix}.resblocks.{i}.{k}': take(v[i]) for k, v in tensors.items() for i in range(d)}


def _ln(sd, name):
  return {'scale': sd[name + '.weight'], 'bias': sd[name + '.bias']}


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple]:
  """{key: torch shape} of the plain-layout state dict (head included) this ModelConfig needs."""
  import jax

  from superclip_jax.models.superclip import ModelDef

  # Zero-stride views: the mapping's transposes and reshapes run without allocating the model.
  views = jax.tree.map(lambda s: np.broadcast_to(np.zeros((), np.float32), s.shape), ModelDef(cfg).shapes())
  sd, head = from_params(views, copy=False)
  return {k: tuple(np.shape(v)) for k, v in {**sd, **head}.items()}


def normalise(sd: dict) -> dict:
  """Known extras (OpenAI's ints, SuperCLIP's IDF buffers) dropped, the `text.` prefix removed."""
  t = text_prefix(sd)
  out = {}
  for k, v in sd.items():
    if k in IGNORED or k.endswith('.attn_mask'):
      continue
    out[k[len(t) :] if t and k.startswith(t) else k] = v
  return out


def to_params(sd: dict, cfg: ModelConfig) -> dict:
  """Our pure params dict from the state dict; unknown, missing or misshaped keys: one UserError."""
  sd = normalise(sd)
  want = expected_shapes(cfg)
  problems = [f'unknown key {k}' for k in sorted(set(sd) - set(want))]
  problems += [f'missing key {k}' for k in sorted(set(want) - set(sd))]
  for k in sorted(set(sd) & set(want)):
    got = tuple(np.shape(sd[k]))
    if got != want[k] and not (np.size(sd[k]) == 1 and want[k] == ()):  # logit_scale saved as (1,)
      problems.append(f'{k}: shape {got}, expected {want[k]}')
  if problems:
    shown = problems[:24] + ([f'... {len(problems) - 24} more'] if len(problems) > 24 else [])
    raise UserError(
      f'cannot convert to a {cfg.variant} model with {cfg.image.depth} image / '
      f'{cfg.text.depth if cfg.text else 0} text blocks: ' + '; '.join(shown)
    )
  params = {
    'image_tower': {
      'conv1': sd['visual.conv1.weight'].transpose(2, 3, 1, 0),
      'class_embedding': sd['visual.class_embedding'],
      'positional_embedding': sd['visual.positional_embedding'],
      'ln_pre': _ln(sd, 'visual.ln_pre'),
      'ln_post': _ln(sd, 'visual.ln_post'),
      'proj': sd['visual.proj'],
      'transformer': _blocks_in(sd, 'visual.transformer', cfg.image),
    }
  }
  if cfg.text is not None:
    params['text_tower'] = {
      'token_embedding': sd['token_embedding.weight'],
      'positional_embedding': sd['positional_embedding'],
      'ln_final': _ln(sd, 'ln_final'),
      'text_projection': sd['text_projection'],
      'transformer': _blocks_in(sd, 'transformer', cfg.text),
    }
  if cfg.has_token_head:
    params['token_classifier'] = {
      'norm': _ln(sd, HEAD + 'ln_mlp'),
      'head': {'kernel': _linear(sd[HEAD + 'text_projection.weight']), 'bias': sd[HEAD + 'text_projection.bias']},
    }
  for name in ('logit_scale', 'logit_bias'):
    if name in sd:
      params[name] = np.asarray(sd[name], np.float32).reshape(())
  return params


def from_params(params: dict, copy: bool = True) -> tuple[dict, dict]:
  """(OpenCLIP `CLIP` state dict, token classifier state dict or {}) from our params (copy=False: views)."""
  im = params['image_tower']
  sd = {
    'visual.conv1.weight': im['conv1'].transpose(3, 2, 0, 1),
    'visual.class_embedding': im['class_embedding'],
    'visual.positional_embedding': im['positional_embedding'],
    'visual.proj': im['proj'],
    'visual.ln_pre.weight': im['ln_pre']['scale'],
    'visual.ln_pre.bias': im['ln_pre']['bias'],
    'visual.ln_post.weight': im['ln_post']['scale'],
    'visual.ln_post.bias': im['ln_post']['bias'],
  }
  sd.update(_blocks_out(im['transformer'], 'visual.transformer', copy))
  if 'text_tower' in params:
    tx = params['text_tower']
    sd.update(
      {
        'token_embedding.weight': tx['token_embedding'],
        'positional_embedding': tx['positional_embedding'],
        'text_projection': tx['text_projection'],
        'ln_final.weight': tx['ln_final']['scale'],
        'ln_final.bias': tx['ln_final']['bias'],
      }
    )
    sd.update(_blocks_out(tx['transformer'], 'transformer', copy))
  for name in ('logit_scale', 'logit_bias'):
    if name in params:
      sd[name] = np.reshape(params[name], ())
  head = {}
  if 'token_classifier' in params:
    tc = params['token_classifier']
    head = {
      HEAD + 'ln_mlp.weight': tc['norm']['scale'],
      HEAD + 'ln_mlp.bias': tc['norm']['bias'],
      HEAD + 'text_projection.weight': np.asarray(tc['head']['kernel']).T,
      HEAD + 'text_projection.bias': tc['head']['bias'],
    }
  if not copy:
    return sd, head
  as_np = lambda d: {k: np.array(v, np.float32, order='C') for k, v in d.items()}  # keeps 0-d
  return as_np(sd), as_np(head)


def open_clip_config(cfg: ModelConfig, logit_bias: float | None = None) -> dict:
  """OpenCLIP's model config (the `model_cfg` of open_clip_config.json): the keyword arguments of its `CLIP`.

  Stock open_clip passes every key to `CLIP(**model_cfg)`, so nothing else may be here: the
  token classifier is described beside it (`token_classifier_config`). A SigLIP model needs
  `init_logit_bias` for `CLIP` to hold the `logit_bias` its weights carry.
  """
  out = {
    'embed_dim': cfg.embed_dim,
    'quick_gelu': cfg.quick_gelu,
    'vision_cfg': {
      'image_size': cfg.image_size,
      'layers': cfg.image.depth,
      'width': cfg.image.width,
      'head_width': cfg.image.width // cfg.image.heads,
      'mlp_ratio': cfg.image.mlp_ratio,
      'patch_size': cfg.image.patch_size,
    },
  }
  if cfg.text is not None:
    out['text_cfg'] = {
      'context_length': cfg.context_length,
      'vocab_size': cfg.vocab_size,
      'width': cfg.text.width,
      'heads': cfg.text.heads,
      'layers': cfg.text.depth,
      'mlp_ratio': cfg.text.mlp_ratio,
    }
  if logit_bias is not None:
    out['init_logit_bias'] = float(logit_bias)
  return out


def token_classifier_config(cfg: ModelConfig, file: str) -> dict:
  """How to apply the token classifier kept in `file` (the authors' MixClsHead with layers=0)."""
  return {
    'file': file,
    'vocab_size': cfg.vocab_size,
    'width': cfg.image.width,
    'layers': 0,
    'input': "mean of the image tower's patch tokens after ln_post (class token excluded)",
    'tensors': {'norm': HEAD + 'ln_mlp', 'linear': HEAD + 'text_projection'},
  }
