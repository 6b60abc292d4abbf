"""Generated image-text inputs for the data tests: real JPEG / PNG / WebP encodings, and a bad-input corpus."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
from PIL import Image


def picture(seed: int, size=(48, 40)) -> np.ndarray:
  """A deterministic RGB picture with structure (gradients + a block), uint8 (H, W, 3)."""
  rng = np.random.default_rng(seed)
  h, w = size[1], size[0]
  y, x = np.mgrid[0:h, 0:w]
  img = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), np.full_like(x, rng.integers(256))], -1)
  y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
  img[y0 : y0 + h // 3, x0 : x0 + w // 3] = rng.integers(0, 256, 3)
  return img.astype(np.uint8)


def encode(img: Image.Image | np.ndarray, fmt: str, **kw) -> bytes:
  if isinstance(img, np.ndarray):
    img = Image.fromarray(img)
  buf = io.BytesIO()
  img.save(buf, format=fmt, **kw)
  return buf.getvalue()


def good_members(n: int, start: int = 0, fmt_cycle=('JPEG', 'PNG', 'WEBP')) -> list[tuple[str, bytes]]:
  """(name, bytes) tar members for n well-formed samples: key.ext + key.txt + key.json."""
  ext = {'JPEG': 'jpg', 'PNG': 'png', 'WEBP': 'webp'}
  members = []
  for i in range(start, start + n):
    fmt = fmt_cycle[i % len(fmt_cycle)]
    key = f'{i:06d}'
    members.append((f'{key}.{ext[fmt]}', encode(picture(i), fmt)))
    members.append((f'{key}.txt', f'a picture number {i} with a square'.encode()))
    members.append((f'{key}.json', json.dumps({'key': key, 'label': i % 3}).encode()))
  return members


def write_tar(path: str, members: list[tuple[str, bytes]]) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tarfile.open(path, 'w') as tar:
    for name, data in members:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return path


def built_records(out: str) -> list[dict]:
  """Every record of a built shard folder, decoded, in the manifest's shard order."""
  import grain

  from superclip_jax.data import records

  source = grain.sources.ArrayRecordDataSource([s['path'] for s in records.read_manifest(str(out))['shards']])
  return [records.decode_record(source[i]) for i in range(len(source))]


def bad_members() -> tuple[list[tuple[str, bytes]], dict[str, int], dict[str, int]]:
  """A tar's members with every kind of bad input; returns (members, expected skipped, expected repaired)."""
  good_jpeg = encode(picture(1), 'JPEG')
  rgba = np.concatenate([picture(2), np.full((40, 48, 1), 128, np.uint8)], -1)
  members = [
    ('b00.jpg', good_jpeg[: len(good_jpeg) // 2]),
    ('b00.txt', b'truncated jpeg'),
    ('b01.jpg', b''),
    ('b01.txt', b'zero-byte image'),
    ('b02.jpg', encode(Image.fromarray(picture(3)).convert('CMYK'), 'JPEG')),
    ('b02.txt', b'cmyk jpeg'),
    ('b03.png', encode(Image.fromarray(picture(4)).convert('L'), 'PNG')),
    ('b03.txt', b'grayscale png'),
    ('b04.png', encode(Image.fromarray((picture(5)[..., 0].astype(np.uint16) * 257)), 'PNG')),
    ('b04.txt', b'sixteen-bit png'),
    ('b05.png', encode(Image.fromarray(picture(6)).convert('P'), 'PNG')),
    ('b05.txt', b'palette png'),
    ('b06.png', encode(Image.fromarray(rgba, 'RGBA'), 'PNG')),
    ('b06.txt', b'alpha png'),
    ('b07.png', encode(Image.new('L', (20000, 20000)), 'PNG', optimize=True)),
    ('b07.txt', b'decompression bomb'),
    ('b08.jpg', good_jpeg),
    ('b08.txt', b'caf\xe9 not utf-8'),
    ('b09.jpg', good_jpeg),
    ('b09.txt', b''),
    ('b10.jpg', good_jpeg),
    ('b10.txt', b'   \n\t '),
    ('b11.jpg', good_jpeg),  # no caption
    ('b12.txt', b'a caption without its image'),
    ('b13.jpg', good_jpeg),
    ('b13.txt', b'first of a duplicated key'),
    ('b14.jpg', good_jpeg),
    ('b14.txt', b'between'),
    ('b13.jpg', good_jpeg),
    ('b13.txt', b'second of a duplicated key'),
    ('../evil.jpg', good_jpeg),
    ('../evil.txt', b'path traversal'),
    ('b15.jpg', encode(Image.fromarray(picture(7)).convert('L'), 'JPEG')),
    ('b15.txt', b'grey jpeg'),
  ]
  skipped = {
    'corrupt_image': 1,
    'empty_image': 1,
    'decompression_bomb': 1,
    'caption_not_utf8': 1,
    'empty_caption': 2,
    'missing_caption': 1,
    'missing_image': 1,
    'duplicate_key': 1,
    'unsafe_path': 2,
  }
  repaired = {'converted_cmyk': 1, 'converted_grayscale': 2, 'converted_16bit': 1, 'converted_palette': 1, 'converted_alpha': 1}
  return members, skipped, repaired
