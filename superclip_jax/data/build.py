"""Build tokenized ArrayRecord shards from WebDataset tars, image folders, TFDS or benchmark layouts.

  python -m superclip_jax.data.build --source 'webdataset:/data/{00000..00099}.tar' --out DIR
  python -m superclip_jax.data.build --source folder:/data/images --out DIR [--template 'a photo of a {}.']
  python -m superclip_jax.data.build --source tfds:cifar10:test --out DIR
  python -m superclip_jax.data.build --source imagenet:/data/ILSVRC2012 --out DIR   (eval_sources.py)

One output shard per input tar (or per --records_per_shard items of a folder, benchmark
or TFDS split), built in parallel worker processes. A finished shard is recorded by its
`.stats.json`, so an interrupted build resumes where it stopped; the output depends only
on the inputs and options (reproducible). Bad inputs are skipped or repaired and counted
by reason in the manifest. --out may be a URL (gs://, s3://): shards are written in a
local temporary folder and uploaded, so every worker of a distributed runner can write.

A sample key seen earlier in the input order (earlier in the same tar, or in any earlier
tar or folder chunk) is skipped as 'duplicate_key'. Workers build shards independently,
so this takes two passes over the tasks: the first lists each task's keys (cached in
`NAME.keys.json`), then the driver finds every key's first occurrence, and each shard
task is told which of its keys came earlier (see `find_duplicates`). A pass before the
shards rather than a merge that rewrites them after: a finished shard stays final (resume
and the stats.json marks rely on it), and a duplicate is dropped before its image is
decoded, as within a tar. The price is reading each input twice (a local tar's second read
is cheap next to decoding; a remote one is downloaded twice).
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import hashlib
import io
import json
import multiprocessing
import os
import re
import sys
import tempfile
from typing import Any, Callable, Iterable

import numpy as np
from absl import flags

from superclip_jax import storage, workdir_lock
from superclip_jax.data import eval_sources, images, records, remote, sources, tfds_source
from superclip_jax.data import tokenizer as tokenizer_lib
from superclip_jax.errors import UserError

_DETAIL_LIMIT = 20  # examples per reason kept in the manifest
# Captions are cut to this many characters before tokenizing (77 tokens are a few hundred
# characters; a 10 MB caption took 30 s to tokenize for the same 77). Long captions keep more.
MAX_CAPTION_CHARS = 4096
MAX_LONG_CAPTION_CHARS = 16384
_INT32 = (-(2**31), 2**31 - 1)
_ADDRESS = re.compile(r' at 0x[0-9a-fA-F]+')  # object reprs: would make manifests differ run to run


def _shard_name(i: int) -> str:
  return f'shard-{i:05d}'


def _items(task: dict[str, Any]) -> Iterable[dict[str, Any]]:
  kind = task['kind']
  if kind == 'webdataset':
    limit = task.get('max_member_bytes', sources.MAX_MEMBER_BYTES)
    if remote.is_fetched(task['path']):
      return sources.read_webdataset_url(task['path'], max_member_bytes=limit)
    return sources.read_webdataset_tar(task['path'], max_member_bytes=limit)
  if kind == 'list':
    return task['items']
  if kind == 'tfds':
    return tfds_source.read(task['dataset'], task['split'], task['start'], task['stop'], task['data_dir'], task['template'])
  raise ValueError(kind)


@functools.lru_cache(maxsize=2)
def _tokenizer(spec: str, context_length: int):
  return tokenizer_lib.load_tokenizer(spec, context_length)


def _stats_path(out_dir: str, task: dict[str, Any]) -> str:
  return storage.join(out_dir, task['name'] + '.stats.json')


def _keys_path(out_dir: str, task: dict[str, Any]) -> str:
  return storage.join(out_dir, task['name'] + '.keys.json')


def read_stats(out_dir: str, task: dict[str, Any]) -> dict[str, Any]:
  path = _stats_path(out_dir, task)
  try:
    return json.loads(storage.read_text(path))
  except (OSError, ValueError) as e:
    raise UserError(f'{path}: unreadable shard stats ({e}); delete it to rebuild that shard') from e


def task_keys(task: dict[str, Any]) -> list[str]:
  """The keys of the samples a task would write, in order, as far as is known without decoding
  images: an item already skipped (no image, no caption, ...) does not claim its key, so a
  later usable copy of it is kept."""
  return [str(item.get('key')) for item in _items(task) if 'skip' not in item]


def list_keys(task: dict[str, Any], out_dir: str, options: dict[str, Any]) -> None:
  """First pass: save task_keys beside the shards, unless a previous (interrupted) build did."""
  del options  # one signature for both passes
  path = _keys_path(out_dir, task)
  if not storage.exists(path):
    records.write_json_atomic(path, task_keys(task))


def _digests(keys: list[str]) -> np.ndarray:
  """128-bit hashes of the keys, (n, 2) uint64: a fixed 16 bytes per key however long, collisions negligible."""
  raw = b''.join(hashlib.blake2b(k.encode('utf-8', 'surrogatepass'), digest_size=16).digest() for k in keys)
  return np.frombuffer(raw, np.uint64).reshape(-1, 2)


def find_duplicates(tasks: list[dict[str, Any]], load_keys: Callable[[dict[str, Any]], list[str]]) -> None:
  """Sets each task's 'duplicate_keys': {key: source of its first occurrence} for keys an earlier task read.

  The first occurrence in the input order wins, so the result does not depend on which worker
  finished first. The driver holds only 16-byte hashes (some 50 bytes a key while sorting: 100M keys, 5 GB);
  keys are re-read only for the tasks that have duplicates.
  """
  hashes = [_digests(load_keys(t)) for t in tasks]
  if not hashes:
    return
  owner = np.repeat(np.arange(len(tasks)), [len(h) for h in hashes])
  _, first, inverse = np.unique(np.concatenate(hashes), axis=0, return_index=True, return_inverse=True)
  first_owner = owner[first][inverse.reshape(-1)]
  start = 0
  for i, task in enumerate(tasks):
    stop = start + len(hashes[i])
    earlier = np.nonzero(first_owner[start:stop] < i)[0]
    if len(earlier):
      keys = load_keys(task)
      task['duplicate_keys'] = {keys[j]: tasks[first_owner[start + j]].get('source', '') for j in earlier}
    start = stop


def build_shard(task: dict[str, Any], out_dir: str, options: dict[str, Any]) -> dict[str, Any]:
  """Write one shard; returns (and saves) its stats. Skips the work if already finished.

  For a URL out_dir the shard is made in a local temporary folder (the ArrayRecord writer
  needs a file) and uploaded, its .stats.json last: that object marks the shard finished.
  """
  if storage.exists(_stats_path(out_dir, task)):
    return read_stats(out_dir, task)
  if not storage.is_remote(out_dir):
    return _write_shard(task, out_dir, options)
  with tempfile.TemporaryDirectory(prefix='superclip_shard_') as tmp:
    stats = _write_shard(task, tmp, options)
    for suffix in ('.array_record', '.df.npy', '.stats.json'):
      storage.upload(os.path.join(tmp, task['name'] + suffix), storage.join(out_dir, task['name'] + suffix))
  return stats


def _write_shard(task: dict[str, Any], out_dir: str, options: dict[str, Any]) -> dict[str, Any]:
  """build_shard into a local folder."""
  from array_record.python.array_record_module import ArrayRecordWriter

  name = task['name']
  stats_path = _stats_path(out_dir, task)
  earlier = task.get('duplicate_keys', {})
  seen: set[str] = set()  # a folder chunk's items may repeat a key; a tar's reader drops repeats itself
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
      if 'skip' not in item and (key in earlier or key in seen):
        # A key already written (earlier in this input, or in an earlier one): dropped unread.
        item = {'key': key, 'skip': 'duplicate_key', 'detail': f'first in {earlier.get(key) or "this input"}'}
      try:
        if 'skip' in item:
          raise images.SkipRecord(item['skip'], item.get('detail', ''))
        caption = images.prepare_caption(item.get('caption'))
        label = item.get('label', -1)
        if not isinstance(label, int) or not _INT32[0] <= label <= _INT32[1]:
          raise images.SkipRecord('label_out_of_range', f'{label!r:.40} is not an int32')
        if 'image_path' in item and remote.is_fetched(item['image_path']):
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
          details[e.reason].append(_ADDRESS.sub('', f'{task.get("source", name)}: {key}: {e}'))
        continue
      except OSError as e:
        # A remote image that is not there is a missing image, as a listed local one would be.
        reason = 'missing_image' if isinstance(e, FileNotFoundError) else 'unreadable_file'
        skipped[reason] += 1
        if len(details[reason]) < _DETAIL_LIMIT:
          details[reason].append(_ADDRESS.sub('', f'{key}: {e}'))
        continue
      except Exception as e:  # anything else a decoder or a malformed field raises: one sample, not the build
        reason = f'error_{type(e).__name__}'
        skipped[reason] += 1
        if len(details[reason]) < _DETAIL_LIMIT:
          details[reason].append(_ADDRESS.sub('', f'{task.get("source", name)}: {key}: {e}')[:300])
        continue
      if len(caption) > MAX_CAPTION_CHARS:
        caption = caption[:MAX_CAPTION_CHARS]
        repaired['caption_cut'] += 1
      if repair:
        repaired[repair] += 1
      long_caption = ''
      if item.get('long_caption'):
        try:
          long_caption = images.prepare_caption(item['long_caption'])[:MAX_LONG_CAPTION_CHARS]
        except images.SkipRecord as e:
          repaired[f'dropped_long_caption_{e.reason}'] += 1
      ids = tok.with_specials(tok.encode(caption), options['context_length'])
      long_ids = tok.with_specials(tok.encode(long_caption), options['long_context_length']) if long_caption else []
      seen.add(key)  # only a written sample claims its key
      writer.write(
        records.encode_record(
          key=key, image=jpeg, caption=caption, tokens=ids, long_caption=long_caption, long_tokens=long_ids, label=label
        )
      )
      # Document frequency over the token bag the classifier sees by default (no SOT/EOT).
      bag = {t for t in (long_ids or ids) if t not in special}
      doc_freq[list(bag)] += 1
      num += 1
  finally:
    writer.close()
  os.replace(tmp_path, os.path.join(out_dir, name + '.array_record'))
  np.save(os.path.join(out_dir, name + '.df.npy'), doc_freq)
  stats = {
    'file': name + '.array_record',
    'num_records': num,
    'source': task.get('source', ''),
    'skipped': dict(skipped),
    'repaired': dict(repaired),
    'skip_examples': dict(details),
  }
  records.write_json_atomic(stats_path, stats)
  return stats


def plan_tasks(source: str, records_per_shard: int, template: str, data_dir: str | None = None):
  """Split a --source into shard tasks; returns (tasks, class names)."""
  kind, _, rest = source.partition(':')
  if kind == 'webdataset':
    if remote.is_fetched(rest):
      # A tar that cannot be fetched is counted at build time.
      remote.check_driver(rest)
      paths = sources.expand_remote(rest)
      if not paths:
        raise UserError(f'webdataset source {rest!r}: no tar matches')
      remote.check_reachable(paths[0])  # no network: one line in seconds, not minutes per tar
      return [{'kind': 'webdataset', 'path': p, 'name': _shard_name(i), 'source': p} for i, p in enumerate(paths)], []
    paths = sources.expand_braces(rest)
    missing = [p for p in paths if not os.path.exists(p)]
    if not paths or missing:
      raise UserError(f'webdataset source {rest!r}: no such tar {missing[:3] or rest}')
    return [{'kind': 'webdataset', 'path': p, 'name': _shard_name(i), 'source': p} for i, p in enumerate(paths)], []
  if kind == 'folder' or kind in eval_sources.LISTERS:
    lister = sources.list_folder if kind == 'folder' else eval_sources.LISTERS[kind]
    items, classes = lister(rest, template)
    chunks = [items[i : i + records_per_shard] for i in range(0, len(items), records_per_shard)]
    return [{'kind': 'list', 'items': chunk, 'name': _shard_name(i), 'source': rest} for i, chunk in enumerate(chunks)], classes
  if kind == 'tfds':
    name, _, split = rest.partition(':')
    split = split or 'train'
    total, classes = tfds_source.plan(name, split, data_dir)
    return [
      {
        'kind': 'tfds',
        'name': _shard_name(i),
        'source': rest,
        'dataset': name,
        'split': split,
        'start': start,
        'stop': min(start + records_per_shard, total),
        'data_dir': data_dir,
        'template': template,
      }
      for i, start in enumerate(range(0, total, records_per_shard))
    ], classes
  raise UserError(f'--source {source!r}: expected one of {", ".join(repr(f) for f in SOURCE_FORMS)}')


# The --source schemes, as its help and its error list them.
SOURCE_FORMS = (
  'webdataset:PATTERN',
  'folder:DIR',
  'tfds:NAME[:SPLIT]',
  'imagenet:DIR',
  'imagenet_v2:DIR',
  'coco_karpathy:IMAGES_DIR,JSON[:SPLIT]',
  'flickr_karpathy:IMAGES_DIR,JSON[:SPLIT]',
)


def build(
  source: str,
  out_dir: str,
  *,
  tokenizer: str = 'clip',
  context_length: int = 77,
  long_context_length: int = 256,
  max_side: int = 0,
  records_per_shard: int = 5000,
  template: str = 'a photo of a {}.',
  workers: int = 0,
  data_dir: str | None = None,
  progress: bool = True,
  runner: str = 'local',
  overwrite: bool = False,
  max_member_bytes: int = sources.MAX_MEMBER_BYTES,
) -> dict[str, Any]:
  """Build (or finish building) the shards of `source` in out_dir (a folder or a URL); returns the manifest.

  out_dir remembers what it was built from (build.json: a fingerprint of the planned inputs
  and the options). A rerun of the same build finishes it; a build of other inputs or options
  into it is refused unless `overwrite`, which deletes what is there first.
  """
  if runner not in ('local', 'beam'):
    raise UserError(f"--runner {runner!r}: expected 'local' or 'beam'")
  tok = tokenizer_lib.load_tokenizer(tokenizer, context_length)  # fetch the vocabulary once, here
  # Plan first: a bad --source is reported before anything is written.
  tasks, classes = plan_tasks(source, records_per_shard, template, data_dir)
  for task in tasks:
    if task['kind'] == 'webdataset' and max_member_bytes != sources.MAX_MEMBER_BYTES:
      task['max_member_bytes'] = max_member_bytes  # only when set: a default build's plan stays as it was
  options = {
    'tokenizer': tokenizer,
    'context_length': context_length,
    'long_context_length': long_context_length,
    'max_side': max_side,
  }
  if storage.is_remote(out_dir):
    remote.check_driver(out_dir)
  else:
    _check_outside_sources(source, out_dir)
  created = not storage.exists(out_dir)
  # One build per --out: two would write the same shard names and leave a mixed folder.
  lock = workdir_lock.DirectoryLock(out_dir, 'shard build').acquire()
  try:
    _claim(out_dir, _fingerprint(source, tasks, options, data_dir), source, overwrite)
  except BaseException:
    lock.release()
    raise
  run = functools.partial(
    _run_beam if runner == 'beam' else _run_local, out_dir=out_dir, options=options, workers=workers, progress=progress
  )
  try:
    pending = [i for i, task in enumerate(tasks) if not storage.exists(_stats_path(out_dir, task))]
    if pending:
      # Only the tasks up to the last unfinished one decide its duplicates.
      listed = tasks[: pending[-1] + 1]
      run(list_keys, listed, desc='listing keys')
      find_duplicates(listed, lambda task: json.loads(storage.read_text(_keys_path(out_dir, task))))
      run(build_shard, [tasks[i] for i in pending], desc='building')
    stats = [read_stats(out_dir, task) for task in tasks]
    return write_manifest(out_dir, stats, tok, classes, source, options)
  except BaseException:
    _remove_if_unfinished(out_dir, created)
    raise
  finally:
    lock.release()


BUILD_RECORD = 'build.json'


def _fingerprint(source: str, tasks: list[dict], options: dict, data_dir: str | None) -> str:
  """What a build's output depends on: its planned inputs (files, ranges, templates) and options."""
  plan = json.dumps({'source': source, 'tasks': tasks, 'options': options, 'data_dir': data_dir}, sort_keys=True, default=str)
  return hashlib.sha256(plan.encode()).hexdigest()[:32]


def _claim(out_dir: str, fingerprint: str, source: str, overwrite: bool) -> None:
  """Make out_dir this build's: resume the same build, refuse another one's output unless overwrite."""
  record_path = storage.join(out_dir, BUILD_RECORD)
  entries = [p for p in storage.Path(out_dir).iterdir() if p.name != workdir_lock.LOCK_NAME] if storage.exists(out_dir) else []
  if entries:
    previous = None
    if storage.exists(record_path):
      try:
        previous = json.loads(storage.read_text(record_path))
      except ValueError:
        pass
    if not isinstance(previous, dict) or previous.get('fingerprint') != fingerprint:
      if not overwrite:
        what = (
          f'shards built from {previous.get("source")!r} with other inputs or options'
          if isinstance(previous, dict)
          else 'files of no build of this version'
        )
        raise UserError(f'--out {out_dir} holds {what}; give another --out, or --overwrite to delete them first')
      for entry in entries:
        entry.rmtree() if entry.is_dir() else entry.unlink()
    else:
      return  # the same build: finish it
  storage.write_text(record_path, json.dumps({'fingerprint': fingerprint, 'source': source}, indent=1) + '\n')


def _check_outside_sources(source: str, out_dir: str) -> None:
  """Refuse an --out inside a folder: source, whose every sub-folder is read (ImageFolder: a
  class); a rerun would read its own output as input. Benchmark layouts read named parts only."""
  kind, _, folder = source.partition(':')
  if kind != 'folder' or not os.path.isdir(folder):
    return
  out, top = os.path.realpath(out_dir), os.path.realpath(folder)
  if out == top or out.startswith(top.rstrip(os.sep) + os.sep):
    raise UserError(
      f'--out {out_dir} is inside the source folder {folder}: a rerun would read its own output; give an --out outside it'
    )


def _remove_if_unfinished(out_dir: str, created: bool) -> None:
  """Delete an output folder this build created if no shard in it finished (nothing to resume)."""
  if created and os.path.isdir(out_dir) and not any(f.endswith('.stats.json') for f in os.listdir(out_dir)):
    import shutil

    shutil.rmtree(out_dir, ignore_errors=True)


def _run_beam(step, tasks, *, out_dir, options, workers, progress, desc) -> None:
  del progress, desc  # Beam reports its own progress
  from superclip_jax.data import beam_runner

  # By importable name: under `python -m` this module is __main__, which a Beam worker cannot import.
  beam_runner.run('superclip_jax.data.build', step.__name__, tasks, out_dir, options, workers)


def _run_local(step, tasks, *, out_dir, options, workers, progress, desc) -> None:
  """step(task, out_dir, options) for every task: listing in threads (I/O), building in worker processes."""
  workers = workers or min(len(tasks), os.cpu_count() or 1)
  bar = None
  if progress:
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc=f'{desc} {out_dir}', unit='shard', file=sys.stderr)
  if workers <= 1 or len(tasks) <= 1:
    for task in tasks:
      step(task, out_dir, options)
      bar and bar.update()
  else:
    if step is list_keys:
      pool = concurrent.futures.ThreadPoolExecutor(workers)
    else:
      pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context('spawn'))
    with pool:  # spawn: no inherited threads or locks
      for future in concurrent.futures.as_completed([pool.submit(step, task, out_dir, options) for task in tasks]):
        future.result()
        bar and bar.update()
  if bar:
    bar.close()


def write_manifest(out_dir, shard_stats, tok, classes, source, options) -> dict[str, Any]:
  """Sum the shards' statistics into manifest.json and doc_freq.npz."""
  doc_freq = np.zeros(tok.vocab_size, np.int64)
  skipped, repaired = collections.Counter(), collections.Counter()
  examples: dict[str, list[str]] = {}
  for stats in shard_stats:
    df_path = storage.join(out_dir, stats['file'].replace('.array_record', '.df.npy'))
    doc_freq += np.load(io.BytesIO(storage.read_bytes(df_path)))
    skipped.update(stats['skipped'])
    repaired.update(stats['repaired'])
    for reason, lines in stats.get('skip_examples', {}).items():
      examples.setdefault(reason, []).extend(lines[: _DETAIL_LIMIT - len(examples.get(reason, []))])
  num = sum(s['num_records'] for s in shard_stats)
  buf = io.BytesIO()
  np.savez(buf, doc_freq=doc_freq, num_samples=num)
  storage.write_bytes(storage.join(out_dir, records.DOC_FREQ), buf.getvalue())
  manifest = {
    'format': records.FORMAT,
    'num_records': num,
    'shards': [{'file': s['file'], 'num_records': s['num_records'], 'source': s['source']} for s in shard_stats],
    'tokenizer': {
      **tok.identity,
      'spec': options['tokenizer'],
      'sot_id': tok.sot_id,
      'eot_id': tok.eot_id,
      'pad_id': tok.pad_id,
      'vocab_size': tok.vocab_size,
      'context_length': options['context_length'],
      'long_context_length': options['long_context_length'],
    },
    'skipped': dict(sorted(skipped.items())),
    'repaired': dict(sorted(repaired.items())),
    'skip_examples': examples,
    'class_names': classes,
    'idf_stats': records.DOC_FREQ,
    'builder': {
      'source': source,
      'max_side': options['max_side'],
      'fingerprint': json.loads(storage.read_text(storage.join(out_dir, BUILD_RECORD)))['fingerprint'],
    },
  }
  records.write_json_atomic(storage.join(out_dir, records.MANIFEST), manifest)
  return manifest


def _define_flags(v: flags.FlagValues) -> None:
  flags.DEFINE_string(
    'source',
    None,
    'What to build from: ' + ', '.join(SOURCE_FORMS) + '. PATTERN: local tars with {000..099} ranges, or '
    'http(s)://, gs://, s3:// URLs, or pipe:COMMAND; DIR: images with a captions.jsonl or captions.csv, or class '
    'sub-folders of images (local or a URL).',
    required=True,
    flag_values=v,
  )
  flags.DEFINE_string('out', None, 'A folder, or a URL every worker can write (gs://, s3://).', required=True, flag_values=v)
  flags.DEFINE_string('tokenizer', 'clip', "'clip' or a tokenizer.json path.", flag_values=v)
  flags.DEFINE_integer('context_length', 77, 'Token length of the captions.', flag_values=v)
  flags.DEFINE_integer('long_context_length', 256, 'Token length of the long captions.', flag_values=v)
  flags.DEFINE_integer('max_side', 0, 'Downscale larger images (0: keep).', flag_values=v)
  flags.DEFINE_integer('records_per_shard', 5000, 'Items of a folder, benchmark or TFDS split per shard.', flag_values=v)
  flags.DEFINE_string('template', 'a photo of a {}.', 'Caption of ImageFolder / label classes.', flag_values=v)
  flags.DEFINE_integer('workers', 0, 'Processes (0: one per core).', flag_values=v)
  flags.DEFINE_string('tfds_data_dir', None, 'TFDS data directory.', flag_values=v)
  flags.DEFINE_enum(
    'runner', 'local', ['local', 'beam'], "'beam': Apache Beam (DirectRunner here; same output as local).", flag_values=v
  )
  flags.DEFINE_integer(
    'max_member_bytes', sources.MAX_MEMBER_BYTES, 'Tar members larger than this are skipped unread and counted.', flag_values=v
  )
  flags.DEFINE_bool(
    'overwrite', False, 'Delete what --out holds first when it was built from other inputs or options.', flag_values=v
  )


def _build(v: flags.FlagValues, _args: list[str]) -> None:
  from superclip_jax.errors import user_errors

  with user_errors('superclip_jax.data.build'):
    manifest = build(
      v.source,
      v.out,
      tokenizer=v.tokenizer,
      context_length=v.context_length,
      long_context_length=v.long_context_length,
      max_side=v.max_side,
      records_per_shard=v.records_per_shard,
      template=v.template,
      workers=v.workers,
      data_dir=v.tfds_data_dir,
      runner=v.runner,
      overwrite=v.overwrite,
      max_member_bytes=v.max_member_bytes,
    )
    print(
      f'{manifest["num_records"]} records in {len(manifest["shards"])} shards at {v.out}; '
      f'skipped {manifest["skipped"] or "none"}; repaired {manifest["repaired"] or "none"}'
    )
    if not manifest['num_records']:
      raise UserError(f'no records built from {v.source} (skipped: {manifest["skipped"] or "none"}): nothing to train on')


def main(argv: list[str] | None = None):
  """`python -m superclip_jax.data.build` (argv None), or its flags as a list, in this process."""
  from superclip_jax import commands

  commands.command('superclip_jax.data.build', _define_flags, _build, argv)


if __name__ == '__main__':
  main()
