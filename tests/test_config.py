"""Config files load, validate, and reject unknown keys with a suggestion."""

import glob
import os
import subprocess
import sys

import pytest

from superclip_jax import config_defaults, errors, losses

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
  c.loss.token_wieght = 1.0
  with pytest.raises(ValueError, match="loss.token_wieght.*did you mean 'loss.token_weight'"):
    config_defaults.validate(c)


def test_a_renamed_key_names_its_new_name():
  c = config_defaults.default_config()
  c.loss.cls_weight = 0.5
  with pytest.raises(ValueError, match="'loss.cls_weight' was renamed 'loss.token_weight'"):
    config_defaults.validate(c)


def test_bad_choice_is_rejected():
  c = config_defaults.default_config()
  c.loss.idf = 'sometimes'
  with pytest.raises(ValueError, match="loss.idf='sometimes'"):
    config_defaults.validate(c)


def test_the_variant_decides_which_loss_keys_count():
  from superclip_jax import train_state
  from superclip_jax.models.superclip import ModelConfig

  c = config_defaults.default_config()
  clip = config_defaults.clip_baseline(c)
  config_defaults.validate(clip)  # the token weight and IDF need not be switched off by hand
  assert c.model.variant == 'superclip' and clip.model.variant == 'clip'  # a copy
  cfg = ModelConfig.from_config(clip)
  assert cfg.has_text_tower and not cfg.has_token_head
  assert [t.name for t in losses.active_terms(cfg)] == ['contrastive_loss']
  assert train_state.initial_idf_counts(clip, cfg.variant) == {}  # no IDF counts without the head
  superclass = config_defaults.load_config_file(os.path.join(ROOT, 'configs', 'superclass_b16.py'))
  assert ModelConfig.from_config(clip_of := config_defaults.clip_baseline(superclass)).contrastive == 'softmax'
  assert clip_of.loss.contrastive == 'softmax'
  superclass.loss.token_weight = 0.0
  with pytest.raises(ValueError, match='trains only the token classifier: loss.token_weight must be > 0'):
    config_defaults.validate(superclass, training=False)


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
      '--config.loss.token_wieght=2',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env=env,
    timeout=120,
  )
  assert proc.returncode != 0
  assert "unknown config key 'loss.token_wieght'" in proc.stderr and "did you mean 'loss.token_weight'" in proc.stderr


def _parsed(*args, config='configs/tiny.py'):
  """--config CONFIG ARGS parsed as an entry point does (cli.parse_flags), on flags of its own."""
  from absl import flags

  from superclip_jax import cli

  values = flags.FlagValues()
  argv = ['prog', '--config', os.path.join(ROOT, config), *args]
  holder = cli.define_config_flag('test', flag_values=values, argv=argv)
  cli.parse_flags(argv, values)
  return cli.config_value(holder, training=False, flag_values=values)


def test_overrides_of_every_type():
  c = _parsed(
    '--config.model.quick_gelu=True',
    '--config.mesh.shape=(2,2,2)',
    '--config.data.crop_scale=(0.5,1.0)',
    '--config.data.workers=0',
    '--config.loss.token_weight=0',
    '--config.optim.frozen=image_tower/.*',
    '--config.seed',
    '7',
  )
  assert c.model.quick_gelu is True
  assert c.mesh.shape == (2, 2, 2) and c.data.crop_scale == (0.5, 1.0)
  assert c.data.workers == 0 and isinstance(c.data.workers, int)  # a FieldReference of 'auto' or an int
  assert c.loss.token_weight == 0.0 and isinstance(c.loss.token_weight, float)
  assert c.optim.frozen == 'image_tower/.*' and c.seed == 7
  assert _parsed('--config.data.workers=auto', '--noconfig.model.scan_layers').data.workers == 'auto'


def test_path_arg_reaches_get_config():
  c = _parsed('--config.data.global_batch_size=32', config='configs/demo_mnist.py:steps=12')
  assert c.total_steps == 12 and c.data.global_batch_size == 32


@pytest.mark.parametrize(
  'args,config,message',
  [
    (
      ['--config.optim.learning_rat=1e-3'],
      'configs/tiny.py',
      "unknown config key 'optim.learning_rat' (--config.optim.learning_rat); did you mean 'optim.learning_rate'?",
    ),
    (
      ['--config.loss.cls_weight=1'],
      'configs/tiny.py',
      "config key 'loss.cls_weight' (--config.loss.cls_weight) was renamed 'loss.token_weight'",
    ),
    (
      ['--config.optim.learning_rate=fast'],
      'configs/tiny.py',
      "flag --config.optim.learning_rate=fast: could not convert string to float: 'fast'",
    ),
    (['--config.model.quick_gelu=maybe'], 'configs/tiny.py', 'flag --config.model.quick_gelu=maybe'),
    ([], 'configs/demo_mnist.py:stepz=3', "configs/demo_mnist.py: unknown config argument 'stepz' (known: steps)"),
    ([], 'configs/nope.py', 'configs/nope.py not found'),
    (['--config.seed=1'], 'configs/nope.py', 'configs/nope.py not found'),
  ],
)
def test_override_mistakes_are_one_line(capsys, args, config, message):
  with pytest.raises(SystemExit) as e:
    with errors.user_errors('prog'):
      _parsed(*args, config=config)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and ': error: ' in err and message in err, err
