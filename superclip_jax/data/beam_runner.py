"""`--runner beam`: the builder's passes as Apache Beam pipelines (DirectRunner by default).

Each pass runs a build.py step (list_keys, then build_shard) for every task on a Beam
worker, exactly as the local runner does, so the shards are byte-identical to a local
build and an interrupted pipeline resumes shard by shard. Between the passes the driver
finds the duplicate keys; afterwards it sums the shards' .stats.json into the manifest.
Other runners (Dataflow, Flink) take the usual Beam flags through SUPERCLIP_BEAM_ARGS
(split like a shell line) and need an --out every worker can write: a bucket URL
(gs://, s3://), to which each worker uploads the shards it builds.
"""

from __future__ import annotations

import importlib
import os
import shlex
from typing import Any


def _step(task: dict[str, Any], module: str, step: str, out_dir: str, options: dict[str, Any]) -> str:
  importlib.import_module(module).__dict__[step](task, out_dir, options)  # imported on the worker
  return task['name']


def run(module: str, step: str, tasks: list[dict[str, Any]], out_dir: str, options: dict[str, Any], workers: int = 0) -> None:
  """module.step(task, out_dir, options) (a module-level function, by importable names) for every task, in one
  Beam pipeline."""
  try:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
  except ImportError as e:
    raise ImportError('--runner beam needs `pip install apache-beam`') from e
  if not tasks:
    return
  args = shlex.split(os.environ.get('SUPERCLIP_BEAM_ARGS', ''))
  if not any(a.startswith('--runner') for a in args):
    # In-process DirectRunner threads: the shard work is I/O and native decoding.
    args += [
      '--runner=DirectRunner',
      f'--direct_num_workers={workers or min(len(tasks), os.cpu_count() or 1)}',
      '--direct_running_mode=multi_threading',
    ]
  # Workers import the step's module and look the step up by name: nothing of the driver's module is pickled.
  with beam.Pipeline(options=PipelineOptions(args)) as pipeline:
    _ = (
      pipeline
      | 'Tasks' >> beam.Create(tasks, reshuffle=False)
      | 'Spread' >> beam.Reshuffle()  # one task per worker, not all on the first
      | step >> beam.Map(_step, module, step, out_dir, options)
    )
