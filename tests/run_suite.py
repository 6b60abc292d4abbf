"""The suite as `make test` runs it: each test file in its own pytest process, N files at a time.

  python tests/run_suite.py [--jobs N] [FILE ...]

Why a process per file: tests leave threads behind (Grain workers, Beam pools, Orbax's async
savers, HTTP servers), and in one long process XLA's in-process CPU collectives on 8 fake
devices were seen to deadlock or abort in a later file. Why N at a time: much of a test's
time is single-threaded (XLA compiles, process start-up, subprocess waits), so two files
at once on 2 cores take about two thirds of the time of one after another. The longest
files start first (tests/file_seconds.json, rewritten after each full run), so the last
lane does not finish alone. Each file's output is printed whole when it ends; the closing
line counts the files and the tests.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import glob
import json
import os
import re
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TIMES = os.path.join(HERE, 'file_seconds.json')
_COUNTS = re.compile(r'(\d+) (passed|failed|skipped|error|errors|xfailed|xpassed)\b')


def _known_seconds() -> dict[str, float]:
  try:
    with open(TIMES) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def _run(path: str, python: str) -> tuple[str, int, float, str]:
  start = time.perf_counter()
  proc = subprocess.run(
    [python, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-rs', path],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  return path, proc.returncode, time.perf_counter() - start, proc.stdout


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--jobs', type=int, default=int(os.environ.get('TEST_JOBS', '2')))
  parser.add_argument('files', nargs='*')
  args = parser.parse_args(argv)
  files = [os.path.relpath(f, ROOT) for f in (args.files or sorted(glob.glob(os.path.join(HERE, 'test_*.py'))))]
  known = _known_seconds()
  files.sort(key=lambda f: -known.get(f, 60.0))  # longest first; an unknown file counts as a minute
  lock = threading.Lock()
  failed, seconds, totals = [], {}, {}
  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(max(args.jobs, 1)) as pool:
    for path, rc, took, out in pool.map(lambda f: _run(f, sys.executable), files):
      with lock:
        print(f'== {path} ({took:.0f} s, exit {rc})\n{out.rstrip()}', flush=True)
      seconds[path] = round(took, 1)
      last = out.strip().splitlines()[-1] if out.strip() else ''
      counts = {}
      for n, word in _COUNTS.findall(last):
        word = 'error' if word == 'errors' else word
        counts[word] = counts.get(word, 0) + int(n)
      if rc != 0:  # any failure, a crash (no summary line) and a file that ran no test (exit 5) alike
        failed.append(path)
        if not counts.get('failed') and not counts.get('error'):
          counts['failed'] = 1
      for word, n in counts.items():
        totals[word] = totals.get(word, 0) + n
  if not args.files:
    with open(TIMES, 'w') as f:
      json.dump(dict(sorted(seconds.items())), f, indent=1)
      f.write('\n')
  wall = time.perf_counter() - start
  print(
    f'run_suite: {len(files)} files in {wall / 60:.1f} min, {args.jobs} at a time'
    + (f'; FAILED: {" ".join(failed)}' if failed else ''),
    flush=True,
  )
  # The closing line CI reads: tests passed and failed (errors count as failed), over every file.
  print(
    f'{totals.get("passed", 0)} passed, {totals.get("failed", 0) + totals.get("error", 0)} failed, '
    f'{totals.get("skipped", 0)} skipped',
    flush=True,
  )
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
