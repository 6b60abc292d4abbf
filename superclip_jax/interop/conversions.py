"""Whole conversions: foreign weights -> a superclip_jax export, and an export / workdir -> HF or OpenCLIP files."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np

from superclip_jax.errors import UserError
from superclip_jax.interop import hf, openclip, tensors
from superclip_jax.models import vit
from superclip_jax.models.superclip import ModelConfig

HEAD_FILE = 'token_classifier.safetensors'
OPEN_CLIP_CONFIG = 'open_clip_config.json'
OPEN_CLIP_WEIGHTS = ('open_clip_model.safetensors', 'open_clip_pytorch_model.bin')
CLIP_VOCAB = 49408


def _with_head(sd: dict, directory: str) -> dict:
  """Add the token classifier kept beside the weights (as `--to` writes it), if any."""
  path = os.path.join(directory, HEAD_FILE)
  return {**sd, **tensors.read_file(path)} if os.path.isfile(path) else sd


def _open_clip_source(src: str) -> tuple[dict, dict]:
  """(state dict, model_cfg from open_clip_config.json or {}) of a file or an OpenCLIP directory."""
  if not os.path.isdir(src):
    return tensors.read_file(src), {}
  model_cfg = {}
  if os.path.isfile(os.path.join(src, OPEN_CLIP_CONFIG)):
    with open(os.path.join(src, OPEN_CLIP_CONFIG)) as f:
      model_cfg = json.load(f).get('model_cfg', {})
  for name in OPEN_CLIP_WEIGHTS:
    if os.path.isfile(os.path.join(src, name)):
      return _with_head(tensors.read_file(os.path.join(src, name)), src), model_cfg
  raise UserError(f'{src}: none of {OPEN_CLIP_WEIGHTS} found')


def read_foreign(
  kind: str, src: str, *, quick_gelu: bool | None = None, image_heads: int = 0, text_heads: int = 0
) -> tuple[ModelConfig, dict]:
  """(ModelConfig, params) of an 'openai' / 'open_clip' checkpoint or an 'hf' CLIPModel directory."""
  if kind == 'hf':
    config, sd = tensors.read_hf_dir(src)
    sd, hints = hf.to_openclip(sd, config)
    sd = _with_head(sd, src)
    cfg = openclip.infer_config(
      sd,
      quick_gelu=hints['quick_gelu'] if quick_gelu is None else quick_gelu,
      image_heads=image_heads or hints['image_heads'],
      text_heads=text_heads or hints['text_heads'],
    )
    cfg = dataclasses.replace(cfg, eot_id=hints['eot_id'])
  elif kind in ('openai', 'open_clip'):
    sd, model_cfg = _open_clip_source(src)
    vision, text = model_cfg.get('vision_cfg', {}), model_cfg.get('text_cfg', {})
    if vision.get('width') and vision.get('head_width'):
      image_heads = image_heads or vision['width'] // vision['head_width']
    text_heads = text_heads or text.get('heads', 0)
    if quick_gelu is None:  # OpenAI's weights were trained with QuickGELU; OpenCLIP's default is GELU
      quick_gelu = kind == 'openai' or bool(model_cfg.get('quick_gelu', False))
    cfg = openclip.infer_config(sd, quick_gelu=quick_gelu, image_heads=image_heads, text_heads=text_heads)
  else:
    raise UserError(f'--from {kind}: expected openai, open_clip or hf')
  return cfg, openclip.to_params(sd, cfg)


def tokenizer_description(cfg: ModelConfig, spec: str = '') -> dict:
  """The tokenizer model_config.json records: CLIP's BPE when the vocabulary is CLIP's."""
  if spec:
    return {'kind': 'spec', 'spec': spec, 'context_length': cfg.context_length}
  if cfg.vocab_size == CLIP_VOCAB and cfg.eot_id == CLIP_VOCAB - 1:
    return {'kind': 'spec', 'spec': 'clip', 'context_length': cfg.context_length}
  return {'kind': 'none', 'context_length': cfg.context_length}


def convert_in(kind: str, src: str, out: str, tokenizer: str = '', **hints) -> str:
  """Write a superclip_jax export (params incl. any token classifier + model_config.json); returns out."""
  from superclip_jax import export

  cfg, params = read_foreign(kind, src, **hints)
  return export.write_export(
    out, cfg, params, tokenizer_description(cfg, tokenizer), converted_from={'format': kind, 'path': os.path.abspath(src)}
  )


def read_ours(src: str) -> tuple[ModelConfig, dict]:
  """(ModelConfig, numpy params incl. token classifier) of an export or a workdir's newest checkpoint."""
  import ml_collections

  from superclip_jax import checkpoint, storage

  if storage.exists(storage.join(src, 'model_config.json')):
    meta = json.loads(storage.read_text(storage.join(src, 'model_config.json')))
    return ModelConfig.from_dict(meta['model']), checkpoint.read_numpy_tree(storage.join(src, 'params'))
  step_dir, _ = checkpoint.latest_checkpoint_dir(src)
  config = json.loads(storage.read_text(storage.join(step_dir, 'config', 'metadata')))
  cfg = ModelConfig.from_config(ml_collections.ConfigDict(config))
  return cfg, checkpoint.read_numpy_tree(storage.join(step_dir, 'state'))['params']


def _preprocessor_config(cfg: ModelConfig) -> dict:
  s = cfg.image_size
  return {
    'image_processor_type': 'CLIPImageProcessor',
    'do_resize': True,
    'size': {'shortest_edge': s},
    'resample': 3,
    'do_center_crop': True,
    'crop_size': {'height': s, 'width': s},
    'do_rescale': True,
    'rescale_factor': 1 / 255,
    'do_normalize': True,
    'image_mean': list(vit.CLIP_MEAN_RGB),
    'image_std': list(vit.CLIP_STD_RGB),
    'do_convert_rgb': True,
  }


def write_hf_tokenizer(out: str, context_length: int) -> None:
  """vocab.json + merges.txt + tokenizer_config.json of OpenAI's CLIP BPE, as CLIPTokenizer reads them."""
  import gzip

  from superclip_jax.data import tokenizer as tokenizer_lib

  lines = gzip.open(tokenizer_lib.find_clip_merges()).read().decode('utf-8').split('\n')
  merges = lines[1 : 49152 - 256 - 2 + 1]  # the merges OpenAI's SimpleTokenizer uses (tokenizer.clip_tokenizer)
  symbols = list(tokenizer_lib._bytes_to_unicode().values())
  vocab = symbols + [s + '</w>' for s in symbols] + [''.join(m.split()) for m in merges]
  vocab += ['<|startoftext|>', '<|endoftext|>']  # ids 49406, 49407 under HF's names
  with open(os.path.join(out, 'vocab.json'), 'w', encoding='utf-8') as f:
    json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
  with open(os.path.join(out, 'merges.txt'), 'w', encoding='utf-8') as f:
    f.write('#version: 0.2\n' + '\n'.join(merges) + '\n')
  with open(os.path.join(out, 'tokenizer_config.json'), 'w') as f:
    json.dump(
      {
        'tokenizer_class': 'CLIPTokenizer',
        'model_max_length': context_length,
        'bos_token': '<|startoftext|>',
        'eos_token': '<|endoftext|>',
        'unk_token': '<|endoftext|>',
        'pad_token': '<|endoftext|>',
        'do_lower_case': True,
      },
      f,
      indent=1,
    )


def convert_out(to: str, src: str, out: str, fmt: str = 'safetensors') -> str:
  """Write an HF CLIPModel directory ('hf') or OpenCLIP weights + config ('open_clip'); returns out."""
  cfg, params = read_ours(src)
  params = {k: np.asarray(v) if not isinstance(v, dict) else v for k, v in params.items()}
  sd, head = openclip.from_params(params)
  os.makedirs(out, exist_ok=True)
  if head:
    tensors.write_safetensors(os.path.join(out, HEAD_FILE), head, {'format': 'pt'})
  if to == 'hf':
    if 'logit_bias' in sd:  # CLIPModel has no bias; the towers (what pipelines use) are unaffected
      print('superclip_jax.convert: note: the SigLIP logit_bias has no place in a CLIPModel and is left out', file=sys.stderr)
    scale = float(sd.get('logit_scale', np.log(1 / 0.07)))
    with open(os.path.join(out, 'config.json'), 'w') as f:
      json.dump(hf.hf_config(cfg, scale), f, indent=1)
    with open(os.path.join(out, 'preprocessor_config.json'), 'w') as f:
      json.dump(_preprocessor_config(cfg), f, indent=1)
    tensors.write_safetensors(os.path.join(out, 'model.safetensors'), hf.from_openclip(sd), {'format': 'pt'})
    if cfg.vocab_size == CLIP_VOCAB and cfg.eot_id == CLIP_VOCAB - 1:
      write_hf_tokenizer(out, cfg.context_length)
  elif to == 'open_clip':
    bias = float(np.reshape(sd['logit_bias'], ())) if 'logit_bias' in sd else None
    config = {
      'model_cfg': openclip.open_clip_config(cfg, bias),
      'preprocess_cfg': {
        'size': cfg.image_size,
        'mode': 'RGB',
        'interpolation': 'bicubic',
        'resize_mode': 'shortest',
        'mean': list(vit.CLIP_MEAN_RGB),
        'std': list(vit.CLIP_STD_RGB),
      },
    }
    if head:  # open_clip reads model_cfg and preprocess_cfg only; this is for whoever wants the head
      config['token_classifier'] = openclip.token_classifier_config(cfg, HEAD_FILE)
    with open(os.path.join(out, OPEN_CLIP_CONFIG), 'w') as f:
      json.dump(config, f, indent=1)
    if fmt == 'bin':
      tensors.write_torch(os.path.join(out, OPEN_CLIP_WEIGHTS[1]), sd)
    else:
      tensors.write_safetensors(os.path.join(out, OPEN_CLIP_WEIGHTS[0]), sd, {'format': 'pt'})
  else:
    raise UserError(f'--to {to}: expected hf or open_clip')
  return out
