"""Starting JAX's multi-controller runtime (`jax.distributed`): one process per host or GPU.

The cluster is found by JAX's own detection (Cloud TPU VMs and GKE, SLURM, Open MPI,
Kubernetes), or given explicitly: --coordinator_address, --num_processes and
--process_id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID). A
half-given configuration is an error naming what is missing.

JAX aborts every process (SIGABRT) when a peer never arrives or dies; that cannot be
caught in Python, so the launchers report it. What can be checked here is checked
before JAX starts: a coordinator port already in use.
"""

from __future__ import annotations

import os
import socket
from typing import Sequence

from absl import logging

from superclip_jax.errors import UserError

ENV = {'coordinator_address': 'JAX_COORDINATOR_ADDRESS', 'num_processes': 'JAX_NUM_PROCESSES', 'process_id': 'JAX_PROCESS_ID'}


def detected_cluster() -> str | None:
  """The name of the cluster environment JAX detects here (e.g. 'SlurmCluster'), or None."""
  from jax._src.clusters import ClusterEnv  # JAX's own detection; no public API lists it

  for env in ClusterEnv._cluster_types:  # pylint: disable=protected-access
    try:
      if not getattr(env, 'opt_in_only_method', False) and env.is_env_present():
        return env.__name__
    except Exception:  # a detector probing an absent metadata server or library
      continue
  return None


def explicit_settings(coordinator_address: str | None, num_processes: int | None, process_id: int | None) -> dict[str, object]:
  """The settings given by flag or environment variable (flags win)."""
  given = {'coordinator_address': coordinator_address, 'num_processes': num_processes, 'process_id': process_id}
  for key, var in ENV.items():
    if given[key] is None and os.environ.get(var):
      value = os.environ[var]
      given[key] = value if key == 'coordinator_address' else int(value)
  return {k: v for k, v in given.items() if v is not None}


def _check_port_free(address: str) -> None:
  """On the coordinator's own host, its port must be free (JAX would abort with 'Failed to start RPC server')."""
  host, _, port = address.rpartition(':')
  if not port.isdigit():
    raise UserError(f'coordinator address {address!r} is not HOST:PORT')
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    try:
      s.bind(('0.0.0.0', int(port)))
    except OSError as e:
      raise UserError(
        f'coordinator port {port} is in use on this host ({e.strerror}): '
        'another job holds it; choose another --coordinator_address port'
      ) from e


def initialize(
  mode: str = 'auto',
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  timeout_s: int = 300,
  heartbeat_timeout_s: int = 100,
  local_device_ids: Sequence[int] | None = None,
) -> bool:
  """Start jax.distributed as `mode` ('auto' | 'yes' | 'no') says; returns whether it did."""
  if mode == 'no':
    return False
  given = explicit_settings(coordinator_address, num_processes, process_id)
  cluster = detected_cluster()
  if given and cluster is None and len(given) < 3:
    missing = [f'--{k} (or {ENV[k]})' for k in ENV if k not in given]
    raise UserError(
      f'a multi-process run needs all of --coordinator_address, --num_processes and --process_id '
      f'when no cluster is detected; got {sorted(given)}, missing {", ".join(missing)}'
    )
  if not given and cluster is None:
    if mode == 'yes':
      raise UserError(
        '--distributed=yes but no cluster was detected (TPU VM, SLURM, Open MPI, Kubernetes) and '
        'no --coordinator_address, --num_processes, --process_id were given'
      )
    return False
  if given.get('num_processes') is not None and not 0 <= int(given.get('process_id', 0)) < int(given['num_processes']):
    raise UserError(f'--process_id={given.get("process_id")} is outside 0..{int(given["num_processes"]) - 1}')
  if given.get('coordinator_address') and given.get('process_id') == 0:
    _check_port_free(str(given['coordinator_address']))
  import jax

  logging.info('starting jax.distributed (%s)', cluster or 'explicit coordinator')
  jax.distributed.initialize(
    coordinator_address=given.get('coordinator_address'),
    num_processes=given.get('num_processes'),
    process_id=given.get('process_id'),
    local_device_ids=local_device_ids,
    initialization_timeout=int(timeout_s),
    heartbeat_timeout_seconds=int(heartbeat_timeout_s),
  )
  if jax.process_count() > 1 and jax.default_backend() == 'cpu' and jax.config.jax_enable_compilation_cache:
    # A multi-process CPU job (gloo collectives) that loads its programs from the persistent
    # compilation cache aborts within its first steps ("Received data size doesn't match
    # expected size": the processes' collectives no longer pair up). It did in 2 of 2 warm runs,
    # and in 1 of 3 with a cache per process (jax 0.10.2; docs/performance.md).
    jax.config.update('jax_enable_compilation_cache', False)
    logging.info('persistent compilation cache off: a multi-process CPU job compiles each program itself')
  return True
