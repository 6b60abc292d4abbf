"""The demo's zero-shot accuracy in transformers, its pipeline and open_clip, beside superclip_jax's own.

  python benchmarks/demo_in_stock_clients.py --workdir workdirs/demo_mnist [--limit N]

Exports the run's newest checkpoint (`superclip_jax.export`, `convert --to hf`, `convert --to
open_clip`), then runs benchmarks/stock_clients.py in a process of its own, which never imports
superclip_jax, on the demo's held-out digits. Prints one JSON line: each client's top-1 accuracy
(its own preprocessing and tokenizer), superclip_jax's on the same images, how often each client
agrees with superclip_jax, and the largest difference between their embeddings of one tensor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from absl import flags

HERE = os.path.dirname(os.path.abspath(__file__))


def held_out_digits(limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """The demo's held-out digits as (N, 28, 28, 3) uint8 and their labels (the first `limit`, or all)."""
  from PIL import Image

  from superclip_jax.data import mnist_demo

  folder = os.path.join(os.path.dirname(mnist_demo.prepare()['test']), 'images_test')
  rows = [json.loads(line) for line in open(os.path.join(folder, 'captions.jsonl'))]
  rows = rows[:limit] if limit else rows
  images = np.stack([np.asarray(Image.open(os.path.join(folder, r['image'])).convert('RGB')) for r in rows])
  return images, np.array([r['label'] for r in rows])


def client_inputs(model, images: np.ndarray, class_names, templates, texts) -> dict:
  """The inputs.npz of stock_clients.py: pixels and ids as superclip_jax prepares them, the raw images."""
  return {
    'pixels': model.preprocess(list(images)),
    'ids': np.asarray(model.tokenizer(list(texts))),
    'images': images,
    'class_names': np.array(class_names),
    'templates': np.array(templates),
  }


def project_scores(model, images: np.ndarray, class_names, templates) -> np.ndarray:
  """superclip_jax's (K, C) zero-shot cosines, as its evaluator forms them (evals/zeroshot.py)."""
  from superclip_jax.evals import zeroshot

  classes = zeroshot.class_embeddings(model.encode_text, class_names, templates)
  return model.encode_image(model.preprocess(list(images))) @ classes.T


def run_clients(inputs: dict, hf_dir: str | None, open_clip_dir: str | None, scratch: str) -> dict:
  """stock_clients.py's results, from its own process."""
  np.savez(os.path.join(scratch, 'inputs.npz'), **inputs)
  out = os.path.join(scratch, 'results.npz')
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  dirs = [arg for flag, d in (('--hf', hf_dir), ('--open_clip', open_clip_dir)) if d for arg in (flag, d)]
  proc = subprocess.run(
    [
      sys.executable,
      os.path.join(HERE, 'stock_clients.py'),
      '--inputs',
      os.path.join(scratch, 'inputs.npz'),
      *dirs,
      '--out',
      out,
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=1800,
  )
  if proc.returncode:
    raise RuntimeError(f'stock_clients.py failed:\n{proc.stderr[-4000:]}')
  return dict(np.load(out))


def export_all(workdir: str, scratch: str) -> dict[str, str]:
  """{'ours': export, 'hf': ..., 'open_clip': ...} of the workdir's newest checkpoint."""
  from superclip_jax import convert, export

  dirs = {name: os.path.join(scratch, name) for name in ('ours', 'hf', 'open_clip')}
  export.export(workdir, dirs['ours'])
  for name in ('hf', 'open_clip'):
    convert.main(['--to', name, '--src', workdir, '--out', dirs[name]])
  return dirs


def _define_flags(v: flags.FlagValues) -> None:
  flags.DEFINE_string('workdir', None, 'a run of configs/demo_mnist.py', required=True, flag_values=v)
  flags.DEFINE_integer('limit', 0, 'the first N held-out digits (default: all 1,000)', flag_values=v)


def _demo(args: flags.FlagValues, _rest: list[str]) -> None:
  import superclip_jax
  from superclip_jax.data import mnist_demo
  from superclip_jax.errors import user_errors

  with user_errors('demo_in_stock_clients.py'):
    images, labels = held_out_digits(args.limit)
    names, templates = list(mnist_demo.NUMBER_WORDS), list(mnist_demo.TEMPLATES)
    with tempfile.TemporaryDirectory() as scratch:
      dirs = export_all(args.workdir, scratch)
      model = superclip_jax.load(dirs['ours'])
      texts = [t.format(n) for n in names for t in templates]
      inputs = client_inputs(model, images, names, templates, texts)
      got = run_clients(inputs, dirs['hf'], dirs['open_clip'], scratch)
      ours = project_scores(model, images, names, templates).argmax(axis=1)
      ours_first = project_scores(model, images, names, templates[:1]).argmax(axis=1)  # the pipeline's one template
      own_image, own_text = model.encode_image(inputs['pixels']), model.encode_text(inputs['ids'])
  report = {
    'images': len(labels),
    'superclip_jax_top1': float(np.mean(ours == labels)),
    'superclip_jax_first_template_top1': float(np.mean(ours_first == labels)),
  }
  for client, same in (('hf', ours), ('open_clip', ours), ('pipeline', ours_first)):
    report[f'{client}_top1'] = float(np.mean(got[f'{client}_pred'] == labels))
    report[f'{client}_agrees_with_superclip_jax'] = float(np.mean(got[f'{client}_pred'] == same))
  for client in ('hf', 'open_clip'):
    report[f'{client}_max_embedding_diff'] = float(
      max(np.abs(got[f'{client}_image'] - own_image).max(), np.abs(got[f'{client}_text'] - own_text).max())
    )
  print(json.dumps(report))


def main(argv: list[str] | None = None) -> None:
  """`python benchmarks/demo_in_stock_clients.py` (argv None), or its flags as a list, in this process."""
  from superclip_jax import commands

  commands.command('demo_in_stock_clients.py', _define_flags, _demo, argv)


if __name__ == '__main__':
  main()
