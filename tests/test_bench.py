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
