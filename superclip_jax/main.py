"""Entry point: python -m superclip_jax.main --config configs/NAME.py --workdir DIR [--config.key=value].

One command on a laptop or on every host of a pod: `jax.distributed` starts by itself on
TPU VMs, SLURM, Open MPI and Kubernetes (see runtime.py and launch/). `--dry_run`
compiles the real step for the devices present or a TPU topology and reports memory.
"""

from __future__ import annotations

import os
import re
import sys

from absl import app, flags, logging

from superclip_jax import allocator, cli
from superclip_jax.errors import UserError, user_errors

_CONFIG = cli.define_config_flag('Training config file (ml_collections).')
_WORKDIR = flags.DEFINE_string(
  'workdir', None, '(required for training) Directory or gs:// / s3:// URL for metrics, checkpoints, exports.'
)
_DISTRIBUTED = flags.DEFINE_enum(
  'distributed',
  'auto',
  ['auto', 'yes', 'no'],
  "Start jax.distributed: 'auto' when a cluster (TPU VM, SLURM, Open MPI, K8s) or a coordinator is given.",
)
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0 (or JAX_COORDINATOR_ADDRESS).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the job (or JAX_NUM_PROCESSES).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1 (or JAX_PROCESS_ID).')
_INIT_TIMEOUT = flags.DEFINE_integer('initialization_timeout', 300, 'Seconds to wait for every process to join before aborting.')
_HEARTBEAT = flags.DEFINE_integer('heartbeat_timeout', 100, 'Seconds without a heartbeat before a peer counts as dead.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Compile the train step and report its memory and FLOPs; no training.')
_TOPOLOGY = flags.DEFINE_string(
  'topology',
  None,
  "With --dry_run: compile for devices this machine lacks: a TPU topology such as 'v5e:16x16' "
  "(the tpu extra) or GPU nodes such as 'h200:8' or 'h200:2x8' (the gpu extra); see compile_targets.py.",
)
_DRY_RUN_DIR = flags.DEFINE_string('dry_run_dir', None, 'With --dry_run: write report.json and step.hlo.txt here.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  with user_errors():
    config = cli.config_value(_CONFIG, training=not _DRY_RUN.value)
    if _DRY_RUN.value:
      from superclip_jax import dry_run

      report = dry_run.run(config, topology=_TOPOLOGY.value, out_dir=_DRY_RUN_DIR.value)
      sys.exit(0 if report['fits'] else 1)
    if not _WORKDIR.value:
      raise UserError('--workdir is required (a directory or gs:// / s3:// URL for checkpoints and metrics)')
    from superclip_jax import runtime

    runtime.initialize(
      _DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _INIT_TIMEOUT.value, _HEARTBEAT.value
    )
    import jax

    from superclip_jax import checkpoint, train

    logging.info(
      'process %d/%d, %d local devices (%s), malloc %s',
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.devices()[0].platform,
      allocator.in_use(),
    )
    try:
      train.run(config, _WORKDIR.value)
    except checkpoint.Preempted as e:
      # Not 0: SLURM's --requeue and Kubernetes' restart policies rerun what did not finish.
      logging.warning('%s (exit status %d)', e, e.exit_code)
      sys.exit(e.exit_code)


if __name__ == '__main__':
  if '--topology' in ' '.join(sys.argv):
    # A compile for devices this machine lacks runs on the CPU backend; probing for a GPU
    # (a CUDA plugin on a machine without one) would only cost time and warnings.
    os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  forced = re.search(r'--xla_force_host_platform_device_count=(\d+)', os.environ.get('XLA_FLAGS', ''))
  if forced:
    # Fake CPU devices: XLA's CPU thread pool defaults to one thread per device on a small
    # machine, which can deadlock when a device has two collectives ready at once
    # (docs/performance.md, "Fake CPU devices"). Four per device leave room.
    os.environ.setdefault('PJRT_NPROC', str(4 * int(forced.group(1))))
  allocator.reexec_with_mimalloc()  # before anything allocates: see allocator.py
  cli.run(main, 'superclip_jax.main')
