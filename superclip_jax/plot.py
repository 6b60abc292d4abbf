"""One PNG of a run's curves, or of several runs compared: losses, temperature, learning rate,
throughput and every evaluation metric against step.

  python -m superclip_jax.plot WORKDIR [WORKDIR ...] [--out curves.png]

Reads WORKDIR/metrics.jsonl (local or gs://); the PNG goes to --out, default
WORKDIR/curves.png of the first run.
"""

from __future__ import annotations

import argparse
import io
import math
import os
from typing import Any

from superclip_jax import cli, losses, metric_writers, storage
from superclip_jax.errors import UserError

_TRAIN_PANELS = (
    ('losses', ('loss', *(t.name for t in losses.LOSS_TERMS))),
    ('temperature (logit scale)', ('logit_scale',)),
    ('learning rate', ('learning_rate',)),
    ('throughput (images/s)', ('images_per_sec',)),
)


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
  points = [(r['step'], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
  return [p[0] for p in points], [p[1] for p in points]


def panels(runs: dict[str, list[dict[str, Any]]]) -> list[tuple[str, list[str]]]:
  """(title, metric keys) of every panel that some run has data for."""
  present = {k for rows in runs.values() for r in rows for k in r}
  out = [(title, [k for k in keys if k in present]) for title, keys in _TRAIN_PANELS]
  evals = sorted(k for k in present if k.count('/') == 2 and not k.endswith('/seconds')
                 and not k.startswith('data/'))
  out += [(k, [k]) for k in evals]
  return [(title, keys) for title, keys in out if keys]


def plot(workdirs: list[str], out: str | None = None) -> str:
  """Write the PNG; returns its path."""
  import matplotlib
  matplotlib.use('Agg')  # no display needed
  import matplotlib.pyplot as plt
  runs = {}
  for w in workdirs:
    rows = metric_writers.read_rows(w)
    if not rows:
      raise UserError(f'{w}: no metrics.jsonl rows to plot')
    runs[w.rstrip('/').split('/')[-1] or w] = rows
  chosen = panels(runs)
  cols = min(3, len(chosen))
  rows_n = math.ceil(len(chosen) / cols)
  fig, axes = plt.subplots(rows_n, cols, figsize=(5 * cols, 3.4 * rows_n), squeeze=False)
  for ax, (title, keys) in zip(axes.flat, chosen):
    for run, rows in runs.items():
      for key in keys:
        steps, values = _series(rows, key)
        if steps:
          label = ' '.join(x for x in (run if len(runs) > 1 else '', key if len(keys) > 1 else '') if x)
          ax.plot(steps, values, marker='.' if len(steps) < 30 else None, label=label or None)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
  for ax in list(axes.flat)[len(chosen):]:
    ax.axis('off')
  fig.tight_layout()
  out = out or storage.join(workdirs[0], 'curves.png')
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=110)
  plt.close(fig)
  if not storage.is_remote(out):
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  storage.Path(out).write_bytes(buffer.getvalue())
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m superclip_jax.plot', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('workdirs', nargs='+')
  parser.add_argument('--out', default=None, help='PNG path (default: the first WORKDIR/curves.png)')
  args = parser.parse_args(argv)
  with cli.user_errors('superclip_jax.plot'):
    print(plot(args.workdirs, args.out))


if __name__ == '__main__':
  main()
