"""Every command reports a user's mistake in one line on stderr, with no traceback, and a non-zero status."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = [
  # (command after `python -m`, expected words of the one-line message)
  (['superclip_jax.main', '--config', 'configs/nope.py', '--workdir', '{tmp}/w'], 'config file configs/nope.py not found'),
  (
    ['superclip_jax.main', '--config', 'configs/tiny.py', '--workdir', '{tmp}/w', '--config.optim.learning_rat=1e-3'],
    "unknown config key 'optim.learning_rat' (--config.optim.learning_rat); did you mean 'optim.learning_rate'?",
  ),
  (
    ['superclip_jax.main', '--config', 'configs/tiny.py', '--workdir', '{tmp}/w', '--config.optim.learning_rate=fast'],
    "flag --config.optim.learning_rate=fast: could not convert string to float: 'fast'",
  ),
  (
    ['superclip_jax.main', '--config', 'configs/tiny_shards.py:{tmp}/no_shards', '--workdir', '{tmp}/w'],
    'no_shards/manifest.json: no manifest',
  ),
  (
    ['superclip_jax.main', '--config', 'configs/tiny.py', '--workdir', '{tmp}/w', '--config.mesh.shape=(3,1,1)'],
    'mesh.shape (3, 1, 1) needs 3 devices, have 1',
  ),
  (
    ['superclip_jax.main', '--config', 'configs/tiny.py', '--workdir', '{tmp}/w', '--config.data.global_batch_size=0'],
    'data.global_batch_size must be positive',
  ),
  (
    ['superclip_jax.main', '--config', 'configs/tiny.py', '--workdir', '{tmp}/w', '--config.log_every_steps=0'],
    'log_every_steps=0: must be >= 1',
  ),
  (
    ['superclip_jax.main', '--config', 'configs/tiny.py', '--workdir', '{tmp}/w', '--config.total_steps=-5'],
    'total_steps=-5: must be > 0',
  ),
  (
    ['superclip_jax.main', '--config', 'configs/tiny.py', '--workdir', '{tmp}/w', '--config.checkpoint.keep=-1'],
    'checkpoint.keep=-1: must be >= 0',
  ),
  (['superclip_jax.main', '--config', 'configs/tiny.py', '--workdir', '{tmp}/a_file'], 'a_file is a file, not a directory'),
  (['superclip_jax.main', '--config', 'configs/tiny.py'], '--workdir is required'),
  (
    ['superclip_jax.main', '--config', 'configs/tiny.py', '--workdir', '{tmp}/w', '--num_processes=2'],
    'missing --coordinator_address',
  ),
  (['superclip_jax.evaluate', '--config', 'configs/tiny.py', '--workdir', '{tmp}/w'], 'the config lists no evaluators'),
  (['superclip_jax.export', '--workdir', '{tmp}/nothing', '--out', '{tmp}/m'], 'no finished checkpoint under'),
  (['superclip_jax.plot', '{tmp}/nothing'], 'no metrics.jsonl rows to plot'),
  (['superclip_jax.data.tokenizer', 'encode', '--tokenizer', '{tmp}/tok.json', 'a cat'], 'tok.json not found'),
  (
    ['superclip_jax.data.tokenizer', 'train', '--captions', '{tmp}/none.txt', '--vocab_size', '300', '--out', '{tmp}/t'],
    'none.txt: no such file',
  ),
  (['superclip_jax.data.bench_input', '--shards', '{tmp}/nothing'], 'nothing/manifest.json: no manifest'),
  (['superclip_jax.data.bench_input', '--workers', '1,x'], '--workers=1,x: worker counts are whole numbers'),
  (['superclip_jax.convert', '--from', 'hf', '--out', '{tmp}/m'], 'Flag --src must have a value'),
  (['superclip_jax.convert', '--src', '{tmp}/m', '--out', '{tmp}/o'], 'Exactly one of (from, to)'),
  (['superclip_jax.data.build', '--out', '{tmp}/o'], 'Flag --source must have a value'),
  # A dashed spelling of a flag (argparse's, before these commands moved to absl) is named with its new one.
  (
    ['superclip_jax.data.build', '--source', 'folder:{tmp}', '--out', '{tmp}/o', '--records-per-shard', '5'],
    "Unknown command line flag 'records-per-shard'. Did you mean: records_per_shard ?",
  ),
  (['superclip_jax.data.tokenizer', 'encode', '--captions', '{tmp}/c.txt', 'a cat'], 'encode does not take --captions'),
  (['superclip_jax.data.tokenizer'], 'give a command: fetch, encode TEXT [TEXT ...] or train'),
  (['superclip_jax.experiments.small_batch', '--seeds', 'a'], '--seeds=a --batches=16,64,256: whole numbers'),
]


@pytest.mark.parametrize('command,message', CASES, ids=[' '.join(c[:2]) + f' #{i}' for i, (c, _) in enumerate(CASES)])
def test_one_line_error_and_nonzero_status(tmp_path, command, message):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  args = [a.replace('{tmp}', str(tmp_path)) for a in command]
  (tmp_path / 'a_file').write_text('not a workdir')
  proc = subprocess.run([sys.executable, '-m', *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  lines = [line for line in proc.stderr.splitlines() if ': error: ' in line]
  assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
  if command[0] == 'superclip_jax.main' and '--workdir' not in command:
    # A usage mistake is status 2 and one line, not absl's whole flag help with status 1.
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]


@pytest.mark.parametrize('module', ['superclip_jax.main', 'superclip_jax.evaluate', 'superclip_jax.bench_step'])
def test_help_lists_the_required_config_flag_and_exits_0(module):
  proc = subprocess.run([sys.executable, '-m', module, '--help'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert re.search(r'^\s+--config: \(required\) ', proc.stdout, re.M), proc.stdout[-3000:]


@pytest.mark.parametrize(
  'module,flag',
  [
    ('superclip_jax.convert', '--image_heads'),
    ('superclip_jax.export', '--workdir'),
    ('superclip_jax.plot', '--out'),
    ('superclip_jax.data.bench_input', '--synthesize'),
    ('superclip_jax.data.build', '--records_per_shard'),
    ('superclip_jax.data.tokenizer', '--vocab_size'),
    ('superclip_jax.experiments.small_batch', '--from_json'),
  ],
)
def test_every_command_speaks_absl_help(module, flag):
  proc = subprocess.run([sys.executable, '-m', module, '--help'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert re.search(rf'^\s+{flag}: ', proc.stdout, re.M), proc.stdout[-3000:]


def test_build_help_lists_the_source_schemes():
  proc = subprocess.run(
    [sys.executable, '-m', 'superclip_jax.data.build', '--help'], cwd=ROOT, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0
  from superclip_jax.data import build

  flat = ' '.join(proc.stdout.split())
  assert all(form in flat for form in build.SOURCE_FORMS), proc.stdout
