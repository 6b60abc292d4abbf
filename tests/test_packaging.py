"""The package installs and imports like any other, the docs generated from code are current,
and the plot command draws a run."""

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_config_reference_is_current():
  from superclip_jax import config_reference

  with open(os.path.join(ROOT, 'docs', 'config.md')) as f:
    assert f.read() == config_reference.render(), 'run: python -m superclip_jax.config_reference > docs/config.md'


def test_every_config_key_is_documented():
  from superclip_jax import config_defaults, config_reference

  comments = config_reference.key_comments()
  assert all(comments.get(k) for k in config_defaults.flat_keys(config_defaults.default_config()))


def _pins() -> dict[str, str]:
  pins = {}
  for line in open(os.path.join(ROOT, 'constraints.txt')):
    line = line.split('#')[0].strip()
    if line:
      name, _, version = line.partition('==')
      assert version, f'constraints.txt: {line!r} is not NAME==VERSION'
      pins[name.lower().replace('_', '-')] = version
  return pins


def test_constraints_pin_releases_of_the_public_index():
  # A local version label (2.13.0+cpu, +cu121) names a build that only some other index or
  # folder holds: `make` would end in ResolutionImpossible on any other machine.
  local = {name: v for name, v in _pins().items() if '+' in v}
  assert not local, f'constraints.txt pins local builds: {local}'


def test_torch_and_torchvision_are_pinned_as_a_pair():
  # Each torchvision release is built against one torch release (0.N+15 <-> 2.N): another pair
  # fails to import ('operator torchvision::nms does not exist'), and so do open_clip and transformers.
  pins = _pins()
  torch_minor = int(pins['torch'].split('.')[1])
  assert pins['torchvision'].split('.')[:2] == ['0', str(torch_minor + 15)], (pins['torch'], pins['torchvision'])


def test_plot_draws_curves_of_what_changes_and_a_table_of_final_metrics(tmp_path):
  rows = [
    {
      'step': s,
      'loss': 5.0 - s / 10,
      'contrastive_loss': 3.0,
      'token_loss': 2.0 - s / 10,
      'logit_scale': 14.0,
      'learning_rate': 1e-3,
      'images_per_sec': 300.0,
      'data/skipped_examples': 0,
    }
    for s in (10, 20, 30)
  ]
  # A zero-shot evaluation at two steps; retrieval and the probe once, at the end.
  rows.append({'step': 20, 'zeroshot/zeroshot/top1': 0.4, 'zeroshot/zeroshot/top5': 0.8, 'zeroshot/zeroshot/seconds': 3.0})
  rows.append(
    {
      'step': 30,
      'zeroshot/zeroshot/top1': 0.5,
      'zeroshot/zeroshot/top5': 0.9,
      'retrieval/coco/image_to_text_r1': 0.3,
      'linear_probe/probe/top1': 0.7,
      'linear_probe/probe/weight_decay': 1e-4,
      'linear_probe/probe/seconds': 9.0,
    }
  )
  (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  from superclip_jax import plot

  chosen = plot.panels({'run': rows})
  assert [(p.title, p.keys, p.kind) for p in chosen] == [
    ('losses', ('loss', 'contrastive_loss', 'token_loss'), 'curves'),
    ('temperature (logit scale)', ('logit_scale',), 'curves'),
    ('learning rate', ('learning_rate',), 'curves'),
    ('throughput (images/s)', ('images_per_sec',), 'curves'),
    ('zeroshot', ('zeroshot/zeroshot/top1', 'zeroshot/zeroshot/top5'), 'curves'),
    (
      'final metrics',
      (
        'loss',
        'contrastive_loss',
        'token_loss',
        'linear_probe/probe/top1',
        'retrieval/coco/image_to_text_r1',
        'zeroshot/zeroshot/top1',
        'zeroshot/zeroshot/top5',
      ),
      'table',
    ),
  ]
  # No curve panel is a single point, and no setting (the probe's weight decay) or timing is drawn.
  for p in chosen[:-1]:
    assert all(len(plot._series(rows, k)[0]) >= 2 for k in p.keys), p
  assert plot._final(rows, 'zeroshot/zeroshot/top1') == '0.5000 (step 30)'
  assert plot._metric_label('linear_probe/probe/top1') == 'probe (linear_probe): top1'
  out = plot.plot([str(tmp_path)])
  with open(out, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


@pytest.mark.slow
def test_pip_install_into_a_fresh_venv_then_import_elsewhere(tmp_path):
  venv = tmp_path / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True, timeout=300)
  py = str(venv / 'bin' / 'python')
  # What `make train` installs: the package and its dependencies at CI's versions (pip's cache
  # makes this about 2 minutes). No PyTorch: training, evaluation and export need none.
  proc = subprocess.run(
    [py, '-m', 'pip', 'install', '-q', '-c', os.path.join(ROOT, 'constraints.txt'), ROOT],
    capture_output=True,
    text=True,
    timeout=1200,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'deprecat' not in proc.stderr.lower(), proc.stderr[-2000:]
  missing = subprocess.run(
    [py, '-c', 'import importlib.util as u; print([m for m in ("torch", "torchvision") if u.find_spec(m)])'],
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert missing.stdout.strip() == '[]', missing.stdout
  # The GPU device descriptions (--dry_run --topology h200:8) are package data: installed with it.
  probe = (
    'import superclip_jax, superclip_jax.train; from superclip_jax import compile_targets; '
    'assert all(compile_targets.gpu_target_text(n) for n in compile_targets.GPU_TARGETS); '
    'print(superclip_jax.__file__)'
  )
  proc = subprocess.run([py, '-c', probe], cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert str(venv) in proc.stdout and ROOT not in proc.stdout
  # It trains, and the same command again says the run is complete and shows its final metrics.
  train = [
    py,
    '-m',
    'superclip_jax.main',
    '--config',
    os.path.join(ROOT, 'configs', 'tiny.py'),
    '--workdir',
    str(tmp_path / 'tiny'),
    '--config.total_steps=4',
    '--config.log_every_steps=2',
  ]
  proc = subprocess.run(train, cwd=str(tmp_path), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  again = subprocess.run(train, cwd=str(tmp_path), capture_output=True, text=True, timeout=900)
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'already complete at step 4' in again.stderr, again.stderr[-3000:]
  table = again.stderr[again.stderr.index('final metrics (step 4):') :]
  assert 'contrastive_loss' in table and 'logit_scale' in table
  # The console is the run's own: INFO lines come from the package's modules only (Orbax alone
  # wrote about 35 per save before).
  ours = {f for _, _, files in os.walk(os.path.join(ROOT, 'superclip_jax')) for f in files if f.endswith('.py')}
  info_from = {line.split()[3].split(':')[0] for line in proc.stderr.splitlines() if re.match(r'I\d{4} ', line)}
  assert info_from and info_from <= ours, info_from - ours
  # A healthy checkpoint exports without a warning (Orbax's 'Metadata file does not exist' was one).
  proc = subprocess.run(
    [py, '-m', 'superclip_jax.export', '--workdir', str(tmp_path / 'tiny'), '--out', str(tmp_path / 'model')],
    cwd=str(tmp_path),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0 and proc.stderr.strip() == '', proc.stderr[-3000:]
