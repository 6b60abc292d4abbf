"""The train-step benchmark and the PyTorch comparison run and report what they promise."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from superclip_jax import allocator, bench_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = (
  'step_time_s',
  'images_per_sec',
  'images_per_sec_per_device',
  'model_flops_per_step',
  'xla_flops_corrected',
  'achieved_flops_per_sec',
  'peak_flops_per_sec',
  'peak_source',
  'mfu',
  'clip_step_time_s',
  'superclip_over_clip_step_ratio',
  'state_creation_s',
  'lower_s',
  'compile_s',
  'allocator',
)
# What `python -m superclip_jax.bench_step` runs its CPU step on (the cmeel-mimalloc wheel is a Linux dependency).
EXPECTED_MALLOC = 'mimalloc' if sys.platform.startswith('linux') and allocator.mimalloc_path() else 'system'


def _env():
  # One CPU device, as a user's plain run has (the test session forces 8).
  return {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'} | {'JAX_PLATFORMS': 'cpu'}


def test_interleaved_times_alternate_the_functions():
  calls = []
  times = bench_step.interleaved_times({'a': lambda: calls.append('a'), 'b': lambda: calls.append('b')}, 3, warmup=1)
  assert calls == ['a', 'b'] * 4 and len(times['a']) == len(times['b']) == 3


def test_peak_matmul_repeats_to_fill_its_turn_and_counts_its_flops():
  peak = bench_step.PeakMatmul(size=64, seconds=0.2)  # a 64^3 matmul takes microseconds, even on a loaded machine
  assert peak.repeats > 1 and peak.flops_per_call == 2.0 * 64**3 * peak.repeats
  # The faster of the BLAS libraries here: NumPy's, or PyTorch's where the interop extra put it.
  assert peak.library in (('numpy', 'torch') if importlib.util.find_spec('torch') else ('numpy',))
  calls = []
  real = peak._one
  peak._one = lambda: calls.append(real())
  peak()
  assert len(calls) == peak.repeats


def test_random_ids_are_captions_of_ordinary_tokens():
  tok = type('Tok', (), {'sot_id': 49406, 'eot_id': 49407, 'pad_id': 0})
  ids = bench_step.random_ids(np.random.default_rng(0), 4, 12, 49408, tok)
  assert ids.shape == (4, 12) and (ids[:, 0] == 49406).all() and ((ids == 49407).sum(1) == 1).all()


def test_bench_on_tiny_prints_every_figure_as_json():
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'superclip_jax.bench_step',
      '--config',
      'configs/tiny.py',
      '--steps',
      '2',
      '--warmup',
      '1',
      '--batch',
      '8',
      '--peak_matmul_size',
      '256',
    ],
    cwd=ROOT,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  missing = [k for k in KEYS if k not in report]
  assert not missing, missing
  assert report['devices'] == 1 and report['global_batch'] == 8 and np.isfinite(report['loss'])
  assert report['step_time_s'] > 0 and report['mfu'] > 0 and report['superclip_over_clip_step_ratio'] > 0
  # MFU from the reported fields it is made of: the analytic FLOPs of tiny at batch 8 over the median step, over the peak.
  from superclip_jax import config_defaults, flops
  from superclip_jax.models.superclip import ModelConfig

  tiny = config_defaults.load_config_file(os.path.join(ROOT, 'configs', 'tiny.py'))
  assert report['model_flops_per_step'] == pytest.approx(flops.analytic_step_flops(ModelConfig.from_config(tiny), 8))
  assert report['achieved_flops_per_sec'] == pytest.approx(report['model_flops_per_step'] / report['step_time_s'])
  assert report['mfu'] == pytest.approx(report['achieved_flops_per_sec'] / report['peak_flops_per_sec'])
  assert report['step_time_min_s'] <= report['step_time_s']
  assert report['peak_source'].startswith('measured') and 'BLAS' in report['peak_source']  # no table entry for a CPU
  # The peak is the median of the matmul's turns among the steps, so it lies within their range.
  low, high = report['peak_flops_per_sec_range']
  assert 0 < low <= report['peak_flops_per_sec'] <= high
  assert report['allocator'] == EXPECTED_MALLOC  # the entry point re-executed itself with mimalloc preloaded
  assert report['images_per_sec'] == pytest.approx(8 / report['step_time_s'])
  # The token classifier adds FLOPs; the analytic count is of the same size as XLA's.
  assert report['xla_flops_corrected'] == pytest.approx(report['model_flops_per_step'], rel=0.5)
  assert 'SuperCLIP/CLIP' in proc.stdout and 'MFU' in proc.stdout


def test_bench_times_a_recipe_config_without_its_data():
  # The recipe (shards and evaluations required for training) shrunk by overrides: no data= needed to time it.
  shrink = [
    '--config.model.image=mu/8',
    '--config.model.text=mu',
    '--config.model.embed_dim=32',
    '--config.model.compute_dtype=float32',
    '--config.model.remat=none',
  ]
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'superclip_jax.bench_step',
      '--config',
      'configs/superclip_b16.py',
      '--steps',
      '1',
      '--warmup',
      '0',
      '--batch',
      '4',
      '--image_size',
      '32',
      '--no_clip',
      '--peak_matmul_size',
      '128',
      *shrink,
    ],
    cwd=ROOT,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report['global_batch'] == 4 and report['config_variant'] == 'superclip' and np.isfinite(report['loss'])


def test_bench_reports_a_bad_override_in_one_line():
  proc = subprocess.run(
    [sys.executable, '-m', 'superclip_jax.bench_step', '--config', 'configs/tiny.py', '--config.model.imag_size=64'],
    cwd=ROOT,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2 and 'superclip_jax.bench_step: error:' in proc.stderr and 'Traceback' not in proc.stderr


@pytest.mark.skipif(
  importlib.util.find_spec('torch') is None or importlib.util.find_spec('transformers') is None,
  reason='the PyTorch comparison needs torch and transformers: the interop extra',
)
def test_vs_pytorch_tiny_runs():
  proc = subprocess.run(
    [sys.executable, 'benchmarks/vs_pytorch.py', '--tiny', '--steps', '2'],
    cwd=ROOT,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  # The same architecture on both sides: the parameter counts agree exactly.
  assert report['jax_params'] == report['torch_params']
  # And the same loss: from random weights on the same batch, the first losses are of the same size.
  assert report['torch_first_loss'] == pytest.approx(report['jax_first_loss'], rel=0.3)
  assert report['jax_step_s'] > 0 and report['torch_step_s'] > 0 and report['jax_over_torch_step_ratio'] > 0
  # PyTorch as a speed-aware user runs it (fused AdamW), and its default optimizer beside it; same loss.
  assert report['torch_optimizer'] == 'AdamW(fused=True)' and report['torch_default_step_s'] > 0
  assert report['torch_default_first_loss'] == pytest.approx(report['torch_first_loss'], rel=1e-6)
  # Each framework on its own malloc: JAX's as superclip_jax's entry points run, PyTorch's glibc's (pip's torch).
  assert report['jax_malloc'] == EXPECTED_MALLOC
  assert report['torch_malloc'] == 'system'


def test_vs_pytorch_reports_the_first_step_of_each_turn_apart():
  spec = importlib.util.spec_from_file_location('vs_pytorch', os.path.join(ROOT, 'benchmarks', 'vs_pytorch.py'))
  vs_pytorch = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(vs_pytorch)
  calls = []

  def fake(name):
    # Each call returns (its framework, whether the other framework ran just before).
    def run():
      after_switch = bool(calls) and calls[-1] != name
      calls.append(name)
      return (name, after_switch)

    return run

  times = vs_pytorch.alternate_in_blocks({'jax': fake('jax'), 'torch': fake('torch')}, timed_steps=4, block=3)
  assert calls[:2] == ['jax', 'torch']  # one untimed warm-up round
  assert len(times['jax']) == 4 and len(times['torch']) == 4
  assert times['jax'] == [('jax', False)] * 4 and times['torch'] == [('torch', False)] * 4
  assert times['jax_after_switch'] == [('jax', True)] * 2 and times['torch_after_switch'] == [('torch', True)] * 2
  with pytest.raises(SystemExit):
    vs_pytorch.parse_args(['--block', '1'])


@pytest.mark.parametrize(
  'script,flag',
  [
    ('build_runners.py', '--repeats'),
    ('compile_table.py', '--[no]render'),
    ('demo_in_stock_clients.py', '--workdir'),
    ('stock_clients.py', '--open_clip'),
    ('vs_pytorch.py', '--[no]no_head'),
  ],
)
def test_every_benchmark_speaks_absl_flags(script, flag):
  # --help lists the script's flags with status 0; a mistake is one line, `SCRIPT: error: ...`, with status 2.
  path = os.path.join('benchmarks', script)
  proc = subprocess.run([sys.executable, path, '--help'], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert re.search(rf'^\s+{re.escape(flag)}: ', proc.stdout, re.M), proc.stdout[-3000:]
  proc = subprocess.run([sys.executable, path, '--nope'], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
  assert lines[0].startswith(f"{script}: error: Unknown command line flag 'nope'"), lines


def test_stock_clients_parses_its_flags_without_superclip_jax(tmp_path):
  # Its process must never import superclip_jax, flag handling included; with no client named it writes no results.
  np.savez(tmp_path / 'inputs.npz', pixels=np.zeros((1, 4, 4, 3), np.float32), ids=np.zeros((1, 4), np.int32))
  out = tmp_path / 'results.npz'
  cmd = [sys.executable, '-X', 'importtime', 'benchmarks/stock_clients.py', '--inputs', str(tmp_path / 'inputs.npz'), '--out']
  proc = subprocess.run([*cmd, str(out)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert out.exists() and not dict(np.load(out))
  imported = [line.rsplit('|', 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith('import time:')]
  assert 'absl.flags' in imported and not [m for m in imported if m.split('.')[0] == 'superclip_jax'], imported


def test_bench_gpu_script_writes_a_report_per_batch(tmp_path):
  # ALLOW_CPU runs the GPU script's whole path on this CPU, on tiny; no GPU means a clear refusal without it.
  env = _env() | {'PYTHON': sys.executable, 'BATCHES': '4 8', 'IMAGE_SIZE': '32', 'STEPS': '1', 'DTYPE': 'float32'}
  proc = subprocess.run(
    ['bash', 'launch/bench_gpu.sh', str(tmp_path), 'configs/tiny.py', '--warmup', '0', '--no_clip', '--peak_matmul_size', '128'],
    cwd=ROOT,
    env=env | {'ALLOW_CPU': '1'},
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  for batch in (4, 8):
    report = json.loads((tmp_path / f'bench_b{batch}.json').read_text())
    assert report['global_batch'] == batch and report['compute_dtype'] == 'float32' and report['mfu'] > 0
  summary = proc.stdout.strip().splitlines()[-2:]
  assert summary[0].startswith('batch 4:') and summary[1].startswith('batch 8:') and 'MFU' in summary[1]
  refused = subprocess.run(
    ['bash', 'launch/bench_gpu.sh', str(tmp_path / 'x')], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
  )
  assert refused.returncode == 2 and 'no GPU' in refused.stderr


def test_input_pipeline_bench_compares_with_the_openclip_style_pil_transform():
  proc = subprocess.run(
    [sys.executable, '-m', 'superclip_jax.data.bench_input', '--synthesize', '16', '--seconds', '0.2'],
    cwd=ROOT,
    env=_env(),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  for stage in ('decode', 'decode_pil', 'openclip_pil', 'decode_augment', 'pipeline', 'pipeline_over_openclip_pil'):
    assert report[stage] > 0, stage
  # The whole pipeline with worker processes, as the trainer runs it: 1, 2 and every core.
  from superclip_jax.data import pipeline

  for workers in sorted({1, 2, pipeline.host_cores()}):
    assert report[f'pipeline_workers_{workers}'] > 0, workers
  assert 'worker process(es)' in proc.stdout
  assert 'pipeline / OpenCLIP-style PIL' in proc.stdout


def test_openclip_style_transform_is_a_normalised_chw_crop():
  from superclip_jax.data import bench_input
  from superclip_jax.models.vit import CLIP_MEAN, CLIP_STD

  image = np.full((256, 300, 3), 128, np.uint8)
  jpeg = __import__('simplejpeg').encode_jpeg(image, quality=100)
  out = bench_input.openclip_style(jpeg, 224, np.random.default_rng(0))
  assert out.shape == (3, 224, 224) and out.dtype == np.float32
  np.testing.assert_allclose(out[:, 100, 100], (128 / 255 - CLIP_MEAN) / CLIP_STD, atol=0.02)


def test_vs_pytorch_steps_compute_the_same_loss_from_the_same_weights():
  # The benchmark's two steps start from their own random weights; here the PyTorch model's weights, converted
  # (superclip_jax.interop, as `convert --from hf` reads them, the head as the SuperCLIP layout's), replace the JAX
  # step's: on the same batch the first losses must then agree to float32 rounding, contrastive and token terms alike.
  pytest.importorskip('torch', reason='the PyTorch comparison needs torch and transformers: the interop extra')
  pytest.importorskip('transformers', reason='the PyTorch comparison needs torch and transformers: the interop extra')
  import jax

  from superclip_jax.interop import hf, openclip

  spec = importlib.util.spec_from_file_location('vs_pytorch', os.path.join(ROOT, 'benchmarks', 'vs_pytorch.py'))
  vs_pytorch = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(vs_pytorch)
  args = vs_pytorch.parse_args(['--tiny'])
  s = vs_pytorch.sizes(args)
  config = vs_pytorch.jax_config(args, s)
  config.mesh.shape = (-1, 1, 1)  # this session's 8 CPU devices, not the benchmark's one
  config.optim.warmup_steps = 10  # a non-zero learning rate at step 1: the replaced weights are what the loss sees
  jax_step = bench_step.Step(config)
  batch = {k: np.asarray(v) for k, v in jax_step.batch.items()}
  torch_step, _ = vs_pytorch.torch_step(args, s, batch['images'], batch['text'])
  sd = {k: v.detach().numpy().copy() for k, v in torch_step.model.state_dict().items()}
  sd, hints = hf.to_openclip(sd, torch_step.model.config.to_dict())
  norm, linear = torch_step.head
  sd['text_decoder.ln_mlp.weight'], sd['text_decoder.ln_mlp.bias'] = norm.weight.detach().numpy(), norm.bias.detach().numpy()
  sd['text_decoder.text_projection.weight'] = linear.weight.detach().numpy()
  sd['text_decoder.text_projection.bias'] = linear.bias.detach().numpy()
  cfg = openclip.infer_config(sd, quick_gelu=True, image_heads=hints['image_heads'], text_heads=hints['text_heads'])
  params = openclip.to_params(sd, cfg)
  state_params = jax_step.state.params
  assert jax.tree.structure(params) == jax.tree.structure(jax.tree.map(np.asarray, state_params))
  jax_step.state = jax_step.state.replace(
    params=jax.tree.map(lambda new, old: jax.device_put(np.asarray(new, old.dtype), old.sharding), params, state_params)
  )
  jax_step()
  jax_loss = jax_step.last_metrics()['loss']
  torch_loss = torch_step()  # its loss is computed before its update
  print(f'first loss from the same weights: jax {jax_loss:.7f}, torch {torch_loss:.7f}')
  assert abs(jax_loss - torch_loss) < 1e-4  # dropping the first patch token from the head's mean moves it 9e-4


def test_bench_report_figures_follow_from_the_timed_turns(monkeypatch):
  # The real tiny steps (8 devices), timed turns replaced by known ones: every rate in the report is the one the
  # turns give, medians (not means or minima) of the right lists, the batch and device count of the run.
  from superclip_jax import config_defaults, flops
  from superclip_jax.models.superclip import ModelConfig

  turns = {'superclip': [0.3, 0.1, 0.2, 0.9, 0.25], 'clip': [0.05, 0.1, 0.15, 0.2, 0.12], 'peak': [0.01, 0.04, 0.02, 0.05, 0.03]}

  class FakePeak:
    flops_per_call, library = 1e9, 'numpy'

    def __init__(self, size):
      pass

  def fake_times(fns, steps, warmup=0):
    assert sorted(fns) == ['clip', 'peak', 'superclip'] and steps == 5
    return {k: list(turns[k]) for k in fns}

  monkeypatch.setattr(bench_step, 'PeakMatmul', FakePeak)
  monkeypatch.setattr(bench_step, 'interleaved_times', fake_times)
  config = config_defaults.load_config_file(os.path.join(ROOT, 'configs', 'tiny.py'))
  config.data.global_batch_size = 16
  report = bench_step.run(config, steps=5, warmup=0, compare_clip=True)
  assert report['devices'] == 8 and report['global_batch'] == 16
  assert report['step_time_s'] == 0.25 and report['step_time_min_s'] == 0.1
  assert report['images_per_sec'] == pytest.approx(16 / 0.25) and report['images_per_sec_per_device'] == pytest.approx(2 / 0.25)
  assert report['clip_step_time_s'] == 0.12 and report['superclip_over_clip_step_ratio'] == pytest.approx(0.25 / 0.12)
  assert report['peak_flops_per_sec'] == pytest.approx(1e9 / 0.03)
  assert report['peak_flops_per_sec_range'] == pytest.approx([2e10, 1e11])
  model_flops = flops.analytic_step_flops(ModelConfig.from_config(config), 16)
  assert report['model_flops_per_step'] == pytest.approx(model_flops)
  assert report['achieved_flops_per_sec'] == pytest.approx(model_flops / 0.25)
  assert report['mfu'] == pytest.approx(model_flops / 0.25 / (1e9 / 0.03))
