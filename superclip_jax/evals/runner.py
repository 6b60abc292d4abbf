"""Evaluators named in `config.evals`, run on the training mesh during training or standalone.

  config.evals.NAME = evals.runner.evaluator(kind='zeroshot', shards=DIR, every_steps=500, ...)

kind 'zeroshot'      top1/top5 over a labelled shard set (class names and templates from the config)
kind 'retrieval'     image<->text R@1/5/10; records whose keys share the part before '#' are
                     several captions of one image (the COCO / Flickr30k convention); with
                     match='label' every text of the image's class counts
kind 'linear_probe'  logistic regression on the frozen pre-projection image feature (CLS after
                     ln_post), train_shards to fit, shards to test

Every host reads the whole (small) evaluation set in order and the embeddings are
computed sharded over the mesh, so results are identical on any mesh and host count.
"""

from __future__ import annotations

import math
import time
from typing import Any, Iterator

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from superclip_jax import sharding
from superclip_jax.data import records, tokenizer as tokenizer_lib, transforms
from superclip_jax.evals import linear_probe, prompts, retrieval, zeroshot
from superclip_jax.models.superclip import ModelDef

KINDS = ('zeroshot', 'retrieval', 'linear_probe')


def evaluator(**overrides) -> ml_collections.ConfigDict:
  """An evaluator's config with every key and its default (config files call this)."""
  c = ml_collections.ConfigDict({
      'kind': 'zeroshot',
      'shards': '',  # the evaluation shard directory
      'train_shards': '',  # linear probe: the shards its classifier is fit on
      'every_steps': 0,  # 0: only at the end of training
      'class_names': 'manifest',  # 'manifest' (ImageFolder classes), 'imagenet', or a tuple
      'templates': 'simple',  # 'simple', 'imagenet' (OpenAI's 80), or a tuple of '{}' strings
      'batch_size': 256,
      'max_examples': 0,  # 0: all
      # retrieval: 'key' (the record's own image / captions, the COCO convention) or 'label'
      # (any item of the same class counts: for templated captions shared by many images)
      'match': 'key',
  }, type_safe=False)  # class_names / templates: a keyword or a tuple
  unknown = set(overrides) - set(c)
  if unknown:
    raise ValueError(f'unknown evaluator keys {sorted(unknown)}; valid: {sorted(c)}')
  c.update(overrides)
  return c


def validate(evals: ml_collections.ConfigDict) -> None:
  """Each evaluator has exactly the known keys and a known kind."""
  valid = set(evaluator())
  for name, ev in evals.items():
    keys = set(ev.keys())
    if keys != valid:
      raise ValueError(f'config.evals.{name}: unknown keys {sorted(keys - valid)}, missing {sorted(valid - keys)}')
    if ev.kind not in KINDS:
      raise ValueError(f'config.evals.{name}.kind={ev.kind!r} is not one of {KINDS}')
    if not ev.shards:
      raise ValueError(f'config.evals.{name}.shards is empty')
    if ev.match not in ('key', 'label'):
      raise ValueError(f"config.evals.{name}.match={ev.match!r} is not 'key' or 'label'")
    if ev.kind == 'linear_probe' and not ev.train_shards:
      raise ValueError(f'config.evals.{name}: a linear probe needs train_shards')


def _read(shard_dir: str, max_examples: int):
  manifest = records.read_manifest(shard_dir)
  source = grain.sources.ArrayRecordDataSource([s['path'] for s in manifest['shards'] if s['num_records']])
  n = len(source) if not max_examples else min(max_examples, len(source))
  return manifest, source, n


def _record_batches(shard_dir: str, batch_size: int, image_size: int, context_length: int,
                    max_examples: int) -> Iterator[dict[str, np.ndarray]]:
  """Ordered, centre-cropped batches of every record: images, text, label, key."""
  manifest, source, n = _read(shard_dir, max_examples)
  tok = manifest['tokenizer']
  for start in range(0, n, batch_size):
    images, texts, labels, keys = [], [], [], []
    for i in range(start, min(start + batch_size, n)):
      r = records.decode_record(source[i])
      try:
        image = transforms.decode_jpeg(r['image'], min_side=image_size)
      except transforms.DecodeError as e:
        logging.warning('%s: record %d (%s) has an undecodable image, left out: %s', shard_dir, i, r['key'], e)
        continue
      images.append(transforms.resize_center_crop(image, image_size))
      texts.append(records.fit_ids(r['tokens'], context_length, eot_id=tok['eot_id'], pad_id=tok['pad_id']))
      labels.append(r['label'])
      keys.append(r['key'])
    if images:
      yield {'images': np.stack(images), 'text': np.stack(texts), 'label': np.asarray(labels, np.int32),
             'key': keys}


class Evaluators:
  """Runs the configured evaluators with the current parameters; returns flat metric dicts."""

  def __init__(self, config: ml_collections.ConfigDict, model_def: ModelDef, mesh, param_shardings):
    validate(config.evals)
    self.config = config
    self.evals = dict(config.evals.items())
    self.model_def = model_def
    self.mesh = mesh
    self.shards = sharding.num_batch_shards(mesh)
    batch = sharding.batch_sharding(mesh)
    rep = sharding.replicated(mesh)
    bind = model_def.bind

    def features(params, images):
      tower = bind(params).image_tower
      tokens = tower.tokens(images)
      pooled = tokens[:, 0]  # the pre-projection pooled feature the paper probes
      emb = tower.embed(tokens).astype(jnp.float32)
      emb = emb / jnp.linalg.norm(emb, axis=-1, keepdims=True)
      return emb, pooled.astype(jnp.float32)

    self._image_fn = jax.jit(features, in_shardings=(param_shardings, batch), out_shardings=(rep, rep))
    self._text_fn = None
    if model_def.cfg.text is not None:
      self._text_fn = jax.jit(lambda p, t: bind(p).encode_text(t), in_shardings=(param_shardings, batch),
                              out_shardings=rep)

  def due(self, step: int, total_steps: int) -> list[str]:
    """Evaluators to run after `step`: at their frequency, and all of them at the end."""
    return [n for n, ev in self.evals.items()
            if step == total_steps or (ev.every_steps and step % ev.every_steps == 0)]

  def _pad(self, x: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([x, np.zeros((size - len(x), *x.shape[1:]), x.dtype)]) if len(x) < size else x

  def _global(self, x: np.ndarray, size: int):
    return jax.device_put(self._pad(x, size), sharding.batch_sharding(self.mesh))

  def _batch_size(self, ev) -> int:
    return int(math.ceil(ev.batch_size / self.shards) * self.shards)

  def embed_images(self, params, ev, shard_dir: str) -> dict[str, Any]:
    size = self._batch_size(ev)
    cfg = self.model_def.cfg
    out = {'embedding': [], 'feature': [], 'label': [], 'text': [], 'key': []}
    with jax.set_mesh(self.mesh):
      for b in _record_batches(shard_dir, size, cfg.image_size, cfg.context_length, ev.max_examples):
        n = len(b['label'])
        emb, feat = self._image_fn(params, self._global(b['images'], size))
        out['embedding'].append(np.asarray(emb)[:n])
        out['feature'].append(np.asarray(feat)[:n])
        for k in ('label', 'text', 'key'):
          out[k].append(b[k])
    return {k: (np.concatenate(v) if k != 'key' else sum(v, [])) for k, v in out.items()}

  def embed_texts(self, params, ids: np.ndarray, batch_size: int) -> np.ndarray:
    size = int(math.ceil(batch_size / self.shards) * self.shards)
    chunks = []
    with jax.set_mesh(self.mesh):
      for start in range(0, len(ids), size):
        part = ids[start:start + size]
        chunks.append(np.asarray(self._text_fn(params, self._global(part, size)))[:len(part)])
    return np.concatenate(chunks)

  def run(self, params, names=None) -> dict[str, float]:
    """Metrics of the named evaluators (all by default), keyed '<kind>/<name>/<metric>'."""
    results = {}
    for name in names or list(self.evals):
      ev = self.evals[name]
      start = time.perf_counter()
      metrics = getattr(self, f'_{ev.kind}')(params, ev)
      results.update({f'{ev.kind}/{name}/{k}': v for k, v in metrics.items()})
      results[f'{ev.kind}/{name}/seconds'] = time.perf_counter() - start
    return results

  def _zeroshot(self, params, ev) -> dict[str, float]:
    if self._text_fn is None:
      raise ValueError('zero-shot needs a text tower (a SuperClass model has none)')
    images = self.embed_images(params, ev, ev.shards)
    manifest = records.read_manifest(ev.shards)
    classnames = prompts.resolve_classnames(ev.class_names, manifest.get('class_names', ()))
    templates = prompts.resolve_templates(ev.templates)
    tok = tokenizer_lib.load_tokenizer(manifest['tokenizer'].get('spec', 'clip'), self.model_def.cfg.context_length)
    classes = zeroshot.class_embeddings(lambda texts: self.embed_texts(params, tok(texts), ev.batch_size),
                                        classnames, templates)
    return zeroshot.evaluate(images['embedding'], images['label'], classes)

  def _retrieval(self, params, ev) -> dict[str, float]:
    if self._text_fn is None:
      raise ValueError('retrieval needs a text tower (a SuperClass model has none)')
    data = self.embed_images(params, ev, ev.shards)
    image_of = {}
    image_rows, text_to_image = [], []
    for row, key in enumerate(data['key']):
      image_key = key.split('#')[0]
      if image_key not in image_of:
        image_of[image_key] = len(image_rows)
        image_rows.append(row)
      text_to_image.append(image_of[image_key])
    texts = self.embed_texts(params, data['text'], ev.batch_size)
    if ev.match == 'label':
      return retrieval.recall_at_k(data['embedding'], texts, None, labels=(data['label'], data['label']))
    return retrieval.recall_at_k(data['embedding'][image_rows], texts, np.asarray(text_to_image))

  def _linear_probe(self, params, ev) -> dict[str, float]:
    train = self.embed_images(params, ev, ev.train_shards)
    test = self.embed_images(params, ev, ev.shards)
    return linear_probe.linear_probe(train['feature'], train['label'], test['feature'], test['label'],
                                     seed=self.config.seed)
