"""The Grain pipeline: exact resume, disjoint per-process slices, mixtures, bad records skipped and counted."""

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

import corpus
from superclip_jax.data import build, pipeline, records, tokenizer as tokenizer_lib

N = 23  # records: batches of 4 cross the epoch boundary mid-batch


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
  root = tmp_path_factory.mktemp('pipeline')
  corpus.write_tar(str(root / 'in' / '00000.tar'), corpus.good_members(12))
  corpus.write_tar(str(root / 'in' / '00001.tar'), corpus.good_members(N - 12, start=12))
  out = str(root / 'shards')
  build.build(f"webdataset:{root}/in/{{00000..00001}}.tar", out, progress=False)
  return out


def _config(shards, **kw):
  base = dict(shard_dirs=[shards], batch_size=4, image_size=24, context_length=16, seed=3)
  base.update(kw)
  return pipeline.PipelineConfig(**base)


def _take(it, n):
  return [next(it) for _ in range(n)]


@pytest.fixture
def opened():
  """Opens pipelines and closes them (worker processes, threads) when the test ends."""
  iterators = []

  def open_(config):
    iterators.append(pipeline.ShardBatches(config))
    return iterators[-1]

  yield open_
  for it in iterators:
    it.close()


def _same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize('workers', [0, 2])
@pytest.mark.parametrize('resume_at', [2, 5])  # 5 batches = 20 records: mid-epoch; 7 crosses the boundary
def test_exact_resume(shards, workers, resume_at, opened):
  straight = _take(opened(_config(shards, workers=workers)), 9)
  first = opened(_config(shards, workers=workers))
  _take(first, resume_at)
  state = first.get_state()
  resumed = opened(_config(shards, workers=workers))
  resumed.set_state(state)
  for a, b in zip(straight[resume_at:], _take(resumed, 9 - resume_at)):
    _same(a, b)


def test_epochs_reshuffle_and_cover_everything(shards, opened):
  it = opened(_config(shards, batch_size=N))
  tok = tokenizer_lib.load_tokenizer('clip')
  epochs = []
  for _ in range(2):
    batch = next(it)
    epochs.append([tok.decode(t) for t in batch['text']])
  assert sorted(epochs[0]) == sorted(epochs[1]) and len(set(epochs[0])) == N
  assert epochs[0] != epochs[1]


def test_processes_get_disjoint_slices_that_cover_the_data(shards, opened):
  seen = []
  for p in range(2):
    it = opened(_config(shards, batch_size=1, process_index=p, process_count=2, train=False,
                                       drop_remainder=False))
    seen.append([tuple(b['text'][0]) for b in it])
  keys = [set(s) for s in seen]
  assert not keys[0] & keys[1]
  assert len(keys[0] | keys[1]) == len(seen[0]) + len(seen[1]) == N


def test_eval_mode_is_ordered_centre_crops(shards, opened):
  a = list(opened(_config(shards, train=False, drop_remainder=False)))
  b = list(opened(_config(shards, train=False, drop_remainder=False)))
  assert sum(len(x['label']) for x in a) == N and len(a[-1]['label']) == N % 4
  for x, y in zip(a, b):
    _same(x, y)


def test_mixture_follows_weights(shards, tmp_path, opened):
  other = tmp_path / 'other'
  corpus.write_tar(str(tmp_path / 'o.tar'), corpus.good_members(5, start=500))
  build.build(f"webdataset:{tmp_path}/o.tar", str(other), progress=False)
  it = opened(_config(shards, shard_dirs=[shards, str(other)], weights=(0.75, 0.25), batch_size=40))
  digits = np.concatenate([next(it)['text'][:, 4:6] for _ in range(5)])  # the first two digits of i
  tok = tokenizer_lib.load_tokenizer('clip')
  from_other = np.all(digits == tok.encode('5 0'), axis=1)  # other's captions are numbered 500..504
  assert 0.15 < from_other.mean() < 0.35


def test_corrupt_images_are_skipped_and_counted(tmp_path, opened):
  shard_dir = tmp_path / 'shards'
  corpus.write_tar(str(tmp_path / 'a.tar'), corpus.good_members(6))
  build.build(f"webdataset:{tmp_path}/a.tar", str(shard_dir), progress=False)
  # Damage the stored data after the build: one undecodable image, one unparsable record.
  manifest = records.read_manifest(str(shard_dir))
  path = manifest['shards'][0]['path']
  import grain
  src = grain.sources.ArrayRecordDataSource([path])
  raw = [src[i] for i in range(len(src))]
  rec = records.decode_record(raw[2])
  raw[2] = records.encode_record(key=rec['key'], image=b'\xff\xd8garbage', caption=rec['caption'],
                                 tokens=rec['tokens'], label=rec['label'])
  raw[4] = b'\x00not msgpack'
  del src
  writer = ArrayRecordWriter(path, 'group_size:1')
  for r in raw:
    writer.write(r)
  writer.close()
  it = opened(_config(str(shard_dir), batch_size=4, train=False, drop_remainder=False))
  batches = list(it)
  assert sum(len(b['label']) for b in batches) == 4
  assert sum(int(b['skipped_examples']) for b in batches) == 2


def test_long_captions_feed_cls_text(tmp_path, opened):
  import json
  from PIL import Image
  folder = tmp_path / 'f'
  folder.mkdir()
  Image.fromarray(corpus.picture(0)).save(folder / '0.jpg')
  Image.fromarray(corpus.picture(1)).save(folder / '1.jpg')
  (folder / 'captions.jsonl').write_text('\n'.join([
      json.dumps({'image': '0.jpg', 'caption': 'short', 'long_caption': 'word ' * 120}),
      json.dumps({'image': '1.jpg', 'caption': 'only a short one'})]))
  build.build(f'folder:{folder}', str(tmp_path / 's'), progress=False)
  batch = next(opened(_config(str(tmp_path / 's'), batch_size=2, train=False,
                                             long_context_length=100)))
  assert batch['cls_text'].shape == (2, 100)
  assert batch['cls_text'][0, -1] == 49407  # the long caption, truncated with EOT kept
  np.testing.assert_array_equal(batch['cls_text'][1, :16], batch['text'][1])  # falls back to the short one


def test_unreadable_shard_names_the_file(tmp_path, opened):
  corpus.write_tar(str(tmp_path / 'a.tar'), corpus.good_members(3))
  build.build(f"webdataset:{tmp_path}/a.tar", str(tmp_path / 's'), progress=False)
  (tmp_path / 's' / 'shard-00000.array_record').write_bytes(b'not an array record file')
  with pytest.raises(ValueError, match=str(tmp_path / 's')):
    next(opened(_config(str(tmp_path / 's'))))
