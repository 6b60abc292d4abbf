"""The Grain pipeline: exact resume, disjoint per-process slices, mixtures, bad records skipped and counted."""

import corpus
import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from superclip_jax.data import build, pipeline, records
from superclip_jax.data import tokenizer as tokenizer_lib
from superclip_jax.errors import UserError

N = 23  # records: batches of 4 cross the epoch boundary mid-batch


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
  root = tmp_path_factory.mktemp('pipeline')
  corpus.write_tar(str(root / 'in' / '00000.tar'), corpus.good_members(12))
  corpus.write_tar(str(root / 'in' / '00001.tar'), corpus.good_members(N - 12, start=12))
  out = str(root / 'shards')
  build.build(f'webdataset:{root}/in/{{00000..00001}}.tar', out, progress=False)
  return out


def _config(shards, **kw):
  batch = kw.pop('batch_size', 4)
  base = dict(shard_dirs=[shards], global_batch_size=batch, rows=((0, batch),), image_size=24, context_length=16, seed=3)
  base.update(kw)
  return pipeline.PipelineConfig(**base)


def _take(it, n):
  return [next(it) for _ in range(n)]


@pytest.fixture
def opened():
  """Opens pipelines and closes them (worker processes, threads) when the test ends."""
  iterators = []

  def open_(config, start_step=0):
    iterators.append(pipeline.ShardBatches(config, start_step))
    return iterators[-1]

  yield open_
  for it in iterators:
    it.close()


def _same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize('workers', [0, 2])
@pytest.mark.parametrize('resume_at', [2, 7])  # 2 batches = 8 records: mid-epoch; 7 (28 > 23) is past the boundary
def test_exact_resume(shards, workers, resume_at, opened):
  straight = _take(opened(_config(shards, workers=workers)), 9)
  first = opened(_config(shards, workers=workers))
  _take(first, resume_at)
  state = first.get_state()
  assert state == {'step': resume_at}
  resumed = opened(_config(shards, workers=workers))
  resumed.set_state(state)
  for a, b in zip(straight[resume_at:], _take(resumed, 9 - resume_at)):
    _same(a, b)


@pytest.mark.parametrize('rows', [[((0, 4),), ((4, 8),)], [((0, 2), (4, 6)), ((2, 4), (6, 8))]])
def test_processes_rows_make_up_the_single_process_batch_in_training(shards, rows, opened):
  # Shuffled, repeated and randomly cropped: each process's rows of a step are its part of the
  # one global batch, whatever the process count (contiguous or interleaved rows).
  whole = _take(opened(_config(shards, batch_size=8)), 4)
  parts = [_take(opened(_config(shards, batch_size=8, rows=r, workers=w)), 4) for r, w in zip(rows, (0, 2))]
  for step in range(4):
    for key in ('images', 'text', 'label'):
      got = np.zeros_like(whole[step][key])
      for process_rows, batches in zip(rows, parts):
        local, n = batches[step][key], 0
        for start, stop in process_rows:
          got[start:stop] = local[n : n + stop - start]
          n += stop - start
      np.testing.assert_array_equal(got, whole[step][key], err_msg=f'step {step} {key}')


def test_epochs_reshuffle_and_cover_everything(shards, opened):
  it = opened(_config(shards, batch_size=N))
  tok = tokenizer_lib.load_tokenizer('clip')
  epochs = []
  for _ in range(2):
    batch = next(it)
    epochs.append([tok.decode(t) for t in batch['text']])
  assert sorted(epochs[0]) == sorted(epochs[1]) and len(set(epochs[0])) == N
  assert epochs[0] != epochs[1]


def test_eval_processes_cover_every_record_once(shards, opened):
  seen = []
  for rows in (((0, 2),), ((2, 4),)):
    for b in opened(_config(shards, rows=rows, train=False)):
      seen.extend(tuple(t) for t, v in zip(b['text'], b['valid']) if v)
  assert len(seen) == len(set(seen)) == N


def test_eval_mode_is_ordered_centre_crops_padded_at_the_end(shards, opened):
  a = list(opened(_config(shards, train=False)))
  b = list(opened(_config(shards, train=False)))
  assert len(a) == 6 and sum(int(x['valid'].sum()) for x in a) == N
  assert a[-1]['valid'].tolist() == [True] * (N % 4) + [False] * (4 - N % 4)
  for x, y in zip(a, b):
    _same(x, y)
  tok = tokenizer_lib.load_tokenizer('clip')
  captions = [tok.decode(t).replace(' ', '') for x in a for t, v in zip(x['text'], x['valid']) if v]
  assert captions == [f'apicturenumber{i}withasquare' for i in range(N)]  # record order


def test_mixture_follows_weights(shards, tmp_path, opened):
  other = tmp_path / 'other'
  corpus.write_tar(str(tmp_path / 'o.tar'), corpus.good_members(5, start=500))
  build.build(f'webdataset:{tmp_path}/o.tar', str(other), progress=False)
  it = opened(_config(shards, shard_dirs=[shards, str(other)], weights=(0.75, 0.25), batch_size=40))
  digits = np.concatenate([next(it)['text'][:, 4:6] for _ in range(5)])  # the first two digits of i
  tok = tokenizer_lib.load_tokenizer('clip')
  from_other = np.all(digits == tok.encode('5 0'), axis=1)  # other's captions are numbered 500..504
  assert 0.15 < from_other.mean() < 0.35


def test_corrupt_images_are_skipped_and_counted(tmp_path, opened):
  shard_dir = tmp_path / 'shards'
  corpus.write_tar(str(tmp_path / 'a.tar'), corpus.good_members(6))
  build.build(f'webdataset:{tmp_path}/a.tar', str(shard_dir), progress=False)
  # Damage the stored data after the build: one undecodable image, one unparsable record.
  manifest = records.read_manifest(str(shard_dir))
  path = manifest['shards'][0]['path']
  import grain

  src = grain.sources.ArrayRecordDataSource([path])
  raw = [src[i] for i in range(len(src))]
  rec = records.decode_record(raw[2])
  raw[2] = records.encode_record(
    key=rec['key'], image=b'\xff\xd8garbage', caption=rec['caption'], tokens=rec['tokens'], label=rec['label']
  )
  raw[4] = b'\x00not msgpack'
  del src
  writer = ArrayRecordWriter(path, 'group_size:1')
  for r in raw:
    writer.write(r)
  writer.close()
  # Evaluation leaves the two out (valid = False) and counts them.
  batches = list(opened(_config(str(shard_dir), batch_size=4, train=False)))
  assert sum(int(b['valid'].sum()) for b in batches) == 4
  assert sum(int(b['skipped_examples']) for b in batches) == 2
  # Training replaces each by a spare record chosen by its index alone, and counts it: every
  # batch stays full, and the same on every run.
  runs = [_take(opened(_config(str(shard_dir), batch_size=6)), 3) for _ in range(2)]
  assert all(len(b['label']) == 6 for b in runs[0])
  assert sum(int(b['skipped_examples']) for b in runs[0]) >= 2
  for a, b in zip(*runs):
    _same(a, b)


def test_long_captions_feed_cls_text(tmp_path, opened):
  import json

  from PIL import Image

  folder = tmp_path / 'f'
  folder.mkdir()
  Image.fromarray(corpus.picture(0)).save(folder / '0.jpg')
  Image.fromarray(corpus.picture(1)).save(folder / '1.jpg')
  (folder / 'captions.jsonl').write_text(
    '\n'.join(
      [
        json.dumps({'image': '0.jpg', 'caption': 'short', 'long_caption': 'word ' * 120}),
        json.dumps({'image': '1.jpg', 'caption': 'only a short one'}),
      ]
    )
  )
  build.build(f'folder:{folder}', str(tmp_path / 's'), progress=False)
  batch = next(opened(_config(str(tmp_path / 's'), batch_size=2, train=False, long_context_length=100)))
  assert batch['token_ids'].shape == (2, 100)
  assert batch['token_ids'][0, -1] == 49407  # the long caption, truncated with EOT kept
  np.testing.assert_array_equal(batch['token_ids'][1, :16], batch['text'][1])  # falls back to the short one


def test_unreadable_shard_names_the_file(tmp_path, opened):
  corpus.write_tar(str(tmp_path / 'a.tar'), corpus.good_members(3))
  build.build(f'webdataset:{tmp_path}/a.tar', str(tmp_path / 's'), progress=False)
  (tmp_path / 's' / 'shard-00000.array_record').write_bytes(b'not an array record file')
  with pytest.raises(UserError, match=str(tmp_path / 's')):
    next(opened(_config(str(tmp_path / 's'))))
