"""Checkpoints: restore onto other meshes, fallback from a corrupt or incompatible newest
checkpoint, export -> load -> encode, weights-only init, the non-finite guard."""

import glob
import os

import jax
import numpy as np
import optax
import pytest
from test_sharded_step import small_config, small_data

from superclip_jax import checkpoint, export, idf, optim, sharding, train, train_state, train_step
from superclip_jax.data import synthetic
from superclip_jax.errors import UserError
from superclip_jax.models.superclip import ModelConfig, ModelDef


def _state_on(config, mesh_shape, devices, steps=0):
  """A train state on a mesh after `steps` real steps (so moments and IDF counts are not zeros)."""
  mesh = sharding.make_mesh(mesh_shape, devices)
  rules = tuple(tuple(r) for r in config.mesh.rules)
  model_def = ModelDef(ModelConfig.from_config(config), seed=config.seed)
  tx, schedule = optim.make_optimizer(config, model_def.shapes(), model_def.logical_axes(), 10)
  counts = train_state.initial_idf_counts(config, 'superclip')
  state, shardings = train_state.create_train_state(model_def, tx, counts, mesh, rules)
  if steps:
    step_fn, _ = train_step.jit_train_step(model_def, tx, schedule, config, shardings, mesh, rules)
    data = small_data(seed=5)
    b = config.data.global_batch_size
    with jax.set_mesh(mesh):
      for s in range(steps):
        state, _ = step_fn(state, sharding.global_batch(data.batch(s, b, sharding.local_rows(b, mesh)), mesh, b))
  target, _ = train_state.abstract_train_state(model_def, tx, counts, mesh, rules)
  return state, target


LOOP = {'data': {'step': 2}, 'metrics': None, 'throughput': {'last_step': 2, 'elapsed': 0.5}}


def _config(**kw):
  c = small_config()
  c.checkpoint.every_steps = 1
  c.checkpoint.async_save = True
  c.update(kw)
  return c


@pytest.mark.parametrize('to_shape,to_devices', [((2, 2, 2), 8), ((4, 1, 1), 4), ((1, 2, 2), 4), ((1, 1, 1), 1)])
def test_restore_onto_another_mesh_equals_saved_arrays(tmp_path, to_shape, to_devices):
  config = _config()
  state, _ = _state_on(config, (8, 1, 1), jax.devices(), steps=2)
  # Trained: Adam's moments and the IDF counts are not zeros, so a mix-up of leaves would show.
  assert float(optax.tree.norm(state.opt_state)) > 0 and int(idf.to_ints(state.idf_counts)[0]) == 32
  ckpt = checkpoint.Checkpointer(str(tmp_path), config)
  ckpt.save(2, state, LOOP, config)
  ckpt.wait()
  _, target = _state_on(config, to_shape, jax.devices()[:to_devices])
  restored, loop = checkpoint.Checkpointer(str(tmp_path), config).restore_latest(target, config)
  assert loop == LOOP
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), state, restored)
  for leaf, t in zip(jax.tree.leaves(restored), jax.tree.leaves(target)):
    assert leaf.sharding.is_equivalent_to(t.sharding, leaf.ndim)


def _corrupt(step_dir):
  files = [f for f in glob.glob(os.path.join(step_dir, 'state', '**', '*'), recursive=True) if os.path.isfile(f)]
  for f in files:
    with open(f, 'r+b') as fh:
      fh.truncate(max(os.path.getsize(f) // 3, 1))


def test_corrupt_newest_checkpoint_falls_back_with_a_warning(tmp_path, caplog):
  config = _config()
  state, target = _state_on(config, (1, 1, 1), jax.devices()[:1])
  ckpt = checkpoint.Checkpointer(str(tmp_path), config)
  ckpt.save(1, state.replace(step=state.step + 1), {'data': {'step': 1}}, config)
  ckpt.save(2, state.replace(step=state.step + 2), {'data': {'step': 2}}, config)
  ckpt.close()
  _corrupt(str(tmp_path / 'checkpoints' / '2'))
  with caplog.at_level('WARNING'):
    restored, loop = checkpoint.Checkpointer(str(tmp_path), config).restore_latest(target, config)
  assert int(restored.step) == 1 and loop['data']['step'] == 1
  assert any('checkpoints/2' in r.getMessage() and 'previous' in r.getMessage() for r in caplog.records)


def test_incompatible_newest_checkpoint_stops_the_run_naming_the_leaf(tmp_path):
  # An older checkpoint that would fit must not be used instead: the run stops.
  config = _config()
  other = _config()
  other.model.embed_dim = 16
  small, _ = _state_on(other, (1, 1, 1), jax.devices()[:1])
  state, target = _state_on(config, (1, 1, 1), jax.devices()[:1])
  ckpt = checkpoint.Checkpointer(str(tmp_path), config)
  ckpt.save(1, state.replace(step=state.step + 1), {}, config)
  ckpt.save(3, small, {}, other)
  ckpt.close()
  with pytest.raises(
    checkpoint.IncompatibleCheckpoint,
    match=r'(?s)params\.image_tower\.proj: checkpoint \(64, 16\) float32, this run \(64, 32\).*'
    r'model\.embed_dim: checkpoint 16, this run 32',
  ):
    checkpoint.Checkpointer(str(tmp_path), config).restore_latest(target, config)


def test_export_load_encode_matches_the_training_model(tmp_path):
  config = _config()
  state, _ = _state_on(config, (2, 2, 2), jax.devices())
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'run'), config)
  ckpt.save(5, state, {}, config)
  ckpt.close()
  out = export.export(str(tmp_path / 'run'), str(tmp_path / 'model'))
  model = export.load(out)
  assert set(model.params) == {'image_tower', 'text_tower', 'logit_scale'}  # no classifier, optimizer or IDF
  data = small_data(seed=4).batch(0, 6)
  train_model = ModelDef(ModelConfig.from_config(config)).bind(jax.device_get(state.params))
  np.testing.assert_allclose(model.encode_image(data['images']), train_model.encode_image(data['images']), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(model.encode_text(data['text']), train_model.encode_text(data['text']), rtol=1e-5, atol=1e-6)
  # Text given as strings goes through the export's own tokenizer.
  caption = synthetic.caption(5, 0)
  np.testing.assert_allclose(
    model.encode_text([caption]), train_model.encode_text(model.tokenizer([caption])), rtol=1e-5, atol=1e-6
  )


def test_init_from_export_takes_only_the_image_tower(tmp_path):
  config = _config()
  state, _ = _state_on(config, (1, 1, 1), jax.devices()[:1], steps=2)
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'run'), config)
  ckpt.save(2, state, {}, config)
  ckpt.close()
  exported = export.export(str(tmp_path / 'run'), str(tmp_path / 'model'))
  lit = _config()
  lit.seed = 99  # a different fresh init, so taking (or not taking) the weights shows
  lit.init_from = exported
  lit.init_image_tower_only = True
  lit.optim.frozen = 'image_tower/.*'
  lit.optim.learning_rate = 1e-3  # the text tower and the classifier train; the frozen image tower must not move
  lit.optim.schedule = 'constant'
  lit.total_steps = 2
  lit.log_every_steps = 1
  lit.mesh.shape = (8, 1, 1)
  train.run(lit, str(tmp_path / 'lit'))
  final, _ = checkpoint.latest_checkpoint_dir(str(tmp_path / 'lit'))
  trained = checkpoint.read_numpy_tree(os.path.join(final, 'state'))['params']
  source = jax.device_get(state.params)
  fresh, _ = _state_on(lit, (8, 1, 1), jax.devices())  # the run's own initialisation, made as the run makes it
  fresh = jax.device_get(fresh.params)
  # Taken from the export, then frozen: bit for bit the export's after two steps of training.
  jax.tree.map(np.testing.assert_array_equal, trained['image_tower'], source['image_tower'])
  # The text tower and classifier start from the run's own (seed 99) initialisation and train: moved a
  # little from it, and nowhere near the export's.
  for part in ('text_tower', 'token_classifier'):
    moved = [np.abs(t - f).max() for t, f in zip(jax.tree.leaves(trained[part]), jax.tree.leaves(fresh[part]))]
    assert 0 < max(moved) < 0.01, (part, max(moved))
  projection = trained['text_tower']['text_projection']
  assert (
    np.abs(projection - fresh['text_tower']['text_projection']).max()
    < 0.1 * np.abs(projection - source['text_tower']['text_projection']).max()
  )
  bad = _config()
  bad.model.embed_dim = 48
  bad.init_from = exported
  with pytest.raises(UserError, match=r'image_tower\.proj: shape \(64, 32\) in .*, \(64, 48\) here'):
    train.run(bad, str(tmp_path / 'bad'))


@pytest.mark.parametrize('mode,guard', [('stop', 'cond'), ('skip', 'cond'), ('skip', 'select')])
def test_nonfinite_guard(tmp_path, mode, guard):
  # 'cond' is the CPU's form of the guard, 'select' the accelerators' (no branch): both drop the update.
  config = _config(nonfinite=mode, total_steps=4, log_every_steps=1)
  config.nonfinite_guard = guard
  config.checkpoint.every_steps = 1
  config.mesh.shape = (8, 1, 1)
  config.optim.learning_rate = 1e30  # the first update makes every later loss non-finite
  if mode == 'stop':
    with pytest.raises(train.NonFiniteError, match=r'at step 2; the last good checkpoint is .*checkpoints/1'):
      train.run(config, str(tmp_path))
    return
  rows = train.run(config, str(tmp_path))
  assert rows[-1]['nonfinite_updates'] == 3
  final, _ = checkpoint.latest_checkpoint_dir(str(tmp_path))
  params = checkpoint.read_numpy_tree(os.path.join(final, 'state'))['params']
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))
