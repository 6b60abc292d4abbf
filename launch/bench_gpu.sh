#!/usr/bin/env bash
# The train-step benchmark on one GPU: ViT-B/16 SuperCLIP at 224 px in bf16, the recipe's step.
#
#   launch/bench_gpu.sh OUT_DIR [CONFIG] [--config.key=value ...]
#
# Runs `python -m superclip_jax.bench_step` once per batch size (SuperCLIP interleaved with the
# same step without the token classifier), keeps each run's log in OUT_DIR/bench_bB.log and
# its JSON report in OUT_DIR/bench_bB.json, then prints one summary line per batch.
# CONFIG defaults to configs/superclip_b16.py (no data needed: the batch is synthetic).
# The step is the recipe's: the config's model.remat ('auto': 'dots' on GPUs) unless REMAT
# is given, and JAX's allocator takes XLA_PYTHON_CLIENT_MEM_FRACTION of the GPU, as in training.
#
# Environment: BATCHES (default "512 1024 2048"), IMAGE_SIZE (224), DTYPE (bfloat16), REMAT
# (none|full|dots|elementwise; default: the config's), XLA_PYTHON_CLIENT_MEM_FRACTION (0.92),
# STEPS (20), PYTHON (python), ALLOW_CPU=1 to run without a GPU (a smoke test of the script).
#
# The default batches fit one H200 (141 GB, 129.7 GiB usable at 0.92) with the recipe's remat,
# by the deviceless compile `JAX_PLATFORMS=cpu python -m superclip_jax.main --config
# configs/superclip_b16.py --dry_run --topology h200:1 --config.data.global_batch_size=B`
# (jaxlib 0.10.2, remat dots, cuDNN attention), per device: 256 -> 14.1 GiB, 512 -> 25.7 GiB,
# 1024 -> 49.1 GiB, 2048 -> 95.7 GiB. 2048 is the recipe's batch per GPU on one 8-GPU node
# (16,384 / 8). The interleaved CLIP step (94.9 GiB at 2048) keeps its state, about 2 GiB,
# beside the SuperCLIP one: under 98 GiB either way.
# On an 80 GB H100 (72.8 GiB usable; h100:1 at 1024 -> 44.5 GiB) run BATCHES="512 1024".
set -euo pipefail

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }
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
read -ra batches <<<"${BATCHES:-512 1024 2048}"
mkdir -p "$out"
# The recipe's remat unless REMAT asks for another; training's share of the GPU's memory.
step_args=(--config.model.compute_dtype="${DTYPE:-bfloat16}")
if [[ -n "${REMAT:-}" ]]; then
  step_args+=(--config.model.remat="$REMAT")
fi
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}

backend=$("$python" -c 'import jax; print(jax.default_backend())')
if [[ "$backend" != gpu && "${ALLOW_CPU:-0}" != 1 ]]; then
  echo "bench_gpu.sh: JAX sees no GPU (default backend: $backend); install jax[cuda12] (pip install -e '.[gpu]')" >&2
  exit 2
fi

for batch in "${batches[@]}"; do
  log="$out/bench_b$batch.log"
  echo "bench_gpu.sh: batch $batch -> $log" >&2
  "$python" -m superclip_jax.bench_step --config "$config" --batch "$batch" --image_size "${IMAGE_SIZE:-224}" \
    --steps "${STEPS:-20}" "${step_args[@]}" "$@" 2>&1 | tee "$log"
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
  mfu = 'MFU n/a' if r['mfu'] is None else f"MFU {100 * r['mfu']:.1f}%"  # None: a device kind without a known peak
  print(f"batch {b}: {r['step_time_s'] * 1e3:.1f} ms/step, {r['images_per_sec']:.0f} images/s, "
        f"{mfu} ({r['peak_source']}), remat {r['remat']}, "
        f"SuperCLIP/CLIP {'not measured' if ratio is None else f'{ratio:.3f}'}, {r['devices']} x {r['device_kind']}")
EOF
