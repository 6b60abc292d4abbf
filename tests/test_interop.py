"""Weights in and out (superclip_jax.convert): transformers CLIPModel, OpenCLIP (QuickGELU / GELU) and
SuperCLIP-layout checkpoints convert to exports whose outputs equal the torch models', convert back
tensor for tensor, load in transformers / open_clip, preprocess as OpenCLIP does, evaluate and fine-tune."""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip('torch', reason='interop tests need torch: pip install -r requirements-interop.txt')
transformers = pytest.importorskip('transformers', reason='interop tests need transformers (requirements-interop.txt)')
pytest.importorskip('safetensors', reason='interop tests need safetensors (requirements-interop.txt)')
# Imported as a user's script imports it: a torchvision that does not match torch fails here, not skips.
open_clip = pytest.importorskip('open_clip', reason='interop tests need open_clip (requirements-interop.txt)')

import corpus  # noqa: E402
import interop_torch  # noqa: E402
import jax  # noqa: E402

from superclip_jax import convert, export  # noqa: E402
from superclip_jax.errors import UserError  # noqa: E402
from superclip_jax.interop import conversions, tensors  # noqa: E402
from superclip_jax.models.superclip import ModelDef  # noqa: E402

ATOL = 1e-4
MAX_DIFFS = {}  # printed at the end (pytest -s) for the report


def _record(name, ours, theirs):
  d = float(np.max(np.abs(np.asarray(ours, np.float64) - np.asarray(theirs, np.float64))))
  MAX_DIFFS[name] = d
  print(f'max abs diff {name}: {d:.3g}')
  assert d < ATOL, (name, d)


def _images(n, size, seed=0):
  return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


def _compare(tag, model, reference, images, ids):
  _record(f'{tag} image embedding', model.encode_image(images), reference['image'])
  _record(f'{tag} text embedding', model.encode_text(ids), reference['text'])
  logits = model.logit_scale * model.encode_image(images) @ model.encode_text(ids).T
  _record(f'{tag} logits', logits, reference['logits'])


def _assert_same_tensors(got: dict, want: dict):
  assert sorted(got) == sorted(want)
  for k in want:
    w = want[k].numpy() if hasattr(want[k], 'numpy') else want[k]
    np.testing.assert_array_equal(got[k], w, err_msg=k)


@pytest.fixture(scope='module')
def hf_model(tmp_path_factory):
  model = interop_torch.hf_clip()
  src = tmp_path_factory.mktemp('hf') / 'src'
  model.save_pretrained(src)
  out = str(tmp_path_factory.mktemp('hf') / 'converted')
  convert.main(['--from', 'hf', '--src', str(src), '--out', out])
  return model, str(src), out


def test_hf_clip_converts_with_equal_outputs_and_back_exactly(hf_model, tmp_path):
  model, _, out = hf_model
  loaded = export.load(out)
  assert loaded.config.quick_gelu and loaded.config.image.heads == 2 and loaded.config.eot_id == 49407
  images, ids = _images(4, 32), interop_torch.text_ids(4, 16, 49408, seed=1)
  ref = interop_torch.hf_outputs(model, images, ids)
  _compare('hf -> ours', loaded, ref, images, ids)
  # The CLIP BPE comes with the converted model.
  assert loaded.encode_text(['a photo of a cat']).shape == (1, 32)
  # Back: every tensor of the original, exactly.
  back = str(tmp_path / 'hf_back')
  convert.main(['--to', 'hf', '--src', out, '--out', back])
  _, sd = tensors.read_hf_dir(back)
  want = {k: v for k, v in model.state_dict().items() if not k.endswith('position_ids')}
  _assert_same_tensors(sd, want)
  # transformers loads it unchanged; the vision tower's features equal our image tower's.
  reloaded, info = transformers.CLIPModel.from_pretrained(back, output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  reloaded.eval()
  _record('ours -> hf CLIPModel logits', interop_torch.hf_outputs(reloaded, images, ids)['logits'], ref['logits'])
  # With CLIP's vocabulary the directory carries CLIP's BPE for transformers' CLIPTokenizer: same ids as ours.
  hf_tok = transformers.CLIPTokenizer.from_pretrained(back)
  for text in ('a photo of a cat', "Hello, WORLD!! it's 3.14, naïve café", '  spaces\tand\nnewlines '):
    assert hf_tok(text)['input_ids'] == loaded.tokenizer.with_specials(loaded.tokenizer.encode(text), 1000)
  vision, info = transformers.CLIPVisionModel.from_pretrained(back, output_loading_info=True)
  assert not info['missing_keys'], info
  vision.eval()
  with torch.no_grad():
    vis = vision(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    hf_tokens = getattr(vision, 'vision_model', vision).post_layernorm(vis.last_hidden_state).numpy()
  tokens = np.asarray(ModelDef(loaded.config).bind(loaded.params).image_tower.tokens(images))
  _record('ours -> CLIPVisionModel pooled', vis.pooler_output.numpy(), tokens[:, 0])
  _record('ours -> CLIPVisionModel tokens (post-LN)', hf_tokens, tokens)


def test_hf_gelu_with_legacy_eos_token_id(tmp_path):
  # Older HF CLIP configs say eos_token_id=2: HF then pools at argmax(ids), the largest id, as OpenAI does.
  model = interop_torch.hf_clip(vocab=1000, act='gelu', seed=3)
  model.config.text_config.eos_token_id = 2
  model.text_model.eos_token_id = 2
  model.save_pretrained(tmp_path / 'src', max_shard_size='300KB')  # sharded: read through the index
  assert os.path.exists(tmp_path / 'src' / 'model.safetensors.index.json')
  assert json.load(open(tmp_path / 'src' / 'config.json'))['text_config']['eos_token_id'] == 2
  convert.main(['--from', 'hf', '--src', str(tmp_path / 'src'), '--out', str(tmp_path / 'out')])
  loaded = export.load(str(tmp_path / 'out'))
  assert not loaded.config.quick_gelu and loaded.config.eot_id == 999 and loaded.tokenizer is None
  images, ids = _images(3, 32, seed=6), interop_torch.text_ids(3, 16, 1000, seed=7)
  ids[0, -1] = 5  # a token after EOT changes nothing
  _compare('hf gelu legacy eos -> ours', loaded, interop_torch.hf_outputs(model, images, ids), images, ids)


@pytest.mark.parametrize('quick_gelu', [True, False])
def test_open_clip_converts_with_equal_outputs_and_back_exactly(tmp_path, quick_gelu):
  model = interop_torch.open_clip_model(open_clip, quick_gelu)
  src = str(tmp_path / 'openclip.bin')
  sd = dict(model.state_dict())
  if quick_gelu:  # OpenAI's state dicts also carry these three sizes as tensors
    sd.update(input_resolution=torch.tensor(32), context_length=torch.tensor(16), vocab_size=torch.tensor(49408))
  torch.save(sd, src)
  out = str(tmp_path / 'converted')
  # OpenAI's weights are QuickGELU; an OpenCLIP checkpoint says nothing, GELU by default.
  convert.main(['--from', 'openai' if quick_gelu else 'open_clip', '--src', src, '--out', out])
  loaded = export.load(out)
  assert loaded.config.quick_gelu == quick_gelu and loaded.config.image.heads == 2
  images, ids = _images(4, 32, seed=2), interop_torch.text_ids(4, 16, 49408, seed=3)
  ref = interop_torch.open_clip_outputs(model, images, ids)
  _compare(f'open_clip {"quickgelu" if quick_gelu else "gelu"} -> ours', loaded, ref, images, ids)
  back = str(tmp_path / 'back')
  convert.main(['--to', 'open_clip', '--src', out, '--out', back])
  sd = tensors.read_file(os.path.join(back, 'open_clip_model.safetensors'))
  _assert_same_tensors(sd, model.state_dict())
  cfg = json.load(open(os.path.join(back, 'open_clip_config.json')))['model_cfg']
  rebuilt = open_clip.model.CLIP(**cfg).eval()
  rebuilt.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
  _record('ours -> open_clip logits', interop_torch.open_clip_outputs(rebuilt, images, ids)['logits'], ref['logits'])


def test_superclip_layout_with_head(tmp_path):
  vocab = 49408
  model = interop_torch.open_clip_model(open_clip, False, vocab=vocab)
  sd, head = interop_torch.superclip_state_dict(model, vocab)
  src = str(tmp_path / 'superclip.pt')
  torch.save({'epoch': 3, 'state_dict': {'module.' + k: v for k, v in sd.items()}}, src)  # a training checkpoint
  out = str(tmp_path / 'converted')
  convert.main(['--from', 'open_clip', '--src', src, '--out', out])
  cfg, params = conversions.read_ours(out)
  assert cfg.variant == 'superclip' and 'token_classifier' in params
  images, ids = _images(3, 32, seed=4), interop_torch.text_ids(3, 16, vocab, seed=5)
  ref = interop_torch.open_clip_outputs(model, images, ids, head)
  _compare('superclip -> ours', export.load(out), ref, images, ids)
  outputs = ModelDef(cfg).bind(jax.tree.map(np.asarray, params))(images, ids)
  _record('superclip -> ours token classifier logits', outputs['token_logits'], ref['token_logits'])
  for to in ('open_clip', 'hf'):
    back = str(tmp_path / to)
    convert.main(['--to', to, '--src', out, '--out', back])
    _assert_same_tensors(tensors.read_file(os.path.join(back, conversions.HEAD_FILE)), head)
  # The token classifier round-trips through an HF directory too.
  again = str(tmp_path / 'again')
  convert.main(['--from', 'hf', '--src', str(tmp_path / 'hf'), '--out', again])
  _, params_again = conversions.read_ours(again)
  jax.tree.map(np.testing.assert_array_equal, params_again, params)


def test_bfloat16_safetensors_are_read_as_float32(tmp_path):
  from safetensors.torch import save_file

  x = torch.randn(3, 5).to(torch.bfloat16)
  save_file({'w': x, 'n': torch.arange(4)}, str(tmp_path / 'bf16.safetensors'))
  got = tensors.read_file(str(tmp_path / 'bf16.safetensors'))
  assert got['w'].dtype == np.float32 and got['n'].dtype == np.int64
  np.testing.assert_array_equal(got['w'], x.float().numpy())


def test_bad_state_dicts_are_one_line_user_errors(tmp_path, capsys):
  model = interop_torch.open_clip_model(open_clip, False, vocab=1000)
  sd = dict(model.state_dict())
  sd['visual.extra.weight'] = torch.zeros(3)
  sd['transformer.resblocks.0.mlp.c_fc.bias'] = torch.zeros(7)
  del sd['visual.ln_post.bias']
  src = str(tmp_path / 'bad.bin')
  torch.save(sd, src)
  with pytest.raises(UserError, match='visual.ln_post.bias'):
    conversions.read_foreign('open_clip', src)
  del sd['visual.extra.weight']
  sd['visual.ln_post.bias'] = torch.zeros(128)
  torch.save(sd, src)
  with pytest.raises(SystemExit) as e:
    convert.main(['--from', 'open_clip', '--src', src, '--out', str(tmp_path / 'o')])
  err = capsys.readouterr().err.strip()
  assert e.value.code == 2 and len(err.splitlines()) == 1
  assert 'text_tower.transformer.mlp_fc.bias' in err or 'c_fc.bias' in err
  sd = dict(model.state_dict())
  sd['visual.extra.weight'] = torch.zeros(3)
  torch.save(sd, src)
  with pytest.raises(UserError, match='unknown key visual.extra.weight'):
    conversions.read_foreign('open_clip', src)
  # OpenAI's released .pt files are TorchScript: refused (loading runs code), with what to do instead.
  torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tmp_path / 'jit.pt'))
  with pytest.raises(UserError, match='TorchScript archive'):
    conversions.read_foreign('openai', str(tmp_path / 'jit.pt'))
  # MLP widths whose ratio does not survive float rounding (480 / 352 * 352 < 480) still fit.
  from superclip_jax.interop import openclip

  assert int(352 * openclip._mlp_ratio(np.zeros((480, 1)), 352)) == 480
  # Width 100 is no multiple of 64: the heads must be given.
  with pytest.raises(UserError, match='--image_heads'):
    openclip.infer_config(
      {
        'visual.conv1.weight': np.zeros((100, 3, 8, 8)),
        'visual.positional_embedding': np.zeros((17, 100)),
        'visual.proj': np.zeros((100, 8)),
      },
      quick_gelu=False,
    )


def _photo(seed, size):
  """A photo-like picture: corpus.picture's gradients and block, plus texture noise, through JPEG."""
  import io

  from PIL import Image

  base = corpus.picture(seed, size).astype(np.float32)
  noise = np.random.default_rng(seed).normal(0, 12, base.shape)
  img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
  return Image.open(io.BytesIO(corpus.encode(img, 'JPEG', quality=90))).convert('RGB')


@pytest.mark.parametrize('size', [224, 32])
def test_preprocess_matches_open_clip_eval_transform(size, hf_model):
  from superclip_jax.data import transforms

  reference = open_clip.transform.image_transform(size, is_train=False)
  mean, std = np.asarray(export.CLIP_MEAN, np.float32), np.asarray(export.CLIP_STD, np.float32)
  worst = 0.0
  # Landscape, portrait, odd sizes (rounding of the long side and crop offset), square, upscaling.
  for i, wh in enumerate([(640, 480), (480, 640), (333, 517), (517, 333), (224, 224), (100, 150), (1021, 300)]):
    photo = _photo(i, wh)
    want = reference(photo).numpy().transpose(1, 2, 0)
    got = transforms.clip_preprocess(photo, size, mean, std)[0]
    worst = max(worst, float(np.max(np.abs(got - want) * std)))  # in units of pixel value / 255
  MAX_DIFFS[f'preprocess {size}px (x/255 units)'] = worst
  print(f'max abs diff preprocess {size}px: {worst:.3g} (1/255 = {1 / 255:.3g})')
  assert worst <= 1 / 255 + 1e-6
  if size == 32:  # the loaded model's own preprocess, for PIL images and arrays alike
    model = export.load(hf_model[2])
    photo = _photo(0, (640, 480))
    np.testing.assert_array_equal(
      model.preprocess([photo, np.asarray(photo)]), np.concatenate([transforms.clip_preprocess(photo, 32, mean, std)] * 2)
    )


def _tiny_image_folder(root, classes=('cat', 'dog'), per_class=4, picture=None):
  from PIL import Image

  counts = per_class if isinstance(per_class, (tuple, list)) else [per_class] * len(classes)
  for label, (name, n) in enumerate(zip(classes, counts)):
    os.makedirs(root / name, exist_ok=True)
    for i in range(n):
      Image.fromarray((picture or corpus.picture)(10 * label + i, (48, 40))).save(root / name / f'{i}.jpg')


def _contrasting_picture(seed, wh):
  """Pictures a random network tells apart: a class's own brightness and colour, noise on top (seed = 10 * label + i)."""
  rng = np.random.default_rng(seed)
  base = np.array([[20, 20, 20], [230, 40, 40], [240, 240, 240]])[seed // 10 % 3]
  return np.clip(base + rng.normal(0, 25, (wh[1], wh[0], 3)), 0, 255).astype(np.uint8)


def test_converted_model_evaluates(hf_model, tmp_path):
  from superclip_jax import config_defaults, evaluate
  from superclip_jax.data import build
  from superclip_jax.evals.registry import evaluator

  _tiny_image_folder(tmp_path / 'images', classes=('bird', 'cat', 'dog'), per_class=(3, 4, 5), picture=_contrasting_picture)
  shards = str(tmp_path / 'shards')
  build.build(f'folder:{tmp_path / "images"}', shards, template='a photo of a {}.', progress=False)
  config = config_defaults.default_config()
  templates = ('a photo of a {}.', 'a drawing of a {}.')
  config.evals.zeroshot = evaluator(kind='zeroshot', shards=shards, class_names='manifest', templates=templates, batch_size=8)
  config.evals.retrieval = evaluator(kind='retrieval', shards=shards, batch_size=8, match='label')
  result = evaluate.evaluate(config, model_dir=hf_model[2])
  assert result['model'] == hf_model[2]
  # The same evaluations done apart: the original transformers model on the stored images through OpenCLIP's
  # eval transform, the prompts tokenized as CLIP does; its top-1 and R@1 are what the converted model scored.
  want = _reference_scores(hf_model[0], export.load(hf_model[2]).tokenizer, shards, templates)
  print('evaluator', {k: result[k] for k in want}, 'reference', want)
  for key, value in want.items():
    assert result[key] == pytest.approx(value, abs=1e-6), (key, result[key], value)


def _reference_scores(model, tokenizer, shards, templates):
  """Zero-shot top-1 (templates averaged per class) and label-matched retrieval R@1 of an HF CLIPModel."""
  import io

  from PIL import Image

  from superclip_jax.data import records

  recs = corpus.built_records(shards)
  class_names = records.read_manifest(shards)['class_names']
  transform = open_clip.transform.image_transform(32, is_train=False)
  pixels = torch.stack([transform(Image.open(io.BytesIO(r['image']))) for r in recs])
  labels = np.array([r['label'] for r in recs])

  def ids(texts):
    out = np.zeros((len(texts), 16), np.int64)
    for i, t in enumerate(texts):
      row = tokenizer.with_specials(tokenizer.encode(t), 16)
      out[i, : len(row)] = row
    return torch.from_numpy(out)

  def unit(x):
    return x / x.norm(dim=-1, keepdim=True)

  def text(input_ids):
    return unit(model.text_projection(model.text_model(input_ids=input_ids).pooler_output))

  with torch.no_grad():
    image = unit(model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)).double().numpy()
    classes = [unit(text(ids([t.format(c) for t in templates])).mean(0)) for c in class_names]
    captions = text(ids([r['caption'] for r in recs])).double().numpy()
  scores = image @ torch.stack(classes).double().numpy().T
  top1 = float(np.mean(scores.argmax(1) == labels))
  sim = image @ captions.T
  same = labels[:, None] == labels[None, :]
  # R@1 of an image: its best same-class caption beats every other-class caption (ties count against); texts alike.
  i2t = float(np.mean([sim[i][same[i]].max() > sim[i][~same[i]].max() for i in range(len(recs))]))
  t2i = float(np.mean([sim[:, j][same[:, j]].max() > sim[:, j][~same[:, j]].max() for j in range(len(recs))]))
  return {
    'zeroshot/zeroshot/top1': top1,
    'retrieval/retrieval/image_to_text_r1': i2t,
    'retrieval/retrieval/text_to_image_r1': t2i,
  }


def _small_superclip(tmp_path):
  """A SuperCLIP-layout checkpoint sized as test_sharded_step.small_config(), converted; (export dir, config)."""
  from test_sharded_step import small_config

  model = interop_torch.open_clip_model(
    open_clip, False, vocab=64, width=64, head_width=32, text_heads=2, image=16, ctx=16, embed=32, seed=7
  )
  sd, _ = interop_torch.superclip_state_dict(model, 64, seed=8)
  src = str(tmp_path / 'small.safetensors')
  tensors.write_safetensors(src, {k: v.numpy() for k, v in sd.items()})
  out = str(tmp_path / 'converted')
  # Width 64 would mean one head by OpenAI's rule: this model has two.
  convert.main(['--from', 'open_clip', '--src', src, '--out', out, '--image_heads', '2', '--text_heads', '2'])
  config = small_config()
  config.init_from = out
  config.log_every_steps = 1
  config.checkpoint.every_steps = 1000
  return out, config


def test_fine_tune_starts_from_the_converted_weights(tmp_path):
  from types import SimpleNamespace

  from superclip_jax import losses, train, train_state, train_step
  from superclip_jax.data import synthetic
  from superclip_jax.models.superclip import ModelConfig

  out, config = _small_superclip(tmp_path)
  config.total_steps = 20
  rows = train.run(config, str(tmp_path / 'run'))
  assert [r['step'] for r in rows if 'loss' in r][:2] == [1, 2]
  # The expected first loss: the converted model's forward on the first batch, as the step computes it.
  cfg = ModelConfig.from_config(config)
  _, params = conversions.read_ours(out)
  batch = synthetic.SyntheticImageText(
    image_size=16, vocab_size=64, context_length=16, sot_id=62, eot_id=63, pad_id=0, seed=config.seed
  ).batch(0, config.data.global_batch_size)
  state = SimpleNamespace(idf_counts=train_state.initial_idf_counts(config, cfg.variant))
  targets, _ = train_step._token_targets(config, cfg, state, batch)
  outputs = ModelDef(cfg).bind(jax.tree.map(np.asarray, params))(batch['images'], batch['text'])
  parts = losses.compute_terms(outputs, targets, losses.active_terms(cfg), losses.LossOptions())
  expected = float(losses.total_loss(parts, losses.term_weights(config, cfg)))
  MAX_DIFFS['fine-tune first loss'] = abs(rows[0]['loss'] - expected)
  print(f"first logged loss {rows[0]['loss']:.6f}, converted model's {expected:.6f}")
  assert rows[0]['loss'] == pytest.approx(expected, rel=1e-5)
  assert rows[0]['token_loss'] == pytest.approx(float(parts['token_loss']), rel=1e-5)
  assert rows[-1]['loss'] < rows[0]['loss']
  # A training workdir converts out directly, its trained token classifier included.
  from superclip_jax import checkpoint
  from superclip_jax.interop import openclip

  convert.main(['--to', 'open_clip', '--src', str(tmp_path / 'run'), '--out', str(tmp_path / 'oc'), '--format', 'bin'])
  final, _ = checkpoint.latest_checkpoint_dir(str(tmp_path / 'run'))
  want_sd, want_head = openclip.from_params(checkpoint.read_numpy_tree(os.path.join(final, 'state'))['params'])
  _assert_same_tensors(tensors.read_file(str(tmp_path / 'oc' / 'open_clip_pytorch_model.bin')), want_sd)
  _assert_same_tensors(tensors.read_file(str(tmp_path / 'oc' / conversions.HEAD_FILE)), want_head)


def test_lit_from_a_converted_model_and_clear_size_errors(tmp_path):
  from superclip_jax import checkpoint, train

  out, config = _small_superclip(tmp_path)
  config.total_steps = 2
  config.init_image_tower_only = True
  config.optim.frozen = 'image_tower/.*'
  train.run(config, str(tmp_path / 'lit'))
  final, _ = checkpoint.latest_checkpoint_dir(str(tmp_path / 'lit'))
  trained = checkpoint.read_numpy_tree(os.path.join(final, 'state'))['params']
  _, source = conversions.read_ours(out)
  jax.tree.map(np.testing.assert_array_equal, trained['image_tower'], source['image_tower'])
  assert not np.array_equal(trained['text_tower']['token_embedding'], source['text_tower']['token_embedding'])
  _, bad = _small_superclip(tmp_path / 'bad')
  bad.model.context_length = 8
  with pytest.raises(
    UserError,
    match=r'context_length 16; this config has model.context_length=8: set '
    r'--config.model.context_length=16',
  ):
    train.run(bad, str(tmp_path / 'bad_run'))
  bad.model.context_length = 16
  bad.model.quick_gelu = True  # no shape shows it: the export's model_config.json does
  with pytest.raises(UserError, match=r'quick_gelu=False; this config has model.quick_gelu=True'):
    train.run(bad, str(tmp_path / 'bad_run'))
