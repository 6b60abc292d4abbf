"""`--runner beam`: the shard tasks as an Apache Beam pipeline (DirectRunner by default).

Each task runs build.build_shard on a Beam worker, exactly as the local runner does, so
the shards are byte-identical to a local build and an interrupted pipeline resumes shard
by shard. The driver then sums the shards' .stats.json into the manifest. Other runners
(Dataflow, Flink) take the usual Beam flags through SUPERCLIP_BEAM_ARGS (split like a
shell line), and need an out_dir all workers can write (e.g. gs://, not done here yet).
"""

from __future__ import annotations

import json
import os
import shlex
from typing import Any


def _build(task: dict[str, Any], out_dir: str, options: dict[str, Any]) -> str:
  from superclip_jax.data import build  # imported on the worker
  build.build_shard(task, out_dir, options)
  return task['name']


def run(tasks: list[dict[str, Any]], out_dir: str, options: dict[str, Any], workers: int = 0) -> list[dict[str, Any]]:
  """Run build_shard for every task in a Beam pipeline; the shards' stats in task order."""
  try:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
  except ImportError as e:
    raise ImportError('--runner beam needs `pip install apache-beam`') from e
  args = shlex.split(os.environ.get('SUPERCLIP_BEAM_ARGS', ''))
  if not any(a.startswith('--runner') for a in args):
    # In-process DirectRunner threads: the shard work is I/O and native decoding.
    args += ['--runner=DirectRunner', f'--direct_num_workers={workers or min(len(tasks), os.cpu_count() or 1)}',
             '--direct_running_mode=multi_threading']
  if tasks:
    with beam.Pipeline(options=PipelineOptions(args)) as pipeline:
      _ = (pipeline
           | 'Tasks' >> beam.Create(tasks, reshuffle=False)
           | 'Spread' >> beam.Reshuffle()  # one shard per worker, not all on the first
           | 'BuildShard' >> beam.Map(_build, out_dir, options))
  stats = []
  for task in tasks:
    with open(os.path.join(out_dir, task['name'] + '.stats.json')) as f:
      stats.append(json.load(f))
  return stats
