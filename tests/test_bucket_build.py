"""Shards built into a gs:// --out (GCS emulator on 127.0.0.1) by either runner: the same records,
manifest and document frequencies as a local build, read back by the training pipeline from the bucket."""

import json
import os

import corpus
import pytest
from test_bucket_workdir import ROOT, _run, emulator  # noqa: F401 (the fixture)

# Prints what a shard directory (local or gs://) gives the trainer: the manifest less its paths, the
# records, the document frequencies, and a digest of every batch of an evaluation pass of the pipeline.
_READ_BACK = """
import hashlib, json, sys
import grain
from superclip_jax.data import pipeline, records
out = sys.argv[1]
manifest = records.read_manifest(out)
source = grain.sources.ArrayRecordDataSource([s['path'] for s in manifest['shards']])
recs = [records.decode_record(source[i]) for i in range(len(source))]
n, df = records.read_doc_freq(out)
config = pipeline.PipelineConfig(shard_dirs=[out], global_batch_size=4, rows=((0, 4),), image_size=24,
                                 context_length=16, train=False)
with pipeline.ShardBatches(config) as batches:
  digests = [hashlib.sha256(b''.join(v.tobytes() for _, v in sorted(b.items()))).hexdigest() for b in batches]
for shard in manifest['shards']:
  del shard['path']
del manifest['directory']
print(json.dumps({'manifest': manifest, 'doc_freq': [n, df.tolist()], 'batches': digests,
                  'records': [[r['key'], r['caption'], hashlib.sha256(r['image']).hexdigest(), r['tokens'].tolist(),
                               r['label']] for r in recs]}))
"""


def _read_back(env, out):
  return json.loads(_run(env, '-c', _READ_BACK, out, timeout=300).stdout)


@pytest.mark.parametrize('runner', ['local', 'beam'])
def test_build_into_a_bucket_reads_back_like_a_local_build(emulator, tmp_path, runner):  # noqa: F811
  if runner == 'beam':
    pytest.importorskip('apache_beam')
  corpus.write_tar(str(tmp_path / 'in' / '00000.tar'), corpus.good_members(5))
  corpus.write_tar(str(tmp_path / 'in' / '00001.tar'), corpus.good_members(5, start=3))  # two keys of 00000.tar
  source = f'webdataset:{tmp_path}/in/{{00000..00001}}.tar'
  out = f'gs://bucket/shards-{runner}'
  build = ['-m', 'superclip_jax.data.build', '--source', source, '--workers', '2', '--runner', runner]
  proc = _run(emulator, *build, '--out', out, timeout=300)
  assert proc.stdout.startswith('8 records in 2 shards'), proc.stdout
  _run(emulator, *build, '--out', str(tmp_path / 'local'))
  remote, local = _read_back(emulator, out), _read_back(emulator, str(tmp_path / 'local'))
  assert remote['manifest']['skipped'] == {'duplicate_key': 2}
  assert len(remote['records']) == 8 and len(remote['batches']) == 2
  assert remote == local
  # Run again: every shard's stats are in the bucket, so nothing is rebuilt and the manifest is the same.
  proc = _run(emulator, *build, '--out', out)
  assert 'building' not in proc.stderr and _read_back(emulator, out) == remote
  assert not os.path.exists(os.path.join(ROOT, 'gs:'))  # no local folder named like the URL
