"""Entry point: python -m superclip_jax.main --config configs/NAME.py --workdir DIR [--config.key=value]."""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config file (ml_collections).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for metrics, TensorBoard events, checkpoints.')
_DISTRIBUTED = flags.DEFINE_enum(
    'distributed', 'auto', ['auto', 'yes', 'no'],
    "Call jax.distributed.initialize(): 'auto' does when a coordinator, SLURM job or TPU pod is detected.")
flags.mark_flags_as_required(['config', 'workdir'])


def _should_initialize_distributed() -> bool:
  if _DISTRIBUTED.value != 'auto':
    return _DISTRIBUTED.value == 'yes'
  env = os.environ
  return bool(env.get('JAX_COORDINATOR_ADDRESS')
              or int(env.get('SLURM_NTASKS', '1')) > 1
              or env.get('TPU_WORKER_HOSTNAMES', '').count(',') > 0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  import jax  # after flag parsing, so --help stays fast
  if _should_initialize_distributed():
    jax.distributed.initialize()
  from superclip_jax import train
  logging.info('process %d/%d, %d local devices (%s)', jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.devices()[0].platform)
  train.run(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
