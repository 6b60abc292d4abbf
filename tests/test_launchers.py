"""The launchers in launch/: a usage header and -h each, clean under shellcheck, and what they set.

The XLA and libtpu flags they set are parsed by this jaxlib and libtpu (an unknown one aborts);
the cluster tools (srun, gcloud) and the GPU are faked to check what reaches the command.
"""

import glob
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHERS = sorted(glob.glob(os.path.join(ROOT, 'launch', '*')))


def test_the_launchers_are_there():
  names = {os.path.basename(p) for p in LAUNCHERS}
  assert {'local_multiprocess.sh', 'tpu_pod.sh', 'slurm_gpu.sbatch'} <= names


@pytest.mark.parametrize('path', LAUNCHERS, ids=os.path.basename)
def test_help_prints_the_usage(path):
  proc = subprocess.run(['bash', path, '-h'], capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0 and os.path.basename(path) in proc.stdout
  proc = subprocess.run(['bash', path], capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2 and 'usage' not in proc.stdout  # no arguments: the usage goes to stderr


@pytest.mark.parametrize('path', LAUNCHERS, ids=os.path.basename)
def test_shellcheck_is_clean(path):
  if not shutil.which('shellcheck'):
    pytest.skip('shellcheck is not installed (apt-get install shellcheck; .ci/run does)')
  proc = subprocess.run(['shellcheck', path], capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stdout


# ---- The flags the launchers set: each one parsed by this jaxlib / libtpu ------------------------

SLURM = os.path.join(ROOT, 'launch', 'slurm_gpu.sbatch')
TPU_POD = os.path.join(ROOT, 'launch', 'tpu_pod.sh')
BENCH_GPU = os.path.join(ROOT, 'launch', 'bench_gpu.sh')
TRIVIAL_JIT = 'import jax; print(jax.jit(lambda x: x + 1)(1.0))'


def _plain_env(**extra):
  # One CPU device and none of the session's XLA flags or the caller's libtpu flags.
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'LIBTPU_INIT_ARGS')}
  return env | {'JAX_PLATFORMS': 'cpu'} | extra


def _bash_array(path, name):
  """The words of the bash array `name=( ... )` a launcher assigns at the start of a line."""
  script = f'source <(sed -n "/^{name}=(/,/^)/p" "$1") && printf "%s\\n" "${{{name}[@]}}"'
  proc = subprocess.run(['bash', '-c', script, 'bash', path], capture_output=True, text=True, timeout=60)
  words = [w for w in proc.stdout.splitlines() if w]
  assert proc.returncode == 0 and words, f'no {name}=( ... ) in {path}: {proc.stderr}'
  assert all(w.startswith('--') for w in words), words
  return words


def _jit_with_xla_flags(flags):
  return subprocess.run(
    [sys.executable, '-c', TRIVIAL_JIT], env=_plain_env(XLA_FLAGS=' '.join(flags)), capture_output=True, text=True, timeout=300
  )


def test_slurm_xla_flags_parse_with_this_jaxlib():
  # XLA registers every debug option, GPU ones included, in one table that any client parses
  # from XLA_FLAGS when it starts, and aborts on an unknown name or a bad value: so the CPU
  # client checks the A3 flags without a GPU.
  flags = _bash_array(SLURM, 'a3_xla_flags')
  assert '--xla_gpu_enable_latency_hiding_scheduler=true' in flags and len(flags) >= 10
  proc = _jit_with_xla_flags(flags)
  assert proc.returncode == 0 and proc.stdout.strip() == '2.0', proc.stderr[-3000:]
  # The check can fail: a misspelt GPU flag, or a value the flag does not take, aborts the process.
  misspelt = _jit_with_xla_flags(flags + ['--xla_gpu_enable_latency_hidng_scheduler=true'])
  assert misspelt.returncode != 0 and 'Unknown flag' in misspelt.stderr, misspelt.stderr[-2000:]
  bad_value = _jit_with_xla_flags(flags + ['--xla_gpu_enable_command_buffer=NOT_A_COMMAND'])
  assert bad_value.returncode != 0 and 'Illegal value' in bad_value.stderr, bad_value.stderr[-2000:]


def _libtpu_missing() -> str:
  proc = subprocess.run([sys.executable, '-c', 'import libtpu'], capture_output=True, text=True, timeout=120)
  return '' if proc.returncode == 0 else "libtpu is not installed (the `tpu` extra: pip install -e '.[tpu]')"


def _tpu_topology_with_libtpu_args(flags):
  code = "from superclip_jax import compile_targets; print(len(compile_targets.devices('v5e:2x2')))"
  # No TPU is opened: without ALLOW_MULTIPLE_LIBTPU_LOAD, libtpu refuses to load while another
  # process (a concurrent --dry_run --topology v5e:...) holds its lockfile.
  env = _plain_env(LIBTPU_INIT_ARGS=' '.join(flags), ALLOW_MULTIPLE_LIBTPU_LOAD='1')
  return subprocess.run([sys.executable, '-c', code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(bool(_libtpu_missing()), reason=_libtpu_missing() or 'libtpu present')
def test_tpu_pod_libtpu_flags_parse_with_this_libtpu():
  # libtpu parses LIBTPU_INIT_ARGS when it starts, here to describe a v5e topology (no TPU
  # needed), and exits on an unknown flag or a bad value.
  flags = _bash_array(TPU_POD, 'tpu_flags')
  assert '--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true' in flags
  proc = _tpu_topology_with_libtpu_args(flags)
  assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == '4', proc.stderr[-3000:]
  misspelt = _tpu_topology_with_libtpu_args(flags + ['--xla_tpu_enable_async_colective_fusion=true'])
  assert misspelt.returncode != 0 and 'Unknown command line flag' in misspelt.stderr, misspelt.stderr[-2000:]
  bad_value = _tpu_topology_with_libtpu_args(flags + ['--xla_tpu_overlap_compute_collective_tc=maybe'])
  assert bad_value.returncode != 0 and 'Illegal value' in bad_value.stderr, bad_value.stderr[-2000:]


# ---- What each launcher hands its command, with the cluster tools faked --------------------------


def _fake_tool(tmp_path, name, body):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir(exist_ok=True)
  tool = bin_dir / name
  tool.write_text('#!/usr/bin/env bash\n' + body)
  tool.chmod(0o755)
  return str(bin_dir)


def test_slurm_script_sets_the_a3_flags_before_the_users_and_reports_the_step_status(tmp_path):
  # A fake srun prints what the tasks would get, and fails as JAX does when a peer dies.
  bin_dir = _fake_tool(
    tmp_path,
    'srun',
    'printf "%s\\n" "XLA_FLAGS=$XLA_FLAGS" "MEM=$XLA_PYTHON_CLIENT_MEM_FRACTION" '
    '"NCCL_DEBUG=$NCCL_DEBUG" "ARGS=$*"; exit "${FAKE_STATUS:-0}"\n',
  )
  env = _plain_env(PATH=bin_dir + os.pathsep + os.environ['PATH'])
  env.pop('XLA_PYTHON_CLIENT_MEM_FRACTION', None)
  env.pop('NCCL_DEBUG', None)
  proc = subprocess.run(
    ['bash', SLURM, 'configs/tiny.py', '/tmp/w', '--config.seed=3'], env=env, capture_output=True, text=True, timeout=60
  )
  assert proc.returncode == 0, proc.stderr
  out = dict(line.split('=', 1) for line in proc.stdout.splitlines())
  assert out['XLA_FLAGS'].split() == _bash_array(SLURM, 'a3_xla_flags')
  assert out['MEM'] == '0.92' and out['NCCL_DEBUG'] == 'WARN'
  assert out['ARGS'].endswith('-m superclip_jax.main --config configs/tiny.py --workdir /tmp/w --config.seed=3')

  user = '--xla_gpu_all_reduce_combine_threshold_bytes=1073741824'
  proc = subprocess.run(
    ['bash', SLURM, 'configs/tiny.py', '/tmp/w'],
    capture_output=True,
    text=True,
    timeout=60,
    env=env | {'XLA_FLAGS': user, 'XLA_PYTHON_CLIENT_MEM_FRACTION': '0.8', 'FAKE_STATUS': '134'},
  )
  assert proc.returncode == 134 and 'SIGABRT' in proc.stderr
  out = dict(line.split('=', 1) for line in proc.stdout.splitlines())
  assert out['XLA_FLAGS'].split()[-1] == user and out['MEM'] == '0.8'  # the user's flag last: it wins


def test_slurm_script_requeues_a_preempted_job(tmp_path):
  # The tasks exit 143 after saving (a SIGTERM before the time limit): the job requeues itself.
  _fake_tool(tmp_path, 'srun', 'exit 143\n')
  bin_dir = _fake_tool(tmp_path, 'scontrol', f'echo "$*" >> {tmp_path}/scontrol.txt\n')
  env = _plain_env(PATH=bin_dir + os.pathsep + os.environ['PATH'], SLURM_JOB_ID='77')
  proc = subprocess.run(['bash', SLURM, 'configs/tiny.py', '/tmp/w'], env=env, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 143 and 'requeueing job 77' in proc.stderr, proc.stderr
  assert (tmp_path / 'scontrol.txt').read_text() == 'requeue 77\n'
  with open(SLURM) as f:
    header = f.read()
  assert '#SBATCH --requeue' in header and '#SBATCH --signal=TERM@300' in header
  (tmp_path / 'scontrol.txt').unlink()
  proc = subprocess.run(
    ['bash', SLURM, 'configs/tiny.py', '/tmp/w'], env=env | {'REQUEUE': '0'}, capture_output=True, text=True, timeout=60
  )
  assert proc.returncode == 143 and 'preempted' in proc.stderr and not (tmp_path / 'scontrol.txt').exists()


def test_tpu_pod_passes_the_libtpu_flags_to_the_workers_unless_set(tmp_path):
  # A fake gcloud prints its arguments; -r skips the copy, so only `tpu-vm ssh` runs.
  bin_dir = _fake_tool(tmp_path, 'gcloud', 'printf "%s\\n" "$@"\n')
  env = _plain_env(PATH=bin_dir + os.pathsep + os.environ['PATH'])
  cmd = ['bash', TPU_POD, '-n', 'pod', '-z', 'zone', '-r', 'https://example.com/x.git', '--', 'configs/tiny.py', 'gs://b/w']

  def worker_libtpu_args(extra_env):
    proc = subprocess.run(cmd, env=env | extra_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    command = proc.stdout.splitlines()[-1]  # the argument of --command
    assert command.endswith('python3 -m superclip_jax.main --config configs/tiny.py --workdir gs://b/w')
    # What a worker's shell gives the training process: run the command's last part with echo.
    run = command[command.rindex('; ') + 2 :].replace('python3 -m superclip_jax.main', 'printenv LIBTPU_INIT_ARGS #')
    shown = subprocess.run(['bash', '-c', run], env=_plain_env(), capture_output=True, text=True, timeout=60)
    return shown.stdout.strip() if shown.returncode == 0 else None

  assert worker_libtpu_args({}).split() == _bash_array(TPU_POD, 'tpu_flags')
  assert worker_libtpu_args({'LIBTPU_INIT_ARGS': '--xla_tpu_a=1 --xla_tpu_b=2'}) == '--xla_tpu_a=1 --xla_tpu_b=2'
  assert worker_libtpu_args({'LIBTPU_INIT_ARGS': ''}) is None  # set but empty: no flags at all


def test_bench_gpu_keeps_the_recipes_remat_unless_asked_and_prints_mfu_na(tmp_path):
  # A fake python answers the backend query as a GPU would and prints a report without an MFU
  # (a device kind missing from the peak table); the summary runs in the real Python.
  args_log = tmp_path / 'args.log'
  report = (
    '{"step_time_s": 0.25, "images_per_sec": 2048.0, "mfu": null, "peak_source": "none", "remat": "dots", '
    '"superclip_over_clip_step_ratio": 1.1, "devices": 1, "device_kind": "NVIDIA Future GPU"}'
  )
  body = (
    f'case "$1" in\n'
    f'  -c) echo gpu ;;\n'
    f'  -m) echo "MEM=$XLA_PYTHON_CLIENT_MEM_FRACTION $*" >>{args_log}; echo \'{report}\' ;;\n'
    f'  *) exec {sys.executable} "$@" ;;\n'
    f'esac\n'
  )
  fake_python = os.path.join(_fake_tool(tmp_path, 'python', body), 'python')
  env = _plain_env(PYTHON=fake_python, BATCHES='512 2048')
  env.pop('REMAT', None)
  env.pop('XLA_PYTHON_CLIENT_MEM_FRACTION', None)
  proc = subprocess.run(
    ['bash', BENCH_GPU, str(tmp_path / 'out')], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  assert proc.returncode == 0, proc.stderr
  runs = args_log.read_text().splitlines()
  assert len(runs) == 2 and all(r.startswith('MEM=0.92 ') and '--config.model.remat' not in r for r in runs)
  assert '--batch 2048' in runs[1] and '--config.model.compute_dtype=bfloat16' in runs[1]
  summary = proc.stdout.strip().splitlines()[-2:]
  assert summary[1].startswith('batch 2048:') and 'MFU n/a' in summary[1] and 'remat dots' in summary[1]

  args_log.unlink()
  proc = subprocess.run(
    ['bash', BENCH_GPU, str(tmp_path / 'out2')],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
    env=env | {'REMAT': 'full', 'XLA_PYTHON_CLIENT_MEM_FRACTION': '0.8'},
  )
  assert proc.returncode == 0, proc.stderr
  runs = args_log.read_text().splitlines()
  assert all(r.startswith('MEM=0.8 ') and '--config.model.remat=full' in r for r in runs)
