"""Benchmark sources (ImageNet val, ImageNetV2, COCO / Flickr30k Karpathy) built from small fixtures
in the published layouts; one-line errors and no half-written output from the build CLI."""

import json
import os
import subprocess
import sys

import corpus
import grain
import numpy as np
import pytest
from PIL import Image

from superclip_jax.data import build, eval_sources, pipeline, records
from superclip_jax.errors import UserError
from superclip_jax.evals import retrieval

# ILSVRC2012_IDs deliberately not in sorted-WNID order (the devkit's IDs are not either).
_SYNSETS = [(1, 'n15075141', 'toilet tissue'), (2, 'n01440764', 'tench'), (3, 'n01484850', 'great white shark')]
_LABELS = {'n01440764': 0, 'n01484850': 2, 'n15075141': 999}


def _all_records(out_dir):
  manifest = records.read_manifest(out_dir)
  source = grain.sources.ArrayRecordDataSource([s['path'] for s in manifest['shards']])
  return manifest, [records.decode_record(source[i]) for i in range(len(source))]


def _jpeg(path, seed):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(corpus.picture(seed)).save(path, format='JPEG')


def _write_meta_mat(path):
  """The devkit's meta.mat (MATLAB v5 struct array 'synsets'), with one non-leaf synset as the real one has."""
  import scipy.io

  fields = [
    ('ILSVRC2012_ID', 'O'),
    ('WNID', 'O'),
    ('words', 'O'),
    ('gloss', 'O'),
    ('num_children', 'O'),
    ('children', 'O'),
    ('wordnet_height', 'O'),
    ('num_train_images', 'O'),
  ]
  rows = [(i, w, words, 'gloss', 0, np.zeros((1, 0)), 0, 1300) for i, w, words in _SYNSETS]
  rows.append((1001, 'n00001740', 'entity', 'gloss', 2, np.array([1, 2]), 18, 0))
  synsets = np.array(rows, dtype=fields).reshape(-1, 1)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  scipy.io.savemat(path, {'synsets': synsets})


def _imagenet_flat(root):
  """ILSVRC2012 val images 1..6 (two per synset) + devkit; image 6 has no ground-truth line."""
  truth = []
  for n in range(1, 7):
    _jpeg(os.path.join(root, 'val', f'ILSVRC2012_val_{n:08d}.JPEG'), n)
    if n < 6:
      truth.append(str(_SYNSETS[(n - 1) % 3][0]))
  data = os.path.join(root, 'ILSVRC2012_devkit_t12', 'data')
  _write_meta_mat(os.path.join(data, 'meta.mat'))
  with open(os.path.join(data, 'ILSVRC2012_validation_ground_truth.txt'), 'w') as f:
    f.write('\n'.join(truth) + '\n')


def _check_imagenet(manifest, recs, expected):
  assert len(manifest['class_names']) == 1000
  assert manifest['class_names'][0] == 'tench' and manifest['class_names'][999] == 'toilet paper'
  got = {r['key']: (r['label'], r['caption']) for r in recs}
  assert got == expected


def test_imagenet_wnids_are_the_sorted_1000():
  wnids = eval_sources.imagenet_wnids()
  assert len(set(wnids)) == 1000 and list(wnids) == sorted(wnids)
  assert wnids[:3] == ('n01440764', 'n01443537', 'n01484850') and wnids[999] == 'n15075141'
  names = eval_sources.imagenet_classnames()
  assert names[:3] == ['tench', 'goldfish', 'great white shark'] and names[999] == 'toilet paper'


def test_imagenet_flat_val_with_devkit(tmp_path):
  _imagenet_flat(str(tmp_path))
  out = str(tmp_path / 'out')
  manifest = build.build(f'imagenet:{tmp_path}', out, records_per_shard=4, progress=False)
  assert manifest['num_records'] == 5 and manifest['skipped'] == {'missing_label': 1}
  assert len(manifest['shards']) == 2
  _, recs = _all_records(out)
  names = {0: 'tench', 2: 'great white shark', 999: 'toilet paper'}
  expected = {}
  for n in range(1, 6):
    label = _LABELS[_SYNSETS[(n - 1) % 3][1]]
    expected[f'ILSVRC2012_val_{n:08d}.JPEG'] = (label, f'a photo of a {names[label]}.')
  _check_imagenet(manifest, recs, expected)
  image = open(tmp_path / 'val' / 'ILSVRC2012_val_00000001.JPEG', 'rb').read()
  assert next(r for r in recs if r['key'].endswith('01.JPEG'))['image'] == image  # JPEG kept as is


def test_imagenet_kaggle_csv_and_synset_folders(tmp_path):
  kaggle = tmp_path / 'kaggle'
  rows = ['ImageId,PredictionString']
  for n, wnid in enumerate(['n01440764', 'n15075141', 'n01484850'], 1):
    _jpeg(str(kaggle / 'ILSVRC' / 'Data' / 'CLS-LOC' / 'val' / f'ILSVRC2012_val_{n:08d}.JPEG'), n)
    rows.append(f'ILSVRC2012_val_{n:08d},{wnid} 10 20 30 40 {wnid} 1 2 3 4')
  (kaggle / 'LOC_val_solution.csv').write_text('\n'.join(rows) + '\n')
  manifest = build.build(f'imagenet:{kaggle}', str(tmp_path / 'o1'), progress=False)
  _, recs = _all_records(str(tmp_path / 'o1'))
  _check_imagenet(
    manifest,
    recs,
    {
      'ILSVRC2012_val_00000001.JPEG': (0, 'a photo of a tench.'),
      'ILSVRC2012_val_00000002.JPEG': (999, 'a photo of a toilet paper.'),
      'ILSVRC2012_val_00000003.JPEG': (2, 'a photo of a great white shark.'),
    },
  )
  folders = tmp_path / 'folders'
  for i, wnid in enumerate(['n15075141', 'n01440764']):
    _jpeg(str(folders / 'val' / wnid / f'ILSVRC2012_val_{i:08d}.JPEG'), i)
  manifest = build.build(f'imagenet:{folders}', str(tmp_path / 'o2'), template='itap of a {}.', progress=False)
  _, recs = _all_records(str(tmp_path / 'o2'))
  _check_imagenet(
    manifest,
    recs,
    {
      'n01440764/ILSVRC2012_val_00000001.JPEG': (0, 'itap of a tench.'),
      'n15075141/ILSVRC2012_val_00000000.JPEG': (999, 'itap of a toilet paper.'),
    },
  )
  os.makedirs(folders / 'val' / 'n99999999')
  with pytest.raises(UserError, match='n99999999'):
    build.build(f'imagenet:{folders}', str(tmp_path / 'o3'), progress=False)


def test_imagenet_v2_class_index_folders(tmp_path):
  for label in (0, 2, 999):
    for j in range(2):
      _jpeg(str(tmp_path / 'v2' / str(label) / f'{j:040x}.jpeg'), label + j)
  manifest = build.build(f'imagenet_v2:{tmp_path / "v2"}', str(tmp_path / 'out'), progress=False)
  assert manifest['num_records'] == 6 and manifest['class_names'][2] == 'great white shark'
  _, recs = _all_records(str(tmp_path / 'out'))
  assert [r['label'] for r in recs] == [0, 0, 2, 2, 999, 999]
  assert recs[-1]['caption'] == 'a photo of a toilet paper.' and recs[0]['key'] == f'0/{0:040x}.jpeg'


def _karpathy(root, flickr=False):
  """Images and a Karpathy json: 3 test images x 5 captions, 1 val, 1 train, 1 restval."""
  images = []
  for i, split in enumerate(['test', 'test', 'test', 'val', 'train', 'restval']):
    fname = f'{1000 + i}.jpg' if flickr else f'COCO_val2014_{i:012d}.jpg'
    filepath = '' if flickr else 'val2014'
    _jpeg(os.path.join(root, 'images', filepath, fname), i)
    entry = {
      'filename': fname,
      'split': split,
      'imgid': i,
      'sentences': [{'raw': f'image {i} caption {k}.', 'tokens': ['image', str(i)], 'imgid': i} for k in range(5)],
    }
    if not flickr:
      entry.update(filepath=filepath, cocoid=i)
    images.append(entry)
  path = os.path.join(root, 'dataset_flickr30k.json' if flickr else 'dataset_coco.json')
  with open(path, 'w') as f:
    json.dump({'images': images, 'dataset': 'flickr30k' if flickr else 'coco'}, f)
  return os.path.join(root, 'images'), path


@pytest.mark.parametrize('flickr', [False, True])
def test_karpathy_keeps_five_captions_per_image(tmp_path, flickr):
  images, path = _karpathy(str(tmp_path), flickr)
  kind = 'flickr_karpathy' if flickr else 'coco_karpathy'
  out = str(tmp_path / 'out')
  manifest = build.build(f'{kind}:{images},{path}', out, records_per_shard=6, progress=False)
  assert manifest['num_records'] == 15 and len(manifest['shards']) == 3 and manifest['class_names'] == []
  _, recs = _all_records(out)
  groups = {}
  for r in recs:
    assert r['label'] == -1
    groups.setdefault(r['key'].split('#')[0], []).append(r)
  assert len(groups) == 3 and all(len(g) == 5 for g in groups.values())
  for name, group in groups.items():
    i = [0, 1, 2][list(groups).index(name)]
    assert [r['caption'] for r in group] == [f'image {i} caption {k}.' for k in range(5)]
    assert len({r['image'] for r in group}) == 1
  # The retrieval evaluator's own grouping: 3 images, each text pointing at its image.
  image_rows, text_to_image = retrieval.groups_to_images(np.array([pipeline.group_id(r['key']) for r in recs]))
  assert len(image_rows) == 3 and np.bincount(text_to_image).tolist() == [5, 5, 5]
  train = build.build(f'{kind}:{images},{path}:train', str(tmp_path / 'train'), progress=False)
  assert train['num_records'] == 10  # train + restval
  assert build.build(f'{kind}:{images},{path}:val', str(tmp_path / 'val'), progress=False)['num_records'] == 5


def test_karpathy_missing_image_is_counted(tmp_path):
  images, path = _karpathy(str(tmp_path))
  os.remove(os.path.join(images, 'val2014', f'COCO_val2014_{1:012d}.jpg'))
  manifest = build.build(f'coco_karpathy:{images},{path}', str(tmp_path / 'out'), progress=False)
  assert manifest['num_records'] == 10 and manifest['skipped'] == {'missing_image': 5}


def _run_build(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run(
    [sys.executable, '-m', 'superclip_jax.data.build', *args],
    capture_output=True,
    text=True,
    env=env,
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )


def test_cli_user_mistake_is_one_line_and_leaves_no_output(tmp_path):
  out = tmp_path / 'X'
  proc = _run_build('--source', 'folder:/nonexistent', '--out', str(out))
  assert proc.returncode == 2, proc.stderr
  assert 'Traceback' not in proc.stderr
  assert proc.stderr.strip() == 'superclip_jax.data.build: error: folder source /nonexistent does not exist'
  assert not out.exists()
  proc = _run_build('--source', f'coco_karpathy:{tmp_path},{tmp_path}/none.json', '--out', str(out))
  assert proc.returncode == 2 and 'none.json' in proc.stderr and 'Traceback' not in proc.stderr
  assert not out.exists()
