"""--dry_run: compile the real train step without data and report memory and FLOPs."""

import os
import subprocess
import sys

import pytest

from superclip_jax import config_defaults, dry_run, flops
from superclip_jax.models.superclip import ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_analytic_flops_of_b16_match_a_hand_count():
  # ViT-B/16 at 224 px: 196 patches + CLS = 197 tokens, width 768, 12 layers.
  t, w = 197, 768
  per_layer = 2 * t * w * 3 * w + 2 * 2 * t * t * w + 2 * t * w * w + 2 * 2 * t * w * 4 * w
  image = 2 * 196 * (16 * 16 * 3) * w + 12 * per_layer + 2 * w * 512
  t, w = 77, 512
  text = 12 * (2 * t * w * 3 * w + 2 * 2 * t * t * w + 2 * t * w * w + 2 * 2 * t * w * 4 * w) + 2 * w * 512
  f = flops.analytic_forward_flops(ModelConfig())
  assert f['image'] == image and f['text'] == text and f['head'] == 2 * 768 * 49408
  assert f['image'] / 1e9 == pytest.approx(35.1, abs=0.05)  # the paper's ViT-B/16 forward
  assert f['text'] / 1e9 == pytest.approx(6.0, abs=0.05)
  assert f['head'] / 1e9 == pytest.approx(0.076, abs=0.001)
  batch = 1024
  logits = 2 * batch * batch * 512
  assert flops.analytic_step_flops(ModelConfig(), batch) == 3 * (batch * (image + text + 2 * 768 * 49408) + logits)


def test_dry_run_compiles_tiny_on_eight_devices_without_data():
  config = config_defaults.load_config_file(os.path.join(ROOT, 'configs', 'tiny.py'))
  config.mesh.shape = (2, 2, 2)
  report = dry_run.run(config, quiet=True)
  assert report['fits'] and report['devices'] == 8 and report['compile_seconds'] > 0
  assert report['parameters'] > 1e6 and report['temp_bytes'] > 0
  assert report['total_bytes'] >= report['argument_bytes']
  # The program's dots are at least the model FLOPs (remat and the optimizer add, nothing removes),
  # and XLA's count, corrected for the scans it counts once, is of the same size.
  assert report['program_dot_flops'] >= 0.9 * report['analytic_flops_per_step']
  assert report['xla_flops_corrected'] == pytest.approx(report['program_dot_flops'], rel=0.5)
  assert report['xla_flops_corrected'] > report['xla_flops_reported']


def test_dry_run_command_needs_no_data_and_reports():
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'superclip_jax.main',
      '--config',
      'configs/tiny_shards.py:/no/data',
      '--dry_run',
      '--config.mesh.shape=(2,1,2)',
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'per device total' in proc.stdout and 'fits                  yes' in proc.stdout


@pytest.mark.slow
def test_b16_recipe_compiles_for_a_v5e_pod():
  try:
    import libtpu  # noqa: F401  (the jax[tpu] extra of the installed jax: requirements-tpu.txt)
  except ImportError:
    pytest.skip('libtpu is not installed (pip install -r requirements-tpu.txt): cannot describe a TPU topology')
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  proc = subprocess.run(
    [sys.executable, '-m', 'superclip_jax.main', '--config', 'configs/superclip_b16.py', '--dry_run', '--topology', 'v5e:16x16'],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=1800,
  )
  assert proc.returncode in (0, 1), proc.stderr[-2000:]
  assert 'TPU v5' in proc.stdout and 'per device total' in proc.stdout
