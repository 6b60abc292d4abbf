"""superclip_jax: SuperCLIP (CLIP + token classification) training in JAX/Flax."""

__version__ = '0.1.0'


def load(directory: str):
  """Load an exported model (python -m superclip_jax.export): encode_image, encode_text, tokenizer."""
  from superclip_jax import export  # imported on use: `import superclip_jax` stays light
  return export.load(directory)
