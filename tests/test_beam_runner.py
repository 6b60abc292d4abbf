"""--runner beam (Apache Beam DirectRunner) writes the same shards and manifest as the local build."""

import json
import os

import corpus
import pytest

from superclip_jax.data import build, records

pytest.importorskip('apache_beam')


def test_beam_build_matches_local_build(tmp_path):
  for i in range(3):
    corpus.write_tar(str(tmp_path / 'in' / f'{i:05d}.tar'), corpus.good_members(4, start=4 * i))
  members, _, _ = corpus.bad_members()
  corpus.write_tar(str(tmp_path / 'in' / '00003.tar'), members)
  # Key 000011 of 00002.tar again, then two new keys: the later 000011 is a duplicate in either runner.
  corpus.write_tar(str(tmp_path / 'in' / '00004.tar'), corpus.good_members(3, start=11))
  source = f'webdataset:{tmp_path}/in/{{00000..00004}}.tar'
  local = build.build(source, str(tmp_path / 'local'), workers=1, progress=False)
  beam = build.build(source, str(tmp_path / 'beam'), workers=2, progress=False, runner='beam')
  assert beam == local and beam['num_records'] == 22 and beam['skipped']['duplicate_key'] == 2  # one in 00003.tar
  assert [s['num_records'] for s in beam['shards']][-1] == 2
  names = sorted(os.listdir(tmp_path / 'local'))
  assert sorted(os.listdir(tmp_path / 'beam')) == names
  for name in names:
    if name.endswith(('.array_record', '.json', '.npy')):
      assert (tmp_path / 'beam' / name).read_bytes() == (tmp_path / 'local' / name).read_bytes(), name
  for out in ('local', 'beam'):
    assert json.loads((tmp_path / out / 'manifest.json').read_text()) == local
  (n_beam, df_beam), (n_local, df_local) = (records.read_doc_freq(str(tmp_path / o)) for o in ('beam', 'local'))
  assert n_beam == n_local == 22 and df_beam.tolist() == df_local.tolist()


def test_beam_runner_from_the_command_line(tmp_path):
  import subprocess
  import sys

  corpus.write_tar(str(tmp_path / 'a.tar'), corpus.good_members(3))
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'superclip_jax.data.build',
      '--source',
      f'webdataset:{tmp_path}/a.tar',
      '--out',
      str(tmp_path / 'out'),
      '--runner',
      'beam',
    ],
    capture_output=True,
    text=True,
    cwd=root,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.startswith('3 records in 1 shards')
  assert records.read_manifest(str(tmp_path / 'out'))['num_records'] == 3
