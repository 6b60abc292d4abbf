"""Zero-shot classification: prompt-ensembled class embeddings against image embeddings."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from superclip_jax.data import records
from superclip_jax.data import tokenizer as tokenizer_lib
from superclip_jax.evals import prompts


def class_embeddings(
  encode_text: Callable[[list[str]], np.ndarray], classnames: Sequence[str], templates: Sequence[str], chunk: int = 256
) -> np.ndarray:
  """(C, D): per class, the mean of its normalised prompt embeddings, renormalised (OpenAI's ensemble)."""
  prompts = [t.format(c) for c in classnames for t in templates]
  emb = np.concatenate([encode_text(prompts[i : i + chunk]) for i in range(0, len(prompts), chunk)])
  emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
  emb = emb.reshape(len(classnames), len(templates), -1).mean(axis=1)
  return emb / np.linalg.norm(emb, axis=-1, keepdims=True)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, ks=(1, 5)) -> dict[str, float]:
  """Top-k accuracy of (N, C) scores. Ties count against: the true class ranks after every
  class scoring the same, so a constant model scores 0, not chance by accident of order."""
  scores = np.asarray(scores, np.float64)
  true = scores[np.arange(len(labels)), labels]
  rank = (scores >= true[:, None]).sum(axis=1) - 1  # classes at least as good, other than itself
  return {f'top{k}': float(np.mean(rank < k)) for k in ks if k <= scores.shape[1]}


def evaluate(image_embeddings: np.ndarray, labels: np.ndarray, class_emb: np.ndarray) -> dict[str, float]:
  """top1/top5 of normalised image embeddings against class embeddings."""
  return topk_accuracy(image_embeddings @ class_emb.T, np.asarray(labels))


# Evaluator keys of this kind beyond the common ones (registry.COMMON).
DEFAULTS = {
  'class_names': 'manifest',  # 'manifest' (the shards' ImageFolder classes), 'imagenet' (OpenAI's 1,000), a tuple
  'templates': 'simple',  # 'simple' (a photo of a {}.), 'imagenet' (OpenAI's 80), or a tuple of '{}' strings
}


class Evaluator:
  """Top-1/top-5 of labelled shards against prompt-ensembled class embeddings."""

  def __init__(self, ev, embedder, seed: int = 0):
    del seed  # deterministic
    if not embedder.has_text:
      raise ValueError('zero-shot needs a text tower (a SuperClass model has none)')
    self.ev = ev
    self.embedder = embedder

  def run(self, params) -> dict[str, float]:
    ev = self.ev
    images = self.embedder.images(params, ev.shards, ev.batch_size, ev.max_examples)
    manifest = records.read_manifest(ev.shards)
    classnames = prompts.resolve_classnames(ev.class_names, manifest.get('class_names', ()))
    templates = prompts.resolve_templates(ev.templates)
    tok = tokenizer_lib.load_tokenizer(manifest['tokenizer'].get('spec', 'clip'), self.embedder.model_def.cfg.context_length)
    classes = class_embeddings(lambda texts: self.embedder.texts(params, tok(texts), ev.batch_size), classnames, templates)
    return evaluate(images['embedding'], images['label'], classes)
