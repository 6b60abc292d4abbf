"""The paper's recipe configs: training needs its data argument (a one-line error without it, but
--dry_run does not), and with every argument given each one trains and runs all its evaluators."""

import json
import os
import subprocess
import sys

import corpus
import pytest
from PIL import Image

from superclip_jax import config_defaults, train
from superclip_jax.data import build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = ['superclip_b16.py', 'superclip_l16.py', 'clip_b16.py', 'supersiglip_b16.py', 'superclass_b16.py']


@pytest.mark.parametrize('name', RECIPES)
def test_training_without_data_is_a_one_line_error(tmp_path, name):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  proc = subprocess.run(
    [sys.executable, '-m', 'superclip_jax.main', '--config', f'configs/{name}', '--workdir', str(tmp_path)],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert 'no training data' in proc.stderr and 'CONFIG.py:data=DIR' in proc.stderr


def test_superclass_uses_its_own_learning_rate_and_no_projection():
  config = config_defaults.load_config_file(os.path.join(ROOT, 'configs', 'superclass_b16.py'))
  assert config.optim.learning_rate == 5e-4
  from superclip_jax.models.superclip import ModelConfig, ModelDef

  assert 'proj' not in ModelDef(ModelConfig.from_config(config)).shapes()['image_tower']


@pytest.mark.parametrize('name', RECIPES)
def test_recipe_evaluations_follow_the_published_protocol(name):
  """What each recipe evaluates, and how: OpenAI's ImageNet protocol, Karpathy retrieval by image, the
  probe fit on its own shards and tested on ImageNet, six evaluations over the 31,250 steps and one at the end."""
  from superclip_jax.evals import prompts, registry

  arg = 'data=/d,imagenet=/in,imagenet_v2=/v2,coco=/coco,flickr=/f30k,probe_train=/in_train'
  config = config_defaults.load_config_file(os.path.join(ROOT, 'configs', name), arg)
  registry.validate(config.evals)
  assert config_defaults.resolved_total_steps(config) == 31_250  # 512M samples at batch 16,384
  evals = {n: dict(ev) for n, ev in config.evals.items()}
  for ev in evals.values():
    assert ev['every_steps'] == 5000 and ev['max_examples'] == 0  # every record, six times during the run
  probe = evals.pop('linear_probe')
  assert (probe['kind'], probe['shards'], probe['train_shards']) == ('linear_probe', '/in', '/in_train')
  if name == 'superclass_b16.py':  # no text tower: nothing to prompt or to retrieve with
    assert evals == {}
    return
  for key, shards in (('imagenet', '/in'), ('imagenet_v2', '/v2')):
    ev = evals.pop(key)
    assert (ev['kind'], ev['shards']) == ('zeroshot', shards)
    names, templates = prompts.resolve_classnames(ev['class_names']), prompts.resolve_templates(ev['templates'])
    assert len(names) == 1000 and len(templates) == 80  # OpenAI's curated names and its 80-prompt ensemble
  for key, shards in (('coco', '/coco'), ('flickr', '/f30k')):
    ev = evals.pop(key)
    assert (ev['kind'], ev['shards'], ev['match']) == ('retrieval', shards, 'key')  # a caption matches its own image
  assert evals == {}
  # An evaluation named but not given its shards is left out, not run on nothing.
  assert set(config_defaults.load_config_file(os.path.join(ROOT, 'configs', name), 'data=/d').evals) == set()


@pytest.fixture(scope='module')
def fixture_shards(tmp_path_factory):
  """Tiny shard sets for every recipe argument: captioned training data, an ImageNet-like labelled
  set (ImageFolder of real WNIDs), and a COCO-style Karpathy test split with 5 captions per image."""
  root = tmp_path_factory.mktemp('recipes')
  corpus.write_tar(str(root / 'train.tar'), corpus.good_members(24))
  build.build(f'webdataset:{root}/train.tar', str(root / 'data'), progress=False)
  for label, wnid in enumerate(['n01440764', 'n01443537']):  # tench, goldfish
    (root / 'val' / wnid).mkdir(parents=True)
    for i in range(3):
      Image.fromarray(corpus.picture(10 * label + i)).save(root / 'val' / wnid / f'{i}.JPEG')
  build.build(f'imagenet:{root / "val"}', str(root / 'imagenet'), progress=False)
  (root / 'coco' / 'val2014').mkdir(parents=True)
  images = []
  for i in range(3):
    name = f'COCO_val2014_{i:012d}.jpg'
    Image.fromarray(corpus.picture(40 + i)).save(root / 'coco' / 'val2014' / name)
    images.append(
      {
        'filepath': 'val2014',
        'filename': name,
        'split': 'test',
        'cocoid': i,
        'sentences': [{'raw': f'picture {i} caption {k}'} for k in range(5)],
      }
    )
  (root / 'coco' / 'dataset_coco.json').write_text(json.dumps({'images': images}))
  build.build(f'coco_karpathy:{root / "coco"},{root / "coco" / "dataset_coco.json"}', str(root / 'coco_test'), progress=False)
  return {'data': root / 'data', 'imagenet': root / 'imagenet', 'coco': root / 'coco_test'}


@pytest.mark.slow
@pytest.mark.parametrize('name', RECIPES)
def test_recipe_trains_two_steps_with_all_its_evaluators(tmp_path, fixture_shards, name):
  s = fixture_shards
  arg = (
    f'data={s["data"]},imagenet={s["imagenet"]},imagenet_v2={s["imagenet"]},coco={s["coco"]},'
    f'flickr={s["coco"]},probe_train={s["imagenet"]},bs=8,eval_every=1'
  )
  config = config_defaults.load_config_file(os.path.join(ROOT, 'configs', name), arg)
  expected = {'linear_probe'} if name == 'superclass_b16.py' else {'imagenet', 'imagenet_v2', 'coco', 'flickr', 'linear_probe'}
  assert set(config.evals) == expected
  # The recipe, shrunk to run here: a tiny model, float32, two steps, OpenAI's 1,000 names with one template.
  config.model.image, config.model.text, config.model.embed_dim = 'mu/8', 'mu', 32
  config.model.image_size, config.model.compute_dtype, config.model.remat = 32, 'float32', 'none'
  config.total_steps, config.log_every_steps, config.mesh.shape = 2, 1, (-1, 1, 1)
  for ev in config.evals.values():
    ev.batch_size = 16
    if ev.kind == 'zeroshot':
      ev.templates = ('a photo of a {}.',)
  rows = train.run(config, str(tmp_path))
  final = {k for r in rows for k in r}
  for evaluator in expected:
    assert any(k.split('/')[1] == evaluator for k in final if k.count('/') == 2), (evaluator, sorted(final))
  if 'coco' in expected:
    assert any(k == 'retrieval/coco/text_to_image_r1' for k in final)
