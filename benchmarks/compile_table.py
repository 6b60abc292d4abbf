"""The recipes' train step compiled for accelerator pods on this machine: one table for docs/performance.md.

  python benchmarks/compile_table.py --out /tmp/compile_table            # compile every cell, then print
  python benchmarks/compile_table.py --out /tmp/compile_table --render   # print the table of finished cells
  python benchmarks/compile_table.py --out DIR -- --config.KEY=VALUE      # overrides for every cell (after --)

Each cell is `python -m superclip_jax.main --config CONFIG --dry_run --topology T --dry_run_dir
OUT/CELL` in its own process (the TPU cells need the `tpu` extra, the GPU cells the `gpu`
extra; no accelerator is used). A cell whose report.json exists is not compiled again.
Columns: per-device bytes against the usable device memory and whether the step fits,
compile seconds, fused-attention custom calls (forward/backward) and conditionals in the
compiled program, collective bytes per step, analytic TFLOP per step, and the step time
that 50% MFU over every chip would give.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {'B/16': 'configs/superclip_b16.py', 'L/16': 'configs/superclip_l16.py'}
TOPOLOGIES = ('h100:8', 'h200:8', 'h200:4x8', 'v5e:16x16', 'v6e:16x16', 'v4:4x4x8')


def cell_name(model: str, topology: str) -> str:
  return f'{model.replace("/", "")}_{topology.replace(":", "_")}'


def compile_cell(out: str, model: str, topology: str, overrides: list[str], timeout: int) -> None:
  """One dry run in its own process; its report.json (and the log) land in OUT/CELL."""
  cell = os.path.join(out, cell_name(model, topology))
  if os.path.exists(os.path.join(cell, 'report.json')):
    return
  os.makedirs(cell, exist_ok=True)
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'} | {'JAX_PLATFORMS': 'cpu'}
  cmd = [
    sys.executable,
    '-m',
    'superclip_jax.main',
    '--config',
    CONFIGS[model],
    '--dry_run',
    '--topology',
    topology,
    '--dry_run_dir',
    cell,
    *overrides,
  ]
  with open(os.path.join(cell, 'log.txt'), 'w') as log:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
  print(f'compile_table: {model} on {topology}: exit {proc.returncode}', file=sys.stderr, flush=True)


def _gib(x) -> str:
  return 'n/a' if x is None else f'{x / 2**30:.1f}'


def row(model: str, topology: str, r: dict) -> str:
  """One markdown row of a report."""
  p = r.get('program', {})
  att = p.get('fused_attention_calls', {})
  mem = f'{_gib(r.get("total_bytes"))} / {_gib(r.get("usable_memory_bytes", r.get("device_memory_bytes")))}'
  step = r.get('step_seconds_at_50pct_mfu')
  return (
    f'| {model} | {topology} | {r.get("global_batch")} | {r.get("remat")} | {mem} | '
    f'{"yes" if r.get("fits") else "no"} | {r.get("compile_seconds", 0):.0f} | '
    f'{att.get("forward", 0)}/{att.get("backward", 0)} | {p.get("conditionals", "n/a")} | '
    f'{_gib(p.get("collective_bytes_per_step"))} | {r["analytic_flops_per_step"] / 1e12:.0f} | '
    f'{"n/a" if step is None else f"{step:.2f}"} |'
  )


HEADER = (
  '| model | topology | global batch | remat | GiB per device / usable | fits | compile s | '
  'fused attention fwd/bwd | conditionals | collectives GiB/step | TFLOP/step | s/step at 50% MFU |\n'
  '|---|---|---|---|---|---|---|---|---|---|---|---|'
)


def render(out: str) -> str:
  """The table of the cells compiled so far; program facts re-read from each step.hlo.txt (current hlo_facts)."""
  from superclip_jax import hlo_facts

  lines = [HEADER]
  for model in CONFIGS:
    for topology in TOPOLOGIES:
      path = os.path.join(out, cell_name(model, topology), 'report.json')
      if os.path.exists(path):
        with open(path) as f:
          report = json.load(f)
        hlo = os.path.join(os.path.dirname(path), 'step.hlo.txt')
        if os.path.exists(hlo):
          with open(hlo) as f:
            report['program'] = hlo_facts.facts(f.read())
        lines.append(row(model, topology, report))
      else:
        lines.append(f'| {model} | {topology} | (not compiled: see {os.path.dirname(path)}/log.txt) |')
  return '\n'.join(lines)


def _define_flags(v: flags.FlagValues) -> None:
  flags.DEFINE_string('out', None, 'folder of the cells (report.json, step.hlo.txt, log.txt)', required=True, flag_values=v)
  flags.DEFINE_bool('render', False, 'only print the table of the cells already compiled', flag_values=v)
  flags.DEFINE_string(
    'only',
    '',
    "comma-separated cells to compile: topologies ('h200:8') or one model's ('B/16@h200:8'); default: all",
    flag_values=v,
  )
  flags.DEFINE_integer('timeout', 1800, 'seconds per cell', flag_values=v)


def _table(args: flags.FlagValues, overrides: list[str]) -> None:
  """overrides: the arguments after `--`, --config.KEY=VALUE overrides for every cell."""
  if not args.render:
    only = set(filter(None, args.only.split(',')))
    for model in CONFIGS:
      for topology in TOPOLOGIES:
        if not only or topology in only or f'{model}@{topology}' in only:
          compile_cell(args.out, model, topology, overrides, args.timeout)
  print(render(args.out))


def main(argv: list[str] | None = None) -> None:
  """`python benchmarks/compile_table.py` (argv None), or its flags as a list, in this process.

  Arguments after `--` are --config.KEY=VALUE overrides for every cell.
  """
  from superclip_jax import commands

  commands.command('compile_table.py', _define_flags, _table, argv, positional=True)


if __name__ == '__main__':
  main()
