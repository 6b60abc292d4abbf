"""superclip_jax: SuperCLIP (CLIP + token classification) training in JAX/Flax."""

__version__ = '0.1.0'
