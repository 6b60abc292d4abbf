"""TFDS datasets as builder items, read through `tfds.data_source` (ArrayRecord): no TensorFlow.

  --source tfds:NAME[:SPLIT]   (split 'train' by default; --tfds_data_dir DIR)

The dataset must be prepared in ArrayRecord format (`download_and_prepare(file_format=
'array_record')`, or `tfds build --file_format=array_record`); TFRecord-only datasets need
TensorFlow to read and are refused with that advice. Images come as their stored bytes
(JPEGs kept byte for byte). A `captions` sequence (COCO) gives one record per caption,
keyed 'IMAGE#k' like the Karpathy sources; otherwise `caption`, or the template filled
with the class name. Keys are the example's file name when it has one.
"""

from __future__ import annotations

import io
from typing import Any, Iterator

from superclip_jax.errors import UserError

_BATCH = 64  # examples per random-access read
_KEY_FEATURES = ('file_name', 'image/filename', 'filename', 'id', 'image/id')


def _tfds():
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError('tfds: sources need `pip install tensorflow-datasets` (TensorFlow is not needed)') from e
  return tfds


def open_source(name: str, split: str, data_dir: str | None):
  """tfds.data_source(name, split) with images left encoded; a UserError if it is not readable so."""
  tfds = _tfds()
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False, decoders={'image': tfds.decode.SkipDecoding()})
  except Exception as e:  # TFDS raises assorted types for "not found" / "wrong format"
    raise UserError(
      f'tfds:{name}:{split}: cannot open it with tfds.data_source ({str(e).splitlines()[0][:300]}); '
      "prepare it with file_format='array_record' (tfds build --file_format=array_record)"
    ) from None


def class_names(features) -> list[str]:
  """Names of the 'label' feature ([] if none); ImageNet's WNIDs become OpenAI's class names."""
  if 'label' not in features or not hasattr(features['label'], 'names'):
    return []
  names = list(features['label'].names)
  from superclip_jax.data import eval_sources

  # imagenet2012, imagenet_v2, imagenet_a...: labels are the sorted WNIDs, i.e. OpenAI's class order.
  if names == list(eval_sources.imagenet_wnids()):
    return eval_sources.imagenet_classnames()
  return names


def plan(name: str, split: str, data_dir: str | None) -> tuple[int, list[str]]:
  """(number of examples, class names of its 'label' feature or [])."""
  source = open_source(name, split, data_dir)
  return len(source), class_names(source.dataset_info.features)


def _text(value) -> str | bytes:
  return value if isinstance(value, (str, bytes)) else str(value)


def _image_bytes(image) -> bytes:
  if isinstance(image, bytes):
    return image
  import numpy as np
  from PIL import Image  # an unencoded (Tensor) image: PNG, converted to JPEG by the builder

  buf = io.BytesIO()
  Image.fromarray(np.asarray(image).squeeze()).save(buf, format='PNG')
  return buf.getvalue()


def read(name: str, split: str, start: int, stop: int, data_dir: str | None, template: str) -> Iterator[dict[str, Any]]:
  """Items of examples [start, stop) of a prepared TFDS split."""
  source = open_source(name, split, data_dir)
  label_names = class_names(source.dataset_info.features)
  for lo in range(start, stop, _BATCH):
    indices = list(range(lo, min(lo + _BATCH, stop)))
    for i, ex in zip(indices, source.__getitems__(indices)):
      yield from _items_of(ex, f'{name}/{split}/{i}', label_names, template)


def _items_of(ex: dict[str, Any], default_key: str, label_names: list[str], template: str):
  key = next((_text(ex[k]) for k in _KEY_FEATURES if k in ex), default_key)
  key = key.decode('utf-8', 'replace') if isinstance(key, bytes) else key
  label = int(ex['label']) if 'label' in ex and not isinstance(ex['label'], dict) else -1
  image = _image_bytes(ex['image'])
  captions = ex.get('captions')
  if isinstance(captions, dict) and 'text' in captions:
    if not len(captions['text']):
      yield {'key': key, 'skip': 'missing_caption'}
    for k, text in enumerate(captions['text']):
      yield {'key': f'{key}#{k}', 'image': image, 'caption': text, 'label': label}
    return
  caption = ex.get('caption')
  if caption is None and label_names and label >= 0:
    caption = template.format(label_names[label].replace('_', ' '))
  yield {'key': key, 'image': image, 'caption': caption, 'label': label}
