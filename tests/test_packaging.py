"""The package installs and imports like any other, the docs generated from code are current,
and the plot command draws a run."""

import json
import os
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


def test_plot_draws_every_metric_of_a_run(tmp_path):
  rows = [{'step': s, 'loss': 5.0 - s / 10, 'contrastive_loss': 3.0, 'cls_loss': 2.0 - s / 10, 'logit_scale': 14.0,
           'learning_rate': 1e-3, 'images_per_sec': 300.0} for s in (10, 20)]
  rows.append({'step': 20, 'zeroshot/val/top1': 0.5, 'zeroshot/val/seconds': 3.0})
  (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  from superclip_jax import plot
  titles = [t for t, _ in plot.panels({'run': rows})]
  assert titles == ['losses', 'temperature (logit scale)', 'learning rate', 'throughput (images/s)',
                    'zeroshot/val/top1']
  out = plot.plot([str(tmp_path)])
  with open(out, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


@pytest.mark.slow
def test_pip_install_into_a_fresh_venv_then_import_elsewhere(tmp_path):
  venv = tmp_path / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True, timeout=300)
  py = str(venv / 'bin' / 'python')
  # The package and its dependencies from pyproject.toml (pip's cache makes this about 2 minutes).
  proc = subprocess.run([py, '-m', 'pip', 'install', '-q', ROOT], capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-2000:]
  # The GPU device descriptions (--dry_run --topology h200:8) are package data: installed with it.
  probe = ('import superclip_jax, superclip_jax.train; from superclip_jax import compile_targets; '
           "assert all(compile_targets.gpu_target_text(n) for n in compile_targets.GPU_TARGETS); "
           'print(superclip_jax.__file__)')
  proc = subprocess.run([py, '-c', probe],
                        cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert str(venv) in proc.stdout and ROOT not in proc.stdout
