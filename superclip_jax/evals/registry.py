"""Evaluators named in `config.evals`, one module per kind (big_vision's evaluators pattern).

  config.evals.NAME = registry.evaluator(kind='zeroshot', shards=DIR, every_steps=500, ...)

Every kind takes the common keys below plus its own (`DEFAULTS` in its module):
  zeroshot      evals/zeroshot.py      class_names, templates
  retrieval     evals/retrieval.py     match
  linear_probe  evals/linear_probe.py  train_shards
A new kind is a module with DEFAULTS and an Evaluator(ev, embedder, seed).run(params), listed in KINDS.
"""

from __future__ import annotations

import time

import ml_collections
from absl import logging

from superclip_jax.errors import UserError
from superclip_jax.evals import linear_probe, retrieval, zeroshot

KINDS = {'zeroshot': zeroshot, 'retrieval': retrieval, 'linear_probe': linear_probe}

COMMON = {
  'kind': 'zeroshot',  # one of KINDS
  'shards': '',  # the evaluation shard directory
  'every_steps': 0,  # during training: every N steps (0: only at the end)
  'batch_size': 256,  # images per evaluation batch (rounded up to the device count)
  'max_examples': 0,  # only the first N records (0: all)
}


def evaluator(kind: str = 'zeroshot', **overrides) -> ml_collections.ConfigDict:
  """An evaluator's config: the common keys and its kind's, with their defaults (config files call this)."""
  if kind not in KINDS:
    raise UserError(f'evaluator kind {kind!r} is not one of {sorted(KINDS)}')
  keys = {**COMMON, **KINDS[kind].DEFAULTS, 'kind': kind}
  unknown = set(overrides) - set(keys)
  if unknown:
    raise UserError(f'unknown keys {sorted(unknown)} for a {kind} evaluator; valid: {sorted(keys)}')
  c = ml_collections.ConfigDict(keys, type_safe=False)  # class_names / templates: a keyword or a tuple
  c.update(overrides)
  return c


def validate(evals: ml_collections.ConfigDict) -> None:
  """Each evaluator has a known kind and exactly that kind's keys."""
  for name, ev in evals.items():
    if ev.get('kind') not in KINDS:
      raise UserError(f'config.evals.{name}.kind={ev.get("kind")!r} is not one of {sorted(KINDS)}')
    valid = {*COMMON, *KINDS[ev.kind].DEFAULTS}
    keys = set(ev.keys())
    if keys != valid:
      raise UserError(f'config.evals.{name}: unknown keys {sorted(keys - valid)}, missing {sorted(valid - keys)}')
    if not ev.shards:
      raise UserError(f'config.evals.{name}.shards is empty')
    if ev.kind == 'linear_probe' and not ev.train_shards:
      raise UserError(f'config.evals.{name}: a linear probe needs train_shards')


class Evaluators:
  """The configured evaluators, run with given parameters; results keyed '<kind>/<name>/<metric>'."""

  def __init__(self, config: ml_collections.ConfigDict, embedder):
    validate(config.evals)
    self.evals = dict(config.evals.items())
    self.embedder = embedder
    self._built = {}
    from superclip_jax.data import inputs, records

    for name, ev in self.evals.items():
      module = KINDS[ev.kind]
      if ev.kind in ('zeroshot', 'retrieval'):  # their texts must be token ids of the model's vocabulary
        inputs.check_tokenizer_matches(
          config, records.read_manifest(ev.shards)['tokenizer'], f'config.evals.{name}.shards ({ev.shards})'
        )
      try:
        self._built[name] = module.Evaluator(ev, embedder, seed=config.seed)
      except ValueError as e:
        raise UserError(f'config.evals.{name}: {e}') from e

  def due(self, step: int, total_steps: int) -> list[str]:
    """Evaluators to run after `step`: at their frequency, and all of them at the end."""
    return [n for n, ev in self.evals.items() if step == total_steps or (ev.every_steps and step % ev.every_steps == 0)]

  def run(self, params, names=None) -> dict[str, float]:
    results = {}
    for name in names or list(self.evals):
      ev = self.evals[name]
      start = time.perf_counter()
      metrics = self._built[name].run(params)
      results.update({f'{ev.kind}/{name}/{k}': v for k, v in metrics.items()})
      results[f'{ev.kind}/{name}/seconds'] = time.perf_counter() - start
      logging.info('evaluated %s (%s) in %.1fs', name, ev.kind, results[f'{ev.kind}/{name}/seconds'])
    return results
