"""FLOPs of a train step, three ways, and the peak FLOP/s of known accelerators.

- `analytic_step_flops`: the paper's Table 3 count: the matmuls of both towers (attention
  scores included), the token classifier and the contrastive logits, times 3 for the
  backward. Recomputation under remat is not counted (it is not useful work).
- `program_dot_flops`: every dot in the step's jaxpr, each scan body times its trip
  count (so remat recomputation and accumulation count as executed).
- XLA's `cost_analysis()` counts a `lax.scan` body once, so `corrected_xla_flops` adds the
  dots of the (trip count - 1) repetitions it missed.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from superclip_jax import compile_targets

# Dense bf16 peak FLOP/s of one chip, keyed by the exact `device_kind` JAX reports (the
# vendors' data sheets). Exact keys: an H100 PCIe or an H200 NVL must not get the SXM peak
# through a shared prefix, and an unknown kind gets no MFU rather than a guessed one.
PEAK_BF16_FLOPS = {
  'TPU v4': 275e12,
  'TPU v5 lite': 197e12,  # v5e
  'TPU v5e': 197e12,
  'TPU v5': 459e12,  # v5p
  'TPU v5p': 459e12,
  'TPU v6 lite': 918e12,  # v6e (Trillium)
  'TPU v6e': 918e12,
  'NVIDIA A100-SXM4-40GB': 312e12,
  'NVIDIA A100-SXM4-80GB': 312e12,
  'NVIDIA A100-PCIE-40GB': 312e12,
  'NVIDIA A100 80GB PCIe': 312e12,
  'NVIDIA H100 80GB HBM3': 989e12,  # H100 SXM
  'NVIDIA H100 PCIe': 756e12,
  'NVIDIA H100 NVL': 835e12,
  'NVIDIA H200': 989e12,  # H200 SXM as the driver names it
  'NVIDIA H200 141GB HBM3e': 989e12,  # H200 SXM as XLA's device description names it
  'NVIDIA H200 NVL': 835e12,
  'NVIDIA B200': 2250e12,
}

# Memory of one chip (bytes), for devices that do not report it: TPUs, and the abstract
# devices of a compile-only topology. Real GPUs report their own (memory_stats).
DEVICE_MEMORY = {
  'TPU v4': 32 * 2**30,
  'TPU v5 lite': 16 * 2**30,
  'TPU v5e': 16 * 2**30,
  'TPU v5': 95 * 2**30,
  'TPU v5p': 95 * 2**30,
  'TPU v6 lite': 32 * 2**30,
  'TPU v6e': 32 * 2**30,
}


def peak_flops(device_kind: str) -> float | None:
  """The bf16 peak of one chip of this exact device kind, or None when it is not in the table."""
  return PEAK_BF16_FLOPS.get(device_kind)


def cores_per_chip(devices) -> int:
  """JAX devices per chip: 1, or 2 for a v4/v5p topology described core by core (no megacore)."""
  return 1 + max(int(getattr(d, 'core_on_chip', 0) or 0) for d in devices)


def total_peak_flops(devices) -> float | None:
  """The sum of the chips' bf16 peaks over `devices` (all of a job's), or None if any kind is unknown."""
  devices = list(devices)
  peaks = [peak_flops(getattr(d, 'device_kind', '')) for d in devices]
  if not devices or any(p is None for p in peaks):
    return None
  return sum(peaks) / cores_per_chip(devices)


def device_memory(device) -> int | None:
  """Bytes of memory of one device: from the runtime when it says, else the table."""
  try:
    stats = device.memory_stats()
    if stats and stats.get('bytes_limit'):
      return int(stats['bytes_limit'])
  except Exception:  # CPU and abstract devices have no memory stats
    pass
  kind = getattr(device, 'device_kind', '')
  if kind in DEVICE_MEMORY:
    return DEVICE_MEMORY[kind]
  return compile_targets.gpu_memory_bytes(kind)  # the shipped GPU descriptions know their memory


def _tower_forward(width: int, depth: int, tokens: int, mlp_ratio: float) -> float:
  """Matmul FLOPs of `depth` transformer blocks on `tokens` tokens (one example)."""
  hidden = int(width * mlp_ratio)
  per_layer = (
    2 * tokens * width * 3 * width  # qkv
    + 2 * 2 * tokens * tokens * width  # scores and the weighted sum
    + 2 * tokens * width * width  # output projection
    + 2 * 2 * tokens * width * hidden
  )  # MLP
  return depth * per_layer


def analytic_forward_flops(cfg) -> dict[str, float]:
  """Forward FLOPs per example: {'image', 'text', 'head'} for a ModelConfig."""
  im = cfg.image
  patches = (cfg.image_size // im.patch_size) ** 2
  image = (
    2 * patches * im.patch_size**2 * 3 * im.width
    + _tower_forward(im.width, im.depth, patches + 1, im.mlp_ratio)
    + 2 * im.width * cfg.embed_dim
  )
  text = 0.0
  if cfg.text is not None:
    t = cfg.text
    text = _tower_forward(t.width, t.depth, cfg.context_length, t.mlp_ratio) + 2 * t.width * cfg.embed_dim
  head = 2 * im.width * cfg.vocab_size if cfg.has_token_head else 0.0
  return {'image': float(image), 'text': float(text), 'head': float(head)}


def analytic_step_flops(cfg, global_batch: int) -> float:
  """Model FLOPs of one train step on the global batch (forward + backward = 3x forward)."""
  f = analytic_forward_flops(cfg)
  logits = 2.0 * global_batch * global_batch * cfg.embed_dim if cfg.contrastive != 'none' else 0.0
  return 3.0 * (global_batch * (f['image'] + f['text'] + f['head']) + logits)


def _dot_flops(eqn) -> float:
  lhs, rhs = eqn.invars[0].aval, eqn.invars[1].aval
  (lc, rc), (lb, rb) = eqn.params['dimension_numbers']
  batch = np.prod([lhs.shape[d] for d in lb], dtype=np.float64)
  contract = np.prod([lhs.shape[d] for d in lc], dtype=np.float64)
  lfree = np.prod([s for d, s in enumerate(lhs.shape) if d not in lc and d not in lb], dtype=np.float64)
  rfree = np.prod([s for d, s in enumerate(rhs.shape) if d not in rc and d not in rb], dtype=np.float64)
  return float(2 * batch * contract * lfree * rfree)


def _sub_jaxprs(eqn):
  for value in eqn.params.values():
    for v in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(v, jax.extend.core.ClosedJaxpr):
        yield v.jaxpr
      elif isinstance(v, jax.extend.core.Jaxpr):
        yield v


def program_dot_flops(jaxpr, count_scan_trips: bool = True) -> float:
  """FLOPs of every dot_general in a jaxpr; scan bodies times their length (or once)."""
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      total += _dot_flops(eqn)
      continue
    inner = sum(program_dot_flops(j, count_scan_trips) for j in _sub_jaxprs(eqn))
    if name == 'scan' and count_scan_trips:
      inner *= eqn.params['length']
    elif name == 'cond':
      inner /= max(len(eqn.params['branches']), 1)  # one branch runs
    total += inner
  return total


def step_flops_report(fn, args: tuple, compiled=None, num_devices: int = 1) -> dict[str, Any]:
  """Program dot FLOPs (scan trips counted) and XLA's cost analysis, corrected for scans, per step.

  XLA analyses the partitioned program of one device: its count is multiplied by the
  number of devices, and the dots of the scan repetitions it missed are added.
  """
  closed = jax.make_jaxpr(fn)(*args)
  full = program_dot_flops(closed.jaxpr, True)
  once = program_dot_flops(closed.jaxpr, False)
  out = {'program_dot_flops': full}
  if compiled is not None:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla = float(cost.get('flops', 0.0)) * num_devices if cost else 0.0
    if xla > 0:  # a deviceless GPU compile reports none
      out['xla_flops_reported'] = xla
      out['xla_flops_corrected'] = xla + (full - once)
  return out
