"""Facts read from a compiled program's HLO text: what the step will really execute.

The source says what we asked for; the compiled program says what XLA made of it on one
target: whether attention became cuDNN's fused kernel, whether a `conditional` (a host
round trip on XLA:GPU) survived, which collectives move how many bytes per step, and the
largest buffers. Ops inside a `while` (a scanned layer stack) count once per trip.
"""

from __future__ import annotations

import collections
import math
import re
from typing import Any

_DTYPE_BYTES = {
  'pred': 1,
  's4': 0.5,
  'u4': 0.5,
  's8': 1,
  'u8': 1,
  's16': 2,
  'u16': 2,
  'f16': 2,
  'bf16': 2,
  's32': 4,
  'u32': 4,
  'f32': 4,
  's64': 8,
  'u64': 8,
  'f64': 8,
  'c64': 8,
  'c128': 16,
}
_SHAPE = re.compile(r'\b([a-z]+[0-9]*(?:e[0-9]m[0-9][a-z]*)?)\[([0-9,]*)\]')
_COMPUTATION = re.compile(r'^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$')
_INSTRUCTION = re.compile(r'^\s+(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$')
_EDGES = re.compile(r'\b(body|condition|calls|to_apply|true_computation|false_computation)=%?([\w.\-]+)')
_BRANCHES = re.compile(r'branch_computations=\{([^}]*)\}')
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')

COLLECTIVES = ('all-gather', 'all-reduce', 'reduce-scatter', 'all-to-all', 'collective-permute')
# Ops that name or reuse a buffer rather than make a new one.
_NOT_BUFFERS = {
  'parameter',
  'get-tuple-element',
  'tuple',
  'bitcast',
  'constant',
  'while',
  'conditional',
  'call',
  'after-all',
  'partition-id',
  'replica-id',
  'opt-barrier',
}


def _dtype_bytes(dtype: str) -> float:
  if dtype.startswith('f8'):
    return 1
  return _DTYPE_BYTES.get(dtype, 0)


def shapes(text: str) -> list[tuple[str, tuple[int, ...]]]:
  """Every array type in a piece of HLO text, as (dtype, dims)."""
  return [
    (dt, tuple(int(d) for d in dims.split(',') if d))
    for dt, dims in _SHAPE.findall(text)
    if dt in _DTYPE_BYTES or dt.startswith('f8')
  ]


def nbytes(typed: list[tuple[str, tuple[int, ...]]]) -> int:
  return int(sum(_dtype_bytes(dt) * math.prod(dims) for dt, dims in typed))


def _split_type(rest: str) -> tuple[str, str]:
  """'(f32[2], bf16[3]{0}) op(...)' -> ('(f32[2], bf16[3]{0})', 'op(...)')."""
  if rest.startswith('('):
    depth = 0
    for i, ch in enumerate(rest):
      depth += ch == '('
      depth -= ch == ')'
      if depth == 0:
        return rest[: i + 1], rest[i + 1 :].lstrip()
  head, _, tail = rest.partition(' ')
  return head, tail


class Program:
  """An HLO module's computations and instructions, with how often each computation runs per step."""

  def __init__(self, text: str):
    self.computations: dict[str, list[dict[str, Any]]] = {}
    self.entry = None
    current = None
    for line in text.splitlines():
      m = _COMPUTATION.match(line)
      if m and not line.startswith(' '):
        current = m.group(2)
        self.computations[current] = []
        if m.group(1):
          self.entry = current
        continue
      m = _INSTRUCTION.match(line)
      if m and current is not None:
        type_text, rest = _split_type(m.group(2))
        op = rest.split('(', 1)[0].strip()
        args = rest[len(op) :]
        operands = args[: _closing(args)] if args.startswith('(') else ''
        self.computations[current].append({'name': m.group(1), 'op': op, 'type': type_text, 'operands': operands, 'line': line})
    self.runs, self.fused = self._runs()

  def _runs(self) -> tuple[dict[str, float], set[str]]:
    runs: dict[str, float] = collections.defaultdict(float)
    fused: set[str] = set()
    if self.entry is None:
      return runs, fused
    runs[self.entry] = 1.0
    order = [self.entry]
    seen = {self.entry}
    i = 0
    while i < len(order):  # computations are called from computations defined above them in the walk
      comp = order[i]
      i += 1
      for inst in self.computations.get(comp, []):
        line = inst['line']
        trips = 1.0
        if inst['op'] == 'while':
          trips = self._trips(line)
        targets = [(kind, name) for kind, name in _EDGES.findall(line)]
        for m in _BRANCHES.finditer(line):
          targets += [('branch', b.strip().lstrip('%')) for b in m.group(1).split(',') if b.strip()]
        for kind, name in targets:
          if name not in self.computations:
            continue
          if inst['op'] == 'fusion' or kind == 'to_apply':
            fused.add(name)  # a fusion's or a reduction's inner values are not buffers of their own
          runs[name] += runs[comp] * (trips if kind in ('body', 'condition') else 1.0)
          if name not in seen:
            seen.add(name)
            order.append(name)
    return runs, fused

  def _trips(self, while_line: str) -> float:
    """A while's trip count: XLA's known_trip_count (GPU, CPU), else the `i < N` of its condition (TPU)."""
    m = _TRIP.search(while_line)
    if m:
      return float(m.group(1))
    m = re.search(r'condition=%?([\w.\-]+)', while_line)
    cond = self.computations.get(m.group(1), []) if m else []
    constants = [re.search(r'constant\((\d+)\)', i['line']) for i in cond if i['op'] == 'constant']
    constants = [int(c.group(1)) for c in constants if c]
    if len(constants) == 1 and any(i['op'] == 'compare' and 'direction=LT' in i['line'] for i in cond):
      return float(constants[0])  # jax's scan counts from 0 while i < length
    return 1.0

  def instructions(self):
    """(computation, runs per step, instruction) for every instruction reached from the entry."""
    for comp, insts in self.computations.items():
      if self.runs.get(comp):
        for inst in insts:
          yield comp, self.runs[comp], inst


def _closing(args: str) -> int:
  depth = 0
  for i, ch in enumerate(args):
    depth += ch == '('
    depth -= ch == ')'
    if depth == 0:
      return i + 1
  return len(args)


def _collective_kind(op: str) -> str | None:
  for kind in COLLECTIVES:
    if op == kind or op == f'{kind}-start':
      return kind
  return None


def _top_level(type_text: str) -> list[str]:
  """'((a, b), c)' -> ['(a, b)', 'c']; an array type -> [itself]."""
  if not type_text.startswith('('):
    return [type_text]
  parts, depth, start = [], 0, 1
  for i, ch in enumerate(type_text):
    depth += ch in '({['
    depth -= ch in ')}]'
    if ch == ',' and depth == 1:
      parts.append(type_text[start:i])
      start = i + 1
  parts.append(type_text[start:-1])
  return [p.strip() for p in parts if p.strip()]


def _group_size(line: str) -> int:
  """Devices in one replica group: the iota form [groups,size]<=[n], or explicit {{0,1,..},..}."""
  m = re.search(r'replica_groups=\[(\d+),(\d+)\]<=', line)
  if m:
    return int(m.group(2))
  m = re.search(r'replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}', line)  # mesh['a'=8,'b'=1] {'a'}
  if m:
    sizes = dict(re.findall(r"'(\w+)'=(\d+)", m.group(1)))
    return math.prod(int(sizes.get(a, 1)) for a in re.findall(r"'(\w+)'", m.group(2)))
  m = re.search(r'replica_groups=\{\{([0-9,]*)\}', line)
  return len(m.group(1).split(',')) if m and m.group(1) else 1


def _moved_bytes(kind: str, inst: dict[str, Any]) -> tuple[int, list[tuple[str, tuple[int, ...]]]]:
  """Bytes one collective moves: the gathered output of an all-gather, the (unscattered) input of a
  reduce-scatter, the buffer of the others. Compiled HLO prints no operand types: results say it all."""
  parts = _top_level(inst['type'])
  start = inst['op'].endswith('-start')
  if start and kind == 'all-gather':
    parts = parts[len(parts) // 2 :]  # ((inputs), (outputs)) or (input, output)
  elif start and kind in ('reduce-scatter', 'collective-permute'):
    parts = parts[: max(len(parts) // 2, 1)]  # the inputs
  typed = shapes(', '.join(parts))
  moved = nbytes(typed)
  if kind == 'reduce-scatter' and not start:
    moved *= _group_size(inst['line'])  # the result is one device's part of the input
  return moved, typed


def facts(hlo_text: str, top: int = 5) -> dict[str, Any]:
  """The report's program facts: fused attention, conditionals, collectives by kind, largest buffers."""
  program = Program(hlo_text)
  attention = collections.Counter()
  conditionals = 0
  collectives: dict[str, dict[str, Any]] = {}
  buffers = []
  for comp, runs, inst in program.instructions():
    op, line = inst['op'], inst['line']
    if op == 'custom-call':
      target = re.search(r'custom_call_target="([^"]+)"', line)
      if target and '__cudnn$fmha' in target.group(1):
        attention['backward' if 'Backward' in target.group(1) else 'forward'] += 1
    elif op == 'conditional':
      conditionals += 1
    kind = _collective_kind(op)
    if kind:
      moved, typed = _moved_bytes(kind, inst)
      entry = collectives.setdefault(
        kind, {'ops': 0, 'executions_per_step': 0, 'bytes_per_step': 0, 'dtypes': set(), 'largest_bytes': 0, 'largest_shape': ''}
      )
      entry['ops'] += 1
      entry['executions_per_step'] += int(runs)
      entry['bytes_per_step'] += int(moved * runs)
      entry['dtypes'].update(dt for dt, _ in typed)
      if moved > entry['largest_bytes']:
        entry['largest_bytes'] = moved
        entry['largest_shape'] = ', '.join(f'{dt}[{",".join(map(str, dims))}]' for dt, dims in typed)
    if comp not in program.fused and op not in _NOT_BUFFERS and not op.endswith('-done') and kind is None:
      typed = shapes(inst['type'])
      buffers.append(
        {
          'name': inst['name'],
          'op': op,
          'bytes': nbytes(typed),
          'shape': inst['type'] if len(inst['type']) < 160 else inst['type'][:157] + '...',
        }
      )
  for entry in collectives.values():
    entry['dtypes'] = sorted(entry['dtypes'])
  buffers.sort(key=lambda b: -b['bytes'])
  return {
    'fused_attention_calls': {'forward': attention['forward'], 'backward': attention['backward']},
    'conditionals': conditionals,
    'collectives': dict(sorted(collectives.items())),
    'collective_bytes_per_step': sum(c['bytes_per_step'] for c in collectives.values()),
    'largest_buffers': buffers[:top],
  }


def summary_line(f: dict[str, Any]) -> str:
  """One line of the facts for the printed report."""
  att = f['fused_attention_calls']
  parts = [f'fused attention {att["forward"]} fwd / {att["backward"]} bwd', f'conditionals {f["conditionals"]}']
  for kind, c in f['collectives'].items():
    parts.append(f'{kind} {_size(c["bytes_per_step"])}/step ({"/".join(c["dtypes"])}, largest {_size(c["largest_bytes"])})')
  if not f['collectives']:
    parts.append('no collectives')
  return ', '.join(parts)


def _size(x: float) -> str:
  for unit, scale in (('GiB', 2**30), ('MiB', 2**20), ('KiB', 2**10)):
    if x >= scale:
      return f'{x / scale:.1f} {unit}'
  return f'{int(x)} B'
