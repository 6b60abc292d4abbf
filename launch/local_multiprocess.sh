#!/usr/bin/env bash
# N processes of one JAX job on this machine's CPUs: a real multi-host run, without hosts.
#
#   launch/local_multiprocess.sh N CONFIG WORKDIR [--config.key=value ...]
#
# Each process gets DEVICES_PER_PROCESS fake CPU devices (default 4) and joins the job
# through jax.distributed on 127.0.0.1:PORT (PORT: a free port unless given). Logs go to
# LOG_DIR (default WORKDIR/logs, or a temporary folder for a bucket workdir), one file per
# process. SIGTERM or Ctrl-C is passed on to every process (they checkpoint and exit with
# status 143, checkpoint.preempt_exit_code, and so does this script: run it again to resume).
# If a process fails, the others are stopped, the failing one is named with its exit
# status and the end of its log, and the script exits with that status.
#
# Environment: DEVICES_PER_PROCESS, PORT, LOG_DIR, PYTHON (default: python), INIT_TIMEOUT
# (seconds for every process to join, default 120), PREEMPT_EXIT_CODE (default 143: the
# status a process exits with after a preemption's checkpoint, not a failure).
set -euo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
esac
if [[ $# -lt 3 ]]; then
  usage >&2
  exit 2
fi

num=$1 config=$2 workdir=$3
shift 3
[[ "$num" =~ ^[1-9][0-9]*$ ]] || { echo "local_multiprocess.sh: N must be a positive integer, got '$num'" >&2; exit 2; }
python=${PYTHON:-python}
devices=${DEVICES_PER_PROCESS:-4}
timeout=${INIT_TIMEOUT:-120}
preempt_status=${PREEMPT_EXIT_CODE:-143}
port=${PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
if [[ "$workdir" == *://* ]]; then
  log_dir=${LOG_DIR:-$(mktemp -d /tmp/superclip_logs.XXXXXX)}
else
  log_dir=${LOG_DIR:-$workdir/logs}
fi
mkdir -p "$log_dir"

pids=()
running=()
stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}
trap 'echo "local_multiprocess.sh: passing the signal on to ${#pids[@]} processes" >&2; stop_all' TERM INT

for ((i = 0; i < num; i++)); do
  # PJRT_NPROC: XLA's CPU thread pool, 4 threads per device (its default, one per device on a
  # small machine, can deadlock when a device runs two collectives at once; tests/conftest.py).
  PJRT_NPROC=${PJRT_NPROC:-$((4 * devices))} \
  XLA_FLAGS="--xla_force_host_platform_device_count=$devices ${XLA_FLAGS:-}" JAX_PLATFORMS=cpu \
    "$python" -m superclip_jax.main --config "$config" --workdir "$workdir" \
    --coordinator_address="127.0.0.1:$port" --num_processes="$num" --process_id="$i" \
    --initialization_timeout="$timeout" "$@" >"$log_dir/process_$i.log" 2>&1 &
  pids+=("$!")
  running+=("$!")
done
echo "local_multiprocess.sh: $num processes x $devices CPU devices, coordinator 127.0.0.1:$port, logs in $log_dir" >&2

# Wait for every process; the first failure stops the rest.
status=0
failed=""
preempted=0
while ((${#running[@]} > 0)); do
  done_pid=""
  set +e
  wait -n -p done_pid "${running[@]}"
  rc=$?
  set -e
  [[ -z "${done_pid:-}" ]] && continue  # a trapped signal interrupted the wait: keep waiting
  still=()
  for pid in "${running[@]}"; do
    if [[ "$pid" != "$done_pid" ]]; then still+=("$pid"); fi
  done
  running=("${still[@]}")
  if ((rc == preempt_status)); then
    preempted=1
  elif ((rc != 0)) && [[ -z "$failed" ]]; then
    for ((i = 0; i < num; i++)); do
      if [[ "${pids[$i]}" == "$done_pid" ]]; then failed=$i; fi
    done
    status=$rc
    stop_all
  fi
done

if [[ -n "$failed" ]]; then
  why="exit status $status"
  if ((status == 134)); then
    why="SIGABRT (status 134): JAX aborts every process when a peer is missing or dies (after --initialization_timeout or the heartbeat timeout)"
  fi
  echo "local_multiprocess.sh: process $failed of $num failed: $why. End of $log_dir/process_$failed.log:" >&2
  tail -n 15 "$log_dir/process_$failed.log" >&2
  exit "$status"
fi
if ((preempted)); then
  echo "local_multiprocess.sh: preempted: every process saved its checkpoint; run the same command to resume" >&2
  exit "$preempt_status"
fi
echo "local_multiprocess.sh: all $num processes finished" >&2
