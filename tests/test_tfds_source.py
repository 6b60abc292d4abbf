"""The tfds: source reads ArrayRecord datasets through tfds.data_source without TensorFlow:
same records as the folder source on the same images; COCO-style captions all kept."""

import os
import sys

import corpus
import grain
import numpy as np
import pytest
from PIL import Image

from superclip_jax.data import build, eval_sources, records
from superclip_jax.errors import UserError

tfds = pytest.importorskip('tensorflow_datasets')
_CLASSES = ['golden_retriever', 'tabby_cat']


class TinyPets(tfds.core.GeneratorBasedBuilder):
  """Images + labels (+ file names) read from an ImageFolder made by the test."""

  VERSION = tfds.core.Version('1.0.0')
  FOLDER = ''

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(encoding_format='jpeg'),
          'file_name': tfds.features.Text(),
          'label': tfds.features.ClassLabel(names=_CLASSES),
        }
      ),
    )

  def _split_generators(self, dl_manager):
    return {'test': self._generate_examples()}

  def _generate_examples(self):
    for label, name in enumerate(_CLASSES):
      for fname in sorted(os.listdir(os.path.join(self.FOLDER, name))):
        rel = f'{name}/{fname}'
        with open(os.path.join(self.FOLDER, rel), 'rb') as f:
          yield rel, {'image': f.read(), 'file_name': rel, 'label': label}


class TinyCocoCaptions(tfds.core.GeneratorBasedBuilder):
  """coco_captions' features: image, image/filename, captions {id, text} (five per image)."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(encoding_format='jpeg'),
          'image/filename': tfds.features.Text(),
          'captions': tfds.features.Sequence({'id': tfds.features.Scalar(np.int64), 'text': tfds.features.Text()}),
        }
      ),
    )

  def _split_generators(self, dl_manager):
    return {'test': self._generate_examples()}

  def _generate_examples(self):
    for i in range(3):
      yield (
        i,
        {
          'image': corpus.encode(corpus.picture(i), 'JPEG'),
          'image/filename': f'COCO_{i}.jpg',
          'captions': {'id': list(range(5)), 'text': [f'image {i} caption {k}' for k in range(5)]},
        },
      )


class TinyImagenet(tfds.core.GeneratorBasedBuilder):
  """imagenet2012's label feature: the 1,000 sorted WNIDs."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(encoding_format='jpeg'),
          'file_name': tfds.features.Text(),
          'label': tfds.features.ClassLabel(names=list(eval_sources.imagenet_wnids())),
        }
      ),
    )

  def _split_generators(self, dl_manager):
    return {'validation': self._generate_examples()}

  def _generate_examples(self):
    for label in (0, 999):
      name = f'ILSVRC2012_val_{label + 1:08d}.JPEG'
      yield name, {'image': corpus.encode(corpus.picture(label), 'JPEG'), 'file_name': name, 'label': label}


def _all_records(out_dir):
  manifest = records.read_manifest(out_dir)
  source = grain.sources.ArrayRecordDataSource([s['path'] for s in manifest['shards']])
  return manifest, [records.decode_record(source[i]) for i in range(len(source))]


def _comparable(rec):
  return {k: (v.tolist() if hasattr(v, 'tolist') else v) for k, v in rec.items()}


class _ImportWatcher:
  """A sys.meta_path finder that records attempts to import TensorFlow (and finds nothing itself)."""

  def __init__(self):
    self.attempts = []

  def find_spec(self, name, path=None, target=None):
    if name == 'tensorflow' or name.startswith('tensorflow.'):
      self.attempts.append(name)
    return None


def test_tfds_data_source_matches_folder_source_without_tensorflow(tmp_path, monkeypatch):
  folder = tmp_path / 'pets'
  for label, name in enumerate(_CLASSES):
    (folder / name).mkdir(parents=True)
    for i in range(3):
      Image.fromarray(corpus.picture(10 * label + i)).save(folder / name / f'{i}.jpg', format='JPEG')
  TinyPets.FOLDER = str(folder)
  data_dir = str(tmp_path / 'tfds')
  TinyPets(data_dir=data_dir, file_format='array_record').download_and_prepare()
  # Only around reading: while preparing, etils probes find_spec('tensorflow') (a check, not an import).
  watcher = _ImportWatcher()
  monkeypatch.setattr(sys, 'meta_path', [watcher, *sys.meta_path])
  from_tfds = build.build(
    'tfds:tiny_pets:test', str(tmp_path / 'a'), data_dir=data_dir, records_per_shard=4, workers=1, progress=False
  )
  assert 'tensorflow' not in sys.modules  # preparing and reading both ran without TensorFlow
  assert watcher.attempts == []  # reading never even looked for it
  monkeypatch.setattr(sys, 'meta_path', [f for f in sys.meta_path if f is not watcher])
  from_folder = build.build(f'folder:{folder}', str(tmp_path / 'b'), records_per_shard=4, progress=False)
  assert from_tfds['class_names'] == from_folder['class_names'] == _CLASSES
  assert from_tfds['num_records'] == 6 and from_tfds['skipped'] == {} and len(from_tfds['shards']) == 2
  tfds_recs = sorted((_comparable(r) for r in _all_records(str(tmp_path / 'a'))[1]), key=lambda r: r['key'])
  folder_recs = [_comparable(r) for r in _all_records(str(tmp_path / 'b'))[1]]
  assert tfds_recs == folder_recs  # same keys, JPEG bytes, captions, tokens, labels
  assert tfds_recs[0]['caption'] == 'a photo of a golden retriever.'


def test_tfds_coco_captions_keep_all_five(tmp_path):
  data_dir = str(tmp_path / 'tfds')
  TinyCocoCaptions(data_dir=data_dir, file_format='array_record').download_and_prepare()
  # Two worker processes: each finds the dataset by name from its files (the class is not registered there).
  manifest = build.build(
    'tfds:tiny_coco_captions:test', str(tmp_path / 'out'), data_dir=data_dir, workers=2, records_per_shard=2, progress=False
  )
  assert 'tensorflow' not in sys.modules
  assert manifest['num_records'] == 15 and manifest['class_names'] == [] and len(manifest['shards']) == 2
  groups = {}
  for r in _all_records(str(tmp_path / 'out'))[1]:
    groups.setdefault(r['key'].split('#')[0], []).append(r['caption'])
  assert groups == {f'COCO_{i}.jpg': [f'image {i} caption {k}' for k in range(5)] for i in range(3)}


def test_tfds_dataset_not_prepared_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match='array_record'):
    build.build('tfds:tiny_pets:test', str(tmp_path / 'out'), data_dir=str(tmp_path / 'empty'), progress=False)
  assert not (tmp_path / 'out').exists()


def test_tfds_imagenet_labels_get_openai_class_names(tmp_path):
  data_dir = str(tmp_path / 'tfds')
  TinyImagenet(data_dir=data_dir, file_format='array_record').download_and_prepare()
  manifest = build.build('tfds:tiny_imagenet:validation', str(tmp_path / 'out'), data_dir=data_dir, progress=False)
  assert manifest['class_names'][:2] == ['tench', 'goldfish'] and len(manifest['class_names']) == 1000
  recs = sorted(_all_records(str(tmp_path / 'out'))[1], key=lambda r: r['label'])
  assert [(r['label'], r['caption']) for r in recs] == [(0, 'a photo of a tench.'), (999, 'a photo of a toilet paper.')]
