"""The step as accelerators run it: per-backend choices, compiled-program facts, peaks and MFU.

The GPU compile test needs the `gpu` extra (jax's CUDA plugin; no GPU): CI does not install
it, so it skips there with its reason. Everything else runs on CPU.
"""

import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superclip_jax import compile_targets, config_defaults, dry_run, flops, hlo_facts, metrics, train_step
from superclip_jax.data import pipeline
from superclip_jax.errors import UserError
from superclip_jax.models import layers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _small_config():
  c = config_defaults.load_config_file(os.path.join(ROOT, 'configs', 'tiny.py'))
  c.model.image, c.model.text = 'mu/8', 'mu'
  c.model.embed_dim, c.model.image_size = 32, 16
  c.data.global_batch_size = 16
  return c


# ---- Attention: the cuDNN path's layout and padding, against the einsum ---------------------------


@pytest.mark.parametrize('t,causal', [(17, False), (16, False), (77, True), (12, True)])
def test_fused_attention_path_equals_the_einsum_in_value_and_gradient(t, causal):
  rng = np.random.default_rng(t)
  q, k, v = (jnp.asarray(rng.normal(size=(3, t, 4, 16)), jnp.float32) for _ in range(3))
  head_major = lambda x: x.transpose(0, 2, 1, 3)

  def einsum_path(q, k, v):
    return head_major(layers.attention(head_major(q), head_major(k), head_major(v), causal))

  def fused_path(q, k, v):  # 'xla' runs jax.nn.dot_product_attention's reference on CPU, padding included
    return layers.fused_attention(q, k, v, causal, 'xla')

  np.testing.assert_allclose(fused_path(q, k, v), einsum_path(q, k, v), rtol=1e-5, atol=1e-5)
  cot = jnp.asarray(rng.normal(size=(3, t, 4, 16)), jnp.float32)
  grads = [jax.grad(lambda *a, f=f: jnp.sum(f(*a) * cot), argnums=(0, 1, 2))(q, k, v) for f in (einsum_path, fused_path)]
  for a, b in zip(*grads):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_attention_auto_takes_cudnn_only_on_gpus_in_16_bits():
  pick = layers.attention_implementation
  assert pick('auto', 'gpu', jnp.bfloat16, 64) == 'cudnn'
  assert pick('auto', 'gpu', jnp.float32, 64) == 'xla'  # cuDNN's flash attention has no fp32
  assert pick('auto', 'gpu', jnp.bfloat16, 60) == 'xla'  # head dim not a multiple of 8
  assert pick('auto', 'cpu', jnp.bfloat16, 64) == 'xla' and pick('auto', 'tpu', jnp.bfloat16, 64) == 'xla'
  assert pick('cudnn', 'cpu', jnp.float32, 64) == 'cudnn'  # an explicit choice is kept


# ---- The CPU step's compiled program on 8 fake devices --------------------------------------------


def _all_gathers(hlo_text):
  program = hlo_facts.Program(hlo_text)
  out = []
  for _, _, inst in program.instructions():
    kind = hlo_facts._collective_kind(inst['op'])
    if kind == 'all-gather':
      out += hlo_facts._moved_bytes(kind, inst)[1]
  return out


def _gradient_sized_gathers(tmp_path, name):
  config = _small_config()
  config.mesh.shape = (1, 8, 1)  # FSDP over every device: each stacked leaf is split 8 ways
  report = dry_run.run(config, quiet=True, out_dir=str(tmp_path / name))
  with open(tmp_path / name / 'step.hlo.txt') as f:
    gathers = _all_gathers(f.read())
  from superclip_jax.models.superclip import ModelConfig, ModelDef

  stacked = {
    tuple(x.shape) for x in jax.tree.leaves(ModelDef(ModelConfig.from_config(config)).shapes()) if x.ndim >= 3 and x.shape[0] == 2
  }  # mu towers: depth 2, parameters stacked over layers
  return report, [(dt, dims) for dt, dims in gathers if dims in stacked]


def test_cpu_step_on_eight_devices_gathers_no_whole_gradient(tmp_path, monkeypatch):
  report, whole = _gradient_sized_gathers(tmp_path, 'now')
  assert report['fits'] and report['program']['collectives']['all-reduce']['ops'] > 0
  assert whole == [], f'gradient-sized all-gathers: {whole}'
  # The check can fail: the former norm (jnp.vdot per leaf) gathered every stacked gradient.
  monkeypatch.setattr(train_step, 'global_norm', lambda tree: jnp.sqrt(sum(jnp.vdot(x, x) for x in jax.tree.leaves(tree))))
  _, whole = _gradient_sized_gathers(tmp_path, 'vdot')
  assert whole, 'the vdot norm should have gathered whole gradients'


def test_global_norm_is_the_l2_norm_of_every_leaf():
  tree = {'a': jnp.arange(6.0).reshape(2, 3), 'b': jnp.asarray(2.0), 'c': jnp.ones((2, 2, 2))}
  expected = np.sqrt(sum(np.sum(np.square(np.asarray(x))) for x in jax.tree.leaves(tree)))
  assert float(train_step.global_norm(tree)) == pytest.approx(expected, rel=1e-6)


def test_dry_run_dir_holds_the_report_and_the_program(tmp_path):
  config = _small_config()
  config.mesh.shape = (2, 2, 2)
  report = dry_run.run(config, quiet=True, out_dir=str(tmp_path))
  with open(tmp_path / 'report.json') as f:
    saved = json.load(f)
  assert saved['fits'] and saved['program'] == json.loads(json.dumps(report['program']))
  text = (tmp_path / 'step.hlo.txt').read_text()
  assert text.startswith('HloModule') and 'ENTRY' in text
  # On CPU the guard is the branch (free there): the program has it; attention is the einsum.
  assert saved['nonfinite_guard'] == 'cond' and saved['program']['conditionals'] >= 1
  assert saved['attention'] == 'xla' and saved['remat'] == 'elementwise'
  assert set(saved['program']['collectives']) >= {'all-reduce'}
  assert 'compiled program' in dry_run.format_report(report)


# ---- Reading compiled programs ----------------------------------------------------------------------

_HLO = """HloModule jit_step, is_scheduled=true

%body.1 (p: (s32[], f32[8,4])) -> (s32[], f32[8,4]) {
  %p = (s32[], f32[8,4]{1,0}) parameter(0)
  %x = f32[8,4]{1,0} get-tuple-element(%p), index=1
  %ag = (f32[1,4]{1,0}, f32[8,4]{1,0}) all-gather-start(%x), channel_id=1, replica_groups=[1,8]<=[8], dimensions={0}
  %agd = f32[8,4]{1,0} all-gather-done(%ag)
  %big = f32[128,128]{1,0} fusion(%agd), kind=kLoop, calls=%fused.1
  ROOT %t = (s32[], f32[8,4]{1,0}) tuple(%i, %agd)
}

%fused.1 (a: f32[8,4]) -> f32[128,128] {
  %huge = f32[1024,1024]{1,0} broadcast(%a), dimensions={}
  ROOT %r = f32[128,128]{1,0} slice(%huge), slice={[0:128], [0:128]}
}

%cond.1 (p: (s32[], f32[8,4])) -> pred[] {
  ROOT %lt = pred[] compare(%a, %b), direction=LT
}

ENTRY %main (a: f32[8,4]) -> f32[8,4] {
  %a = f32[8,4]{1,0} parameter(0)
  %w = (s32[], f32[8,4]{1,0}) while(%t0), condition=%cond.1, body=%body.1, backend_config={"known_trip_count":{"n":"12"}}
  %rs = f32[1,4]{1,0} reduce-scatter(%a), replica_groups=[1,8]<=[8], dimensions={0}, to_apply=%add
  %c = f32[8,4]{1,0} conditional(%pred, %a, %a), branch_computations={%b0, %b1}
  %fa = (bf16[2,18,4,64]{3,2,1,0}, f32[2,4,18]{2,1,0}, u8[0]{0}) custom-call(%q, %k, %v), custom_call_target="__cudnn$fmhaSoftmax"
  %fb = (bf16[2,18,4,64]{3,2,1,0}) custom-call(%q, %k, %v), custom_call_target="__cudnn$fmhaSoftmaxBackward"
  ROOT %out = f32[8,4]{1,0} add(%a, %c)
}
"""


def test_hlo_facts_count_loop_trips_and_read_collectives():
  f = hlo_facts.facts(_HLO)
  gather = f['collectives']['all-gather']
  assert gather['ops'] == 1 and gather['executions_per_step'] == 12
  assert gather['bytes_per_step'] == 12 * 8 * 4 * 4 and gather['largest_shape'] == 'f32[8,4]'
  scatter = f['collectives']['reduce-scatter']
  assert scatter['bytes_per_step'] == 8 * 4 * 4  # the input: the one-device result times the group of 8
  assert f['conditionals'] == 1
  assert f['fused_attention_calls'] == {'forward': 1, 'backward': 1}
  # The fusion's inner broadcast is not a buffer of its own; the fusion's output is.
  names = [b['name'] for b in f['largest_buffers']]
  assert 'huge' not in names and names[0] == 'big'
  assert 'all-gather 1.5 KiB/step' in hlo_facts.summary_line(f)


# ---- Peaks, MFU, topology names ---------------------------------------------------------------------


def test_peak_table_is_keyed_by_exact_device_kinds():
  assert flops.peak_flops('NVIDIA H100 80GB HBM3') == 989e12
  assert flops.peak_flops('NVIDIA H100 PCIe') == 756e12  # not the SXM part through a shared prefix
  assert flops.peak_flops('NVIDIA H200 NVL') == 835e12
  assert flops.peak_flops('TPU v5 lite') == 197e12
  assert flops.peak_flops('NVIDIA H100 80GB HBM3 (some future part)') is None
  assert flops.peak_flops('cpu') is None


def test_mfu_of_a_two_device_row_uses_both_chips_peaks(monkeypatch):
  devices = [types.SimpleNamespace(device_kind='NVIDIA H100 80GB HBM3', platform='gpu') for _ in range(2)]
  peak = flops.total_peak_flops(devices)
  assert peak == 2 * 989e12
  clock = iter([100.0, 102.5])  # the window starts at 100 s; 5 steps end at 102.5 s
  monkeypatch.setattr(metrics.time, 'perf_counter', lambda: next(clock))
  throughput = metrics.Throughput(global_batch_size=512, total_steps=100, start_step=10, flops_per_step=3.0e15, peak_flops=peak)
  row = throughput.update(15)
  assert row['mfu'] == pytest.approx(3.0e15 * 5 / 2.5 / (2 * 989e12))
  unknown = devices + [types.SimpleNamespace(device_kind='Some Accelerator', platform='gpu')]
  assert flops.total_peak_flops(unknown) is None  # no MFU rather than a guessed one


def test_topology_names():
  assert compile_targets.parse_gpu('h200:8') == ('h200', 1, 8)
  assert compile_targets.parse_gpu('h200:2x8') == ('h200', 2, 8)
  assert compile_targets.parse_gpu('v5e:16x16') is None
  with pytest.raises(UserError, match='unknown; known: TPU: .*GPU: a100:8, .*h200:8'):
    compile_targets.devices('k80:8')
  with pytest.raises(UserError, match='write h200:GPUS'):
    compile_targets.parse_gpu('h200:eight')
  for name in compile_targets.GPU_TARGETS:  # every shipped description names its device and memory
    text = compile_targets.gpu_target_text(name)
    assert 'Source: openxla/xla' in text and 'platform_name: "CUDA"' in text
  assert flops.device_memory(types.SimpleNamespace(device_kind='NVIDIA H200 141GB HBM3e')) == 151397597184


# ---- Input workers ----------------------------------------------------------------------------------


def test_workers_auto_is_every_core_but_one(monkeypatch):
  monkeypatch.delenv('LOCAL_WORLD_SIZE', raising=False)
  monkeypatch.delenv('SLURM_NTASKS_PER_NODE', raising=False)
  cores = pipeline.host_cores()
  assert pipeline.resolve_workers('auto') == cores - 1
  assert pipeline.resolve_workers('3') == 3 and pipeline.resolve_workers(0) == 0
  if cores == os.cpu_count() and cores >= 2:
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '2')  # two training processes share this host's cores
    assert pipeline.resolve_workers('auto') == cores // 2 - 1
  with pytest.raises(UserError, match="data.workers='many'"):
    pipeline.resolve_workers('many')


@pytest.mark.parametrize(
  'name', ['superclip_b16.py', 'superclip_l16.py', 'clip_b16.py', 'supersiglip_b16.py', 'superclass_b16.py']
)
def test_recipes_use_the_per_backend_defaults(name):
  c = config_defaults.load_config_file(os.path.join(ROOT, 'configs', name))
  assert c.data.workers == 'auto' and c.model.remat == 'auto' and c.model.attention == 'auto'
  assert c.nonfinite_guard == 'auto'


# ---- The GPU compile: needs the gpu extra, no GPU ---------------------------------------------------


def _cuda_plugin_missing() -> str:
  try:
    import jax_cuda12_plugin  # noqa: F401
  except ImportError:
    return "jax's CUDA plugin is not installed (pip install -e '.[gpu]'): cannot describe GPUs"
  return ''


@pytest.mark.slow
@pytest.mark.skipif(bool(_cuda_plugin_missing()), reason=_cuda_plugin_missing() or 'gpu extra present')
def test_gpu_dry_run_of_tiny_on_h100_node(tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  out = tmp_path / 'dry'
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'superclip_jax.main',
      '--config',
      'configs/tiny.py',
      '--dry_run',
      '--topology',
      'h100:8',
      '--dry_run_dir',
      str(out),
      '--config.model.compute_dtype=bfloat16',
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=1200,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((out / 'report.json').read_text())
  program = report['program']
  assert report['fits'] and report['device_kind'] == 'NVIDIA H100 80GB HBM3' and report['devices'] == 8
  assert report['attention'] == 'cudnn' and report['nonfinite_guard'] == 'select'
  assert program['conditionals'] == 0
  assert program['fused_attention_calls']['forward'] >= 2 and program['fused_attention_calls']['backward'] >= 2
  # Both towers: the image's 17 tokens and the text's 16 (odd lengths padded by one); the
  # backward's gradients are laid out (B, heads, T, head dim).
  hlo = (out / 'step.hlo.txt').read_text()
  lengths = {
    hlo_facts.shapes(line.split('custom-call(')[0])[0][1][2]
    for line in hlo.splitlines()
    if 'custom_call_target="__cudnn$fmhaSoftmaxBackward' in line
  }
  assert lengths == {18, 16}, lengths
  largest_gather = max(c['largest_bytes'] for kind, c in program['collectives'].items() if kind == 'all-gather')
  assert largest_gather <= report['largest_parameter_bytes']
  assert 'fused attention' in proc.stdout
