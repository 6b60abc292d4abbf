"""Two processes x 4 CPU devices form one JAX job (launch/local_multiprocess.sh), as on a pod.

The same logged losses as 1 process x 8 devices on meshes whose axes span the processes;
a SIGTERM-and-resume that stays bitwise; a 2-process checkpoint continued by 1 process;
init_from across process counts; a missing peer and a port in use are reported.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from superclip_jax import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, 'launch', 'local_multiprocess.sh')
KEYS = ('loss', 'contrastive_loss', 'token_loss', 'grad_norm', 'logit_scale')


def _env(devices=None):
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  env['PYTHON'] = sys.executable
  if devices:
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
    env['JAX_PLATFORMS'] = 'cpu'
  return env


def _overrides(steps, *extra):
  return [
    f'--config.total_steps={steps}',
    '--config.log_every_steps=5',
    '--config.checkpoint.every_steps=0',
    '--config.checkpoint.preemption_check_every=1',
    *extra,
  ]


def two_processes(workdir, *overrides, steps=20, wait=True):
  cmd = ['bash', LAUNCH, '2', 'configs/tiny.py', str(workdir), *_overrides(steps, *overrides)]
  if not wait:
    return subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, 'logs', 'process_0.log')) as f:  # the launcher keeps each process's output
    STDERR[str(workdir)] = f.read()
  return _rows(workdir)


def one_process(workdir, *overrides, steps=20):
  cmd = [
    sys.executable,
    '-m',
    'superclip_jax.main',
    '--config',
    'configs/tiny.py',
    '--workdir',
    str(workdir),
    *_overrides(steps, *overrides),
  ]
  proc = subprocess.run(cmd, cwd=ROOT, env=_env(devices=8), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  STDERR[str(workdir)] = proc.stderr
  return _rows(workdir)


STDERR: dict[str, str] = {}  # the last run's output (process 0's, for two), by workdir


def _rows(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]


def _close(a, b, rel=2e-5):
  assert [r['step'] for r in a] == [r['step'] for r in b]
  for ra, rb in zip(a, b):
    for key in KEYS:
      assert ra[key] == pytest.approx(rb[key], rel=rel), (ra['step'], key)


RESUME_STEPS = 30  # the uninterrupted 2-process run; init_from needs its loss 0.5 below the start


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  """One uninterrupted 2-process run on tiny.py's own mesh, (8,1,1): the reference of several tests."""
  workdir = tmp_path_factory.mktemp('straight')
  return workdir, two_processes(workdir, steps=RESUME_STEPS)


@pytest.mark.slow
@pytest.mark.parametrize('mesh', ['(8,1,1)', '(2,2,2)', '(1,1,8)'])  # (1,1,8): the tensor axis spans the processes
def test_two_processes_log_the_losses_of_one(tmp_path, request, mesh):
  if mesh == '(8,1,1)':  # tiny.py's default mesh: the uninterrupted run of the resume test serves
    multi, steps = request.getfixturevalue('straight')[1], RESUME_STEPS
  else:
    steps = 10
    multi = two_processes(tmp_path / 'two', f'--config.mesh.shape={mesh}', steps=steps)
  single = one_process(tmp_path / 'one', f'--config.mesh.shape={mesh}', steps=steps)
  assert len(single) == steps // 5
  _close(multi, single)  # measured: relative differences below 4e-7 (float32 reduction order)


def _flat(tree):
  import jax

  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.slow
def test_sigterm_resume_and_continue_on_another_process_count(tmp_path, straight):
  steps = RESUME_STEPS
  straight_dir, straight = straight
  # Interrupted with SIGTERM (every process agrees on the step, checkpoints and exits), then resumed.
  proc = two_processes(tmp_path / 'cut', steps=steps, wait=False)
  metrics = tmp_path / 'cut' / 'metrics.jsonl'
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and metrics.read_text().count('\n') >= 1:
      proc.send_signal(signal.SIGTERM)
      break
    time.sleep(0.05)
  _, stderr = proc.communicate(timeout=600)
  assert proc.returncode == 143, stderr[-3000:]  # every process saved, then exited as preempted
  assert 'preempted: every process saved its checkpoint' in stderr
  stopped = checkpoint.latest_checkpoint_dir(str(tmp_path / 'cut'))[1]
  assert 5 <= stopped < steps
  import shutil

  shutil.copytree(tmp_path / 'cut', tmp_path / 'cut_one')  # the same checkpoint, continued by one process
  resumed = two_processes(tmp_path / 'cut', steps=steps)
  assert f'resuming at step {stopped}' in STDERR[str(tmp_path / 'cut')]  # not a retrain from step 0
  # The runs so far, started under tests/conftest.py's compilation cache, compiled for themselves:
  # loading the uninterrupted run's programs would abort the later ones (runtime.initialize).
  assert 'persistent compilation cache off' in STDERR[str(tmp_path / 'cut')]
  assert [r['step'] for r in resumed] == [r['step'] for r in straight]
  for ra, rb in zip(straight, resumed):
    for key in KEYS:
      assert ra[key] == rb[key], (ra['step'], key)  # bitwise
  final = [
    _flat(checkpoint.read_numpy_tree(os.path.join(d, 'checkpoints', str(steps), 'state')))
    for d in (straight_dir, tmp_path / 'cut')
  ]
  for key in final[0]:
    np.testing.assert_array_equal(final[0][key], final[1][key], err_msg=key)
  # One process with 8 devices continues the 2-process checkpoint with the same samples.
  continued = one_process(tmp_path / 'cut_one', steps=steps)
  assert f'resuming at step {stopped}' in STDERR[str(tmp_path / 'cut_one')]
  _close(continued, straight)
  # init_from across process counts: a 1-process run starts from the 2-process checkpoint's weights,
  # which at learning rate 0 it keeps bit for bit.
  init = one_process(
    tmp_path / 'init',
    f'--config.init_from={straight_dir}',
    '--config.optim.learning_rate=0',
    '--config.optim.schedule=constant',
    steps=5,
  )
  assert init[-1]['contrastive_loss'] < straight[0]['contrastive_loss'] - 0.5
  kept = _flat(checkpoint.read_numpy_tree(os.path.join(tmp_path / 'init', 'checkpoints', '5', 'state'))['params'])
  for key, value in _flat(
    checkpoint.read_numpy_tree(os.path.join(straight_dir, 'checkpoints', str(steps), 'state'))['params']
  ).items():
    np.testing.assert_array_equal(kept[key], value, err_msg=key)


EVAL_CONFIG = """
from superclip_jax import config_defaults
from superclip_jax.evals.registry import evaluator

def get_config():
  c = config_defaults.load_config_file('configs/tiny_shards.py', {shards!r})
  c.model.image, c.model.text, c.model.embed_dim = 'mu/8', 'mu', 32
  c.data.global_batch_size = 8
  c.evals.zeroshot = evaluator(kind='zeroshot', shards={labelled!r}, batch_size=8)
  c.evals.retrieval = evaluator(kind='retrieval', shards={shards!r}, batch_size=8)
  c.evals.probe = evaluator(kind='linear_probe', shards={labelled!r}, train_shards={labelled!r}, batch_size=8)
  return c
"""


@pytest.mark.slow
def test_evaluation_on_two_processes_gives_the_numbers_of_one(tmp_path):
  # Each process decodes only its rows of each evaluation batch; the results are gathered.
  import corpus
  from PIL import Image

  from superclip_jax.data import build

  corpus.write_tar(str(tmp_path / 'in.tar'), corpus.good_members(21))
  build.build(f'webdataset:{tmp_path}/in.tar', str(tmp_path / 'shards'), progress=False)
  for label, name in enumerate(['red_thing', 'green_thing', 'blue_thing']):
    (tmp_path / 'folder' / name).mkdir(parents=True)
    for i in range(5):
      Image.fromarray(corpus.picture(7 * label + i)).save(tmp_path / 'folder' / name / f'{i}.jpg')
  build.build(f'folder:{tmp_path / "folder"}', str(tmp_path / 'labelled'), progress=False)
  config = tmp_path / 'eval_config.py'
  config.write_text(EVAL_CONFIG.format(shards=str(tmp_path / 'shards'), labelled=str(tmp_path / 'labelled')))
  overrides = ['--config.total_steps=2', '--config.log_every_steps=1', '--config.checkpoint.every_steps=0']
  proc = subprocess.run(
    ['bash', LAUNCH, '2', str(config), str(tmp_path / 'two'), *overrides],
    cwd=ROOT,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = subprocess.run(
    [sys.executable, '-m', 'superclip_jax.main', '--config', str(config), '--workdir', str(tmp_path / 'one'), *overrides],
    cwd=ROOT,
    env=_env(devices=8),
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = [
    {k: v for r in _rows(tmp_path / d) for k, v in r.items() if k.count('/') == 2 and not k.endswith('/seconds')}
    for d in ('two', 'one')
  ]
  assert len(results[0]) == 10 and results[0].keys() == results[1].keys()  # zero-shot top-1, retrieval, probe
  for key, value in results[1].items():
    assert results[0][key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.slow
def test_missing_peer_ends_the_job_with_a_message(tmp_path):
  # Only process 0 of 2 is started: it must give up within the timeout, not hang.
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  cmd = [
    sys.executable,
    '-m',
    'superclip_jax.main',
    '--config',
    'configs/tiny.py',
    '--workdir',
    str(tmp_path),
    f'--coordinator_address=127.0.0.1:{port}',
    '--num_processes=2',
    '--process_id=0',
    '--initialization_timeout=10',
  ]
  start = time.time()
  proc = subprocess.run(cmd, cwd=ROOT, env=_env(devices=2), capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and time.time() - start < 120
  assert 'DEADLINE_EXCEEDED' in proc.stderr or 'timed out' in proc.stderr.lower()


def test_port_in_use_is_one_line(tmp_path):
  with socket.socket() as s:
    s.bind(('0.0.0.0', 0))
    s.listen()
    port = s.getsockname()[1]
    cmd = [
      sys.executable,
      '-m',
      'superclip_jax.main',
      '--config',
      'configs/tiny.py',
      '--workdir',
      str(tmp_path),
      f'--coordinator_address=127.0.0.1:{port}',
      '--num_processes=2',
      '--process_id=0',
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(devices=2), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert f'coordinator port {port} is in use' in proc.stderr and 'Traceback' not in proc.stderr


def test_launcher_names_the_failing_process(tmp_path):
  # A bad override makes every process fail at start-up: the launcher says which and shows why.
  proc = subprocess.run(
    ['bash', LAUNCH, '2', 'configs/tiny.py', str(tmp_path), '--config.nope=1'],
    cwd=ROOT,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2
  assert 'of 2 failed: exit status 2' in proc.stderr and "unknown config key 'nope'" in proc.stderr
