#!/usr/bin/env bash
# The train-step benchmark on one GPU: ViT-B/16 SuperCLIP at 224 px in bf16, batches 256 and 512.
#
#   launch/bench_gpu.sh OUT_DIR [CONFIG] [--config.key=value ...]
#
# Runs `python -m superclip_jax.bench` once per batch size (SuperCLIP interleaved with the
# same step without the token classifier), keeps each run's log in OUT_DIR/bench_bB.log and
# its JSON report in OUT_DIR/bench_bB.json, then prints one summary line per batch.
# CONFIG defaults to configs/superclip_b16.py (no data needed: the batch is synthetic).
#
# Environment: BATCHES (default "256 512"), IMAGE_SIZE (224), DTYPE (bfloat16), REMAT (none),
# STEPS (20), PYTHON (python), ALLOW_CPU=1 to run without a GPU (a smoke test of the script).
set -euo pipefail

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
esac
if [[ $# -lt 1 ]]; then
  usage >&2
  exit 2
fi

out=$1
shift
config=configs/superclip_b16.py
if [[ $# -gt 0 && "$1" != --* ]]; then
  config=$1
  shift
fi
python=${PYTHON:-python}
read -ra batches <<<"${BATCHES:-256 512}"
mkdir -p "$out"

backend=$("$python" -c 'import jax; print(jax.default_backend())')
if [[ "$backend" != gpu && "${ALLOW_CPU:-0}" != 1 ]]; then
  echo "bench_gpu.sh: JAX sees no GPU (default backend: $backend); install jax[cuda12] (pip install -e '.[gpu]')" >&2
  exit 2
fi

for batch in "${batches[@]}"; do
  log="$out/bench_b$batch.log"
  echo "bench_gpu.sh: batch $batch -> $log" >&2
  "$python" -m superclip_jax.bench --config "$config" --batch "$batch" --image_size "${IMAGE_SIZE:-224}" \
    --steps "${STEPS:-20}" --config.model.compute_dtype="${DTYPE:-bfloat16}" --config.model.remat="${REMAT:-none}" \
    "$@" 2>&1 | tee "$log"
  # The benchmark's last line is its JSON report.
  tail -n 1 "$log" >"$out/bench_b$batch.json"
done

"$python" - "$out" "${batches[@]}" <<'EOF'
import json
import sys

out, batches = sys.argv[1], sys.argv[2:]
for b in batches:
  with open(f'{out}/bench_b{b}.json') as f:
    r = json.load(f)
  ratio = r['superclip_over_clip_step_ratio']
  print(f"batch {b}: {r['step_time_s'] * 1e3:.1f} ms/step, {r['images_per_sec']:.0f} images/s, "
        f"MFU {100 * r['mfu']:.1f}% ({r['peak_source']}), "
        f"SuperCLIP/CLIP {'not measured' if ratio is None else f'{ratio:.3f}'}, {r['devices']} x {r['device_kind']}")
EOF
