"""Input-pipeline benchmark: images/s per core for decode + augment, beside plain decoding.

  python -m superclip_jax.data.bench_input --shards DIR            # shards you built
  python -m superclip_jax.data.bench_input --synthesize 2000       # makes shards of ~256-px JPEGs first

All figures come from one process on one core, in the same run and over the same JPEG
bytes, so their ratios are meaningful on a shared machine. Stages:
  decode          simplejpeg to full-size RGB (what any pipeline pays at least)
  decode_pil      PIL decode + convert, for comparison
  openclip_pil    OpenCLIP's training transform on PIL: decode, RandomResizedCrop(scale 0.9-1,
                  bicubic) to 224, to float and CLIP-normalise (CHW float32, as its loader yields)
  decode_augment  decode + RandomResizedCrop(scale 0.9-1) + bicubic resize to 224, uint8
  pipeline        the Grain pipeline (record parse, decode, crop, token padding, batching)
Then the whole pipeline of one training process as the trainer runs it, at 224 px, with 1, 2
and all cores' worth of Grain worker processes (--workers): images/s per training process.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time

import numpy as np
from absl import flags


def synthesize_shards(out_dir: str, count: int, side: int = 256, seed: int = 0) -> str:
  """Shards of photo-like JPEGs (smooth structure + texture + noise) with short captions."""
  from PIL import Image

  from superclip_jax.data import build

  rng = np.random.default_rng(seed)
  folder = os.path.join(out_dir, 'images')
  os.makedirs(folder, exist_ok=True)
  rows = []
  for i in range(count):
    h = side
    w = int(side * rng.uniform(1.0, 1.33))
    y, x = np.mgrid[0:h, 0:w] / side
    base = np.stack([np.sin(x * rng.uniform(2, 9) + c) * np.cos(y * rng.uniform(2, 9) - c) for c in range(3)], -1)
    img = (base * 70 + 128 + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
    name = f'{i:06d}.jpg'
    Image.fromarray(img).save(os.path.join(folder, name), quality=90)
    rows.append({'image': name, 'caption': f'a textured picture number {i}'})
  with open(os.path.join(folder, 'captions.jsonl'), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows)
  shards = os.path.join(out_dir, 'shards')
  build.build(f'folder:{folder}', shards, records_per_shard=1000, workers=1, progress=False)
  return shards


def _rate(fn, items, min_seconds: float) -> float:
  n, start = 0, time.perf_counter()
  while True:
    for x in items:
      fn(x)
      n += 1
    elapsed = time.perf_counter() - start
    if elapsed >= min_seconds:
      return n / elapsed


def openclip_style(jpeg: bytes, size: int, rng: np.random.Generator) -> np.ndarray:
  """OpenCLIP's training image transform done with PIL (torchvision's RandomResizedCrop, ToTensor, Normalize)."""
  from PIL import Image

  from superclip_jax.data import transforms
  from superclip_jax.models.vit import CLIP_MEAN, CLIP_STD

  img = Image.open(io.BytesIO(jpeg)).convert('RGB')
  top, left, h, w = transforms.random_crop_box(img.height, img.width, rng)
  img = img.resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h))
  return ((np.asarray(img, np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)


def pipeline_rate(shards: str, size: int, workers: int, min_seconds: float, batch: int = 64) -> float:
  """End-to-end images/s of one training process's pipeline with `workers` Grain worker processes."""
  from superclip_jax.data import pipeline

  it = pipeline.ShardBatches(
    pipeline.PipelineConfig(
      shard_dirs=[shards],
      global_batch_size=batch,
      rows=((0, batch),),
      image_size=size,
      context_length=77,
      seed=0,
      workers=workers,
      prefetch=2,
    )
  )
  try:
    for _ in range(max(workers, 1)):  # the workers' start-up and first batches are not the steady rate
      next(it)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
      next(it)
      n += batch
    return n / (time.perf_counter() - start)
  finally:
    it.close()


def default_worker_counts() -> list[int]:
  """1, 2 and every core of this process (data.workers='auto' uses all but one)."""
  from superclip_jax.data import pipeline

  return sorted({1, 2, pipeline.host_cores()})


def run(
  shards: str, size: int = 224, limit: int = 500, min_seconds: float = 3.0, worker_counts: tuple[int, ...] = ()
) -> dict[str, float]:
  """Measure each stage (images/s per core) and the whole pipeline with worker processes (images/s)."""
  import grain
  from PIL import Image

  from superclip_jax.data import pipeline, records, transforms

  manifest = records.read_manifest(shards)
  source = grain.sources.ArrayRecordDataSource([s['path'] for s in manifest['shards']])
  jpegs = [records.decode_record(source[i])['image'] for i in range(min(limit, len(source)))]
  rng = np.random.default_rng(0)
  shapes = [transforms.decode_jpeg(j).shape for j in jpegs[:50]]
  results = {
    'decode': _rate(lambda j: transforms.decode_jpeg(j), jpegs, min_seconds),
    'decode_pil': _rate(lambda j: np.asarray(Image.open(io.BytesIO(j)).convert('RGB')), jpegs, min_seconds),
    'openclip_pil': _rate(lambda j: openclip_style(j, size, rng), jpegs, min_seconds),
    'decode_augment': _rate(
      lambda j: transforms.random_resized_crop(transforms.decode_jpeg(j, min_side=size), size, rng), jpegs, min_seconds
    ),
  }
  batch = 64
  # One decoding thread: the figure is per core (taskset the process to one core to be sure).
  it = pipeline.ShardBatches(
    pipeline.PipelineConfig(
      shard_dirs=[shards], global_batch_size=batch, rows=((0, batch),), image_size=size, context_length=77, seed=0, threads=1
    )
  )
  next(it)
  n, start = 0, time.perf_counter()
  while time.perf_counter() - start < min_seconds:
    next(it)
    n += batch
  results['pipeline'] = n / (time.perf_counter() - start)
  results['pipeline_over_openclip_pil'] = results['pipeline'] / results['openclip_pil']
  it.close()
  for workers in worker_counts:
    results[f'pipeline_workers_{workers}'] = pipeline_rate(shards, size, workers, min_seconds)
  results['mean_source_side'] = float(np.mean([min(s[:2]) for s in shapes]))
  return results


def _define_flags(v: flags.FlagValues) -> None:
  flags.DEFINE_string('shards', '', 'Shards to read (default: --synthesize them).', flag_values=v)
  flags.DEFINE_integer('synthesize', 0, 'Make shards of N ~256-px JPEGs first (default 1000).', flag_values=v)
  flags.DEFINE_integer('size', 224, 'Output image side in pixels.', flag_values=v)
  flags.DEFINE_float('seconds', 3.0, 'Minimum time per stage.', flag_values=v)
  flags.DEFINE_list(
    'workers', [], 'Worker counts for the end-to-end rate (default: 1, 2 and every core of this process).', flag_values=v
  )


def _bench(v: flags.FlagValues, _args: list[str]) -> None:
  os.environ.setdefault('OMP_NUM_THREADS', '1')
  from superclip_jax.errors import UserError, user_errors

  with user_errors('superclip_jax.data.bench_input'), tempfile.TemporaryDirectory() as tmp:
    shards = v.shards or synthesize_shards(tmp, v.synthesize or 1000)
    try:
      counts = tuple(int(w) for w in v.workers) or tuple(default_worker_counts())
    except ValueError:
      raise UserError(f'--workers={",".join(v.workers)}: worker counts are whole numbers, such as 1,2,8') from None
    r = run(shards, v.size, min_seconds=v.seconds, worker_counts=counts)
  print(f'source images: shorter side {r["mean_source_side"]:.0f} px; output {v.size} px; one process, one core')
  for stage in ('decode', 'decode_pil', 'openclip_pil', 'decode_augment', 'pipeline'):
    print(f'{stage:15s} {r[stage]:8.0f} images/s per core   ({r[stage] / r["decode"]:.2f} x decode)')
  print(f'pipeline / OpenCLIP-style PIL: {r["pipeline_over_openclip_pil"]:.2f}')
  for key in sorted((k for k in r if k.startswith('pipeline_workers_')), key=lambda k: int(k.rsplit('_', 1)[1])):
    print(f'pipeline with {key.rsplit("_", 1)[1]} worker process(es): {r[key]:8.0f} images/s per training process')
  print(json.dumps({k: round(x, 1) for k, x in r.items()}))


def main(argv: list[str] | None = None):
  """`python -m superclip_jax.data.bench_input` (argv None), or its flags as a list, in this process."""
  from superclip_jax import commands

  commands.command('superclip_jax.data.bench_input', _define_flags, _bench, argv)


if __name__ == '__main__':
  main()
