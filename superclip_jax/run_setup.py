"""What training, the compile-only check, the bench and evaluation build before they run: one function.

`prepare(config)` validates the config, resolves its per-backend `auto` settings, and builds the
mesh, the logical-axis rules, the model definition and, for a train step, the optimizer and its
schedule, the IDF counts and the abstract train state with its shardings. Nothing is allocated:
train.py restores or creates the state from `target`, dry_run.py compiles against it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import ml_collections
import optax
from jax.sharding import Mesh

from superclip_jax import config_defaults, optim, platform_defaults, sharding, train_state
from superclip_jax.evals import registry
from superclip_jax.models.superclip import ModelConfig, ModelDef


@dataclasses.dataclass(frozen=True)
class RunSetup:
  config: ml_collections.ConfigDict  # with the backend's `auto` settings resolved
  mesh: Mesh
  rules: tuple
  model_def: ModelDef
  # A train step's (None for inference):
  total_steps: int | None = None
  tx: optax.GradientTransformation | None = None
  schedule: Any = None
  idf_counts: dict | None = None
  target: Any = None  # the abstract train state (ShapeDtypeStructs with shardings), or the params for inference
  shardings: Any = None  # of the train state, or of the params for inference


def prepare(
  config: ml_collections.ConfigDict,
  *,
  devices: Sequence[jax.Device] | None = None,
  training: bool = True,
  idf_from_data: bool = True,
  model_cfg: ModelConfig | None = None,
  inference: bool = False,
) -> RunSetup:
  """Everything a run builds before its first step.

  devices: default jax.devices() (dry_run passes a topology's abstract devices).
  training: validate what only a training run needs (data, schedule); False for the tools.
  idf_from_data: read offline IDF statistics; False gives counts of the same shapes (zeros),
    enough to compile or time the step.
  model_cfg / inference: evaluate a given model (an export's) without optimizer or token classifier.
  """
  # Random bits generated shard-locally: sharded init gives the same values on any mesh.
  jax.config.update('jax_threefry_partitionable', True)
  config_defaults.validate(config, training=training)
  registry.validate(config.evals)
  devices = list(devices) if devices is not None else jax.devices()
  config = platform_defaults.resolve(config, devices[0].platform)
  mesh = sharding.make_mesh(config.mesh.shape, devices)
  rules = tuple(tuple(r) for r in config.mesh.rules)
  model_cfg = model_cfg or ModelConfig.from_config(config)
  if inference:
    model_def = ModelDef(model_cfg.for_inference(), seed=config.seed)
    shardings = sharding.tree_shardings(model_def.logical_axes(), model_def.shapes(), mesh, rules)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), model_def.shapes(), shardings)
    return RunSetup(config, mesh, rules, model_def, target=target, shardings=shardings)
  sharding.check_batch_divides(config.data.global_batch_size, mesh)
  model_def = ModelDef(model_cfg, seed=config.seed)
  total_steps = config_defaults.resolved_total_steps(config)
  tx, schedule = optim.make_optimizer(config, model_def.shapes(), model_def.logical_axes(), total_steps)
  offline_stats = None
  if idf_from_data:
    from superclip_jax.data import inputs

    offline_stats = inputs.offline_idf_stats_path(config)
  counts = train_state.initial_idf_counts(config, model_def.cfg.variant, offline_stats, shapes_only=not idf_from_data)
  target, shardings = train_state.abstract_train_state(model_def, tx, counts, mesh, rules)
  return RunSetup(config, mesh, rules, model_def, total_steps, tx, schedule, counts, target, shardings)
