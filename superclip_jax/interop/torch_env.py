"""Making PyPI's torchvision importable beside the CPU torch wheel (tests and benchmarks only).

PyPI's Linux torchvision wheels are CUDA builds whose C++ ops (_C.so) need torch's CUDA
libraries, absent from the CPU torch wheel: the library load fails quietly, then two
unguarded fake-kernel registrations (torchvision::nms, torchvision::qnms) raise. Declaring
those two operator schemas first lets the pure-Python torchvision (transforms, used by
open_clip and by transformers' CLIP imports) import; no torchvision C++ op is ever run.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

_KEEP: list = []  # the torch Library must outlive the import


def declare_torchvision_ops() -> None:
  """Before importing torchvision (directly or through open_clip / transformers)."""
  import torch
  spec = importlib.util.find_spec('torchvision')
  if spec is None or 'torchvision' in sys.modules:
    return
  libs = glob.glob(os.path.join(os.path.dirname(spec.origin), '_C*.so'))
  try:
    if libs:
      torch.ops.load_library(libs[0])
  except OSError:
    lib = torch.library.Library('torchvision', 'DEF')
    lib.define('nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
    lib.define('qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor')
    _KEEP.append(lib)
