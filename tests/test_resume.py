"""Kill (SIGTERM) and resume: bitwise identical to an uninterrupted run, logs included, as a user would do it."""

import json
import os
import signal
import subprocess
import sys
import time

import corpus
import numpy as np
import pytest

from superclip_jax import checkpoint, metrics
from superclip_jax.data import build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 40
LOG_EVERY = 16  # the interruption lands between two log points


def _command(shards, workdir):
  return [
    sys.executable,
    '-m',
    'superclip_jax.main',
    '--config',
    f'configs/tiny_shards.py:{shards}',
    '--workdir',
    str(workdir),
    f'--config.total_steps={STEPS}',
    f'--config.log_every_steps={LOG_EVERY}',
    '--config.checkpoint.every_steps=0',
    '--config.data.global_batch_size=8',
    '--config.data.workers=1',
    '--config.model.image=mu/8',
    '--config.model.text=mu',
    '--config.model.embed_dim=32',
  ]


def _env():
  return {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}


def _rows(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]


@pytest.mark.slow
def test_sigterm_then_resume_is_bitwise_identical(tmp_path):
  corpus.write_tar(str(tmp_path / 'in.tar'), corpus.good_members(44))  # several epochs of batch 8
  shards = tmp_path / 'shards'
  build.build(f'webdataset:{tmp_path}/in.tar', str(shards), progress=False)

  straight = tmp_path / 'straight'
  proc = subprocess.run(_command(shards, straight), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]

  interrupted = tmp_path / 'interrupted'
  proc = subprocess.Popen(
    _command(shards, interrupted), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  metrics_file = interrupted / 'metrics.jsonl'
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    if metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= 1:
      proc.send_signal(signal.SIGTERM)
      break
    time.sleep(0.02)
  _, stderr = proc.communicate(timeout=600)
  assert proc.returncode == 143, stderr[-3000:]  # not finished: a scheduler requeues it
  assert 'preempted: checkpoint of step' in stderr
  assert [r['step'] for r in _rows(interrupted)] == [LOG_EVERY]  # no row for the interrupted window
  stopped_at = int(stderr.split('preempted: checkpoint of step ')[1].split()[0])
  assert LOG_EVERY < stopped_at < 2 * LOG_EVERY  # between two log points

  proc = subprocess.run(_command(shards, interrupted), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'resuming at step {stopped_at}' in proc.stderr

  a, b = _rows(straight), _rows(interrupted)
  assert [r['step'] for r in a] == [r['step'] for r in b] == [16, 32, 40]
  for ra, rb in zip(a, b):  # every key but timing, the window spanning the interruption included
    keys = set(ra) - set(metrics.TIMING_KEYS)
    assert keys == set(rb) - set(metrics.TIMING_KEYS) and 'token_loss' in keys
    for key in keys:
      assert ra[key] == rb[key], (ra['step'], key)
  final_a = checkpoint.read_numpy_tree(str(straight / 'checkpoints' / str(STEPS) / 'state'))
  final_b = checkpoint.read_numpy_tree(str(interrupted / 'checkpoints' / str(STEPS) / 'state'))
  flat_a, flat_b = _flatten(final_a), _flatten(final_b)
  assert flat_a.keys() == flat_b.keys()
  for key in flat_a:  # params, optimizer moments, IDF counts, step, RNG
    np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg=key)
  loops = [json.loads((d / 'checkpoints' / str(STEPS) / 'loop' / 'metadata').read_text()) for d in (straight, interrupted)]
  assert loops[0]['data'] == loops[1]['data'] == {'step': STEPS}


def _flatten(tree):
  import jax

  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
