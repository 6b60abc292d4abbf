"""superclip_jax's train step against the same model's PyTorch step, alternated step by step on CPU.

  python benchmarks/vs_pytorch.py --image_size 112 --batch 8 --steps 5 [--no_head] [--threads N]
  python benchmarks/vs_pytorch.py --tiny --steps 2          # a smoke test of a few seconds

Both sides: a ViT-B/16 image tower and CLIP's B text tower (QuickGELU, causal, 77 tokens,
vocabulary 49408, embedding 512), the token classifier (LayerNorm + Linear(768, 49408) on the
mean of the patch tokens after ln_post), fp32, AdamW (betas 0.9/0.98, eps 1e-6, decay on
matrices; PyTorch's AdamW(fused=True) as a speed-aware user runs it, and its default
AdamW beside it), one fixed batch of random images and captions. The loss is CLIP's contrastive
loss plus the classifier's softmax cross-entropy on the caption's K-hot target (uniform
weights: loss.idf='none'). PyTorch's model is transformers' CLIPModel built from a small
config in code (random weights, nothing downloaded). The two steps alternate, so the
shared machine's load falls on both alike, in turns of --block steps whose first step is
reported apart (alternate_in_blocks); the medians and their ratio are printed, then one
JSON line.

Each framework runs in its own process (spawned; this one only alternates their steps), as
each would in use: JAX's with the malloc `python -m superclip_jax.main` runs on (mimalloc,
superclip_jax/allocator.py; SUPERCLIP_JAX_ALLOCATOR=system for glibc's), PyTorch's with
glibc's (--torch_preload for another). --one_process runs both in this process instead: there they share
glibc's allocator and each other's idle threads, and the JAX step measured 8% slower
(112 px) right after a PyTorch step than right after its own.

Threads: torch.set_num_threads(N) for PyTorch. XLA's CPU client sizes its thread pool from
the CPUs the process may run on, so each process pins itself to the same N CPUs
(os.sched_setaffinity) before jax and torch are imported; both then use the same N cores
(default: every CPU the process may use). On a machine other work keeps busy, prefer
--threads 1: PyTorch's OpenMP threads wait for each other at every op, and one descheduled
thread stalls the rest (a tiny step measured here took 13 ms on one thread, 140-1400 ms on
two shared cores). JAX runs on one CPU device (JAX_PLATFORMS=cpu, any
--xla_force_host_platform_device_count removed from XLA_FLAGS).
torch and transformers come with the interop extra: pip install -e '.[interop]'.
"""

from __future__ import annotations

import functools
import json
import os
import re
import statistics
import sys
import time
import types

from absl import flags

PROG = 'vs_pytorch.py'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _define_flags(v: flags.FlagValues) -> None:
  flags.DEFINE_integer('image_size', 224, 'image side in pixels: 112 or 224', flag_values=v)
  flags.register_validator('image_size', lambda x: x in (112, 224), '--image_size must be 112 or 224', flag_values=v)
  flags.DEFINE_integer('batch', 8, 'images per step', flag_values=v)
  flags.DEFINE_integer('steps', 5, 'timed steps of each (after one warm-up step each)', flag_values=v)
  flags.DEFINE_bool('no_head', False, 'plain CLIP on both sides (no token classifier)', flag_values=v)
  flags.DEFINE_integer(
    'threads', len(os.sched_getaffinity(0)), 'CPU cores for both (default: every CPU this process may use)', flag_values=v
  )
  flags.DEFINE_bool('tiny', False, 'tiny towers at 32 px: a smoke test', flag_values=v)
  flags.DEFINE_bool(
    'no_default_optimizer', False, 'time PyTorch with fused AdamW only (not also with its default AdamW)', flag_values=v
  )
  flags.DEFINE_integer(
    'block', 2, 'steps per turn; the first of each turn is reported apart (see alternate_in_blocks)', flag_values=v
  )
  flags.register_validator(
    'block', lambda x: x >= 2, '--block must be at least 2 (the first step of each turn is not a steady one)', flag_values=v
  )
  flags.DEFINE_bool(
    'one_process', False, 'both frameworks in this process (they then share the allocator and slow each other)', flag_values=v
  )
  flags.DEFINE_string(
    'torch_preload',
    '',
    "LD_PRELOAD for PyTorch's process, e.g. jemalloc or tcmalloc as PyTorch's CPU tuning guide "
    "suggests (default: glibc's malloc, as pip's torch runs)",
    flag_values=v,
  )


def _namespace(v: flags.FlagValues, rest: list[str]) -> types.SimpleNamespace:
  """This script's flags as plain values (the spawned workers get them pickled)."""
  if rest:
    _commands().fail(f'unexpected arguments: {rest}')
  own = flags.FlagValues()  # the names of this script's flags alone (not absl's own, in flags.FLAGS)
  _define_flags(own)
  return types.SimpleNamespace(**{name: v[name].value for name in own})


def _commands():
  """superclip_jax's commands module, from this checkout (as the workers import superclip_jax, _pin_and_isolate)."""
  if sys.path[0] != ROOT:
    sys.path.insert(0, ROOT)
  from superclip_jax import commands

  return commands


def parse_args(argv: list[str]) -> types.SimpleNamespace:
  """The flags of a command line (without the program name), in this process: a mistake exits 2 with one line."""
  return _commands().command(PROG, _define_flags, _namespace, argv)


def sizes(args) -> dict:
  """Tower sizes: ViT-B/16 + text B, or tiny ones for --tiny."""
  if args.tiny:
    return dict(image_size=32, patch=8, iw=64, idepth=2, iheads=2, tw=64, tdepth=2, theads=2, context=16, vocab=512, embed=32)
  return dict(
    image_size=args.image_size,
    patch=16,
    iw=768,
    idepth=12,
    iheads=12,
    tw=512,
    tdepth=12,
    theads=8,
    context=77,
    vocab=49408,
    embed=512,
  )


def jax_config(args, s: dict):
  """superclip_jax's config for the same model, loss and optimizer."""
  from superclip_jax import config_defaults

  c = config_defaults.default_config()
  m = c.model
  m.variant = 'clip' if args.no_head else 'superclip'
  m.image_width, m.image_depth, m.image_heads, m.patch_size = s['iw'], s['idepth'], s['iheads'], s['patch']
  m.text_width, m.text_depth, m.text_heads = s['tw'], s['tdepth'], s['theads']
  m.image_size, m.context_length, m.vocab_size, m.embed_dim = s['image_size'], s['context'], s['vocab'], s['embed']
  m.quick_gelu, m.compute_dtype = True, 'float32'  # remat: the default (on CPU 'elementwise', the fastest here)
  c.tokenizer.sot_id, c.tokenizer.eot_id, c.tokenizer.pad_id = s['vocab'] - 2, s['vocab'] - 1, 0
  c.loss.idf = 'none'
  c.data.global_batch_size = args.batch
  c.mesh.shape = (1, 1, 1)
  c.optim.warmup_steps = 1
  return c


def torch_step(args, s: dict, images, ids, fused: bool = True):
  """A blocking PyTorch train step (closure) on the fixed batch, and its parameter count.

  fused=True is AdamW as a speed-aware PyTorch user runs it (`fused=True`: one kernel over
  every parameter); False is PyTorch's default (the `foreach` implementation).
  """
  import numpy as np
  import torch
  import torch.nn.functional as F
  from transformers import CLIPConfig, CLIPModel

  torch.manual_seed(0)
  common = dict(hidden_act='quick_gelu')
  cfg = CLIPConfig(
    text_config=dict(
      vocab_size=s['vocab'],
      hidden_size=s['tw'],
      intermediate_size=4 * s['tw'],
      num_hidden_layers=s['tdepth'],
      num_attention_heads=s['theads'],
      max_position_embeddings=s['context'],
      bos_token_id=s['vocab'] - 2,
      eos_token_id=s['vocab'] - 1,
      pad_token_id=0,
      **common,
    ),
    vision_config=dict(
      hidden_size=s['iw'],
      intermediate_size=4 * s['iw'],
      num_hidden_layers=s['idepth'],
      num_attention_heads=s['iheads'],
      image_size=s['image_size'],
      patch_size=s['patch'],
      **common,
    ),
    projection_dim=s['embed'],
  )
  model = CLIPModel(cfg)
  head = None if args.no_head else torch.nn.Sequential(torch.nn.LayerNorm(s['iw']), torch.nn.Linear(s['iw'], s['vocab']))
  modules = torch.nn.ModuleList([model] + ([head] if head is not None else []))
  params = list(modules.parameters())
  # Decay on matrices only, as superclip_jax does (the cost is the same either way).
  opt = torch.optim.AdamW(
    [
      {'params': [p for p in params if p.ndim >= 2], 'weight_decay': 0.2},
      {'params': [p for p in params if p.ndim < 2], 'weight_decay': 0.0},
    ],
    lr=1e-3,
    betas=(0.9, 0.98),
    eps=1e-6,
    fused=fused,
  )
  mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
  std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
  pixels = (torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 255 - mean) / std
  tokens = torch.from_numpy(np.array(ids)).long()
  # K-hot target over the caption's distinct ordinary tokens (SOT, EOT, padding left out), uniform weights.
  target = torch.zeros(len(ids), s['vocab'])
  for r, row in enumerate(ids):
    for t in set(row.tolist()) - {0, s['vocab'] - 2, s['vocab'] - 1}:
      target[r, t] = 1.0
  target = target / target.sum(1, keepdim=True).clamp(min=1.0)
  labels = torch.arange(len(ids))

  def step():
    vm = model.vision_model
    h = vm.pre_layrnorm(vm.embeddings(pixels))
    h = vm.post_layernorm(vm.encoder(inputs_embeds=h).last_hidden_state)  # ln_post on every token
    img = F.normalize(model.visual_projection(h[:, 0]), dim=-1)
    txt = F.normalize(model.text_projection(model.text_model(input_ids=tokens).pooler_output), dim=-1)
    logits = model.logit_scale.exp() * img @ txt.t()
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    if head is not None:
      loss = loss - (target * F.log_softmax(head(h[:, 1:].mean(1)), dim=-1)).sum(1).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
      model.logit_scale.clamp_(0, 4.6052)  # CLIP's clamp to ln 100, as superclip_jax does
    return float(loss.detach())

  step.model, step.head = model, head  # for tests: the weights its first step starts from
  return step, sum(p.numel() for p in params)


def _timed(step):
  """step() -> its wall time in seconds."""

  def run():
    start = time.perf_counter()
    step()
    return time.perf_counter() - start

  return run


def alternate_in_blocks(steps: dict, timed_steps: int, block: int) -> dict[str, list[float]]:
  """{name: steady times, name + '_after_switch': first-step times}, alternating blocks of `block` steps.

  After one untimed round, each framework runs `block` steps in turn; the first step of a
  block follows the other framework's steps and is kept apart: it pays for memory the other
  left behind (JAX's kernel time per step went from 0.7 s to 3-5 s at 224 px after a
  PyTorch step, with the same page-fault count), which a training run never sees. The
  others are the steady steps, `timed_steps` of them per framework.
  """
  for run in steps.values():
    run()
  times: dict[str, list[float]] = {}
  for name in steps:
    times[name], times[name + '_after_switch'] = [], []
  while len(times[next(iter(steps))]) < timed_steps:
    for name, run in steps.items():
      times[name + '_after_switch'].append(run())
      times[name].extend(run() for _ in range(block - 1))
  return times


def _pin_and_isolate(threads: int) -> None:
  """Before jax and torch start their thread pools: the first N allowed cores, one JAX CPU device."""
  allowed = sorted(os.sched_getaffinity(0))
  os.sched_setaffinity(0, allowed[:threads])
  os.environ['JAX_PLATFORMS'] = 'cpu'
  os.environ['XLA_FLAGS'] = re.sub(r'--xla_force_host_platform_device_count=\S+', '', os.environ.get('XLA_FLAGS', ''))
  sys.path.insert(0, ROOT)


def _jax_side(args, s):
  """(step, {'loss': first loss, 'params': count, 'compile_s': compile seconds, 'batch': the batch as numpy})."""
  import numpy as np

  from superclip_jax import allocator, bench_step
  from superclip_jax.models.superclip import count_params

  jax_step = bench_step.Step(jax_config(args, s))
  batch = {k: np.asarray(v) for k, v in jax_step.batch.items()}  # the very batch the JAX step sees
  # Step ran the JAX step once; its loss is the first-step loss.
  return jax_step, {
    'loss': jax_step.last_metrics()['loss'],
    'params': count_params(jax_step.state.params),
    'compile_s': jax_step.compile_seconds,
    'batch': batch,
    'malloc': allocator.in_use(),
  }


def _torch_side(args, s, batch, fused: bool = True):
  """(step, {'loss': first loss (its warm-up step), 'params': count})."""
  import torch

  torch.set_num_threads(args.threads)
  from superclip_jax import allocator

  step, params = torch_step(args, s, batch['images'], batch['text'], fused=fused)
  return step, {'loss': step(), 'params': params, 'malloc': allocator.in_use()}


def _worker(kind: str, args, conn) -> None:
  """One framework in its own process: build the step, then run one timed step per request."""
  _pin_and_isolate(args.threads)
  s = sizes(args)
  step, facts = _jax_side(args, s) if kind == 'jax' else _torch_side(args, s, conn.recv(), fused=kind == 'torch')
  conn.send(facts)
  while conn.recv() == 'step':
    conn.send(_timed(step)())


def _remote_step(conn) -> float:
  """Ask a worker for one step; its time, measured there."""
  conn.send('step')
  return conn.recv()


def _process_env(kind: str, args) -> dict[str, str]:
  """The environment each framework's process starts with: the malloc it runs on in use."""
  env = {k: v for k, v in os.environ.items() if k != 'LD_PRELOAD'}
  if kind.startswith('torch'):
    return {**env, 'LD_PRELOAD': args.torch_preload} if args.torch_preload else env
  from superclip_jax import allocator

  return allocator.preload_env({**env, 'JAX_PLATFORMS': 'cpu'})


def _times_in_separate_processes(args) -> tuple[dict, dict]:
  """Each framework in its own process, their steps alternated from here: ({name: times}, setup facts)."""
  import multiprocessing as mp

  ctx = mp.get_context('spawn')
  conns, procs = {}, {}
  saved = dict(os.environ)
  try:
    for kind in _kinds(args):
      conns[kind], child = ctx.Pipe()
      procs[kind] = ctx.Process(target=_worker, args=(kind, args, child), daemon=True)
      os.environ.clear()  # a spawned process starts with this process's environment at start()
      os.environ.update(_process_env(kind, args))
      procs[kind].start()
  finally:
    os.environ.clear()
    os.environ.update(saved)
  try:
    facts = {'jax': conns['jax'].recv()}
    batch = facts['jax'].pop('batch')
    for kind in _kinds(args)[1:]:
      conns[kind].send(batch)
      facts[kind] = conns[kind].recv()
    times = alternate_in_blocks(
      {kind: functools.partial(_remote_step, conn) for kind, conn in conns.items()}, args.steps, args.block
    )
    for conn in conns.values():
      conn.send('stop')
  finally:
    for proc in procs.values():
      proc.join(timeout=60)
      if proc.is_alive():
        proc.kill()
  return times, facts


def _times_in_one_process(args) -> tuple[dict, dict]:
  """Both frameworks in this process, steps alternated (the two share allocator and threads)."""
  _pin_and_isolate(args.threads)
  s = sizes(args)
  jax_step, jax_facts = _jax_side(args, s)
  batch = jax_facts.pop('batch')
  steps, facts = {'jax': _timed(jax_step)}, {'jax': jax_facts}
  for kind in _kinds(args)[1:]:
    step, facts[kind] = _torch_side(args, s, batch, fused=kind == 'torch')
    steps[kind] = _timed(step)
  return alternate_in_blocks(steps, args.steps, args.block), facts


def _kinds(args) -> tuple[str, ...]:
  """The steps alternated: JAX's, PyTorch's with fused AdamW, and (unless left out) PyTorch's default AdamW."""
  return ('jax', 'torch') if args.no_default_optimizer else ('jax', 'torch', 'torch_default')


def _compare(v: flags.FlagValues, rest: list[str]) -> dict:
  args = _namespace(v, rest)
  args.threads = max(1, min(args.threads, len(os.sched_getaffinity(0))))
  s = sizes(args)
  times, facts = (_times_in_one_process if args.one_process else _times_in_separate_processes)(args)
  jax_loss, torch_loss, torch_params = facts['jax']['loss'], facts['torch']['loss'], facts['torch']['params']
  jax_t, torch_t = statistics.median(times['jax']), statistics.median(times['torch'])
  report = {
    'image_size': s['image_size'],
    'batch': args.batch,
    'head': not args.no_head,
    'threads': args.threads,
    'processes': 'one' if args.one_process else 'separate',
    'jax_malloc': facts['jax']['malloc'],
    'torch_malloc': facts['torch']['malloc'],
    'tiny': args.tiny,
    'jax_params': facts['jax']['params'],
    'torch_params': torch_params,
    'jax_compile_s': facts['jax']['compile_s'],
    'jax_step_s': jax_t,
    'torch_step_s': torch_t,
    'jax_over_torch_step_ratio': jax_t / torch_t,
    'jax_images_per_sec': args.batch / jax_t,
    'torch_images_per_sec': args.batch / torch_t,
    'jax_first_loss': jax_loss,
    'torch_first_loss': torch_loss,
    'steps': args.steps,
    'block': args.block,
    # The first step of each turn, after the other framework's (not in the ratio above).
    'jax_after_switch_step_s': statistics.median(times['jax_after_switch']),
    'torch_after_switch_step_s': statistics.median(times['torch_after_switch']),
    'jax_steady_steps_s': times['jax'],
    'torch_steady_steps_s': times['torch'],
    'torch_optimizer': 'AdamW(fused=True)',
  }
  if 'torch_default' in times:
    default_t = statistics.median(times['torch_default'])
    report.update(
      torch_default_step_s=default_t,
      jax_over_torch_default_step_ratio=jax_t / default_t,
      torch_default_first_loss=facts['torch_default']['loss'],
      torch_default_steady_steps_s=times['torch_default'],
    )
  print(
    f'vs_pytorch: {"tiny" if args.tiny else "ViT-B/16 + text B"}, {s["image_size"]} px, batch {args.batch}, '
    f'{"with" if report["head"] else "no"} token classifier, fp32, {args.threads} threads, '
    f'{report["processes"]} process{"" if args.one_process else "es"}, malloc jax {report["jax_malloc"]}, '
    f'torch {report["torch_malloc"]}'
  )
  print(f'  parameters    jax {report["jax_params"] / 1e6:.2f}M, torch {torch_params / 1e6:.2f}M')
  print(f'  first loss    jax {jax_loss:.4f}, torch {torch_loss:.4f}')
  print(
    f'  step (median) jax {jax_t * 1e3:.1f} ms, torch with fused AdamW {torch_t * 1e3:.1f} ms, jax/torch {jax_t / torch_t:.3f}'
  )
  if 'torch_default' in times:
    print(
      f'                torch with its default AdamW {report["torch_default_step_s"] * 1e3:.1f} ms, '
      f'jax/torch {report["jax_over_torch_default_step_ratio"]:.3f}'
    )
  print(
    f'  first step of a turn (median) jax {report["jax_after_switch_step_s"] * 1e3:.1f} ms, '
    f'torch {report["torch_after_switch_step_s"] * 1e3:.1f} ms'
  )
  print(json.dumps(report), flush=True)
  return report


def main(argv: list[str] | None = None) -> dict | None:
  """`python benchmarks/vs_pytorch.py` (argv None), or its flags as a list in this process (returns the report)."""
  return _commands().command(PROG, _define_flags, _compare, argv)


if __name__ == '__main__':
  main()
