"""Abstract devices to compile for on any machine: TPU topologies (libtpu) and GPU nodes.

  --topology v5e:16x16   256 TPU v5e chips; names libtpu knows (v4:4x4x8, v5p:4x4x8, v6e:16x16, ...)
  --topology h200:8      one node of 8 H200s
  --topology h200:2x8    2 nodes of 8 H200s

TPU devices come from libtpu (the `tpu` extra). GPU devices come from jax's CUDA plugin
(the `gpu` extra) and a device description shipped in gpu_targets/ (XLA's
GpuTargetConfigProto text, trimmed to what this jaxlib parses): no GPU is needed.
"""

from __future__ import annotations

import functools
import os
import re
from importlib import resources

from superclip_jax.errors import UserError

# --topology name -> shipped description (gpu_targets/NAME.txtpb). 'a100' and 'h100' are the SXM parts.
GPU_TARGETS = {
  'a100': 'a100_sxm_80',
  'a100_40gb': 'a100_sxm_40',
  'a100_pcie': 'a100_pcie_80',
  'h100': 'h100_sxm',
  'h100_pcie': 'h100_pcie',
  'h200': 'h200',
  'b200': 'b200',
}
TPU_EXAMPLES = ('v4:4x4x8', 'v5e:16x16', 'v5p:4x4x8', 'v6e:16x16')

# A deviceless compile cannot autotune: XLA's Triton GEMM emitter then finds no tile sizes
# for the 49,408-wide classifier dot ("Couldn't find output tile sizes"). cuBLAS needs none.
DEVICELESS_GPU_OPTIONS = {'xla_gpu_enable_triton_gemm': False}


def known_names() -> str:
  """The --topology forms this module accepts, for error messages and --help."""
  gpus = ', '.join(f'{name}:8' for name in GPU_TARGETS)
  return f'TPU: {", ".join(TPU_EXAMPLES)} (any topology libtpu knows); GPU: {gpus} (or NAME:NODESx8)'


def gpu_target_text(name: str) -> str:
  """The shipped GpuTargetConfigProto text of a --topology GPU name."""
  return resources.files('superclip_jax').joinpath('gpu_targets', f'{GPU_TARGETS[name]}.txtpb').read_text()


@functools.cache
def _gpu_memory_by_kind() -> dict[str, int]:
  out = {}
  for name in GPU_TARGETS:
    text = gpu_target_text(name)
    kind = re.search(r'device_description_str:\s*"([^"]+)"', text).group(1)
    out[kind] = int(re.search(r'device_memory_size:\s*(\d+)', text).group(1))
  return out


def gpu_memory_bytes(device_kind: str) -> int | None:
  """Memory of one GPU of a shipped description's device kind, or None."""
  return _gpu_memory_by_kind().get(device_kind)


def parse_gpu(topology: str) -> tuple[str, int, int] | None:
  """'h200:2x8' -> ('h200', 2 nodes, 8 GPUs each); None when the name is not a GPU's."""
  name, _, shape = topology.partition(':')
  if name.lower() not in GPU_TARGETS:
    return None
  m = re.fullmatch(r'(?:(\d+)x)?(\d+)', shape)
  if not m or int(m.group(2)) < 1 or int(m.group(1) or 1) < 1:
    raise UserError(f'--topology {topology}: write {name}:GPUS (one node) or {name}:NODESxGPUS')
  return name.lower(), int(m.group(1) or 1), int(m.group(2))


def devices(topology: str) -> list:
  """The abstract devices of a --topology name (see the module docstring)."""
  gpu = parse_gpu(topology)
  if gpu is not None:
    return _gpu_devices(*gpu, topology=topology)
  if not re.match(r'v\d', topology):
    raise UserError(f'--topology {topology}: unknown; known: {known_names()}')
  return _tpu_devices(topology)


def _gpu_devices(name: str, nodes: int, per_node: int, topology: str) -> list:
  from jax.experimental import topologies

  try:
    desc = topologies.get_topology_desc(name, 'cuda', target_config=gpu_target_text(name), topology=f'1x{nodes}x{per_node}')
  except Exception as e:  # no CUDA plugin, or a description this jaxlib cannot parse
    raise UserError(
      f'--topology {topology}: cannot describe these GPUs ({str(e).splitlines()[0][:300]}); '
      "install the GPU extra (pip install -e '.[gpu]')"
    ) from e
  return list(desc.devices)


def _tpu_devices(topology: str) -> list:
  for key, value in (
    ('TPU_ACCELERATOR_TYPE', topology.replace(':', '-')),
    ('TPU_WORKER_HOSTNAMES', 'localhost'),
    ('TPU_WORKER_ID', '0'),
    ('TPU_SKIP_MDS_QUERY', '1'),
    ('ALLOW_MULTIPLE_LIBTPU_LOAD', '1'),
  ):
    # libtpu otherwise probes a metadata server that is not there, and takes a lock file that
    # makes a second compile-only process fail (describing a topology opens no TPU).
    os.environ.setdefault(key, value)
  from jax.experimental import topologies

  try:
    return list(topologies.get_topology_desc(topology_name=topology, platform='tpu').devices)
  except Exception as e:  # no libtpu, or an unknown topology name
    raise UserError(
      f'--topology {topology}: libtpu cannot describe it ({str(e).splitlines()[0][:300]}); '
      f"install the TPU extra (pip install -e '.[tpu]'); known: {known_names()}"
    ) from e


def compile_options(platform: str, compile_only: bool) -> dict:
  """XLA options a compile needs: the deviceless ones for abstract GPUs, none otherwise."""
  return dict(DEVICELESS_GPU_OPTIONS) if platform == 'gpu' and compile_only else {}
