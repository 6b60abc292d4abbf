"""The one evaluation data path: shards -> the pipeline's eval mode -> embeddings on the mesh.

Each process decodes only its rows of each batch (as in training); the embeddings are
computed sharded over the training mesh and gathered, so every process ends with the
whole set's embeddings, labels and image groups in record order, and results are the
same on any mesh and any number of processes.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from superclip_jax import sharding
from superclip_jax.data import pipeline
from superclip_jax.models.superclip import ModelDef


def host_value(x: jax.Array) -> np.ndarray:
  """A replicated global array as numpy on this process (no cross-process fetch needed)."""
  if x.is_fully_addressable:
    return np.asarray(x)
  return np.asarray(x.addressable_data(0))


class Embedder:
  """Image and text embeddings with given parameters, on a mesh."""

  def __init__(self, model_def: ModelDef, mesh, rules, param_shardings):
    self.model_def = model_def
    self.mesh = mesh
    self.rules = tuple(tuple(r) for r in rules)
    rep = sharding.replicated(mesh)
    feed = sharding.input_sharding(mesh)
    bind = model_def.bind

    def image_fn(params, batch):
      with sharding.use_rules(self.rules):
        images = sharding.constrain(batch['images'], ('batch', None, None, None))
        tower = bind(params).image_tower
        tokens = tower.tokens(images)
        emb = tower.embed(tokens).astype(jnp.float32)
        emb = emb / jnp.linalg.norm(emb, axis=-1, keepdims=True)
        # The pre-projection pooled feature (CLS after ln_post) is what the paper probes.
        return {
          'embedding': emb,
          'feature': tokens[:, 0].astype(jnp.float32),
          'label': batch['label'],
          'group': batch['group'],
          'valid': batch['valid'],
          'text': batch['text'],
        }

    def text_fn(params, ids):
      with sharding.use_rules(self.rules):
        return bind(params).encode_text(sharding.constrain(ids, ('batch', None)))

    self._image_fn = jax.jit(image_fn, in_shardings=(param_shardings, feed), out_shardings=rep)
    self._text_fn = None
    if model_def.cfg.text is not None:
      self._text_fn = jax.jit(text_fn, in_shardings=(param_shardings, feed), out_shardings=rep)

  @property
  def has_text(self) -> bool:
    return self._text_fn is not None

  def batch_size(self, requested: int) -> int:
    """The evaluation batch rounded up to a multiple of the device count."""
    devices = self.mesh.devices.size
    return int(math.ceil(requested / devices) * devices)

  def images(self, params, shard_dir: str, batch_size: int, max_examples: int = 0) -> dict[str, Any]:
    """Every record of a shard set: embedding, feature, label, group (image id) and text, in order."""
    size = self.batch_size(batch_size)
    cfg = self.model_def.cfg
    config = pipeline.PipelineConfig(
      shard_dirs=[shard_dir],
      global_batch_size=size,
      rows=tuple(sharding.local_rows(size, self.mesh)),
      image_size=cfg.image_size,
      context_length=cfg.context_length,
      train=False,
      max_examples=max_examples,
    )
    parts: dict[str, list[np.ndarray]] = {}
    with pipeline.ShardBatches(config) as batches, jax.set_mesh(self.mesh):
      self.class_names = batches.class_names
      for local in batches:
        local.pop('skipped_examples')
        out = self._image_fn(params, sharding.global_batch(local, self.mesh, size))
        for key, value in out.items():
          parts.setdefault(key, []).append(host_value(value))
    data = {k: np.concatenate(v) for k, v in parts.items()}
    valid = data.pop('valid')
    return {k: v[valid] for k, v in data.items()}

  def texts(self, params, ids: np.ndarray, batch_size: int) -> np.ndarray:
    """Text embeddings of token ids (N, L), every process giving the same ids."""
    size = self.batch_size(batch_size)
    rows = sharding.local_rows(size, self.mesh)
    chunks = []
    with jax.set_mesh(self.mesh):
      for start in range(0, len(ids), size):
        part = ids[start : start + size]
        padded = np.concatenate([part, np.zeros((size - len(part), *part.shape[1:]), part.dtype)])
        local = np.concatenate([padded[a:b] for a, b in rows])
        out = self._text_fn(params, sharding.global_batch({'ids': local}, self.mesh, size)['ids'])
        chunks.append(host_value(out)[: len(part)])
    return np.concatenate(chunks)
