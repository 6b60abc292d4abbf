"""Checking and repairing images when shards are built: what cannot be trained on is skipped
with a reason, what can be fixed (CMYK, grey, 16-bit, palette, alpha, non-JPEG) is converted."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is corrupt, not a grey half-image

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold
JPEG_QUALITY = 95


class SkipRecord(Exception):
  """A record that cannot be used; `reason` is the counter it is added to."""

  def __init__(self, reason: str, detail: str = ''):
    super().__init__(f'{reason}: {detail}' if detail else reason)
    self.reason = reason


def _encode_jpeg(img: Image.Image) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format='JPEG', quality=JPEG_QUALITY)
  return buf.getvalue()


def _to_rgb(img: Image.Image) -> tuple[Image.Image, str | None]:
  """RGB version of any mode, and the repair reason ('converted_cmyk', ...) or None if already RGB."""
  mode = img.mode
  if mode == 'RGB':
    return img, None
  if mode in ('I;16', 'I;16B', 'I;16L', 'I'):
    arr = np.asarray(img, dtype=np.float64)
    hi = arr.max() if arr.size else 1.0
    scale = 65535.0 if hi > 255 else 255.0
    arr8 = np.clip(arr / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(arr8, 'L').convert('RGB'), 'converted_16bit'
  if mode == 'P':
    has_alpha = 'transparency' in img.info
    img = img.convert('RGBA' if has_alpha else 'RGB')
    if not has_alpha:
      return img, 'converted_palette'
    mode = 'RGBA'
    reason = 'converted_palette'
  else:
    reason = {
      'CMYK': 'converted_cmyk',
      'L': 'converted_grayscale',
      '1': 'converted_grayscale',
      'RGBA': 'converted_alpha',
      'LA': 'converted_alpha',
    }.get(mode, f'converted_{mode.lower()}')
  if mode in ('RGBA', 'LA', 'PA'):
    # Transparent pixels become white, as a browser shows them, not the black of a bare convert().
    rgba = img.convert('RGBA')
    background = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert('RGB'), reason
  return img.convert('RGB'), reason


def prepare_image(data: bytes, *, max_side: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[bytes, str | None]:
  """Validated JPEG bytes for a record, and the repair applied (None when kept as given).

  Raises SkipRecord('empty_image' | 'corrupt_image' | 'decompression_bomb').
  """
  if not data:
    raise SkipRecord('empty_image')
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)
      img = Image.open(io.BytesIO(data))
      width, height = img.size
      if width * height > max_pixels:
        raise SkipRecord('decompression_bomb', f'{width}x{height}')
      img.load()  # full decode: catches truncated and corrupt data
  except SkipRecord:
    raise
  except Image.DecompressionBombError as e:
    raise SkipRecord('decompression_bomb', str(e)) from e
  except Exception as e:  # Pillow raises many types for bad data (OSError, SyntaxError, ValueError...)
    raise SkipRecord('corrupt_image', f'{type(e).__name__}: {e}') from e
  if width == 0 or height == 0:
    raise SkipRecord('corrupt_image', 'zero-sized image')
  fmt = img.format
  rgb, reason = _to_rgb(img)
  too_big = max_side and max(width, height) > max_side
  if too_big:
    scale = max_side / max(width, height)
    rgb = rgb.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BICUBIC)
    reason = reason or 'resized'
  if fmt == 'JPEG' and reason is None:
    return data, None
  return _encode_jpeg(rgb), reason or f'reencoded_{(fmt or "unknown").lower()}'


def prepare_caption(raw: bytes | str | None) -> str:
  """A usable caption, or SkipRecord('missing_caption' | 'caption_not_text' | 'caption_not_utf8' | 'empty_caption')."""
  if raw is None:
    raise SkipRecord('missing_caption')
  if not isinstance(raw, (str, bytes)):  # a number, list or object in a JSON caption field
    raise SkipRecord('caption_not_text', type(raw).__name__)
  if isinstance(raw, bytes):
    try:
      raw = raw.decode('utf-8')
    except UnicodeDecodeError as e:
      raise SkipRecord('caption_not_utf8', str(e)) from e
  text = raw.strip()
  if not text:
    raise SkipRecord('empty_caption')
  return text
