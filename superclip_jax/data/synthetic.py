"""Synthetic image-text pairs whose captions are determined by the image content.

Each image shows one coloured shape in one quadrant on a noisy grey background; its
caption names the colour, the shape and the quadrant through one of several templates.
A model that learns lowers both losses; one that does not, cannot. Filler words ("a",
"photo", "of") occur in most captions, so online IDF visibly down-weights them.

Every sample is a pure function of (seed, global sample index): the batch of a given
step is the same whatever the number of processes or restarts, and each process builds
only its own slice.
"""

from __future__ import annotations

import numpy as np

COLORS = {
  'red': (220, 30, 30),
  'green': (30, 200, 40),
  'blue': (30, 60, 230),
  'yellow': (230, 220, 30),
  'cyan': (30, 210, 220),
  'magenta': (210, 40, 210),
  'white': (250, 250, 250),
  'black': (5, 5, 5),
}
SHAPES = ('square', 'ring', 'cross', 'bar')
QUADRANTS = (('top', 'left'), ('top', 'right'), ('bottom', 'left'), ('bottom', 'right'))
TEMPLATES = (
  'a photo of a {color} {shape} in the {row} {col}',
  '{color} {shape} , {row} {col}',
  'there is a {shape} that is {color} at the {row} {col}',
  'the {row} {col} has a {color} {shape}',
)
WORDS = tuple(
  dict.fromkeys(
    ' '.join(TEMPLATES).replace('{color}', '').replace('{shape}', '').replace('{row}', '').replace('{col}', '').split()
    + list(COLORS)
    + list(SHAPES)
    + ['top', 'bottom', 'left', 'right']
  )
)
NUM_CLASSES = len(COLORS) * len(SHAPES) * len(QUADRANTS)


def word_id(word: str) -> int:
  """Token id of a synthetic word: 1 + its index (0 stays the pad id)."""
  return 1 + WORDS.index(word)


def class_attributes(label: int) -> tuple[str, str, tuple[str, str]]:
  """(colour, shape, (row, col)) of a class index."""
  color, rest = divmod(label, len(SHAPES) * len(QUADRANTS))
  shape, quadrant = divmod(rest, len(QUADRANTS))
  return list(COLORS)[color], SHAPES[shape], QUADRANTS[quadrant]


def caption(label: int, template: int) -> str:
  color, shape, (row, col) = class_attributes(label)
  return TEMPLATES[template].format(color=color, shape=shape, row=row, col=col)


def _draw(image: np.ndarray, shape: str, quadrant: int, rgb, rng: np.random.Generator) -> None:
  size = image.shape[0]
  half = size // 2
  y0 = (quadrant // 2) * half
  x0 = (quadrant % 2) * half
  side = max(2, int(half * rng.uniform(0.55, 0.8)))
  oy = y0 + rng.integers(0, half - side + 1)
  ox = x0 + rng.integers(0, half - side + 1)
  t = max(1, side // 4)
  mask = np.zeros((side, side), bool)
  if shape == 'square':
    mask[:] = True
  elif shape == 'ring':
    mask[:] = True
    mask[t:-t, t:-t] = False
  elif shape == 'cross':
    c = side // 2
    mask[:, c - t // 2 - 1 : c + t // 2 + 1] = True
    mask[c - t // 2 - 1 : c + t // 2 + 1, :] = True
  else:  # bar
    c = side // 2
    mask[c - t : c + t, :] = True
  region = image[oy : oy + side, ox : ox + side]
  region[mask] = rgb


class SyntheticImageText:
  """Deterministic synthetic (image, caption tokens) batches; see the module docstring."""

  def __init__(
    self, *, image_size: int, vocab_size: int, context_length: int, sot_id: int, eot_id: int, pad_id: int, seed: int = 0
  ):
    if len(WORDS) + 1 >= vocab_size or sot_id <= len(WORDS) or eot_id <= len(WORDS):
      raise ValueError(
        f'synthetic captions need ids 1..{len(WORDS)} free and SOT/EOT above them '
        f'(vocab_size={vocab_size}, sot_id={sot_id}, eot_id={eot_id})'
      )
    if pad_id != 0:
      raise ValueError('synthetic captions pad with id 0')
    self.image_size = image_size
    self.context_length = context_length
    self.sot_id, self.eot_id, self.pad_id = sot_id, eot_id, pad_id
    self.seed = seed

  def tokenize(self, text: str) -> np.ndarray:
    """SOT + word ids + EOT, padded with 0 to the context length."""
    ids = [self.sot_id] + [word_id(w) for w in text.split()][: self.context_length - 2] + [self.eot_id]
    out = np.full((self.context_length,), self.pad_id, np.int32)
    out[: len(ids)] = ids
    return out

  def sample(self, index: int) -> dict[str, np.ndarray]:
    """The sample with this global index."""
    rng = np.random.default_rng([self.seed, index])
    label = int(rng.integers(NUM_CLASSES))
    color, shape, _ = class_attributes(label)
    s = self.image_size
    base = rng.integers(90, 166)
    image = np.clip(base + rng.normal(0, 12, (s, s, 3)), 0, 255).astype(np.uint8)
    _draw(image, shape, label % len(QUADRANTS), COLORS[color], rng)
    text = caption(label, int(rng.integers(len(TEMPLATES))))
    return {'images': image, 'text': self.tokenize(text), 'label': np.int32(label)}

  def batch(self, step: int, global_batch_size: int, rows=None) -> dict[str, np.ndarray]:
    """Rows [start, stop) (default: all) of the global batch of `step`, concatenated in order."""
    rows = rows if rows is not None else [(0, global_batch_size)]
    samples = [self.sample(step * global_batch_size + r) for start, stop in rows for r in range(start, stop)]
    return {k: np.stack([s[k] for s in samples]) for k in samples[0]}


class SyntheticBatches:
  """An iterator of this process's rows of each synthetic global batch; its state is the step."""

  def __init__(self, source: SyntheticImageText, global_batch_size: int, rows=None, start_step: int = 0):
    self.source = source
    self.global_batch_size = global_batch_size
    self.rows = rows
    self.step = start_step

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = self.source.batch(self.step, self.global_batch_size, self.rows)
    self.step += 1
    return batch

  def get_state(self) -> dict[str, int]:
    return {'step': self.step}

  def set_state(self, state) -> None:
    self.step = int(state['step'])

  def close(self) -> None:
    pass
