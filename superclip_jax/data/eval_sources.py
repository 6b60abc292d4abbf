"""Readers for evaluation benchmarks in their published layouts; items as in sources.py.

  imagenet:DIR         ILSVRC2012 val: flat ILSVRC2012_val_*.JPEG + devkit ground truth
                       (meta.mat) or Kaggle's LOC_val_solution.csv; or val/nXXXXXXXX/*.JPEG
  imagenet_v2:DIR      ImageNetV2: folders 0..999 (class indices) of jpegs
  coco_karpathy:IMAGES_DIR,dataset_coco.json[:SPLIT]        Karpathy split, test by default
  flickr_karpathy:IMAGES_DIR,dataset_flickr30k.json[:SPLIT]

ImageNet labels follow OpenAI's class-name order, which is the sorted-WNID order (the
1,000 WNIDs ship in imagenet_wnids.txt); captions are the template filled with OpenAI's
curated names (imagenet_zero_shot.json). Karpathy captions become one record each, keyed
'FILENAME#k', so the retrieval evaluator groups the captions of one image by the part before '#'.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
from typing import Any

from superclip_jax.errors import UserError

_VAL_IMAGE = re.compile(r'ILSVRC2012_val_(\d{8})\.JPEG$', re.IGNORECASE)
_WNID = re.compile(r'n\d{8}$')
_DEVKIT_TRUTH = os.path.join('ILSVRC2012_devkit_t12', 'data', 'ILSVRC2012_validation_ground_truth.txt')
_DEVKIT_META = os.path.join('ILSVRC2012_devkit_t12', 'data', 'meta.mat')
_KAGGLE_TRUTH = 'LOC_val_solution.csv'
_KARPATHY_SPLITS = ('train', 'restval', 'val', 'test')
_JPEG_EXTENSIONS = ('.jpeg', '.jpg', '.png')


@functools.lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
  """The 1,000 ImageNet-1k WNIDs in sorted order (index = label = OpenAI class index)."""
  with open(os.path.join(os.path.dirname(__file__), 'imagenet_wnids.txt')) as f:
    wnids = tuple(line.strip() for line in f if line.strip())
  assert len(wnids) == 1000 and list(wnids) == sorted(wnids), 'imagenet_wnids.txt is damaged'
  return wnids


@functools.lru_cache(maxsize=1)
def _zero_shot_metadata() -> dict:
  """imagenet_zero_shot.json: OpenAI's class names and prompt templates (its `_source` says where from)."""
  with open(os.path.join(os.path.dirname(__file__), 'imagenet_zero_shot.json'), encoding='utf-8') as f:
    meta = json.load(f)
  assert len(meta['imagenet_classnames']) == 1000, 'imagenet_zero_shot.json is damaged'
  return meta


def imagenet_classnames() -> list[str]:
  """OpenAI's 1,000 curated class names, in label order."""
  return list(_zero_shot_metadata()['imagenet_classnames'])


def imagenet_templates() -> list[str]:
  """OpenAI's 80 ImageNet prompt templates, as format strings with one '{}'."""
  return list(_zero_shot_metadata()['openai_imagenet_templates'])


def _image_files(directory: str) -> list[str]:
  return sorted(f for f in os.listdir(directory) if f.lower().endswith(_JPEG_EXTENSIONS))


def _find_upwards(directory: str, relative: str, levels: int = 4) -> str | None:
  """relative under directory or one of its parents (the devkit usually sits beside val/)."""
  here = os.path.abspath(directory)
  for _ in range(levels + 1):
    candidate = os.path.join(here, relative)
    if os.path.exists(candidate):
      return candidate
    here = os.path.dirname(here)
  return None


def _devkit_labels(truth_path: str, meta_path: str) -> dict[int, str]:
  """Validation image number -> WNID from the devkit's ground truth (ILSVRC2012_IDs) and meta.mat."""
  import scipy.io

  synsets = scipy.io.loadmat(meta_path, squeeze_me=True)['synsets']
  id_to_wnid = {int(s['ILSVRC2012_ID']): str(s['WNID']) for s in synsets}
  with open(truth_path) as f:
    ids = [int(line) for line in f if line.strip()]
  try:
    return {n: id_to_wnid[i] for n, i in enumerate(ids, 1)}
  except KeyError as e:
    raise UserError(f'{truth_path}: ILSVRC2012_ID {e} is not in {meta_path}') from None


def _kaggle_labels(csv_path: str) -> dict[int, str]:
  """Validation image number -> WNID from LOC_val_solution.csv (first box's synset)."""
  out = {}
  with open(csv_path, newline='') as f:
    for row in csv.DictReader(f):
      match = _VAL_IMAGE.match(row['ImageId'] + '.JPEG')
      if match and row.get('PredictionString', '').split():
        out[int(match.group(1))] = row['PredictionString'].split()[0]
  return out


def _caption(template: str, name: str) -> str:
  return template.format(name)


def list_imagenet(directory: str, template: str = 'a photo of a {}.') -> tuple[list[dict[str, Any]], list[str]]:
  """Items of the ILSVRC2012 validation set (flat + ground truth, or synset folders); OpenAI class names."""
  if not os.path.isdir(directory):
    raise UserError(f'imagenet source {directory} does not exist')
  if not _image_files(directory) and not _synset_dirs(directory):
    # DIR may be the dataset's root: its val/ folder, or Kaggle's ILSVRC/Data/CLS-LOC/val.
    for sub in ('val', os.path.join('ILSVRC', 'Data', 'CLS-LOC', 'val')):
      if os.path.isdir(os.path.join(directory, sub)):
        directory = os.path.join(directory, sub)
        break
  wnids, names = imagenet_wnids(), imagenet_classnames()
  label_of = {w: i for i, w in enumerate(wnids)}
  items = []
  folders = _synset_dirs(directory)
  if folders:
    unknown = [d for d in folders if d not in label_of]
    if unknown:
      raise UserError(f'{directory}: folders {unknown[:3]} are not ImageNet-1k WNIDs')
    for wnid in folders:
      for fname in _image_files(os.path.join(directory, wnid)):
        label = label_of[wnid]
        items.append(
          {
            'key': f'{wnid}/{fname}',
            'image_path': os.path.join(directory, wnid, fname),
            'caption': _caption(template, names[label]),
            'label': label,
          }
        )
    return items, names
  files = [f for f in _image_files(directory) if _VAL_IMAGE.match(f)]
  if not files:
    raise UserError(f'{directory}: no ILSVRC2012_val_*.JPEG images and no nXXXXXXXX class folders')
  truth, meta = _find_upwards(directory, _DEVKIT_TRUTH), _find_upwards(directory, _DEVKIT_META)
  kaggle = _find_upwards(directory, _KAGGLE_TRUTH)
  if truth and meta:
    labels = _devkit_labels(truth, meta)
  elif kaggle:
    labels = _kaggle_labels(kaggle)
  else:
    raise UserError(
      f'{directory}: no ground truth found beside the images ({_DEVKIT_TRUTH} with '
      f'meta.mat, or {_KAGGLE_TRUTH}) in it or its parents'
    )
  for fname in files:
    wnid = labels.get(int(_VAL_IMAGE.match(fname).group(1)))
    if wnid not in label_of:
      items.append({'key': fname, 'skip': 'missing_label'})
      continue
    label = label_of[wnid]
    items.append(
      {'key': fname, 'image_path': os.path.join(directory, fname), 'caption': _caption(template, names[label]), 'label': label}
    )
  return items, names


def _synset_dirs(directory: str) -> list[str]:
  return sorted(d for d in os.listdir(directory) if _WNID.match(d) and os.path.isdir(os.path.join(directory, d)))


def list_imagenet_v2(directory: str, template: str = 'a photo of a {}.') -> tuple[list[dict[str, Any]], list[str]]:
  """Items of ImageNetV2 (class-index folders 0..999 of jpegs); OpenAI class names."""
  if not os.path.isdir(directory):
    raise UserError(f'imagenet_v2 source {directory} does not exist')
  folders = sorted((d for d in os.listdir(directory) if d.isdigit() and os.path.isdir(os.path.join(directory, d))), key=int)
  if not folders or int(folders[-1]) >= 1000:
    raise UserError(f'{directory}: expected ImageNetV2 class folders named 0..999')
  names = imagenet_classnames()
  items = []
  for folder in folders:
    label = int(folder)
    for fname in _image_files(os.path.join(directory, folder)):
      items.append(
        {
          'key': f'{label}/{fname}',
          'image_path': os.path.join(directory, folder, fname),
          'caption': _caption(template, names[label]),
          'label': label,
        }
      )
  return items, names


def parse_karpathy_spec(spec: str) -> tuple[str, str, str]:
  """'IMAGES_DIR,JSON[:SPLIT]' -> (images dir, json path, split; test by default)."""
  images_dir, comma, rest = spec.partition(',')
  if not comma:
    raise UserError(f'karpathy source {spec!r}: expected IMAGES_DIR,dataset_*.json[:SPLIT]')
  json_path, split = rest, 'test'
  head, colon, tail = rest.rpartition(':')
  if colon and tail in _KARPATHY_SPLITS:
    json_path, split = head, tail
  return images_dir, json_path, split


def list_karpathy(spec: str, template: str = '') -> tuple[list[dict[str, Any]], list[str]]:
  """One item per caption of a Karpathy split (COCO / Flickr30k), keyed 'FILENAME#k'; label -1.

  ':train' takes 'restval' too, as Karpathy's training set does.
  """
  del template  # real captions
  images_dir, json_path, split = parse_karpathy_spec(spec)
  if not os.path.isdir(images_dir):
    raise UserError(f'karpathy source: image folder {images_dir} does not exist')
  try:
    with open(json_path, encoding='utf-8') as f:
      data = json.load(f)
  except OSError as e:
    raise UserError(f'karpathy source: cannot read {json_path} ({e.strerror})') from None
  except ValueError as e:
    raise UserError(f'karpathy source: {json_path} is not JSON ({e})') from None
  if not isinstance(data, dict) or not isinstance(data.get('images'), list):
    raise UserError(f"{json_path}: expected Karpathy's {{'images': [...]}} json")
  wanted = {split, 'restval'} if split == 'train' else {split}
  items = []
  for image in data['images']:
    if image.get('split') not in wanted:
      continue
    fname = image['filename']
    # COCO keeps images under their original folder (filepath 'val2014'); Flickr30k has none.
    path = os.path.join(images_dir, image.get('filepath', ''), fname)
    if not os.path.exists(path) and os.path.exists(os.path.join(images_dir, fname)):
      path = os.path.join(images_dir, fname)
    for k, sentence in enumerate(image.get('sentences', [])):
      key = f'{fname}#{k}'
      if not os.path.exists(path):
        items.append({'key': key, 'skip': 'missing_image'})
        continue
      caption = sentence.get('raw') or ' '.join(sentence.get('tokens', []))
      items.append({'key': key, 'image_path': path, 'caption': caption, 'label': -1})
  if not items:
    raise UserError(f'{json_path}: no images in split {split!r}')
  return items, []


# --source kind -> lister(rest of the spec, template) -> (items, class names).
LISTERS = {
  'imagenet': list_imagenet,
  'imagenet_v2': list_imagenet_v2,
  'coco_karpathy': list_karpathy,
  'flickr_karpathy': list_karpathy,
}
