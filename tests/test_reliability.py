"""Failures that used to cost a run or a build: a damaged newest checkpoint (crash loop), two writers
in one workdir or one build --out, a SIGTERM that exited 0, malformed samples, stalled servers,
degraded runs, hostile files."""

import errno
import glob
import gzip
import http.server
import io
import json
import os
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import time

import corpus
import jax
import numpy as np
import pytest
from PIL import Image
from test_checkpoint import _config, _state_on

from superclip_jax import checkpoint, errors, metrics, train, tree_names, workdir_lock
from superclip_jax.data import build, records
from superclip_jax.errors import UserError
from superclip_jax.evals import registry
from superclip_jax.interop import tensors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _truncate_largest(step_dir):
  files = [f for f in glob.glob(os.path.join(step_dir, 'state', '**', '*'), recursive=True) if os.path.isfile(f)]
  largest = max(files, key=os.path.getsize)
  with open(largest, 'r+b') as f:
    f.truncate(os.path.getsize(largest) // 2)


def _flip_bytes(step_dir):
  files = [f for f in glob.glob(os.path.join(step_dir, 'state', '**', '*'), recursive=True) if os.path.isfile(f)]
  largest = max(files, key=os.path.getsize)
  size = os.path.getsize(largest)
  with open(largest, 'r+b') as f:
    f.seek(size // 3)
    chunk = bytearray(f.read(min(4096, size // 3)))
    f.seek(size // 3)
    f.write(bytes(b ^ 0xFF for b in chunk))


def _delete_metadata(step_dir):
  for f in glob.glob(os.path.join(step_dir, 'state', '**', '_METADATA'), recursive=True):
    os.remove(f)


def _break_loop_json(step_dir):
  for f in glob.glob(os.path.join(step_dir, 'loop', '*')):
    if os.path.isfile(f):
      with open(f, 'w') as fh:
        fh.write('{not json')


def _run_config(steps):
  config = _config(total_steps=steps, log_every_steps=3)
  config.checkpoint.every_steps = 3
  config.checkpoint.async_save = False
  config.mesh.shape = (8, 1, 1)
  return config


@pytest.mark.parametrize('damage', [_truncate_largest, _flip_bytes, _delete_metadata, _break_loop_json])
def test_damaged_newest_checkpoint_is_set_aside_and_the_rerun_finishes(tmp_path, caplog, damage):
  train.run(_run_config(6), str(tmp_path))
  damage(str(tmp_path / 'checkpoints' / '6'))
  with caplog.at_level('WARNING'):
    rows = train.run(_run_config(9), str(tmp_path))  # resumes at 3, saves 6 again, then 9
  assert [r['step'] for r in rows if 'loss' in r] == [6, 9]
  assert os.path.isdir(tmp_path / 'checkpoints' / '6.damaged')
  assert sorted(os.listdir(tmp_path / 'checkpoints' / '6')) == sorted(os.listdir(tmp_path / 'checkpoints' / '9'))
  warnings = [r.getMessage() for r in caplog.records if 'is damaged' in r.getMessage()]
  assert len(warnings) == 1 and 'checkpoints/6' in warnings[0] and 'moved to' in warnings[0]
  # A second rerun finds no damage (the loop is broken for good): the run is complete, nothing is trained
  # or written, and its rows come back.
  before = (tmp_path / 'metrics.jsonl').read_text()
  again = train.run(_run_config(9), str(tmp_path))
  assert again[-1]['step'] == 9 and (tmp_path / 'metrics.jsonl').read_text() == before


def test_empty_higher_step_folder_is_deleted_under_delete_damaged(tmp_path, caplog):
  train.run(_run_config(3), str(tmp_path))
  os.makedirs(tmp_path / 'checkpoints' / '6')  # e.g. a save killed before its first file
  config = _run_config(6)
  config.checkpoint.delete_damaged = True
  with caplog.at_level('WARNING'):
    rows = train.run(config, str(tmp_path))
  assert [r['step'] for r in rows if 'loss' in r] == [6]
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3', '6']
  assert any('checkpoints/6 is damaged' in r.getMessage() and 'deleted' in r.getMessage() for r in caplog.records)


def test_tools_pass_over_a_damaged_newest_step_and_leave_it(tmp_path, caplog):
  train.run(_run_config(3), str(tmp_path))
  os.makedirs(tmp_path / 'checkpoints' / '6')
  with caplog.at_level('WARNING'):
    path, step = checkpoint.latest_checkpoint_dir(str(tmp_path))
  assert step == 3 and path.endswith('checkpoints/3')
  assert os.path.isdir(tmp_path / 'checkpoints' / '6')  # a tool never moves a run's files
  assert any('checkpoints/6 is damaged (no state)' in r.getMessage() for r in caplog.records)
  with pytest.raises(UserError, match='checkpoints/6 is damaged: no state'):
    checkpoint.checkpoint_dir(str(tmp_path), 6)


def test_no_usable_checkpoint_is_a_list_of_reasons(tmp_path):
  train.run(_run_config(3), str(tmp_path))
  _truncate_largest(str(tmp_path / 'checkpoints' / '3'))
  with pytest.raises(UserError, match=r'no usable checkpoint in .*checkpoints:\n  step 3: '):
    train.run(_run_config(6), str(tmp_path))
  assert os.path.isdir(tmp_path / 'checkpoints' / '3.damaged')


def _main(workdir, *overrides):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  return [sys.executable, '-m', 'superclip_jax.main', '--config', 'configs/tiny.py', '--workdir', str(workdir), *overrides], env


def test_a_second_run_in_a_workdir_is_refused_and_the_first_is_unharmed(tmp_path):
  cmd, env = _main(tmp_path / 'w', '--config.total_steps=40', '--config.log_every_steps=10', '--config.checkpoint.every_steps=20')
  first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  lock_file = tmp_path / 'w' / workdir_lock.LOCK_NAME
  deadline = time.time() + 300
  while time.time() < deadline and first.poll() is None and not (lock_file.exists() and lock_file.read_text()):
    time.sleep(0.05)
  assert first.poll() is None, 'the first run ended before the second started'
  started = time.time()
  second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert second.returncode == 2, second.stderr[-2000:]
  assert time.time() - started < 60
  errors = [line for line in second.stderr.splitlines() if ': error: ' in line]
  holder = json.loads(lock_file.read_text())
  assert len(errors) == 1 and f'is in use by a run on host {holder["host"]}, process id {first.pid}' in errors[0]
  _, stderr = first.communicate(timeout=600)
  assert first.returncode == 0, stderr[-3000:]
  rows = [json.loads(line) for line in (tmp_path / 'w' / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows] == [10, 20, 30, 40]  # one writer's rows, no interleaving
  # Once the first has ended, the workdir is free again (a finished run resumes and does nothing).
  again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-2000:]


def test_a_second_build_into_one_out_is_refused(tmp_path):
  corpus.write_tar(str(tmp_path / 'in.tar'), corpus.good_members(4))
  out = tmp_path / 'shards'
  with workdir_lock.DirectoryLock(str(out), 'shard build'):
    with pytest.raises(workdir_lock.InUse, match=rf'{out} is in use by a shard build on host .*, process id {os.getpid()}'):
      build.build(f'webdataset:{tmp_path}/in.tar', str(out), progress=False)
  manifest = build.build(f'webdataset:{tmp_path}/in.tar', str(out), progress=False)  # free again: builds
  assert manifest['num_records'] == 4


def test_sigterm_saves_then_exits_with_the_preempt_status(tmp_path):
  cmd, env = _main(
    tmp_path / 'w', '--config.total_steps=2000', '--config.log_every_steps=5', '--config.checkpoint.preemption_check_every=1'
  )
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics_file = tmp_path / 'w' / 'metrics.jsonl'
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None and not (metrics_file.exists() and metrics_file.read_text()):
    time.sleep(0.05)
  proc.terminate()
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 143, stderr[-3000:]
  step = int(stderr.split('preempted: checkpoint of step ')[1].split()[0])
  assert checkpoint.latest_checkpoint_dir(str(tmp_path / 'w'))[1] == step
  assert 'run the same command to resume (exit status 143)' in stderr


def test_fingerprints_catch_one_flipped_bit_in_any_leaf():
  state, _ = _state_on(_config(), (8, 1, 1), jax.devices(), steps=1)
  before = checkpoint.fingerprints(state)
  assert before == checkpoint.fingerprints(jax.tree.map(lambda x: x, state))
  name = 'params.image_tower.proj'
  leaf = np.asarray(checkpoint.flat_names(state)[name]).copy()
  leaf.view(np.uint32).reshape(-1)[7] ^= 1 << 30  # one exponent bit: 1e-2 becomes about 1e36
  flipped = state.replace(
    params=jax.tree_util.tree_map_with_path(
      lambda path, x: jax.device_put(leaf, x.sharding) if tree_names.path_name(path) == 'image_tower.proj' else x,
      state.params,
    )
  )
  after = checkpoint.fingerprints(flipped)
  assert [n for n in before if before[n] != after[n]] == [name]


def test_a_checkpoint_whose_arrays_differ_from_their_fingerprints_is_set_aside(tmp_path, caplog):
  train.run(_run_config(6), str(tmp_path))
  # Well-formed files whose contents are not what was saved: equivalently, the recorded
  # fingerprint of one array changed (the test above shows one flipped bit changes it).
  loop_file = tmp_path / 'checkpoints' / '6' / 'loop' / 'metadata'
  loop = json.loads(loop_file.read_text())
  loop['fingerprints']['params.image_tower.proj'] ^= 1 << 12
  loop_file.write_text(json.dumps(loop))
  with caplog.at_level('WARNING'):
    rows = train.run(_run_config(9), str(tmp_path))
  assert [r['step'] for r in rows if 'loss' in r] == [6, 9]
  message = [r.getMessage() for r in caplog.records if 'is damaged' in r.getMessage()][0]
  assert 'checkpoints/6' in message and 'differ from their fingerprints at save: params.image_tower.proj' in message


def test_a_rebuild_from_other_inputs_is_refused_unless_overwrite(tmp_path):
  corpus.write_tar(str(tmp_path / 'a.tar'), corpus.good_members(4))
  corpus.write_tar(str(tmp_path / 'b.tar'), corpus.good_members(6, start=10))
  out = str(tmp_path / 'shards')
  assert build.build(f'webdataset:{tmp_path}/a.tar', out, progress=False)['num_records'] == 4
  assert build.build(f'webdataset:{tmp_path}/a.tar', out, progress=False)['num_records'] == 4  # the same: fine
  with pytest.raises(
    UserError,
    match=rf"--out {out} holds shards built from 'webdataset:{tmp_path}/a.tar' with other "
    r'inputs or options; give another --out, or --overwrite',
  ):
    build.build(f'webdataset:{tmp_path}/b.tar', out, progress=False)
  with pytest.raises(UserError, match='other inputs or options'):  # the same input, another option
    build.build(f'webdataset:{tmp_path}/a.tar', out, progress=False, max_side=16)
  manifest = build.build(f'webdataset:{tmp_path}/b.tar', out, progress=False, overwrite=True)
  assert manifest['num_records'] == 6 and manifest['builder']['source'] == f'webdataset:{tmp_path}/b.tar'
  assert len(manifest['shards']) == len([f for f in os.listdir(out) if f.endswith('.array_record')])


def test_an_out_inside_the_source_folder_is_refused(tmp_path):
  for label in ('cat', 'dog'):
    os.makedirs(tmp_path / 'src' / label)
    Image.fromarray(corpus.picture(1)).save(tmp_path / 'src' / label / 'a.png')
  with pytest.raises(UserError, match=r'--out .*src/shards is inside the source folder'):
    build.build(f'folder:{tmp_path}/src', str(tmp_path / 'src' / 'shards'), progress=False)
  assert not os.path.exists(tmp_path / 'src' / 'shards')


def test_a_build_of_zero_records_exits_non_zero(tmp_path):
  corpus.write_tar(str(tmp_path / 'junk.tar'), [('k1.jpg', b'not an image'), ('k1.txt', b'a caption')])
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'superclip_jax.data.build',
      '--source',
      f'webdataset:{tmp_path}/junk.tar',
      '--out',
      str(tmp_path / 'out'),
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert [line for line in proc.stderr.splitlines() if ': error: ' in line][0].endswith('nothing to train on')


def test_a_torn_last_metrics_line_is_dropped_and_the_run_resumes(tmp_path, caplog):
  train.run(_run_config(3), str(tmp_path))
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 4, "loss": 1.2')  # killed mid-write
  with caplog.at_level('WARNING'):
    rows = train.run(_run_config(6), str(tmp_path))
  assert [r['step'] for r in rows if 'loss' in r] == [6]
  assert any('metrics.jsonl line 2 is not a metrics row' in r.getMessage() for r in caplog.records)
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert [json.loads(line)['step'] for line in lines] == [3, 6]


def test_a_run_that_mostly_skips_updates_stops(tmp_path):
  config = _config(nonfinite='skip', total_steps=30, log_every_steps=5)
  config.optim.learning_rate = 1e30  # every update after the first is non-finite
  config.checkpoint.every_steps = 0
  with pytest.raises(
    train.DegradedRun,
    match=r'14 of 15 updates were dropped as non-finite \(more than '
    r'nonfinite_max_skipped=0.01\)',
  ):
    train.run(config, str(tmp_path))


def test_replaced_examples_past_the_limit_stop_the_run():
  config = _config()
  train.check_degradation(config, done=10, skipped_updates=0, replaced=100, read=1000)  # the floor: 100
  train.check_degradation(config, done=1000, skipped_updates=0, replaced=1000, read=100_000)  # 1%
  with pytest.raises(train.DegradedRun, match=r'1001 of 100000 examples read were undecodable and replaced'):
    train.check_degradation(config, done=1000, skipped_updates=0, replaced=1001, read=100_000)
  config.data.max_replaced_fraction = 0.5
  train.check_degradation(config, done=1000, skipped_updates=0, replaced=1001, read=100_000)


def test_malformed_samples_are_skipped_and_counted_and_the_build_finishes(tmp_path):
  src = tmp_path / 'src'
  src.mkdir()
  for i in range(4):
    Image.fromarray(corpus.picture(i)).save(src / f'{i}.png')
  outside = tmp_path / 'secret.png'
  Image.fromarray(corpus.picture(9)).save(outside)
  os.symlink(outside, src / 'link.png')
  rows = [
    {'image': '0.png', 'caption': 'a good one', 'label': 3},
    {'image': '1.png', 'caption': 12345},  # a number
    {'image': '2.png', 'caption': None},
    {'image': '3.png', 'caption': 'huge label', 'label': 2**70},
    {'image': '0.png', 'caption': 'int64 label', 'label': 2**40},
    ['0.png', 'a JSON array row'],
    {'caption': 'no image field'},
    {'image': 'link.png', 'caption': 'points outside'},
    {'image': '1.png', 'caption': 'x' * 100_000},
  ]  # cut before tokenizing
  lines = [json.dumps(r) for r in rows] + ['{"image": "2.png", "caption": "torn']
  (src / 'captions.jsonl').write_text('\n'.join(lines) + '\n')
  manifest = build.build(f'folder:{src}', str(tmp_path / 'out'), progress=False)
  assert manifest['num_records'] == 2
  assert manifest['skipped'] == {
    'caption_not_text': 1,
    'missing_caption': 1,
    'label_out_of_range': 2,
    'row_not_object': 1,
    'row_without_image': 1,
    'outside_source': 1,
    'row_not_json': 1,
  }
  assert manifest['repaired']['caption_cut'] == 1
  text = json.dumps(manifest)
  assert ' at 0x' not in text and 'secret' not in text


def test_an_oversized_tar_member_is_skipped_unread(tmp_path):

  members = corpus.good_members(2)
  path = tmp_path / 'bomb.tar.gz'
  with gzip.open(path, 'wb', compresslevel=1) as gz, tarfile.open(fileobj=gz, mode='w|') as tar:
    for name, data in members:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
    info = tarfile.TarInfo('bomb.jpg')
    info.size = 1 << 30  # 1 GiB of zeros: about 1 MB compressed
    zeros = b'\0' * (1 << 20)

    class Zeros:
      def read(self, n):
        return zeros[:n]

    tar.addfile(info, Zeros())
  assert path.stat().st_size < 8 << 20
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  # The build's own peak memory (its one shard is built in-process), printed as its last line.
  # VmHWM, not ru_maxrss: the latter keeps the forking pytest process's size across exec.
  measure = (
    'import runpy, sys\n'
    'try:\n'
    '  runpy.run_module("superclip_jax.data.build", run_name="__main__")\n'
    'finally:\n'
    '  hwm = [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")][0]\n'
    '  print("peak_kb", hwm, file=sys.stderr)\n'
  )
  proc = subprocess.run(
    [sys.executable, '-c', measure, '--source', f'webdataset:{path}', '--out', str(tmp_path / 'out')],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  manifest = json.loads((tmp_path / 'out' / 'manifest.json').read_text())
  assert manifest['num_records'] == 2 and manifest['skipped'].get('member_too_large') == 1
  peak_mb = int(proc.stderr.split('peak_kb ')[-1].split()[0]) / 1024
  assert peak_mb < 700, f'the build peaked at {peak_mb:.0f} MB'  # reading the member would add 1,024


def test_a_manifest_cannot_point_outside_its_folder(tmp_path):

  corpus.write_tar(str(tmp_path / 'in.tar'), corpus.good_members(2))
  out = tmp_path / 'out'
  build.build(f'webdataset:{tmp_path}/in.tar', str(out), progress=False)
  manifest = json.loads((out / 'manifest.json').read_text())
  manifest['shards'][0]['file'] = '../../etc/passwd'
  (out / 'manifest.json').write_text(json.dumps(manifest))
  with pytest.raises(UserError, match=r"shard '\.\./\.\./etc/passwd' is not a file name inside"):
    records.read_manifest(str(out))


def test_a_stalled_server_is_a_counted_failure_within_the_deadline(tmp_path):
  # One server: good.tar is served, stalled.tar is accepted and then never answered.
  corpus.write_tar(str(tmp_path / 'good.tar'), corpus.good_members(2))
  release = threading.Event()

  class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, directory=str(tmp_path), **kwargs)

    def send_head(self):
      if 'stalled' in self.path:
        release.wait(120)
        return None
      return super().send_head()

    def log_message(self, *args):
      pass

  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  url = f'http://127.0.0.1:{server.server_address[1]}'
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env.update(SUPERCLIP_READ_TIMEOUT_S='3', SUPERCLIP_DOWNLOAD_RETRIES='1', SUPERCLIP_DOWNLOAD_BACKOFF_S='0.1')
  started = time.time()
  try:
    proc = subprocess.run(
      [
        sys.executable,
        '-m',
        'superclip_jax.data.build',
        '--source',
        f'webdataset:{url}/{{good,stalled}}.tar',
        '--out',
        str(tmp_path / 'out'),
      ],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
    )
  finally:
    release.set()
    server.shutdown()
    server.server_close()
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert time.time() - started < 90
  manifest = json.loads((tmp_path / 'out' / 'manifest.json').read_text())
  assert manifest['num_records'] == 2 and manifest['skipped'] == {'unreadable_tar': 1}
  assert 'Timeout' in json.dumps(manifest['skip_examples']), manifest['skip_examples']


def test_resuming_at_another_global_batch_is_refused(tmp_path):
  train.run(_run_config(3), str(tmp_path))
  config = _run_config(6)
  config.data.global_batch_size *= 2
  with pytest.raises(checkpoint.OtherBatch, match=r'trained at data.global_batch_size=16, this run has 32: resuming'):
    train.run(config, str(tmp_path))
  assert os.path.isdir(tmp_path / 'checkpoints' / '3')  # refused, not set aside


def test_a_safetensors_file_with_a_hostile_header_is_one_clear_error(tmp_path):
  bad = tmp_path / 'model.safetensors'
  bad.write_bytes(struct.pack('<Q', 2**62) + b'{}')
  with pytest.raises(
    UserError,
    match=r'model.safetensors: not a valid safetensors file \(its header claims '
    r'4611686018427387904 bytes; the file has 10\)',
  ):
    tensors.read_file(str(bad))
  bad.write_bytes(struct.pack('<Q', 2) + b'{]')
  with pytest.raises(UserError, match='model.safetensors: not a valid safetensors file'):
    tensors.read_file(str(bad))


def test_a_full_disk_is_one_line_naming_the_file(capsys):
  with pytest.raises(SystemExit) as exit_info:
    with errors.user_errors('superclip_jax.main'):
      raise OSError(errno.ENOSPC, 'No space left on device', '/tmp/run/metrics.jsonl')
  assert exit_info.value.code == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert (
    len(err) == 1
    and err[0].startswith('superclip_jax.main: error: no space left on the device writing /tmp/run/metrics.jsonl (')
    and 'MiB free' in err[0]
  )


def test_evaluation_shards_of_another_tokenizer_are_refused(tmp_path):
  corpus.write_tar(str(tmp_path / 'in.tar'), corpus.good_members(2))
  build.build(f'webdataset:{tmp_path}/in.tar', str(tmp_path / 'eval'), progress=False)  # the CLIP BPE: 49,408
  config = _config()  # a 64-token vocabulary
  config.evals.zs = registry.evaluator(kind='retrieval', shards=str(tmp_path / 'eval'))
  with pytest.raises(
    UserError,
    match=r'tokenizer mismatch with config.evals.zs.shards \(.*eval\): '
    r'config.model.vocab_size=64 but the shards have 49408',
  ):
    registry.Evaluators(config, embedder=None)


def test_the_first_throughput_row_after_a_resume_counts_only_timed_steps():
  # Resumed at step 20 (the window's clock: 4 s before the kill), the first step compiles untimed.
  resumed = metrics.Throughput(8, 100, start_step=20, elapsed=4.0, untimed_steps=1)
  time.sleep(0.5)
  row = resumed.update(30)
  assert row['steps_per_sec'] == pytest.approx(9 / 4.5, rel=0.05)  # 9 timed steps in 4.5 s, not 10
  # A row at the very first resumed step has no timed step: no throughput, not a 100x figure.
  assert metrics.Throughput(8, 100, start_step=20, untimed_steps=1).update(21) == {}


@pytest.mark.parametrize('fingerprinted', [True, False])
def test_the_nonfinite_stop_names_only_a_verified_checkpoint(tmp_path, fingerprinted):
  train.run(_run_config(3), str(tmp_path))
  if not fingerprinted:  # as written before fingerprints were recorded: restorable, not verifiable
    loop_file = tmp_path / 'checkpoints' / '3' / 'loop' / 'metadata'
    loop = json.loads(loop_file.read_text())
    del loop['fingerprints']
    loop_file.write_text(json.dumps(loop))
  config = _run_config(6)
  config.optim.learning_rate = 1e30
  expected = r'the last good checkpoint is .*checkpoints/3\.' if fingerprinted else r'no checkpoint of this run is known good'
  with pytest.raises(train.NonFiniteError, match=r'non-finite loss or gradient at step 5; ' + expected):
    train.run(config, str(tmp_path))


def test_a_key_goes_to_its_first_usable_sample(tmp_path):
  jpegs = [corpus.encode(corpus.picture(i), 'JPEG') for i in range(3)]
  first = [('k.jpg', jpegs[0])]  # no caption: unusable
  later = [('x.jpg', jpegs[1]), ('x.txt', b'another'), ('k.jpg', jpegs[2]), ('k.txt', b'the k')]
  corpus.write_tar(str(tmp_path / 'a.tar'), first + later)  # within one tar
  manifest = build.build(f'webdataset:{tmp_path}/a.tar', str(tmp_path / 'one'), progress=False)
  assert manifest['num_records'] == 2 and manifest['skipped'] == {'missing_caption': 1}
  corpus.write_tar(str(tmp_path / 'b0.tar'), first)  # across tars: the earlier one's k is unusable
  corpus.write_tar(str(tmp_path / 'b1.tar'), later)
  manifest = build.build(f'webdataset:{tmp_path}/b{{0..1}}.tar', str(tmp_path / 'two'), progress=False)
  assert manifest['num_records'] == 2 and manifest['skipped'] == {'missing_caption': 1}
  keys = sorted(r['key'] for r in corpus.built_records(tmp_path / 'two'))
  assert keys == ['k', 'x']


def test_an_unreachable_store_is_one_line_in_seconds(tmp_path):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]  # nothing listens here once closed
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env.update(
    STORAGE_EMULATOR_HOST=f'http://127.0.0.1:{port}',
    GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT='false',
    FSSPEC_GCS_TOKEN='anon',
    NO_GCE_CHECK='true',
    SUPERCLIP_CONNECT_TIMEOUT_S='3',
  )
  started = time.time()
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'superclip_jax.data.build',
      '--source',
      'webdataset:gs://bucket/shards/{00000..00099}.tar',
      '--out',
      str(tmp_path / 'out'),
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2 and time.time() - started < 60, proc.stderr[-2000:]
  errors = [line for line in proc.stderr.splitlines() if ': error: ' in line]
  assert len(errors) == 1 and 'gs://bucket/shards/00000.tar: cannot reach it' in errors[0], proc.stderr[-2000:]


def test_a_hard_link_in_a_tar_reads_its_target(tmp_path):
  jpeg = corpus.encode(corpus.picture(1), 'JPEG')
  path = tmp_path / 'links.tar'
  with tarfile.open(path, 'w') as tar:
    for name, data in [('a.jpg', jpeg), ('a.txt', b'the first'), ('b.txt', b'the same image again')]:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
    link = tarfile.TarInfo('b.jpg')
    link.type, link.linkname = tarfile.LNKTYPE, 'a.jpg'
    tar.addfile(link)
  manifest = build.build(f'webdataset:{path}', str(tmp_path / 'out'), progress=False)
  assert manifest['num_records'] == 2 and manifest['skipped'] == {}
  images = {r['key']: r['image'] for r in corpus.built_records(tmp_path / 'out')}
  assert images['a'] == images['b'] == jpeg
