"""Config files load, validate, and reject unknown keys with a suggestion."""

import glob
import os
import subprocess
import sys

import pytest

from superclip_jax import config_defaults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py')))


def _load(path):
  import importlib.util

  spec = importlib.util.spec_from_file_location('cfg', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_every_config_validates_and_opens_with_its_command(path):
  module = _load(path)
  config = module.get_config('/data/shards') if 'shards' in path else module.get_config()
  config_defaults.validate(config, training=False)  # the recipes need their data= only to train
  assert 'python -m superclip_jax.main --config configs/' + os.path.basename(path) in module.__doc__


def test_unknown_key_names_the_closest_valid_one():
  c = config_defaults.default_config()
  c.loss.cls_wieght = 1.0
  with pytest.raises(ValueError, match="loss.cls_wieght.*did you mean 'loss.cls_weight'"):
    config_defaults.validate(c)


def test_bad_choice_is_rejected():
  c = config_defaults.default_config()
  c.loss.idf = 'sometimes'
  with pytest.raises(ValueError, match="loss.idf='sometimes'"):
    config_defaults.validate(c)


def test_clip_variant_needs_zero_cls_weight():
  c = config_defaults.default_config()
  c.model.variant = 'clip'
  with pytest.raises(ValueError, match='cls_weight=0'):
    config_defaults.validate(c)


def test_cli_rejects_misspelled_override():
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'superclip_jax.main',
      '--config',
      'configs/tiny.py',
      '--workdir',
      '/tmp/unused',
      '--config.loss.cls_wieght=2',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env=env,
    timeout=120,
  )
  assert proc.returncode != 0
  assert 'cls_wieght' in proc.stderr
