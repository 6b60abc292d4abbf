"""One PNG of a run's curves, or of several runs compared.

  python -m superclip_jax.plot WORKDIR [WORKDIR ...] [--out curves.png]

Panels: the loss terms, the temperature, the learning rate and throughput against step; one
panel per evaluation (its metrics joined over the steps it ran at), for evaluations that ran
more than once; and a table of every run's final metrics, where an evaluation that ran once
(at the end) is found. Hyperparameters an evaluation chooses (the probe's weight decay) and
timings are not plotted. Reads WORKDIR/metrics.jsonl (local or gs://); the PNG goes to --out,
default WORKDIR/curves.png of the first run.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from typing import Any

from absl import flags

from superclip_jax import commands, losses, metric_writers, storage
from superclip_jax.errors import UserError, user_errors

_TRAIN_PANELS = (
  ('losses', ('loss', *(t.name for t in losses.LOSS_TERMS))),
  ('temperature (logit scale)', ('logit_scale',)),
  ('learning rate', ('learning_rate',)),
  ('throughput (images/s)', ('images_per_sec',)),
)
# Evaluation keys are KIND/NAME/METRIC; these METRICs are a chosen setting or a timing, not a result.
_NOT_RESULTS = ('seconds', 'weight_decay')
TABLE = 'final metrics'


@dataclasses.dataclass(frozen=True)
class Panel:
  title: str
  keys: tuple[str, ...]
  kind: str = 'curves'  # or 'table'


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
  points = {r['step']: r[key] for r in rows if isinstance(r.get(key), (int, float))}  # a step once
  steps = sorted(points)
  return steps, [points[s] for s in steps]


def _is_result(key: str) -> bool:
  parts = key.split('/')
  return len(parts) == 3 and parts[0] != 'data' and parts[2] not in _NOT_RESULTS


def _family_title(family: str) -> str:
  kind, name = family.split('/')
  return kind if kind == name else f'{name} ({kind})'


def panels(runs: dict[str, list[dict[str, Any]]]) -> list[Panel]:
  """The panels to draw: curves with at least two steps in some run, then the final-metrics table."""

  def steps_of(key):
    return max(len(_series(rows, key)[0]) for rows in runs.values())

  present = {k for rows in runs.values() for r in rows for k in r}
  out = []
  for title, keys in _TRAIN_PANELS:
    keys = tuple(k for k in keys if k in present and steps_of(k) >= 2)
    if keys:
      out.append(Panel(title, keys))
  results = sorted(k for k in present if _is_result(k))
  families: dict[str, list[str]] = {}
  for key in results:
    families.setdefault(key.rsplit('/', 1)[0], []).append(key)
  for family, keys in families.items():
    curves = tuple(k for k in keys if steps_of(k) >= 2)
    if curves:
      out.append(Panel(_family_title(family), curves))
  final = tuple(k for k in ('loss', *(t.name for t in losses.LOSS_TERMS)) if k in present) + tuple(results)
  if final:
    out.append(Panel(TABLE, final, 'table'))
  return out


def _final(rows: list[dict[str, Any]], key: str) -> str:
  steps, values = _series(rows, key)
  return f'{values[-1]:.4f} (step {steps[-1]})' if steps else '-'


def _metric_label(key: str) -> str:
  """'zeroshot/zeroshot/top1' -> 'zeroshot: top1'; training keys as they are."""
  if not _is_result(key):
    return key
  family, metric = key.rsplit('/', 1)
  return f'{_family_title(family)}: {metric}'


def _draw_table(ax, panel: Panel, runs: dict[str, list[dict[str, Any]]]) -> None:
  ax.axis('off')
  cells = [[_metric_label(key)] + [_final(rows, key) for rows in runs.values()] for key in panel.keys]
  header = ['metric'] + (list(runs) if len(runs) > 1 else ['final value'])
  table = ax.table(cellText=cells, colLabels=header, loc='upper center', cellLoc='left', colLoc='left')
  table.auto_set_font_size(False)
  table.set_fontsize(7)
  table.auto_set_column_width(list(range(len(header))))
  ax.set_title(panel.title, fontsize=10)


def _draw_curves(ax, panel: Panel, runs: dict[str, list[dict[str, Any]]]) -> None:
  for run, rows in runs.items():
    for key in panel.keys:
      steps, values = _series(rows, key)
      if steps:
        name = key.rsplit('/', 1)[-1]
        label = ' '.join(x for x in (run if len(runs) > 1 else '', name if len(panel.keys) > 1 else '') if x)
        ax.plot(steps, values, marker='.' if len(steps) < 30 else None, label=label or None)
  ax.set_title(panel.title, fontsize=10)
  ax.set_xlabel('step')
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7)


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
  for ax, panel in zip(axes.flat, chosen):
    (_draw_table if panel.kind == 'table' else _draw_curves)(ax, panel, runs)
  for ax in list(axes.flat)[len(chosen) :]:
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


def _define_flags(v: flags.FlagValues) -> None:
  flags.DEFINE_string('out', None, 'PNG path (default: the first WORKDIR/curves.png).', flag_values=v)


def _plot(v: flags.FlagValues, workdirs: list[str]) -> None:
  with user_errors('superclip_jax.plot'):
    if not workdirs:
      raise UserError('give at least one WORKDIR to plot')
    print(plot(workdirs, v.out))


def main(argv: list[str] | None = None):
  """`python -m superclip_jax.plot` (argv None), or its arguments as a list, in this process."""
  commands.command('superclip_jax.plot', _define_flags, _plot, argv, positional=True)


if __name__ == '__main__':
  main()
