"""Compile-only check: will this config's train step fit the chips, and what will they run?

  python -m superclip_jax.main --config configs/superclip_b16.py --dry_run --topology v5e:16x16
  python -m superclip_jax.main --config configs/superclip_b16.py --dry_run --topology h200:8 --dry_run_dir DIR

Builds the abstract train state and batch (no data, no parameters allocated) and compiles
the real train step, for the devices present or for a topology described on this machine
(compile_targets.py: TPU pods through libtpu, GPU nodes through jax's CUDA plugin). The
'auto' settings are resolved for the target's backend (platform_defaults.py). Prints the
parameter count, per-device bytes against the chip's memory, FLOPs per step, the compile
time and what the compiled program does (hlo_facts.py: fused attention, conditionals,
collectives); `fits` is False (exit status 1) when the step does not fit. --dry_run_dir
keeps report.json and the compiled step's HLO text (step.hlo.txt).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from superclip_jax import (
  compile_targets,
  flops,
  hlo_facts,
  run_setup,
  sharding,
  storage,
  train_step,
)
from superclip_jax.models.superclip import count_params


def abstract_batch(config: ml_collections.ConfigDict, mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch's shapes, fed as the trainer feeds it (rows split over every mesh axis)."""
  b, s = config.data.global_batch_size, config.model.image_size
  feed = sharding.input_sharding(mesh)
  batch = {
    'images': jax.ShapeDtypeStruct((b, s, s, 3), jnp.uint8, sharding=feed),
    'label': jax.ShapeDtypeStruct((b,), jnp.int32, sharding=feed),
    'text': jax.ShapeDtypeStruct((b, config.model.context_length), jnp.int32, sharding=feed),
  }
  if config.data.long_captions:
    batch['token_ids'] = jax.ShapeDtypeStruct((b, config.data.long_context_length), jnp.int32, sharding=feed)
  return batch


def _memory(compiled) -> dict[str, int]:
  stats = compiled.memory_analysis()
  if stats is None:
    return {}
  args, out = int(stats.argument_size_in_bytes), int(stats.output_size_in_bytes)
  alias, temp = int(stats.alias_size_in_bytes), int(stats.temp_size_in_bytes)
  code = int(getattr(stats, 'generated_code_size_in_bytes', 0))
  # Donated arguments are reused for their outputs (alias): counted once.
  return {
    'argument_bytes': args,
    'output_bytes': out,
    'alias_bytes': alias,
    'temp_bytes': temp,
    'code_bytes': code,
    'total_bytes': args + out - alias + temp + code,
  }


def _gib(x: float | None) -> str:
  if x is None:
    return 'unknown'
  return f'{x / 2**30:.2f} GiB' if x >= 2**30 else f'{x / 2**20:.1f} MiB'


def _flops(x: float) -> str:
  return f'{x / 1e12:.1f} T' if x >= 1e12 else f'{x / 1e9:.2f} G'


def run(
  config: ml_collections.ConfigDict, topology: str | None = None, quiet: bool = False, out_dir: str | None = None
) -> dict[str, Any]:
  """Compile the config's train step; returns (and prints) the report, and writes it to `out_dir`."""
  devices = compile_targets.devices(topology) if topology else jax.devices()
  platform = devices[0].platform
  # IDF counts have the same shapes whatever the statistics: no data needed.
  setup = run_setup.prepare(config, devices=devices, training=False, idf_from_data=False)
  config, mesh, rules, model_def, target = setup.config, setup.mesh, setup.rules, setup.model_def, setup.target
  batch = abstract_batch(config, mesh)
  jitted, _ = train_step.jit_train_step(model_def, setup.tx, setup.schedule, config, setup.shardings, mesh, rules)
  start = time.perf_counter()
  error = None
  compiled = None
  with jax.set_mesh(mesh):
    lowered = jitted.lower(target, batch)
    try:
      compiled = lowered.compile(compile_targets.compile_options(platform, compile_only=bool(topology)))
    except Exception as e:  # XLA reports an over-budget program as RESOURCE_EXHAUSTED at compile time
      if 'RESOURCE_EXHAUSTED' not in str(e) and 'memory' not in str(e).lower():
        raise
      error = str(e).splitlines()[0][:400]
  compile_s = time.perf_counter() - start
  kind = getattr(devices[0], 'device_kind', str(platform))
  limit = flops.device_memory(devices[0])
  cores = flops.cores_per_chip(devices)
  if cores > 1 and limit:
    limit //= cores  # a device is one TensorCore of a chip (no megacore): its share of the chip's memory
  usable = limit
  if limit and platform == 'gpu' and topology:
    # JAX's GPU allocator takes this share of the memory (launch/ sets 0.92; JAX's default is 0.75).
    usable = int(limit * float(os.environ.get('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.92')))
  report: dict[str, Any] = {
    'topology': topology or f'{len(devices)} x {kind}',
    'device_kind': kind,
    'platform': platform,
    'devices': len(devices),
    'chips': len(devices) // cores,
    'mesh': dict(mesh.shape),
    'global_batch': config.data.global_batch_size,
    'accum_steps': int(config.optim.accum_steps),
    'remat': config.model.remat,
    'attention': config.model.attention,
    'nonfinite_guard': config.nonfinite_guard,
    'compute_dtype': config.model.compute_dtype,
    'parameters': count_params(model_def.shapes()),
    'largest_parameter_bytes': max(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(model_def.shapes())),
    'compile_seconds': compile_s,
    'device_memory_bytes': limit,
    'usable_memory_bytes': usable,
    'analytic_flops_per_step': flops.analytic_step_flops(model_def.cfg, config.data.global_batch_size),
  }
  hlo_text = None
  if compiled is not None:
    report.update(_memory(compiled))
    with jax.set_mesh(mesh):
      report.update(flops.step_flops_report(jitted, (target, batch), compiled, num_devices=len(devices)))
    report['fits'] = usable is None or report.get('total_bytes', 0) <= usable
    hlo_text = compiled.as_text()
    report['program'] = hlo_facts.facts(hlo_text)
  else:
    report['fits'] = False
    report['error'] = error
  peak = flops.total_peak_flops(devices)
  if peak:
    # The step time the model FLOPs imply at 50% of the sum of the chips' bf16 peaks.
    report['step_seconds_at_50pct_mfu'] = report['analytic_flops_per_step'] / (0.5 * peak)
  if out_dir:
    storage.makedirs(out_dir)
    storage.write_text(storage.join(out_dir, 'report.json'), json.dumps(report, indent=1, sort_keys=True) + '\n')
    if hlo_text is not None:
      storage.write_text(storage.join(out_dir, 'step.hlo.txt'), hlo_text)
  if not quiet:
    print(format_report(report), flush=True)
  return report


def format_report(r: dict[str, Any]) -> str:
  """The report as a few aligned lines."""
  lines = [
    f'dry run: {r["topology"]} ({r["device_kind"]}), mesh {r["mesh"]}, global batch {r["global_batch"]}'
    f' (accum {r["accum_steps"]}), {r["compute_dtype"]}, remat {r["remat"]}, attention {r["attention"]}, '
    f'non-finite guard {r["nonfinite_guard"]}',
    f'  parameters            {r["parameters"] / 1e6:.1f}M',
    f'  compile time          {r["compile_seconds"]:.1f} s',
  ]
  if 'total_bytes' in r:
    lines += [
      f'  per device: arguments {_gib(r["argument_bytes"])}, outputs {_gib(r["output_bytes"])} '
      f'(aliased {_gib(r["alias_bytes"])}), temporaries {_gib(r["temp_bytes"])}',
      f'  per device total      {_gib(r["total_bytes"])} of {_gib(r["usable_memory_bytes"])}'
      + (
        f' usable ({_gib(r["device_memory_bytes"])} on the chip)' if r['usable_memory_bytes'] != r['device_memory_bytes'] else ''
      ),
    ]
  lines.append(
    f'  FLOPs per step        analytic {_flops(r["analytic_flops_per_step"])}'
    + (f', program dots {_flops(r["program_dot_flops"])}' if 'program_dot_flops' in r else '')
    + (
      f', XLA corrected {_flops(r["xla_flops_corrected"])} (reported {_flops(r["xla_flops_reported"])})'
      if 'xla_flops_corrected' in r
      else ''
    )
  )
  if 'step_seconds_at_50pct_mfu' in r:
    lines.append(f'  step time at 50% MFU  {r["step_seconds_at_50pct_mfu"]:.2f} s')
  if 'program' in r:
    lines.append(f'  compiled program      {hlo_facts.summary_line(r["program"])}')
  verdict = 'yes' if r['fits'] else 'NO (try --config.model.remat=full or --config.optim.accum_steps=K)'
  lines.append(f'  fits                  {verdict}' + (f': {r["error"]}' if r.get('error') else ''))
  return '\n'.join(lines)
