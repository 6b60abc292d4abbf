"""Building shards from WebDataset tars, folders (captions file or ImageFolder): round trip,
bad input counted by reason, resumable and reproducible output, clear errors."""

import io
import json
import os

import corpus
import grain
import numpy as np
import pytest
from PIL import Image

from superclip_jax.data import build, records, sources
from superclip_jax.data import tokenizer as tokenizer_lib
from superclip_jax.errors import UserError


def _all_records(out_dir):
  manifest = records.read_manifest(out_dir)
  source = grain.sources.ArrayRecordDataSource([s['path'] for s in manifest['shards']])
  return manifest, [records.decode_record(source[i]) for i in range(len(source))]


def test_brace_expansion():
  assert sources.expand_braces('/d/{00008..00011}.tar') == [f'/d/000{i:02d}.tar' for i in (8, 9, 10, 11)]
  assert sources.expand_braces('/d/{a,b}/x-{1..2}.tar') == ['/d/a/x-1.tar', '/d/a/x-2.tar', '/d/b/x-1.tar', '/d/b/x-2.tar']


def test_webdataset_round_trip(tmp_path):
  corpus.write_tar(str(tmp_path / 'in' / '00000.tar'), corpus.good_members(9))
  corpus.write_tar(str(tmp_path / 'in' / '00001.tar'), corpus.good_members(6, start=9))
  out = str(tmp_path / 'shards')
  manifest = build.build(f'webdataset:{tmp_path}/in/{{00000..00001}}.tar', out, workers=2, progress=False)
  assert manifest['num_records'] == 15 and [s['num_records'] for s in manifest['shards']] == [9, 6]
  assert manifest['skipped'] == {}
  assert manifest['repaired'] == {'reencoded_png': 5, 'reencoded_webp': 5}
  _, recs = _all_records(out)
  tok = tokenizer_lib.load_tokenizer('clip')
  members = dict(corpus.good_members(15))
  for r in recs:
    assert r['caption'] == f'a picture number {int(r["key"])} with a square'
    assert r['tokens'].tolist() == tok.with_specials(tok.encode(r['caption']), 77)
    assert r['label'] == int(r['key']) % 3
    decoded = np.asarray(Image.open(io.BytesIO(r['image'])))
    assert decoded.shape == (40, 48, 3)
    if f'{r["key"]}.jpg' in members:
      assert r['image'] == members[f'{r["key"]}.jpg']  # RGB JPEG kept byte for byte
    else:
      name = next(f'{r["key"]}.{e}' for e in ('png', 'webp') if f'{r["key"]}.{e}' in members)
      source = np.asarray(Image.open(io.BytesIO(members[name])).convert('RGB'))
      assert np.abs(decoded.astype(int) - source).mean() < 3  # re-encoded as JPEG quality 95
  n, df = records.read_doc_freq(out)
  assert n == 15 and df[tok.encode('picture')[0]] == 15 and df[tok.sot_id] == 0


def test_bad_input_is_skipped_or_repaired_and_counted(tmp_path):
  members, skipped, repaired = corpus.bad_members()
  corpus.write_tar(str(tmp_path / 'bad.tar'), members)
  manifest = build.build(f'webdataset:{tmp_path}/bad.tar', str(tmp_path / 'out'), progress=False)
  assert manifest['skipped'] == skipped
  assert manifest['repaired'] == repaired
  _, recs = _all_records(str(tmp_path / 'out'))
  # Kept: the six repaired images, the first of the duplicated key, and the sample between.
  assert sorted(r['key'] for r in recs) == ['b02', 'b03', 'b04', 'b05', 'b06', 'b13', 'b14', 'b15']
  for r in recs:
    img = Image.open(io.BytesIO(r['image']))
    assert img.format == 'JPEG' and img.mode == 'RGB'
  alpha = next(r for r in recs if r['key'] == 'b06')
  assert np.asarray(Image.open(io.BytesIO(alpha['image']))).mean() > 100  # composited on white
  assert any('b00' in line for line in manifest['skip_examples']['corrupt_image'])


def test_truncated_tar_keeps_what_it_read(tmp_path):
  path = corpus.write_tar(str(tmp_path / 'cut.tar'), corpus.good_members(8))
  data = open(path, 'rb').read()
  with open(path, 'wb') as f:
    f.write(data[: len(data) * 2 // 3])
  manifest = build.build(f'webdataset:{path}', str(tmp_path / 'out'), progress=False)
  assert manifest['skipped'].get('truncated_tar') == 1
  assert 3 <= manifest['num_records'] < 8


def test_folder_with_captions_jsonl_and_csv(tmp_path):
  folder = tmp_path / 'imgs'
  folder.mkdir()
  rows = []
  for i in range(5):
    Image.fromarray(corpus.picture(i)).save(folder / f'{i}.jpg')
    rows.append({'image': f'{i}.jpg', 'caption': f'picture {i}', 'long_caption': f'a much longer text {i}'})
  rows.append({'image': 'missing.jpg', 'caption': 'gone'})
  (folder / 'captions.jsonl').write_text('\n'.join(json.dumps(r) for r in rows))
  manifest = build.build(f'folder:{folder}', str(tmp_path / 'out'), records_per_shard=2, progress=False)
  assert manifest['num_records'] == 5 and len(manifest['shards']) == 3
  assert manifest['skipped'] == {'missing_image': 1}
  _, recs = _all_records(str(tmp_path / 'out'))
  assert recs[0]['long_caption'] == 'a much longer text 0' and len(recs[0]['long_tokens']) > 3
  (folder / 'captions.jsonl').unlink()
  with open(folder / 'captions.csv', 'w') as f:
    f.write('image,caption\n0.jpg,"zero, with a comma"\n1.jpg,one\n')
  manifest = build.build(f'folder:{folder}', str(tmp_path / 'out_csv'), progress=False)
  _, recs = _all_records(str(tmp_path / 'out_csv'))
  assert [r['caption'] for r in recs] == ['zero, with a comma', 'one']


def test_imagefolder_layout_makes_templated_captions_and_labels(tmp_path):
  for label, name in enumerate(['golden_retriever', 'tabby_cat']):
    (tmp_path / 'in' / name).mkdir(parents=True)
    for i in range(3):
      Image.fromarray(corpus.picture(10 * label + i)).save(tmp_path / 'in' / name / f'{i}.png')
  manifest = build.build(f'folder:{tmp_path / "in"}', str(tmp_path / 'out'), template='a photo of a {}.', progress=False)
  assert manifest['class_names'] == ['golden_retriever', 'tabby_cat']
  _, recs = _all_records(str(tmp_path / 'out'))
  assert [(r['caption'], r['label']) for r in recs] == [('a photo of a golden retriever.', 0)] * 3 + [
    ('a photo of a tabby cat.', 1)
  ] * 3


def test_resumable_and_reproducible(tmp_path):
  for i in range(3):
    corpus.write_tar(str(tmp_path / 'in' / f'{i:05d}.tar'), corpus.good_members(4, start=4 * i))
  src = f'webdataset:{tmp_path}/in/{{00000..00002}}.tar'
  out = tmp_path / 'out'
  build.build(src, str(out), progress=False)
  first = {p: (out / p).read_bytes() for p in os.listdir(out) if p.endswith('.array_record')}
  # An interrupted build: shard 1 never finished. Re-running rebuilds it alone.
  (out / 'shard-00001.stats.json').unlink()
  (out / 'shard-00001.array_record').unlink()
  before = os.path.getmtime(out / 'shard-00000.array_record')
  manifest = build.build(src, str(out), progress=False)
  assert os.path.getmtime(out / 'shard-00000.array_record') == before
  assert manifest['num_records'] == 12
  assert {p: (out / p).read_bytes() for p in first} == first
  build.build(src, str(tmp_path / 'again'), progress=False)
  assert {p: (tmp_path / 'again' / p).read_bytes() for p in first} == first


def _recaptioned(members, text):
  """The members with every caption replaced: tells a later copy of a key from the first."""
  return [(name, text.encode() if name.endswith('.txt') else data) for name, data in members]


def _shard_bytes(out):
  return {p: (out / p).read_bytes() for p in sorted(os.listdir(out)) if p.endswith(('.array_record', '.npy', '.json'))}


def test_a_key_in_two_tars_is_kept_once_in_input_order(tmp_path):
  corpus.write_tar(str(tmp_path / 'in' / '00000.tar'), corpus.good_members(4))
  corpus.write_tar(
    str(tmp_path / 'in' / '00001.tar'),
    corpus.good_members(2, start=4)
    + _recaptioned(corpus.good_members(1, start=1), 'a later copy')
    + corpus.good_members(1, start=6),
  )
  # A key of the tar before, two new keys, and the first new key again inside the same tar.
  corpus.write_tar(
    str(tmp_path / 'in' / '00002.tar'),
    _recaptioned(corpus.good_members(1, start=5), 'a later copy')
    + corpus.good_members(2, start=7)
    + _recaptioned(corpus.good_members(1, start=7), 'a later copy'),
  )
  src = f'webdataset:{tmp_path}/in/{{00000..00002}}.tar'
  out = tmp_path / 'out'
  manifest = build.build(src, str(out), workers=3, progress=False)
  assert [s['num_records'] for s in manifest['shards']] == [4, 3, 2]
  assert manifest['skipped'] == {'duplicate_key': 3}  # two across tars, one within a tar
  _, recs = _all_records(str(out))
  assert [r['key'] for r in recs] == [f'{i:06d}' for i in range(9)]
  assert all(r['caption'] != 'a later copy' for r in recs)
  lines = manifest['skip_examples']['duplicate_key']
  assert any('00001.tar: 000001' in line and 'first in ' + str(tmp_path / 'in' / '00000.tar') in line for line in lines)
  assert any('00002.tar: 000005' in line and '00001.tar' in line for line in lines)
  n, _ = records.read_doc_freq(str(out))
  assert n == 9
  # One worker finishes the tars in another order: the same output.
  build.build(src, str(tmp_path / 'serial'), workers=1, progress=False)
  assert _shard_bytes(tmp_path / 'serial') == _shard_bytes(out)
  # A resumed build re-reads the keys it lost and drops the same duplicates.
  for name in ('shard-00002.stats.json', 'shard-00002.array_record', 'shard-00001.keys.json'):
    (out / name).unlink()
  assert build.build(src, str(out), workers=2, progress=False) == manifest
  assert _shard_bytes(out) == _shard_bytes(tmp_path / 'serial')


def test_find_duplicates_names_the_first_occurrence():
  keys = {'a': ['x', 'y'], 'b': ['z', 'y', 'w'], 'c': ['w', 'x', 'v'], 'd': []}
  tasks = [{'name': n, 'source': f'{n}.tar'} for n in keys]
  build.find_duplicates(tasks, lambda task: keys[task['name']])
  assert [t.get('duplicate_keys') for t in tasks] == [None, {'y': 'a.tar'}, {'w': 'b.tar', 'x': 'a.tar'}, None]


def test_folder_rows_repeating_an_image_and_chunks(tmp_path):
  folder = tmp_path / 'imgs'
  folder.mkdir()
  for i in range(3):
    Image.fromarray(corpus.picture(i)).save(folder / f'{i}.jpg')
  # Several captions of one image, across --records_per_shard chunks: each is its own sample.
  rows = [('0.jpg', 'zero'), ('1.jpg', 'one'), ('0.jpg', 'zero again'), ('2.jpg', 'two'), ('0.jpg', 'zero thrice')]
  (folder / 'captions.jsonl').write_text('\n'.join(json.dumps({'image': i, 'caption': c}) for i, c in rows))
  manifest = build.build(f'folder:{folder}', str(tmp_path / 'out'), records_per_shard=2, progress=False)
  assert manifest['skipped'] == {} and manifest['num_records'] == 5
  _, recs = _all_records(str(tmp_path / 'out'))
  assert [(r['key'], r['caption']) for r in recs] == [
    ('0.jpg', 'zero'),
    ('1.jpg', 'one'),
    ('0.jpg#1', 'zero again'),
    ('2.jpg', 'two'),
    ('0.jpg#2', 'zero thrice'),
  ]


def test_unreadable_manifest_and_missing_inputs_name_the_file(tmp_path):
  (tmp_path / 'manifest.json').write_text('{not json')
  with pytest.raises(ValueError, match='manifest.json'):
    records.read_manifest(str(tmp_path))
  with pytest.raises(UserError, match='nowhere'):
    build.build(f'webdataset:{tmp_path}/nowhere/{{0..1}}.tar', str(tmp_path / 'o'), progress=False)
  with pytest.raises(ValueError, match='expected'):
    build.build('s3:bucket', str(tmp_path / 'o'), progress=False)


def test_tfds_source_without_tfds_is_a_clear_error(tmp_path, monkeypatch):
  import sys

  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)  # as if not installed
  with pytest.raises(ImportError, match='pip install tensorflow-datasets'):
    build.build('tfds:cifar10:test', str(tmp_path / 'o'), progress=False)
  assert not (tmp_path / 'o').exists()
