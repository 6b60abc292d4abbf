#!/usr/bin/env bash
# Train on this machine's devices (one process): launch/local.sh CONFIG WORKDIR [--config.key=value ...]
set -euo pipefail
config=${1:?usage: launch/local.sh CONFIG WORKDIR [overrides]}
workdir=${2:?usage: launch/local.sh CONFIG WORKDIR [overrides]}
shift 2
exec python -m superclip_jax.main --config "$config" --workdir "$workdir" "$@"
