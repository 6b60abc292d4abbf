"""Image decoding and the CLIP train / eval crops, in uint8 on the host.

Decoding uses simplejpeg (libjpeg-turbo; faster than PIL: docs/performance.md) with
DCT-domain downscaling when the source is much larger than needed. Training crops are
resized with OpenCV's bicubic (fast); the evaluation centre crop uses PIL's antialiased
bicubic, as OpenAI / OpenCLIP preprocess. Normalisation happens on the device, inside the jitted step.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import simplejpeg

cv2.setNumThreads(1)  # parallelism comes from Grain workers; nested OpenCV threads only contend


class DecodeError(Exception):
  """Image bytes that cannot be decoded."""


def decode_jpeg(data: bytes, min_side: int = 0) -> np.ndarray:
  """JPEG bytes -> uint8 RGB (H, W, 3), decoded at the smallest DCT scale keeping both sides >= min_side."""
  try:
    if min_side:
      h, w, _, _ = simplejpeg.decode_jpeg_header(data)
      short = min(h, w)
      scale = min_side / short if short else 1.0
      # The smallest side must stay >= min_side; scale the other bound to keep the aspect.
      return simplejpeg.decode_jpeg(data, colorspace='RGB', min_height=math.ceil(h * scale), min_width=math.ceil(w * scale))
    return simplejpeg.decode_jpeg(data, colorspace='RGB')
  except (ValueError, RuntimeError, TypeError) as e:
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if arr is None:
      raise DecodeError(f'{type(e).__name__}: {e}') from e
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def random_crop_box(
  height: int, width: int, rng: np.random.Generator, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
  """torchvision's RandomResizedCrop box (10 tries, then a centre crop): (top, left, h, w)."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(
  image: np.ndarray, size: int, rng: np.random.Generator, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3)
) -> np.ndarray:
  """torchvision's RandomResizedCrop (random_crop_box), bicubic resize to size x size."""
  top, left, h, w = random_crop_box(*image.shape[:2], rng, scale, ratio)
  crop = image[top : top + h, left : left + w]
  return cv2.resize(crop, (size, size), interpolation=cv2.INTER_CUBIC)


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """Evaluation: shorter side to `size` with PIL bicubic (antialiased), then the central size x size crop.

  This is torchvision's Resize(size) + CenterCrop(size) on a PIL image, i.e. OpenAI's and
  OpenCLIP's eval transform, pixel for pixel: the long side is truncated as torchvision
  does and the crop offset rounded as its CenterCrop does. PIL widens its bicubic kernel
  when shrinking (antialiasing); OpenCV's INTER_CUBIC does not, which shifts embeddings
  of downscaled photos. The training crop (random_resized_crop) stays on OpenCV for speed:
  its scale is random anyway and it only ever sees this project's own training.
  """
  from PIL import Image

  height, width = image.shape[:2]
  if width <= height:
    w, h = size, int(size * height / width)
  else:
    w, h = int(size * width / height), size
  resized = image
  if (h, w) != (height, width):
    resized = np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC))
  top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
  return np.ascontiguousarray(resized[top : top + size, left : left + size])


def clip_preprocess(images, size: int, mean, std) -> np.ndarray:
  """PIL images or uint8 (H, W, 3) arrays, one or a list -> (N, size, size, 3) float32 normalised.

  CLIP's evaluation transform: shorter side to size (PIL bicubic), centre crop, (x / 255 - mean) / std.
  """
  from PIL import Image

  if isinstance(images, Image.Image) or (isinstance(images, np.ndarray) and images.ndim == 3):
    images = [images]
  crops = [
    resize_center_crop(np.asarray(im.convert('RGB')) if isinstance(im, Image.Image) else np.asarray(im), size) for im in images
  ]
  x = np.stack(crops).astype(np.float32) / 255.0
  return ((x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)
