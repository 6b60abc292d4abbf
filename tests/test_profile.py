"""config.profile writes a jax.profiler trace of the chosen steps into the workdir."""

import glob
import os

from test_sharded_step import small_config

from superclip_jax import train


def test_profile_of_two_steps_writes_a_trace(tmp_path):
  config = small_config()
  config.total_steps, config.log_every_steps = 4, 2
  config.mesh.shape = (-1, 1, 1)
  config.profile.first_step, config.profile.num_steps = 1, 2
  train.run(config, str(tmp_path))
  traces = glob.glob(os.path.join(tmp_path, 'profile', '**', '*.xplane.pb'), recursive=True)
  assert traces and os.path.getsize(traces[0]) > 0
  assert glob.glob(os.path.join(tmp_path, 'profile', '**', '*.trace.json.gz'), recursive=True)  # for Perfetto
