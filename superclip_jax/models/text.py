"""The text tower: OpenAI CLIP's causal transformer, pooled at the end-of-text token."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from superclip_jax.models import layers
from superclip_jax.models.presets import TowerSize


class TextTower(nnx.Module):
  """Token + position embeddings, causal blocks, ln_final, EOT hidden state times text_projection."""

  def __init__(
    self,
    size: TowerSize,
    vocab_size: int,
    context_length: int,
    embed_dim: int,
    eot_id: int,
    *,
    quick_gelu: bool,
    compute_dtype,
    remat: str,
    scan: bool,
    rngs: nnx.Rngs,
    attention: str = 'auto',
  ):
    w = size.width
    self.eot_id = eot_id
    self.context_length = context_length
    self.compute_dtype = compute_dtype
    # Rows are looked up by gather after an all-gather of the table (layers.replicate), so
    # sharding its vocab axis would buy nothing: 'vocab_lookup' has no mesh rule.
    self.token_embedding = layers.normal_param(rngs, (vocab_size, w), 0.02, ('vocab_lookup', 'embed'))
    self.positional_embedding = layers.normal_param(rngs, (context_length, w), 0.01, (None, 'embed'))
    self.transformer = layers.Transformer(
      w,
      size.depth,
      size.heads,
      size.mlp_ratio,
      causal=True,
      quick_gelu=quick_gelu,
      compute_dtype=compute_dtype,
      remat=remat,
      scan=scan,
      rngs=rngs,
      attention=attention,
    )
    self.ln_final = layers.LayerNorm(w)
    self.text_projection = layers.normal_param(rngs, (w, embed_dim), w**-0.5, ('embed', None))

  def __call__(self, ids: jax.Array) -> jax.Array:
    """Token ids (B, T <= context) -> unnormalised text embedding (B, embed_dim)."""
    t = ids.shape[1]
    if t > self.context_length:
      raise ValueError(f'text of length {t} exceeds the context length {self.context_length}')
    # Cast before the gather: the table moves (and its gradient returns) in the compute dtype.
    x = jnp.take(layers.replicate(self.token_embedding[...].astype(self.compute_dtype)), ids, axis=0)
    x = x + self.positional_embedding[:t].astype(self.compute_dtype)
    x = self.transformer(layers.constrain_batch(x))
    x = self.ln_final(x)
    # The first EOT; for CLIP's BPE this is argmax(ids), EOT being the largest id.
    eot_pos = jnp.argmax(ids == self.eot_id, axis=-1)
    pooled = jnp.take_along_axis(x, eot_pos[:, None, None], axis=1)[:, 0]
    return pooled @ self.text_projection[...].astype(pooled.dtype)
