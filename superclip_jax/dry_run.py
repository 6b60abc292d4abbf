"""Compile-only fit check: will this config's train step fit the chips, before paying for them?

  python -m superclip_jax.main --config configs/superclip_b16.py --dry_run --topology v5e:16x16

Builds the abstract train state and batch (no data, no parameters allocated) and compiles
the real train step, for the devices present or for a TPU topology that libtpu describes
on a CPU-only machine (`pip install -r requirements-tpu.txt`). Prints the parameter count,
per-device bytes (arguments, outputs, temporaries, total) against the chip's memory,
FLOPs per step (analytic, the program's dots and XLA's count corrected for scans) and
the compile time; `fits` is False (exit status 1) when the step does not fit.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from superclip_jax import config_defaults, flops, idf, optim, sharding, train_state, train_step
from superclip_jax.errors import UserError
from superclip_jax.models.superclip import ModelConfig, ModelDef, count_params


def topology_devices(name: str) -> list:
  """Abstract devices of a TPU topology such as 'v5e:16x16' (needs libtpu: the jax[tpu] extra)."""
  for key, value in (('TPU_ACCELERATOR_TYPE', name.replace(':', '-')), ('TPU_WORKER_HOSTNAMES', 'localhost'),
                     ('TPU_WORKER_ID', '0'), ('TPU_SKIP_MDS_QUERY', '1')):
    os.environ.setdefault(key, value)  # libtpu otherwise probes a metadata server that is not there
  from jax.experimental import topologies
  try:
    return list(topologies.get_topology_desc(topology_name=name, platform='tpu').devices)
  except Exception as e:  # no libtpu, or an unknown topology name
    raise UserError(f"--topology {name}: libtpu cannot describe it ({str(e).splitlines()[0][:300]}); "
                    "install the TPU extra (pip install -r requirements-tpu.txt) and use names such as "
                    "v5e:16x16, v6e:16x16, v4:4x4x8, v5p:4x4x8") from e


def abstract_batch(config: ml_collections.ConfigDict, mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch's shapes, fed as the trainer feeds it (rows split over every mesh axis)."""
  b, s = config.data.global_batch_size, config.model.image_size
  feed = sharding.input_sharding(mesh)
  batch = {'images': jax.ShapeDtypeStruct((b, s, s, 3), jnp.uint8, sharding=feed),
           'label': jax.ShapeDtypeStruct((b,), jnp.int32, sharding=feed),
           'text': jax.ShapeDtypeStruct((b, config.model.context_length), jnp.int32, sharding=feed)}
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
  return {'argument_bytes': args, 'output_bytes': out, 'alias_bytes': alias, 'temp_bytes': temp,
          'code_bytes': code, 'total_bytes': args + out - alias + temp + code}


def _gib(x: float | None) -> str:
  if x is None:
    return 'unknown'
  return f'{x / 2 ** 30:.2f} GiB' if x >= 2 ** 30 else f'{x / 2 ** 20:.1f} MiB'


def _flops(x: float) -> str:
  return f'{x / 1e12:.1f} T' if x >= 1e12 else f'{x / 1e9:.2f} G'


def run(config: ml_collections.ConfigDict, topology: str | None = None, quiet: bool = False) -> dict[str, Any]:
  """Compile the config's train step; returns (and prints) the report."""
  jax.config.update('jax_threefry_partitionable', True)
  config_defaults.validate(config, training=False)
  devices = topology_devices(topology) if topology else jax.devices()
  mesh = sharding.make_mesh(config.mesh.shape, devices)
  rules = tuple(tuple(r) for r in config.mesh.rules)
  sharding.check_batch_divides(config.data.global_batch_size, mesh)
  model_def = ModelDef(ModelConfig.from_config(config), seed=config.seed)
  total_steps = config_defaults.resolved_total_steps(config)
  tx, schedule = optim.make_optimizer(config, model_def.shapes(), model_def.logical_axes(), total_steps)
  # IDF counts have the same shapes whatever the statistics: no data needed.
  counts = {} if model_def.cfg.variant == 'clip' or config.loss.idf == 'none' else jax.tree.map(
      np.asarray, idf.zeros(config.model.vocab_size))
  target, shardings = train_state.abstract_train_state(model_def, tx, counts, mesh, rules)
  batch = abstract_batch(config, mesh)
  jitted, _ = train_step.jit_train_step(model_def, tx, schedule, config, shardings, mesh, rules)
  start = time.perf_counter()
  error = None
  compiled = None
  with jax.set_mesh(mesh):
    lowered = jitted.lower(target, batch)
    try:
      compiled = lowered.compile()
    except Exception as e:  # XLA reports an over-budget program as RESOURCE_EXHAUSTED at compile time
      if 'RESOURCE_EXHAUSTED' not in str(e) and 'memory' not in str(e).lower():
        raise
      error = str(e).splitlines()[0][:400]
  compile_s = time.perf_counter() - start
  kind = getattr(devices[0], 'device_kind', str(devices[0].platform))
  limit = flops.device_memory(devices[0])
  cores = 1 + max(int(getattr(d, 'core_on_chip', 0) or 0) for d in devices)
  if cores > 1 and limit:
    limit //= cores  # a device is one TensorCore of a chip (no megacore): its share of the chip's memory
  report: dict[str, Any] = {
      'topology': topology or f'{len(devices)} x {kind}', 'device_kind': kind, 'devices': len(devices),
      'chips': len(devices) // cores,
      'mesh': dict(mesh.shape), 'global_batch': config.data.global_batch_size,
      'accum_steps': int(config.optim.accum_steps), 'remat': config.model.remat,
      'parameters': count_params(model_def.shapes()), 'compile_seconds': compile_s,
      'device_memory_bytes': limit, 'analytic_flops_per_step': flops.analytic_step_flops(
          model_def.cfg, config.data.global_batch_size)}
  if compiled is not None:
    report.update(_memory(compiled))
    with jax.set_mesh(mesh):
      report.update(flops.step_flops_report(jitted, (target, batch), compiled, num_devices=len(devices)))
    report['fits'] = limit is None or report.get('total_bytes', 0) <= limit
  else:
    report['fits'] = False
    report['error'] = error
  peak = flops.peak_flops(kind)
  if peak:
    # The step time the model FLOPs imply at 50% of every chip's bf16 peak.
    report['step_seconds_at_50pct_mfu'] = report['analytic_flops_per_step'] / (0.5 * peak * len(devices) / cores)
  if not quiet:
    print(format_report(report), flush=True)
  return report


def format_report(r: dict[str, Any]) -> str:
  """The report as a few aligned lines."""
  lines = [f"dry run: {r['topology']} ({r['device_kind']}), mesh {r['mesh']}, global batch {r['global_batch']}"
           f" (accum {r['accum_steps']}), remat {r['remat']}",
           f"  parameters            {r['parameters'] / 1e6:.1f}M",
           f"  compile time          {r['compile_seconds']:.1f} s"]
  if 'total_bytes' in r:
    lines += [f"  per device: arguments {_gib(r['argument_bytes'])}, outputs {_gib(r['output_bytes'])} "
              f"(aliased {_gib(r['alias_bytes'])}), temporaries {_gib(r['temp_bytes'])}",
              f"  per device total      {_gib(r['total_bytes'])} of {_gib(r['device_memory_bytes'])}"]
  lines.append(f"  FLOPs per step        analytic {_flops(r['analytic_flops_per_step'])}"
               + (f", program dots {_flops(r['program_dot_flops'])}" if 'program_dot_flops' in r else '')
               + (f", XLA corrected {_flops(r['xla_flops_corrected'])} "
                  f"(reported {_flops(r['xla_flops_reported'])})" if 'xla_flops_corrected' in r else ''))
  if 'step_seconds_at_50pct_mfu' in r:
    lines.append(f"  step time at 50% MFU  {r['step_seconds_at_50pct_mfu']:.2f} s")
  verdict = 'yes' if r['fits'] else 'NO'
  lines.append(f"  fits                  {verdict}" + (f": {r['error']}" if r.get('error') else ''))
  return '\n'.join(lines)
