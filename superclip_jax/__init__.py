"""superclip_jax: SuperCLIP (CLIP + token classification) training in JAX/Flax."""

from importlib import metadata as _metadata

try:
  __version__ = _metadata.version('superclip_jax')  # pyproject.toml's, the one place it is written
except _metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
  __version__ = '0+unknown'


def load(directory: str):
  """Load an exported model (python -m superclip_jax.export): encode_image, encode_text, tokenizer."""
  from superclip_jax import export  # imported on use: `import superclip_jax` stays light

  return export.load(directory)
