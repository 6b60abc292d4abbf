"""Build tokenized ArrayRecord shards from WebDataset tars, image folders, TFDS or benchmark layouts.

  python -m superclip_jax.data.build --source 'webdataset:/data/{00000..00099}.tar' --out DIR
  python -m superclip_jax.data.build --source folder:/data/images --out DIR [--template 'a photo of a {}.']
  python -m superclip_jax.data.build --source tfds:cifar10:test --out DIR
  python -m superclip_jax.data.build --source imagenet:/data/ILSVRC2012 --out DIR   (benchmark_sources.py)

One output shard per input tar (or per --records-per-shard items of a folder, benchmark
or TFDS split), built in parallel worker processes. A finished shard is recorded by its
`.stats.json`, so an interrupted build resumes where it stopped; the output depends only
on the inputs and options (reproducible). Bad inputs are skipped or repaired and counted
by reason in the manifest.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import functools
import multiprocessing
import os
import sys
from typing import Any, Iterable

import numpy as np

from superclip_jax.data import benchmark_sources, images, records, remote, sources, tfds_source
from superclip_jax.data import tokenizer as tokenizer_lib
from superclip_jax.errors import UserError

_DETAIL_LIMIT = 20  # examples per reason kept in the manifest


def _shard_name(i: int) -> str:
  return f'shard-{i:05d}'


def _items(task: dict[str, Any]) -> Iterable[dict[str, Any]]:
  kind = task['kind']
  if kind == 'webdataset':
    if remote.is_remote(task['path']):
      return remote.read_webdataset_url(task['path'])
    return sources.read_webdataset_tar(task['path'])
  if kind == 'list':
    return task['items']
  if kind == 'tfds':
    return tfds_source.read(task['dataset'], task['split'], task['start'], task['stop'],
                            task['data_dir'], task['template'])
  raise ValueError(kind)


@functools.lru_cache(maxsize=2)
def _tokenizer(spec: str, context_length: int):
  return tokenizer_lib.load_tokenizer(spec, context_length)


def build_shard(task: dict[str, Any], out_dir: str, options: dict[str, Any]) -> dict[str, Any]:
  """Write one shard; returns (and saves) its stats. Skips the work if already finished."""
  from array_record.python.array_record_module import ArrayRecordWriter
  name = task['name']
  stats_path = os.path.join(out_dir, name + '.stats.json')
  if os.path.exists(stats_path):
    import json
    with open(stats_path) as f:
      return json.load(f)
  tok = _tokenizer(options['tokenizer'], options['context_length'])
  vocab = tok.vocab_size
  doc_freq = np.zeros(vocab, np.int64)
  skipped: collections.Counter = collections.Counter()
  repaired: collections.Counter = collections.Counter()
  details: dict[str, list[str]] = collections.defaultdict(list)
  num = 0
  tmp_path = os.path.join(out_dir, name + '.array_record.tmp')
  writer = ArrayRecordWriter(tmp_path, 'group_size:1')
  special = {tok.sot_id, tok.eot_id}
  try:
    for item in _items(task):
      key = str(item.get('key'))
      try:
        if 'skip' in item:
          raise images.SkipRecord(item['skip'], item.get('detail', ''))
        caption = images.prepare_caption(item.get('caption'))
        if 'image_path' in item and remote.is_remote(item['image_path']):
          raw = remote.read_bytes(item['image_path'])
        elif 'image_path' in item:
          with open(item['image_path'], 'rb') as f:
            raw = f.read()
        else:
          raw = item['image']
        jpeg, repair = images.prepare_image(raw, max_side=options['max_side'])
      except images.SkipRecord as e:
        skipped[e.reason] += 1
        if len(details[e.reason]) < _DETAIL_LIMIT:
          details[e.reason].append(f'{task.get("source", name)}: {key}: {e}')
        continue
      except OSError as e:
        # A remote image that is not there is a missing image, as a listed local one would be.
        reason = 'missing_image' if isinstance(e, FileNotFoundError) else 'unreadable_file'
        skipped[reason] += 1
        if len(details[reason]) < _DETAIL_LIMIT:
          details[reason].append(f'{key}: {e}')
        continue
      if repair:
        repaired[repair] += 1
      long_caption = ''
      if item.get('long_caption'):
        try:
          long_caption = images.prepare_caption(item['long_caption'])
        except images.SkipRecord as e:
          repaired[f'dropped_long_caption_{e.reason}'] += 1
      ids = tok.with_specials(tok.encode(caption), options['context_length'])
      long_ids = tok.with_specials(tok.encode(long_caption), options['long_context_length']) if long_caption else []
      writer.write(records.encode_record(key=key, image=jpeg, caption=caption, tokens=ids,
                                         long_caption=long_caption, long_tokens=long_ids,
                                         label=item.get('label', -1)))
      # Document frequency over the token bag the classifier sees by default (no SOT/EOT).
      bag = {t for t in (long_ids or ids) if t not in special}
      doc_freq[list(bag)] += 1
      num += 1
  finally:
    writer.close()
  os.replace(tmp_path, os.path.join(out_dir, name + '.array_record'))
  np.save(os.path.join(out_dir, name + '.df.npy'), doc_freq)
  stats = {'file': name + '.array_record', 'num_records': num, 'source': task.get('source', ''),
           'skipped': dict(skipped), 'repaired': dict(repaired), 'skip_examples': dict(details)}
  records.write_json_atomic(stats_path, stats)
  return stats


def plan_tasks(source: str, records_per_shard: int, template: str, data_dir: str | None = None):
  """Split a --source into shard tasks; returns (tasks, class names)."""
  kind, _, rest = source.partition(':')
  if kind == 'webdataset':
    if remote.is_remote(rest):
      # A tar that cannot be fetched is counted at build time.
      remote.check_driver(rest)
      paths = remote.expand(rest)
      if not paths:
        raise UserError(f'webdataset source {rest!r}: no tar matches')
      return [{'kind': 'webdataset', 'path': p, 'name': _shard_name(i), 'source': p}
              for i, p in enumerate(paths)], []
    paths = sources.expand_braces(rest)
    missing = [p for p in paths if not os.path.exists(p)]
    if not paths or missing:
      raise UserError(f'webdataset source {rest!r}: no such tar {missing[:3] or rest}')
    return [{'kind': 'webdataset', 'path': p, 'name': _shard_name(i), 'source': p}
            for i, p in enumerate(paths)], []
  if kind == 'folder' or kind in benchmark_sources.LISTERS:
    lister = sources.list_folder if kind == 'folder' else benchmark_sources.LISTERS[kind]
    items, classes = lister(rest, template)
    chunks = [items[i:i + records_per_shard] for i in range(0, len(items), records_per_shard)]
    return [{'kind': 'list', 'items': chunk, 'name': _shard_name(i), 'source': rest}
            for i, chunk in enumerate(chunks)], classes
  if kind == 'tfds':
    name, _, split = rest.partition(':')
    split = split or 'train'
    total, classes = tfds_source.plan(name, split, data_dir)
    return [{'kind': 'tfds', 'name': _shard_name(i), 'source': rest, 'dataset': name, 'split': split, 'start': start,
             'stop': min(start + records_per_shard, total), 'data_dir': data_dir, 'template': template}
            for i, start in enumerate(range(0, total, records_per_shard))], classes
  raise UserError(f"--source {source!r}: expected one of 'webdataset:PATTERN', 'folder:DIR', 'tfds:NAME[:SPLIT]', "
                  "'imagenet:DIR', 'imagenet_v2:DIR', 'coco_karpathy:IMAGES_DIR,JSON[:SPLIT]', "
                  "'flickr_karpathy:IMAGES_DIR,JSON[:SPLIT]'")


def build(source: str, out_dir: str, *, tokenizer: str = 'clip', context_length: int = 77,
          long_context_length: int = 256, max_side: int = 0, records_per_shard: int = 5000,
          template: str = 'a photo of a {}.', workers: int = 0, data_dir: str | None = None,
          progress: bool = True, runner: str = 'local') -> dict[str, Any]:
  """Build (or finish building) the shards of `source` in out_dir; returns the manifest."""
  if runner not in ('local', 'beam'):
    raise UserError(f"--runner {runner!r}: expected 'local' or 'beam'")
  tok = tokenizer_lib.load_tokenizer(tokenizer, context_length)  # fetch the vocabulary once, here
  # Plan first: a bad --source is reported before anything is written.
  tasks, classes = plan_tasks(source, records_per_shard, template, data_dir)
  options = {'tokenizer': tokenizer, 'context_length': context_length,
             'long_context_length': long_context_length, 'max_side': max_side}
  created = not os.path.exists(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  try:
    if runner == 'beam':
      from superclip_jax.data import beam_runner
      stats = beam_runner.run(tasks, out_dir, options, workers)
    else:
      stats = _run_local(tasks, out_dir, options, workers, progress)
    return write_manifest(out_dir, stats, tok, classes, source, options)
  except BaseException:
    _remove_if_unfinished(out_dir, created)
    raise


def _remove_if_unfinished(out_dir: str, created: bool) -> None:
  """Delete an output folder this build created if no shard in it finished (nothing to resume)."""
  if created and os.path.isdir(out_dir) and not any(f.endswith('.stats.json') for f in os.listdir(out_dir)):
    import shutil
    shutil.rmtree(out_dir, ignore_errors=True)


def _run_local(tasks, out_dir, options, workers, progress) -> list[dict[str, Any]]:
  """build_shard over the tasks in worker processes; their stats in task order."""
  workers = workers or min(len(tasks), os.cpu_count() or 1)
  results: dict[str, dict[str, Any]] = {}
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=len(tasks), desc=f'building {out_dir}', unit='shard', file=sys.stderr)
  if workers <= 1 or len(tasks) <= 1:
    for task in tasks:
      results[task['name']] = build_shard(task, out_dir, options)
      bar and bar.update()
  else:
    ctx = multiprocessing.get_context('spawn')  # no inherited threads or locks
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
      futures = {pool.submit(build_shard, task, out_dir, options): task['name'] for task in tasks}
      for future in concurrent.futures.as_completed(futures):
        results[futures[future]] = future.result()
        bar and bar.update()
  if bar:
    bar.close()
  return [results[t['name']] for t in tasks]


def write_manifest(out_dir, shard_stats, tok, classes, source, options) -> dict[str, Any]:
  """Sum the shards' statistics into manifest.json and doc_freq.npz."""
  doc_freq = np.zeros(tok.vocab_size, np.int64)
  skipped, repaired = collections.Counter(), collections.Counter()
  examples: dict[str, list[str]] = {}
  for stats in shard_stats:
    doc_freq += np.load(os.path.join(out_dir, stats['file'].replace('.array_record', '.df.npy')))
    skipped.update(stats['skipped'])
    repaired.update(stats['repaired'])
    for reason, lines in stats.get('skip_examples', {}).items():
      examples.setdefault(reason, []).extend(lines[: _DETAIL_LIMIT - len(examples.get(reason, []))])
  num = sum(s['num_records'] for s in shard_stats)
  np.savez(os.path.join(out_dir, records.DOC_FREQ), doc_freq=doc_freq, num_samples=num)
  manifest = {
      'format': records.FORMAT,
      'num_records': num,
      'shards': [{'file': s['file'], 'num_records': s['num_records'], 'source': s['source']} for s in shard_stats],
      'tokenizer': {**tok.identity, 'spec': options['tokenizer'], 'sot_id': tok.sot_id, 'eot_id': tok.eot_id,
                    'pad_id': tok.pad_id, 'vocab_size': tok.vocab_size,
                    'context_length': options['context_length'],
                    'long_context_length': options['long_context_length']},
      'skipped': dict(sorted(skipped.items())),
      'repaired': dict(sorted(repaired.items())),
      'skip_examples': examples,
      'class_names': classes,
      'idf_stats': records.DOC_FREQ,
      'builder': {'source': source, 'max_side': options['max_side']},
  }
  records.write_json_atomic(os.path.join(out_dir, records.MANIFEST), manifest)
  return manifest


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m superclip_jax.data.build', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--source', required=True)
  parser.add_argument('--out', required=True)
  parser.add_argument('--tokenizer', default='clip', help="'clip' or a tokenizer.json path")
  parser.add_argument('--context-length', type=int, default=77)
  parser.add_argument('--long-context-length', type=int, default=256)
  parser.add_argument('--max-side', type=int, default=0, help='downscale larger images (0: keep)')
  parser.add_argument('--records-per-shard', type=int, default=5000)
  parser.add_argument('--template', default='a photo of a {}.', help='caption of ImageFolder / label classes')
  parser.add_argument('--workers', type=int, default=0, help='processes (0: one per core)')
  parser.add_argument('--tfds-data-dir', default=None)
  parser.add_argument('--runner', default='local', choices=['local', 'beam'],
                      help="'beam': Apache Beam (DirectRunner here; same output as local)")
  args = parser.parse_args(argv)
  from superclip_jax import cli
  with cli.user_errors('superclip_jax.data.build'):
    _main(args)


def _main(args):
  manifest = build(args.source, args.out, tokenizer=args.tokenizer, context_length=args.context_length,
                   long_context_length=args.long_context_length, max_side=args.max_side,
                   records_per_shard=args.records_per_shard, template=args.template,
                   workers=args.workers, data_dir=args.tfds_data_dir, runner=args.runner)
  print(f"{manifest['num_records']} records in {len(manifest['shards'])} shards at {args.out}; "
        f"skipped {manifest['skipped'] or 'none'}; repaired {manifest['repaired'] or 'none'}")


if __name__ == '__main__':
  main()
