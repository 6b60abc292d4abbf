"""The package's import graph has no circles, lazy imports included, and every module imports on its own."""

import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'superclip_jax')
# Entry points that define absl flags at import: one process each (a flag is defined once per process).
FLAG_MODULES = ('superclip_jax.main', 'superclip_jax.evaluate', 'superclip_jax.bench_step')


def _modules() -> dict[str, str]:
  out = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
        out[module[: -len('.__init__')] if module.endswith('.__init__') else module] = path
  return out


def import_graph() -> dict[str, set[str]]:
  """{module: the package modules it imports anywhere in its source (module level or inside functions)}."""
  modules = _modules()
  graph = {m: set() for m in modules}
  for module, path in modules.items():
    for node in ast.walk(ast.parse(open(path).read())):
      names = []
      if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        names = [f'{node.module}.{a.name}' for a in node.names] + [node.module]
      elif isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      for name in names:
        if name in modules and name != module:
          graph[module].add(name)
          break  # `from pkg import mod` names mod, not pkg
  return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan)."""
  index, low, on_stack, stack, found = {}, {}, set(), [], []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def test_the_circle_finder_finds_a_circle():
  assert circles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]


def test_no_import_circles():
  assert circles(import_graph()) == []


def test_every_module_imports():
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  rest = sorted(m for m in _modules() if m not in FLAG_MODULES)
  for group in [rest, *[[m] for m in FLAG_MODULES]]:
    code = 'import importlib\nfor m in %r:\n  importlib.import_module(m)\n' % (group,)
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


# Lower layers never import upper ones: data and models know nothing of evaluation, training or commands,
# and the config schema nothing of the evaluators that read it.
UPPER = (
  'superclip_jax.evals',
  'superclip_jax.train',
  'superclip_jax.run_setup',
  'superclip_jax.cli',
  'superclip_jax.main',
  'superclip_jax.evaluate',
  'superclip_jax.bench_step',
  'superclip_jax.dry_run',
)
LOWER = (
  'superclip_jax.data',
  'superclip_jax.models',
  'superclip_jax.config_defaults',
  'superclip_jax.errors',
  'superclip_jax.losses',
)


def test_no_upward_arrows():
  upward = sorted((m, t) for m, targets in import_graph().items() if m.startswith(LOWER) for t in targets if t.startswith(UPPER))
  assert upward == []
