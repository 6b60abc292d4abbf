"""Reading and writing flat {name: array} tensor files: PyTorch pickles (weights only) and safetensors.

Everything is handed around as float32 numpy arrays (bfloat16 / float16 sources are
widened); integer buffers keep their dtype. PyTorch pickles are read with
`torch.load(weights_only=True)` only, which refuses arbitrary code in the file.
"""

from __future__ import annotations

import json
import os

import numpy as np

from superclip_jax.errors import UserError

HF_WEIGHTS = ('model.safetensors', 'pytorch_model.bin')
HF_INDEXES = ('model.safetensors.index.json', 'pytorch_model.bin.index.json')


def _to_numpy(t) -> np.ndarray:
  import torch

  if t.dtype in (torch.bfloat16, torch.float16, torch.float64):
    t = t.float()
  return t.detach().cpu().numpy()


def _check_safetensors_header(path: str) -> None:
  """A UserError naming the file unless it starts with a sane safetensors header.

  The format is an 8-byte little-endian header length, then that much JSON: a damaged or
  hostile length (2**62) would otherwise surface as an allocation failure or a panic.
  """
  import os
  import struct

  if '://' in path:  # a URL: safetensors itself reads it
    return
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    head = f.read(8)
  if len(head) < 8:
    raise UserError(f'{path}: not a safetensors file ({size} bytes, shorter than its 8-byte header length)')
  (length,) = struct.unpack('<Q', head)
  if length > size - 8 or length > 100 * 2**20:
    raise UserError(f'{path}: not a valid safetensors file (its header claims {length} bytes; the file has {size})')


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  import importlib.util

  _check_safetensors_header(path)
  # Framework 'pt' reads bfloat16, which numpy cannot hold; without torch, numpy reads the rest.
  framework = 'pt' if importlib.util.find_spec('torch') else 'numpy'
  from safetensors import safe_open

  out = {}
  try:
    with safe_open(path, framework=framework) as f:
      for k in f.keys():
        v = f.get_tensor(k)
        out[k] = _to_numpy(v) if framework == 'pt' else v
  except Exception as e:  # safetensors raises its own error types for malformed files
    raise UserError(f'{path}: not a valid safetensors file ({type(e).__name__}: {e})') from None
  return out


def _read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError:
    raise UserError(f'{path}: reading PyTorch checkpoints needs torch (pip install -r requirements-interop.txt)') from None
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # a pickle with code in it, or not a checkpoint at all
    if 'TorchScript' in str(e):
      raise UserError(
        f'{path} is a TorchScript archive (as OpenAI released CLIP), which loading would run: '
        'save its state dict once where you trust it, torch.save(torch.jit.load(PATH, '
        "map_location='cpu').state_dict(), 'model.bin'), or convert the same weights from the HF "
        'hub (--from hf) or OpenCLIP (.safetensors)'
      ) from None
    raise UserError(f'{path}: not a weights-only PyTorch checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})') from None
  # OpenCLIP training checkpoints wrap the weights: {'epoch', 'state_dict': {'module.x': ...}}.
  for key in ('state_dict', 'model', 'module'):
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
      obj = obj[key]
  if not isinstance(obj, dict):
    raise UserError(f'{path}: holds a {type(obj).__name__}, not a state dict')
  return {k: _to_numpy(v) for k, v in obj.items() if isinstance(v, torch.Tensor)}


def read_file(path: str) -> dict[str, np.ndarray]:
  """A state dict from .safetensors or a torch pickle; DDP's 'module.' prefix is dropped."""
  if not os.path.isfile(path):
    raise UserError(f'{path}: no such file')
  sd = _read_safetensors(path) if path.endswith('.safetensors') else _read_torch(path)
  if sd and all(k.startswith('module.') for k in sd):
    sd = {k[len('module.') :]: v for k, v in sd.items()}
  return sd


def read_hf_dir(directory: str) -> tuple[dict, dict[str, np.ndarray]]:
  """(config.json, state dict) of an HF model directory, sharded weights included."""
  config_path = os.path.join(directory, 'config.json')
  if not os.path.isfile(config_path):
    raise UserError(f'{directory}: no config.json (not a transformers model directory)')
  with open(config_path) as f:
    config = json.load(f)
  for name in HF_WEIGHTS:
    if os.path.isfile(os.path.join(directory, name)):
      return config, read_file(os.path.join(directory, name))
  for name in HF_INDEXES:
    index = os.path.join(directory, name)
    if os.path.isfile(index):
      with open(index) as f:
        files = sorted(set(json.load(f)['weight_map'].values()))
      sd = {}
      for part in files:
        sd.update(read_file(os.path.join(directory, part)))
      return config, sd
  raise UserError(f'{directory}: none of {HF_WEIGHTS + HF_INDEXES} found')


def write_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> str:
  """Write contiguous numpy arrays as safetensors (readable by torch, transformers, open_clip)."""
  from safetensors.numpy import save_file

  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  save_file({k: np.array(v, order='C') for k, v in tensors.items()}, path, metadata=metadata)  # 0-d stays 0-d
  return path


def write_torch(path: str, tensors: dict[str, np.ndarray]) -> str:
  """Write a torch pickle (.bin / .pt) of the tensors."""
  import torch

  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  torch.save({k: torch.from_numpy(np.array(v, order='C')) for k, v in tensors.items()}, path)
  return path
