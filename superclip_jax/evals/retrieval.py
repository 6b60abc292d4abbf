"""Image<->text retrieval Recall@K with several captions per image (COCO / Flickr30k Karpathy test)."""

from __future__ import annotations

import numpy as np


def recall_at_k(
  image_emb: np.ndarray,
  text_emb: np.ndarray,
  text_to_image: np.ndarray | None,
  ks=(1, 5, 10),
  labels: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, float]:
  """image_to_text_r@K: an image counts when any of its correct texts is in its top K texts;
  text_to_image_r@K: a text counts when any of its correct images is in its top K images.

  Correct means the text's own image (text_to_image[t] = image row), or, given
  labels=(image_labels, text_labels), the same class. Ties count against: a correct item
  ranks after every wrong item scoring the same.
  """
  scores = np.asarray(image_emb, np.float64) @ np.asarray(text_emb, np.float64).T  # (I, T)
  if labels is not None:
    correct = np.asarray(labels[0])[:, None] == np.asarray(labels[1])[None, :]
  else:
    correct = np.asarray(text_to_image)[None, :] == np.arange(scores.shape[0])[:, None]
  out = {}
  # The best-scoring correct item against every wrong one scoring at least as much.
  best_text = np.where(correct, scores, -np.inf).max(axis=1)
  i2t_rank = ((scores >= best_text[:, None]) & ~correct).sum(axis=1)
  best_image = np.where(correct, scores, -np.inf).max(axis=0)
  t2i_rank = ((scores >= best_image[None, :]) & ~correct).sum(axis=0)
  for k in ks:
    out[f'image_to_text_r{k}'] = float(np.mean(i2t_rank < k))
    out[f'text_to_image_r{k}'] = float(np.mean(t2i_rank < k))
  return out


# Evaluator keys of this kind beyond the common ones (registry.COMMON).
DEFAULTS = {
  # 'key': a text is right for its own image (records 'IMG#i' are captions of one image,
  # the COCO / Flickr30k convention); 'label': for every image of its class (templated captions)
  'match': 'key',
}


def groups_to_images(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(rows of the first record of each image, image index of every record) from (N, 2) group ids."""
  image_of: dict[tuple[int, int], int] = {}
  image_rows, text_to_image = [], []
  for row, g in enumerate(map(tuple, np.asarray(groups).tolist())):
    if g not in image_of:
      image_of[g] = len(image_rows)
      image_rows.append(row)
    text_to_image.append(image_of[g])
  return np.asarray(image_rows, np.int64), np.asarray(text_to_image, np.int64)


class Evaluator:
  """Image<->text Recall@1/5/10 over a shard set of captioned images."""

  def __init__(self, ev, embedder, seed: int = 0):
    del seed  # deterministic
    if not embedder.has_text:
      raise ValueError('retrieval needs a text tower (a SuperClass model has none)')
    if ev.match not in ('key', 'label'):
      raise ValueError(f"match={ev.match!r} is not 'key' or 'label'")
    self.ev = ev
    self.embedder = embedder

  def run(self, params) -> dict[str, float]:
    ev = self.ev
    data = self.embedder.images(params, ev.shards, ev.batch_size, ev.max_examples)
    texts = self.embedder.texts(params, data['text'], ev.batch_size)
    if ev.match == 'label':
      return recall_at_k(data['embedding'], texts, None, labels=(data['label'], data['label']))
    image_rows, text_to_image = groups_to_images(data['group'])
    return recall_at_k(data['embedding'][image_rows], texts, text_to_image)
