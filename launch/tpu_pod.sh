#!/usr/bin/env bash
# Train on every worker of a Cloud TPU VM pod slice: install, then the same command on all hosts.
#
#   launch/tpu_pod.sh -n TPU_NAME -z ZONE [-p PROJECT] [-r REPO_URL] [-b BRANCH] -- CONFIG WORKDIR [--config.k=v ...]
#
#   -n  TPU VM name (gcloud compute tpus tpu-vm create ... --accelerator-type=v5litepod-256)
#   -z  its zone;  -p  its project (default: gcloud's)
#   -r  git URL of superclip_jax to clone on every worker (default: this checkout is copied with scp)
#   -b  branch or tag to check out (with -r)
#
# Every worker runs `python -m superclip_jax.main --config CONFIG --workdir WORKDIR`;
# jax.distributed finds the pod through the TPU metadata server by itself. WORKDIR should
# be a bucket (gs://...): every host reads and writes it. Shards are read from a path every
# worker sees: a bucket mounted with Cloud Storage FUSE (see docs/training.md, "Training on a pod").
# Multi-slice (several pod slices over DCN): create them as one queued resource; the same
# command runs on every worker of every slice (MEGASCALE_* variables are set by the runtime);
# set --config.mesh.shape so that the data axis spans the slices.
#
# Environment: LIBTPU_INIT_ARGS, passed to every worker's training process. Unset, the
# workers get MaxText's collective-overlap flags for FSDP training (listed in this script);
# set, its value replaces them (LIBTPU_INIT_ARGS= passes none).
set -euo pipefail

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }
name="" zone="" project="" repo="" branch=""
while getopts "n:z:p:r:b:h" opt; do
  case "$opt" in
    n) name=$OPTARG ;;
    z) zone=$OPTARG ;;
    p) project=$OPTARG ;;
    r) repo=$OPTARG ;;
    b) branch=$OPTARG ;;
    h) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ "${1:-}" == "--" ]] && shift
if [[ -z "$name" || -z "$zone" || $# -lt 2 ]]; then
  usage >&2
  exit 2
fi
config=$1 workdir=$2
shift 2

gcloud_args=(--zone "$zone")
[[ -n "$project" ]] && gcloud_args+=(--project "$project")
src_dir="\$HOME/superclip_jax"  # expanded on the workers

if [[ -n "$repo" ]]; then
  fetch="rm -rf $src_dir && git clone --depth 1 ${branch:+--branch $branch} $repo $src_dir"
else
  root=$(cd "$(dirname "$0")/.." && pwd)
  echo "tpu_pod.sh: copying $root to every worker of $name" >&2
  tar -C "$root" --exclude=.git --exclude='.venv*' --exclude=workdirs -czf /tmp/superclip_jax_src.tgz .
  gcloud compute tpus tpu-vm scp /tmp/superclip_jax_src.tgz "$name":/tmp/ --worker=all "${gcloud_args[@]}"
  fetch="rm -rf $src_dir && mkdir -p $src_dir && tar -C $src_dir -xzf /tmp/superclip_jax_src.tgz"
fi

# libtpu flags: MaxText's set for FSDP-style training on TPU (src/maxtext/configs/tpu/v5e/16b.sh
# and others; its benchmarks/xla_flags_library.py calls the last five "continuation fusion for
# all-gather"): every parameter is all-gathered layer by layer and its gradient reduced, and these
# flags let those collectives run asynchronously, fused with and overlapping the matmuls. The
# compile of configs/tiny.py for v5e:2x2 with them passes (--dry_run). libtpu 0.0.42.1 accepts
# each of them: tests/test_launchers.py creates a v5e topology with this list (libtpu exits
# with "Unknown command line flag" or "Illegal value" otherwise; skipped without libtpu).
tpu_flags=(
  --xla_tpu_enable_data_parallel_all_reduce_opt=true  # overlap the data-parallel gradient all-reduce
  --xla_tpu_data_parallel_opt_different_sized_ops=true  # ... also across tensors of different sizes
  --xla_tpu_enable_async_collective_fusion=true  # collectives as async fusions, beside compute
  --xla_tpu_enable_async_collective_fusion_fuse_all_gather=true  # FSDP's weight all-gathers too
  --xla_tpu_enable_async_collective_fusion_multiple_steps=true  # one collective may span several ops
  --xla_tpu_overlap_compute_collective_tc=true  # the TensorCore computes while they run
  --xla_enable_async_all_gather=true  # all-gathers as start/done pairs the scheduler can move
)
libtpu_args=${LIBTPU_INIT_ARGS-${tpu_flags[*]}}
run_env=""
if [[ -n "$libtpu_args" ]]; then
  run_env="LIBTPU_INIT_ARGS=$(printf '%q' "$libtpu_args") "
fi

overrides=""
for arg in "$@"; do overrides+=" $(printf '%q' "$arg")"; done
command="set -e; $fetch; cd $src_dir; python3 -m pip install -q -e '.[tpu]'; \
${run_env}python3 -m superclip_jax.main --config $(printf '%q' "$config") --workdir $(printf '%q' "$workdir")$overrides"

echo "tpu_pod.sh: starting on every worker of $name: $command" >&2
# --worker=all runs the command on every host at once; a worker that fails ends the ssh with
# its exit status, and JAX aborts the job's other processes (a peer died), so the failure shows.
set +e
gcloud compute tpus tpu-vm ssh "$name" --worker=all "${gcloud_args[@]}" --command "$command"
status=$?
set -e
if ((status != 0)); then
  echo "tpu_pod.sh: a worker of $name failed (status $status); its output is above, prefixed by its worker id" >&2
  exit "$status"
fi
