"""Train-step benchmark on the devices present: the real state and jitted step, a synthetic batch.

  python -m superclip_jax.bench_step --config configs/superclip_b16.py --batch 8 --image_size 112 --steps 5

No data is read: the batch is synthetic with the config's shapes. Prints the state-creation
and compile times, the median step time, images/s, model FLOPs per step (analytic beside
XLA's count corrected for scans), achieved FLOP/s and MFU (accelerators: against the sum of
the chips' bf16 peaks, keyed by exact device kind, none for a kind not in the table; CPU:
against the machine's best float32 BLAS, timed in this run), and the same step without the token
classifier timed interleaved with it (the SuperCLIP/CLIP ratio). The last line is JSON.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import app, flags

from superclip_jax import allocator, cli, config_defaults
from superclip_jax.errors import user_errors
from superclip_jax.models import variants

_FLAGS: dict[str, Any] = {}  # defined only when run as a program: importing this module defines no flags


def median_time(fn: Callable[[], Any], repeats: int) -> float:
  """Median wall time of `repeats` calls of fn (which blocks until its result is ready)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def interleaved_times(fns: dict[str, Callable[[], Any]], steps: int, warmup: int = 0) -> dict[str, list[float]]:
  """Times of each blocking fn, called in turn `steps` times (after `warmup` untimed rounds).

  Alternating puts each function under the same load of a shared machine, so their
  ratio is meaningful even when the absolute times drift.
  """
  for _ in range(warmup):
    for fn in fns.values():
      fn()
  times: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(steps):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return times


class PeakMatmul:
  """The machine's best float32 size^3 matmul: NumPy's BLAS or PyTorch's (when installed), the faster.

  The CPU's peak for MFU is what the best library reaches on the same cores, not XLA's own
  matmul (which a whole PyTorch step can outrun). Each call repeats the matmul for about
  `seconds`; it is called in turn with the steps (interleaved_times), so the peak is measured
  under the same load and MFU is a ratio from one run: timed alone after the steps, the peak
  varies too much on a shared machine (docs/performance.md).
  """

  def __init__(self, size: int = 2048, seconds: float = 0.5):
    candidates = {'numpy': _numpy_matmul(size)}
    torch_matmul = _torch_matmul(size)
    if torch_matmul is not None:
      candidates['torch'] = torch_matmul
    for fn in candidates.values():
      fn()  # warm up
    times = {name: median_time(fn, 3) for name, fn in candidates.items()}
    self.library = min(times, key=times.get)
    self._one = candidates[self.library]
    self.repeats = max(1, round(seconds / max(times[self.library], 1e-9)))
    self.flops_per_call = 2.0 * size**3 * self.repeats
    self.size = size

  def __call__(self) -> None:
    for _ in range(self.repeats):
      self._one()


def _numpy_matmul(size: int) -> Callable[[], Any]:
  a = np.ones((size, size), np.float32)
  return lambda: np.matmul(a, a)


def _torch_matmul(size: int) -> Callable[[], Any] | None:
  try:
    import torch
  except ImportError:
    return None
  a = torch.ones((size, size), dtype=torch.float32)
  return lambda: torch.mm(a, a)


def synthetic_batch(config: ml_collections.ConfigDict, mesh) -> dict[str, jax.Array]:
  """A global batch of the config's shapes: synthetic captions when the tokenizer ids allow, else random ids."""
  from superclip_jax import sharding
  from superclip_jax.data import synthetic

  b, m, tok = config.data.global_batch_size, config.model, config.tokenizer
  rows = sharding.local_rows(b, mesh)
  try:
    source = synthetic.SyntheticImageText(
      image_size=m.image_size,
      vocab_size=m.vocab_size,
      context_length=m.context_length,
      sot_id=tok.sot_id,
      eot_id=tok.eot_id,
      pad_id=tok.pad_id,
      seed=config.seed,
    )
    local = source.batch(0, b, rows)
  except ValueError:  # the vocabulary has no room for the synthetic words: random captions
    n = sum(stop - start for start, stop in rows)
    rng = np.random.default_rng(config.seed)
    local = {
      'images': rng.integers(0, 256, (n, m.image_size, m.image_size, 3), dtype=np.uint8),
      'text': random_ids(rng, n, m.context_length, m.vocab_size, tok),
      'label': np.zeros((n,), np.int32),
    }
  if config.data.long_captions:
    rng = np.random.default_rng(config.seed + 1)
    local['token_ids'] = random_ids(rng, len(local['text']), config.data.long_context_length, m.vocab_size, tok)
  return sharding.global_batch(local, mesh, b)


def random_ids(rng: np.random.Generator, n: int, length: int, vocab_size: int, tok) -> np.ndarray:
  """(n, length) int32 captions: SOT, random ordinary ids, EOT, padding (lengths vary)."""
  special = {tok.sot_id, tok.eot_id, tok.pad_id}
  ordinary = np.array([i for i in range(min(vocab_size, 4096)) if i not in special], np.int32)
  ids = np.full((n, length), tok.pad_id, np.int32)
  for r in range(n):
    k = int(rng.integers(1, max(length - 1, 2)))
    ids[r, : k + 2] = [tok.sot_id, *rng.choice(ordinary, k), tok.eot_id][:length]
  return ids


class Step:
  """The config's real train state and compiled step on the devices present, and a fixed batch."""

  def __init__(self, config: ml_collections.ConfigDict):
    from superclip_jax import run_setup, train_state, train_step

    # Timed on a synthetic batch: no data, and IDF counts of the right shapes without statistics.
    setup = run_setup.prepare(config, training=False, idf_from_data=False)
    self.config = config = setup.config
    self.mesh = mesh = setup.mesh
    self.model_def = setup.model_def
    start = time.perf_counter()
    self.state, shardings = train_state.create_train_state(self.model_def, setup.tx, setup.idf_counts, mesh, setup.rules)
    jax.block_until_ready(self.state)
    self.state_seconds = time.perf_counter() - start
    self.batch = synthetic_batch(config, mesh)
    self.jitted, _ = train_step.jit_train_step(self.model_def, setup.tx, setup.schedule, config, shardings, mesh, setup.rules)
    with jax.set_mesh(mesh):
      start = time.perf_counter()
      lowered = self.jitted.lower(self.state, self.batch)
      self.lower_seconds = time.perf_counter() - start
      start = time.perf_counter()
      self.compiled = lowered.compile()
      self.compile_seconds = time.perf_counter() - start
    self.first_step_seconds = median_time(self, 1)

  def __call__(self) -> None:
    """One step (the state is donated and replaced), blocking until it is done."""
    with jax.set_mesh(self.mesh):
      self.state, self.metrics = self.compiled(self.state, self.batch)
    jax.block_until_ready((self.state, self.metrics))

  def last_metrics(self) -> dict[str, float]:
    """The latest step's metrics (loss, its terms, gradient norm, ...)."""
    return {k: float(v) for k, v in self.metrics.compute().items()}

  def flops(self) -> dict[str, float]:
    """Analytic model FLOPs per step and XLA's count corrected for scans (program dots too)."""
    from superclip_jax import flops

    out = {'model_flops_per_step': flops.analytic_step_flops(self.model_def.cfg, self.config.data.global_batch_size)}
    with jax.set_mesh(self.mesh):
      out.update(
        flops.step_flops_report(self.jitted, (self.state, self.batch), self.compiled, num_devices=self.mesh.devices.size)
      )
    return out


def run(
  config: ml_collections.ConfigDict, steps: int = 10, warmup: int = 2, compare_clip: bool = True, peak_matmul_size: int = 2048
) -> dict[str, Any]:
  """Benchmark the config's train step (and, interleaved, its CLIP counterpart); returns the report."""
  from superclip_jax import flops

  devices = jax.devices()
  kind = getattr(devices[0], 'device_kind', devices[0].platform)
  step = Step(config)
  report: dict[str, Any] = {
    'config_variant': config.model.variant,
    'devices': len(devices),
    'device_kind': kind,
    'global_batch': config.data.global_batch_size,
    'image_size': config.model.image_size,
    'compute_dtype': config.model.compute_dtype,
    'remat': step.config.model.remat,
    'attention': step.config.model.attention,
    'allocator': allocator.in_use(),
    'state_creation_s': step.state_seconds,
    'lower_s': step.lower_seconds,
    'compile_s': step.compile_seconds,
    'first_step_s': step.first_step_seconds,
  }
  fns: dict[str, Callable[[], Any]] = {'superclip': step}
  if compare_clip and variants.has_token_head(config.model.variant):
    clip = Step(config_defaults.clip_baseline(config))
    report.update(clip_compile_s=clip.compile_seconds)
    fns['clip'] = clip
  platform = devices[0].platform
  peak = flops.total_peak_flops(devices) if platform != 'cpu' else None
  if platform == 'cpu':  # the machine's best BLAS, timed in turn with the steps
    fns['peak'] = peak_matmul = PeakMatmul(peak_matmul_size)
  times = interleaved_times(fns, steps, warmup)
  t = statistics.median(times['superclip'])
  b = config.data.global_batch_size
  report.update(
    step_time_s=t, step_time_min_s=min(times['superclip']), images_per_sec=b / t, images_per_sec_per_device=b / t / len(devices)
  )
  report.update(step.flops())
  report['loss'] = step.last_metrics()['loss']  # finite, or the timings are of a broken step
  if 'clip' in times:
    report['clip_step_time_s'] = statistics.median(times['clip'])
    report['superclip_over_clip_step_ratio'] = t / report['clip_step_time_s']
  else:
    report['clip_step_time_s'] = report['superclip_over_clip_step_ratio'] = None
  report['achieved_flops_per_sec'] = report['model_flops_per_step'] / t
  report['peak_flops_per_sec_range'] = None
  if platform == 'cpu':
    # The BLAS runs on every core, which all CPU devices share: the machine's peak, not per device.
    rates = [peak_matmul.flops_per_call / seconds for seconds in times['peak']]
    peak = statistics.median(rates)
    report['peak_source'] = (
      f'measured ({peak_matmul_size}^3 float32 matmul with {peak_matmul.library}, the faster '
      f'BLAS here, median of {steps} turns interleaved with the steps)'
    )
    report['peak_flops_per_sec_range'] = [min(rates), max(rates)]
  elif peak:
    report['peak_source'] = f'table (bf16 peak of {kind}, {len(devices) // flops.cores_per_chip(devices)} chips)'
  else:
    report['peak_source'] = f'none: {kind} is not in the peak table (flops.PEAK_BF16_FLOPS), so no MFU'
  report['peak_flops_per_sec'] = peak
  report['mfu'] = report['achieved_flops_per_sec'] / peak if peak else None
  return report


def _si(x: float | None, unit: str) -> str:
  if x is None:
    return 'n/a'
  for scale, prefix in ((1e15, 'P'), (1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
    if abs(x) >= scale:
      return f'{x / scale:.2f} {prefix}{unit}'
  return f'{x:.2f} {unit}'


def format_report(r: dict[str, Any]) -> str:
  """The report as aligned lines (the JSON line follows them)."""
  ratio = r['superclip_over_clip_step_ratio']
  lines = [
    f'bench: {r["devices"]} x {r["device_kind"]}, {r["config_variant"]}, batch {r["global_batch"]}, '
    f'{r["image_size"]} px, {r["compute_dtype"]}, remat {r["remat"]}, malloc {r["allocator"]}',
    f'  state creation        {r["state_creation_s"]:.2f} s',
    f'  lower / compile       {r["lower_s"]:.2f} s / {r["compile_s"]:.2f} s (first step {r["first_step_s"]:.2f} s)',
    f'  step time (median)    {r["step_time_s"] * 1e3:.1f} ms (min {r["step_time_min_s"] * 1e3:.1f} ms)',
    f'  images/s              {r["images_per_sec"]:.2f} ({r["images_per_sec_per_device"]:.2f} per device)',
    f'  FLOPs per step        analytic {_si(r["model_flops_per_step"], "FLOP")}, XLA corrected for scans '
    f'{_si(r.get("xla_flops_corrected"), "FLOP")} (reported {_si(r.get("xla_flops_reported"), "FLOP")})',
    f'  achieved              {_si(r["achieved_flops_per_sec"], "FLOP/s")}',
    (
      f'  MFU                   {100 * r["mfu"]:.1f}% of {_si(r["peak_flops_per_sec"], "FLOP/s")}, '
      if r['mfu'] is not None
      else '  MFU                   n/a, '
    )
    + f'peak {r["peak_source"]}'
    + (
      f'; turns {_si(r["peak_flops_per_sec_range"][0], "FLOP/s")} to {_si(r["peak_flops_per_sec_range"][1], "FLOP/s")}'
      if r['peak_flops_per_sec_range']
      else ''
    ),
    '  CLIP step (median)    '
    + (f'{r["clip_step_time_s"] * 1e3:.1f} ms, SuperCLIP/CLIP {ratio:.3f}' if ratio is not None else 'not measured'),
  ]
  return '\n'.join(lines)


def _define_flags() -> None:
  _FLAGS.update(
    config=cli.define_config_flag('Training config file (ml_collections).'),
    steps=flags.DEFINE_integer('steps', 10, 'Timed steps (after warm-up) of each model.'),
    warmup=flags.DEFINE_integer('warmup', 2, 'Untimed steps of each model after the first.'),
    batch=flags.DEFINE_integer('batch', None, "Global batch size (default: the config's)."),
    image_size=flags.DEFINE_integer('image_size', None, "Image side in pixels (default: the config's)."),
    peak_matmul_size=flags.DEFINE_integer('peak_matmul_size', 2048, 'Side of the square matmul timed for the measured peak.'),
    no_clip=flags.DEFINE_bool('no_clip', False, 'Skip the interleaved step without the token classifier.'),
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  f = {name: flag.value for name, flag in _FLAGS.items() if name != 'config'}
  with user_errors():
    config = cli.config_value(_FLAGS['config'], training=False)  # a synthetic batch: no data needed
    if f['batch']:
      config.data.global_batch_size = f['batch']
    if f['image_size']:
      config.model.image_size = f['image_size']
    report = run(
      config, steps=f['steps'], warmup=f['warmup'], compare_clip=not f['no_clip'], peak_matmul_size=f['peak_matmul_size']
    )
  print(format_report(report), flush=True)
  print(json.dumps(report), flush=True)


if __name__ == '__main__':
  allocator.reexec_with_mimalloc()  # before anything allocates: see allocator.py
  _define_flags()
  cli.run(main, 'superclip_jax.bench_step')
