"""Remote inputs through fsspec against a local HTTP server: tars and folders build as local ones do;
a failed download is retried, then counted as a bad input ('unreadable_tar'), never a crash; pipe: commands."""

import collections
import functools
import http.server
import json
import os
import sys
import threading

import corpus
import pytest
from PIL import Image

from superclip_jax.data import build, records, remote


class _Handler(http.server.SimpleHTTPRequestHandler):
  """Static files, plus /flaky-* (503 for the first two requests) and /cut-* (body cut short)."""

  hits: collections.Counter = collections.Counter()

  def log_message(self, *args):
    pass

  def do_GET(self):
    _Handler.hits[self.path] += 1
    name = os.path.basename(self.path)
    if name.startswith('flaky-') and _Handler.hits[self.path] <= 2:
      self.send_error(503)
      return
    if name.startswith('cut-'):
      data = open(os.path.join(self.directory, name), 'rb').read()
      self.send_response(200)
      self.send_header('Content-Length', str(len(data)))
      self.end_headers()
      self.wfile.write(data[: len(data) // 2])  # the connection drops mid-body
      self.close_connection = True
      return
    super().do_GET()


@pytest.fixture
def server(tmp_path, monkeypatch):
  monkeypatch.setattr(remote, 'BACKOFF_S', 0.01)
  root = tmp_path / 'www'
  root.mkdir()
  _Handler.hits.clear()
  httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_Handler, directory=str(root)))
  thread = threading.Thread(target=httpd.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True)
  thread.start()
  yield root, f'http://127.0.0.1:{httpd.server_address[1]}'
  httpd.shutdown()
  httpd.server_close()


def _shard_bytes(out):
  return {p: open(os.path.join(out, p), 'rb').read() for p in sorted(os.listdir(out)) if p.endswith('.array_record')}


def test_tars_over_http_build_like_local_ones(server, tmp_path):
  root, url = server
  for i in range(2):
    corpus.write_tar(str(root / f'{i:05d}.tar'), corpus.good_members(4, start=4 * i))
  manifest = build.build(f'webdataset:{url}/{{00000..00001}}.tar', str(tmp_path / 'http'), workers=1, progress=False)
  local = build.build(f'webdataset:{root}/{{00000..00001}}.tar', str(tmp_path / 'local'), workers=1, progress=False)
  assert manifest['num_records'] == 8 and manifest['skipped'] == {}
  assert [s['source'] for s in manifest['shards']] == [f'{url}/00000.tar', f'{url}/00001.tar']
  assert _shard_bytes(tmp_path / 'http') == _shard_bytes(tmp_path / 'local')
  assert manifest['repaired'] == local['repaired']


def test_failed_downloads_are_retried_then_counted(server, tmp_path):
  root, url = server
  for i, name in enumerate(('good', 'flaky-ok', 'cut-tar')):
    corpus.write_tar(str(root / f'{name}.tar'), corpus.good_members(3, start=3 * i))
  manifest = build.build(
    f'webdataset:{url}/{{good,flaky-ok,missing,cut-tar}}.tar', str(tmp_path / 'out'), workers=1, progress=False
  )
  assert manifest['num_records'] == 6  # good + flaky-ok (third attempt)
  assert manifest['skipped'] == {'unreadable_tar': 2}  # 404, and a body cut short on every attempt
  # Each tar is read twice: for its keys (the duplicate check), then for the shard.
  assert _Handler.hits['/flaky-ok.tar'] == 3 + 1
  assert _Handler.hits['/missing.tar'] == 2  # not found is not retried
  assert _Handler.hits['/cut-tar.tar'] == 2 * (remote.RETRIES + 1)
  lines = manifest['skip_examples']['unreadable_tar']
  assert any('missing.tar' in line for line in lines) and any('cut-tar.tar' in line for line in lines)


def test_pipe_command_tars(tmp_path, monkeypatch):
  monkeypatch.setattr(remote, 'BACKOFF_S', 0.01)
  path = corpus.write_tar(str(tmp_path / 'a.tar'), corpus.good_members(3))
  manifest = build.build(f'webdataset:pipe:cat {path}', str(tmp_path / 'out'), progress=False)
  assert manifest['num_records'] == 3
  manifest = build.build(f'webdataset:pipe:cat {tmp_path}/{{a,nowhere}}.tar', str(tmp_path / 'out2'), workers=1, progress=False)
  assert manifest['num_records'] == 3 and manifest['skipped'] == {'unreadable_tar': 1}
  assert 'status 1' in manifest['skip_examples']['unreadable_tar'][0]


def test_folders_over_http(server, tmp_path):
  root, url = server
  for label, name in enumerate(['golden_retriever', 'tabby_cat']):
    (root / 'pets' / name).mkdir(parents=True)
    for i in range(2):
      Image.fromarray(corpus.picture(10 * label + i)).save(root / 'pets' / name / f'{i}.jpg')
  manifest = build.build(f'folder:{url}/pets/', str(tmp_path / 'o1'), progress=False)
  build.build(f'folder:{root / "pets"}', str(tmp_path / 'o2'), progress=False)
  assert manifest['class_names'] == ['golden_retriever', 'tabby_cat'] and manifest['num_records'] == 4
  assert _shard_bytes(tmp_path / 'o1') == _shard_bytes(tmp_path / 'o2')
  (root / 'caps').mkdir()
  Image.fromarray(corpus.picture(1)).save(root / 'caps' / 'a.jpg')
  rows = [{'image': 'a.jpg', 'caption': 'one'}, {'image': 'gone.jpg', 'caption': 'two'}]
  (root / 'caps' / 'captions.jsonl').write_text('\n'.join(json.dumps(r) for r in rows))
  manifest = build.build(f'folder:{url}/caps', str(tmp_path / 'o3'), progress=False)
  assert manifest['num_records'] == 1 and manifest['skipped'] == {'missing_image': 1}


def test_tars_and_folders_on_gcs_emulator(tmp_path, monkeypatch):
  """gs:// through gcsfs against gcp-storage-emulator (in memory, on 127.0.0.1)."""
  import importlib.util
  import socket

  if not (importlib.util.find_spec('gcsfs') and importlib.util.find_spec('gcp_storage_emulator')):
    pytest.skip('needs gcsfs and gcp-storage-emulator')
  import fsspec
  import gcsfs.core

  # gcsfs picks its class when first imported (GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT, default on: the experimental class asks
  # the absent gRPC control API for the bucket layout and stalls per call), so whatever imported it first and however, the
  # plain class serves gs:// here; the emulator's address and the credentials are read per call, set below.
  for protocol in ('gs', 'gcs'):
    monkeypatch.setitem(sys.modules['fsspec.registry']._registry, protocol, gcsfs.core.GCSFileSystem)

  sock = socket.socket()
  sock.bind(('127.0.0.1', 0))
  port = sock.getsockname()[1]
  sock.close()
  monkeypatch.setenv('STORAGE_EMULATOR_HOST', f'http://127.0.0.1:{port}')
  monkeypatch.setenv('GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT', 'false')  # the same for any process started from here
  monkeypatch.setenv('NO_GCE_CHECK', 'true')
  monkeypatch.setitem(fsspec.config.conf, 'gcs', {'token': 'anon'})
  monkeypatch.setattr(remote, 'BACKOFF_S', 0.01)
  import logging

  from gcp_storage_emulator import server as emulator

  logging.getLogger('gcp_storage_emulator').setLevel(logging.CRITICAL)  # each expected 404 is logged as an ERROR
  server = emulator.create_server('127.0.0.1', port, in_memory=True, default_bucket='bucket')
  server.start()
  try:
    fs = gcsfs.core.GCSFileSystem(token='anon', skip_instance_cache=True)
    for i in range(2):
      tar = corpus.write_tar(str(tmp_path / f'{i:05d}.tar'), corpus.good_members(3, start=3 * i))
      fs.pipe(f'bucket/tars/{i:05d}.tar', open(tar, 'rb').read())
    manifest = build.build('webdataset:gs://bucket/tars/{00000..00002}.tar', str(tmp_path / 'o1'), workers=1, progress=False)
    assert manifest['num_records'] == 6 and manifest['skipped'] == {'unreadable_tar': 1}
    manifest = build.build('webdataset:gs://bucket/tars/*.tar', str(tmp_path / 'glob'), workers=1, progress=False)
    assert [s['source'] for s in manifest['shards']] == ['gs://bucket/tars/00000.tar', 'gs://bucket/tars/00001.tar']
    assert manifest['num_records'] == 6 and manifest['skipped'] == {}
    for name in ('cat', 'dog'):
      fs.pipe(f'bucket/pets/{name}/0.jpg', corpus.encode(corpus.picture(len(name)), 'JPEG'))
    manifest = build.build('folder:gs://bucket/pets', str(tmp_path / 'o2'), workers=1, progress=False)
    assert manifest['class_names'] == ['cat', 'dog'] and manifest['num_records'] == 2
  finally:
    server.stop()


def test_missing_fsspec_driver_is_a_user_error(tmp_path, monkeypatch):
  import fsspec

  from superclip_jax.errors import UserError

  def no_driver(protocol):
    raise ImportError(f'Install s3fs to access {protocol}')

  monkeypatch.setattr(fsspec, 'get_filesystem_class', no_driver)
  with pytest.raises(UserError, match='s3fs'):
    build.build('webdataset:s3://bucket/{0..1}.tar', str(tmp_path / 'out'), progress=False)
  assert not (tmp_path / 'out').exists()


@pytest.fixture
def s3(monkeypatch):
  """An S3 API on 127.0.0.1 (moto's server) with an empty bucket; s3fs reaches it through botocore's env vars."""
  pytest.importorskip('s3fs', reason='s3:// needs s3fs')
  moto_server = pytest.importorskip('moto.server', reason='pip install "moto[server]"')
  import socket

  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    port = sock.getsockname()[1]
  server = moto_server.ThreadedMotoServer(ip_address='127.0.0.1', port=port, verbose=False)
  server.start()
  # Environment, not fsspec.config: the build's worker processes (spawned) read it too.
  for name, value in {
    'AWS_ENDPOINT_URL': f'http://127.0.0.1:{port}',
    'AWS_ACCESS_KEY_ID': 'testing',
    'AWS_SECRET_ACCESS_KEY': 'testing',
    'AWS_DEFAULT_REGION': 'us-east-1',
  }.items():
    monkeypatch.setenv(name, value)
  monkeypatch.setattr(remote, 'BACKOFF_S', 0.01)
  import s3fs

  fs = s3fs.S3FileSystem(skip_instance_cache=True)
  fs.mkdir('bucket')
  yield fs
  s3fs.S3FileSystem.clear_instance_cache()  # its clients point at this server
  server.stop()


def test_tars_on_s3_build_like_local_ones_and_shards_go_to_s3(s3, tmp_path):
  for i in range(2):
    tar = corpus.write_tar(str(tmp_path / 'in' / f'{i:05d}.tar'), corpus.good_members(4, start=3 * i))  # key 3 twice
    s3.put_file(tar, f'bucket/tars/{i:05d}.tar')
  local = build.build(f'webdataset:{tmp_path}/in/{{00000..00001}}.tar', str(tmp_path / 'local'), workers=2, progress=False)
  manifest = build.build('webdataset:s3://bucket/tars/*.tar', str(tmp_path / 's3'), workers=2, progress=False)
  assert [s['source'] for s in manifest['shards']] == ['s3://bucket/tars/00000.tar', 's3://bucket/tars/00001.tar']
  assert manifest['num_records'] == 7 and manifest['skipped'] == {'duplicate_key': 1}
  assert _shard_bytes(tmp_path / 's3') == _shard_bytes(tmp_path / 'local')
  for field in ('num_records', 'skipped', 'repaired', 'tokenizer'):
    assert manifest[field] == local[field], field
  # The same shards written to the bucket (--out s3://), and the manifest read back from there.
  uploaded = build.build('webdataset:s3://bucket/tars/*.tar', 's3://bucket/shards', workers=1, progress=False)
  assert uploaded == manifest
  assert records.read_manifest('s3://bucket/shards')['num_records'] == 7
  assert {p: s3.cat(f'bucket/shards/{p}') for p in _shard_bytes(tmp_path / 'local')} == _shard_bytes(tmp_path / 'local')
  assert records.read_doc_freq('s3://bucket/shards')[1].tolist() == records.read_doc_freq(str(tmp_path / 'local'))[1].tolist()
