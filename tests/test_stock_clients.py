"""Exports load in the stock clients as their users load them, in a process that never imports superclip_jax:
transformers' CLIPModel and zero-shot pipeline (`--to hf`), open_clip's local-dir: models (`--to open_clip`).
Their embeddings equal superclip_jax.load's, and their zero-shot predictions are the project's."""

import importlib.util
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

pytest.importorskip('transformers', reason='the stock clients are the interop extra (requirements-interop.txt)')
pytest.importorskip('open_clip', reason='the stock clients are the interop extra (requirements-interop.txt)')

import superclip_jax  # noqa: E402
from superclip_jax import config_defaults, convert, export, train  # noqa: E402
from superclip_jax.data import mnist_demo  # noqa: E402
from superclip_jax.interop import conversions  # noqa: E402
from superclip_jax.models import presets  # noqa: E402
from superclip_jax.models.superclip import ModelConfig, ModelDef  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
  'demo_in_stock_clients', os.path.join(ROOT, 'benchmarks', 'demo_in_stock_clients.py')
)
clients = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(clients)

EMBEDDING_ATOL = 1e-5


def _softmax(x: np.ndarray) -> np.ndarray:
  e = np.exp(x - x.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
  """The demo briefly trained (12 steps), and its export, `--to hf` and `--to open_clip` directories."""
  root = tmp_path_factory.mktemp('demo')
  config = config_defaults.load_config_file(os.path.join(ROOT, 'configs', 'demo_mnist.py'), 'steps=12')
  config.evals = ml_collections.ConfigDict()  # the evaluations are the tests' own
  train.run(config, str(root / 'run'))
  return clients.export_all(str(root / 'run'), str(root))


@pytest.mark.slow
def test_a_trained_superclip_in_transformers_its_pipeline_and_open_clip(demo_run, tmp_path):
  dirs = demo_run
  model = superclip_jax.load(dirs['ours'])
  images, _ = clients.held_out_digits(40)
  names, templates = list(mnist_demo.NUMBER_WORDS), list(mnist_demo.TEMPLATES[:2])
  texts = [t.format(n) for n in names for t in templates]
  inputs = clients.client_inputs(model, images, names, templates, texts)
  got = clients.run_clients(inputs, dirs['hf'], dirs['open_clip'], str(tmp_path))
  own_image, own_text = model.encode_image(inputs['pixels']), model.encode_text(inputs['ids'])
  for client in ('hf', 'open_clip'):
    np.testing.assert_allclose(got[f'{client}_image'], own_image, atol=EMBEDDING_ATOL, err_msg=client)
    np.testing.assert_allclose(got[f'{client}_text'], own_text, atol=EMBEDDING_ATOL, err_msg=client)
  # Zero-shot with each client's own preprocessing and tokenizer: the scores of every class, not just
  # the top one (a briefly trained model's classes are close), equal the project evaluator's.
  ours = clients.project_scores(model, images, names, templates)
  for client in ('hf', 'open_clip'):
    np.testing.assert_allclose(got[f'{client}_scores'], ours, atol=EMBEDDING_ATOL, err_msg=client)
  # The pipeline: one template, probabilities = softmax(logit_scale * cosines).
  ours_first = clients.project_scores(model, images, names, templates[:1])
  np.testing.assert_allclose(got['pipeline_scores'], _softmax(model.logit_scale * ours_first), atol=EMBEDDING_ATOL)
  decided = np.diff(np.sort(ours_first, axis=1)[:, -2:], axis=1)[:, 0] > 1e-4  # not a tie within float noise
  assert np.array_equal(got['pipeline_pred'][decided], ours_first.argmax(axis=1)[decided])
  # The token classifier is beside the towers, where the config says, not inside open_clip's model config.
  oc = json.load(open(os.path.join(dirs['open_clip'], 'open_clip_config.json')))
  assert oc['token_classifier']['file'] == conversions.HEAD_FILE
  assert os.path.isfile(os.path.join(dirs['open_clip'], conversions.HEAD_FILE))


def _tiny(variant: str, contrastive: str) -> ModelConfig:
  tower = presets.TowerSize(width=64, depth=2, heads=2, mlp_ratio=4.0, patch_size=8)
  return ModelConfig(
    variant=variant,
    image=tower,
    text=presets.TowerSize(width=64, depth=2, heads=2, mlp_ratio=4.0),
    embed_dim=32,
    image_size=16,
    context_length=16,
    contrastive=contrastive,
  )


@pytest.mark.parametrize(
  'variant,contrastive',
  [('clip', 'softmax'), ('superclip', 'softmax'), ('clip', 'sigmoid'), ('superclip', 'sigmoid')],
  ids=['CLIP', 'SuperCLIP', 'SigLIP', 'SuperSigLIP'],
)
def test_every_variant_builds_in_stock_open_clip(tmp_path, variant, contrastive):
  cfg = _tiny(variant, contrastive)
  import jax

  params = jax.tree.map(np.asarray, ModelDef(cfg, seed=3).init())
  ours_dir, oc_dir = str(tmp_path / 'ours'), str(tmp_path / 'open_clip')
  export.write_export(ours_dir, cfg, params, conversions.tokenizer_description(cfg))
  convert.main(['--to', 'open_clip', '--src', ours_dir, '--out', oc_dir])
  model = superclip_jax.load(ours_dir)
  rng = np.random.default_rng(0)
  pixels = model.preprocess(list(rng.integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)))
  ids = np.asarray(model.tokenizer(['a cat', 'two dogs on a sofa', 'a photo of a red car']))
  got = clients.run_clients({'pixels': pixels, 'ids': ids}, None, oc_dir, str(tmp_path))
  np.testing.assert_allclose(got['open_clip_image'], model.encode_image(pixels), atol=EMBEDDING_ATOL)
  np.testing.assert_allclose(got['open_clip_text'], model.encode_text(ids), atol=EMBEDDING_ATOL)
  head = os.path.isfile(os.path.join(oc_dir, conversions.HEAD_FILE))
  assert head == (variant == 'superclip')


def _readme_python_blocks() -> list[str]:
  text = open(os.path.join(ROOT, 'README.md')).read()
  return [block.split('```', 1)[0] for block in text.split('```python\n')[1:]]


@pytest.mark.slow
def test_the_readme_python_examples_run(demo_run, tmp_path):
  # The README's paths, laid out as its commands would leave them.
  (tmp_path / 'models').mkdir()
  for name, target in (('ours', 'demo'), ('hf', 'demo_hf'), ('open_clip', 'demo_open_clip')):
    os.symlink(demo_run[name], tmp_path / 'models' / target)
  from PIL import Image

  images, _ = clients.held_out_digits(1)
  Image.fromarray(images[0]).save(tmp_path / 'digit.png')
  blocks = _readme_python_blocks()
  assert len(blocks) == 3, 'the README shows superclip_jax, transformers and open_clip examples'
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  names = mnist_demo.NUMBER_WORDS
  for block in blocks:
    proc = subprocess.run([sys.executable, '-c', block], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (block, proc.stderr[-3000:])
    last = proc.stdout.strip().splitlines()[-1]
    assert any(n in last for n in names), (block, last)
