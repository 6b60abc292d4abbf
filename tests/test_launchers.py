"""The launchers in launch/: a usage header and -h each, and clean under shellcheck."""

import glob
import os
import shutil
import subprocess

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
