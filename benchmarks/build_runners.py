"""The shard builder's two runners on one corpus: the local process pool against Beam's DirectRunner.

  python benchmarks/build_runners.py --images 3000 --tars 12 --workers 2 [--size 256] [--repeats 1]

Generates WebDataset tars of JPEGs (a gradient plus noise blocks, `--size` pixels square,
captions of a dozen words, one key in every tar repeated from the tar before, so the
duplicate check has work) in a temporary folder, then builds them with `--runner local`
and `--runner beam` with the same worker count, alternating when --repeats > 1 so the
shared machine's load falls on both alike. Each time is the whole build() call: the key
listing pass, the shards, the manifest. Prints samples/s for each (best of the repeats)
and their ratio, then one JSON line. Both outputs must be identical or it fails.
The beam runner needs the beam extra: pip install -e '.[beam]'.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
import time

import numpy as np
from absl import flags

_WORDS = ('red', 'green', 'blue', 'square', 'circle', 'small', 'large', 'photo', 'of', 'a', 'near', 'the', 'sky')


def _define_flags(v: flags.FlagValues) -> None:
  flags.DEFINE_integer('images', 3000, 'images in the corpus', flag_values=v)
  flags.DEFINE_integer('tars', 12, 'tars the corpus is split into', flag_values=v)
  flags.DEFINE_integer('workers', 2, 'processes (local) and DirectRunner threads (beam)', flag_values=v)
  flags.DEFINE_integer('size', 256, 'image side in pixels', flag_values=v)
  flags.DEFINE_integer('repeats', 1, 'builds per runner; the best time counts', flag_values=v)


def _jpeg(rng: np.random.Generator, size: int) -> bytes:
  from PIL import Image

  y, x = np.mgrid[0:size, 0:size]
  img = np.stack([x * 255 // size, y * 255 // size, np.full_like(x, rng.integers(256))], -1).astype(np.uint8)
  for _ in range(4):
    y0, x0 = rng.integers(0, size * 3 // 4, 2)
    img[y0 : y0 + size // 4, x0 : x0 + size // 4] = rng.integers(0, 256, (size // 4, size // 4, 3))
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format='JPEG', quality=90)
  return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def write_corpus(directory: str, images: int, tars: int, size: int) -> str:
  """The tars; returns the --source spec. Tar t > 0 starts with the last key of tar t - 1 again."""
  rng = np.random.default_rng(0)
  per_tar = -(-images // tars)
  for t in range(tars):
    keys = [f'{i:08d}' for i in range(t * per_tar, min((t + 1) * per_tar, images))]
    if t:
      keys.insert(0, f'{t * per_tar - 1:08d}')
    with tarfile.open(os.path.join(directory, f'{t:05d}.tar'), 'w') as tar:
      for key in keys:
        _add(tar, f'{key}.jpg', _jpeg(rng, size))
        _add(tar, f'{key}.txt', ' '.join(rng.choice(_WORDS, 12)).encode())
  return f'webdataset:{directory}/{{00000..{tars - 1:05d}}}.tar'


def _outputs(out: str) -> dict[str, bytes]:
  return {
    p: open(os.path.join(out, p), 'rb').read() for p in sorted(os.listdir(out)) if p.endswith(('.array_record', '.npy', '.json'))
  }


def _bench(args: flags.FlagValues, _rest: list[str]) -> None:
  from superclip_jax.data import build

  with tempfile.TemporaryDirectory(prefix='superclip_build_bench_') as tmp:
    os.makedirs(os.path.join(tmp, 'in'))
    t0 = time.perf_counter()
    source = write_corpus(os.path.join(tmp, 'in'), args.images, args.tars, args.size)
    print(f'corpus: {args.images} images of {args.size} px in {args.tars} tars, {time.perf_counter() - t0:.1f} s')
    build.build(source, os.path.join(tmp, 'warm'), workers=1, progress=False)  # tokenizer and page cache warm
    seconds: dict[str, list[float]] = {'local': [], 'beam': []}
    manifests = {}
    for r in range(args.repeats):
      for runner in seconds:
        out = os.path.join(tmp, f'{runner}-{r}')
        t0 = time.perf_counter()
        manifests[runner] = build.build(source, out, workers=args.workers, progress=False, runner=runner)
        seconds[runner].append(time.perf_counter() - t0)
    if manifests['local'] != manifests['beam'] or _outputs(os.path.join(tmp, 'local-0')) != _outputs(os.path.join(tmp, 'beam-0')):
      raise SystemExit('the runners built different shards')
  samples = manifests['local']['num_records']
  rate = {runner: samples / min(s) for runner, s in seconds.items()}
  for runner, s in seconds.items():
    print(f'{runner:5s}: {rate[runner]:7.1f} samples/s (best of {len(s)}: {min(s):.2f} s; all {[round(x, 2) for x in s]})')
  print(f'beam / local: {rate["beam"] / rate["local"]:.2f}')
  print(
    json.dumps(
      {
        'benchmark': 'build_runners',
        'images': args.images,
        'tars': args.tars,
        'size': args.size,
        'workers': args.workers,
        'samples': samples,
        'skipped': manifests['local']['skipped'],
        'local_samples_per_s': round(rate['local'], 1),
        'beam_samples_per_s': round(rate['beam'], 1),
        'beam_over_local': round(rate['beam'] / rate['local'], 3),
        'local_s': [round(x, 3) for x in seconds['local']],
        'beam_s': [round(x, 3) for x in seconds['beam']],
      }
    )
  )


def main(argv: list[str] | None = None) -> None:
  """`python benchmarks/build_runners.py` (argv None), or its flags as a list, in this process."""
  from superclip_jax import commands

  commands.command('build_runners.py', _define_flags, _bench, argv)


if __name__ == '__main__':
  main()
