"""The image tower: a ViT laid out as OpenAI CLIP's `VisualTransformer`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from superclip_jax.models import layers
from superclip_jax.models.presets import TowerSize

# OpenAI CLIP's normalisation constants (docs/method.md).
# OpenAI CLIP's image normalisation, as published (exports write these numbers); arrays for the model.
CLIP_MEAN_RGB = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD_RGB = (0.26862954, 0.26130258, 0.27577711)
CLIP_MEAN = np.array(CLIP_MEAN_RGB, np.float32)
CLIP_STD = np.array(CLIP_STD_RGB, np.float32)


def normalize_images(images: jax.Array) -> jax.Array:
  """uint8 (B, H, W, 3) pixels -> CLIP-normalised float32; float input is taken as already normalised.

  The host hands the device uint8 (a quarter of the transfer, no float work on the host)
  and normalisation runs fused inside the jitted step.
  """
  if jnp.issubdtype(images.dtype, jnp.integer):
    return (images.astype(jnp.float32) / 255.0 - CLIP_MEAN) / CLIP_STD
  return images.astype(jnp.float32)


class ImageTower(nnx.Module):
  """Patch embedding (conv without bias), CLS, position embeddings, ln_pre, blocks, ln_post, proj."""

  def __init__(
    self,
    size: TowerSize,
    image_size: int,
    embed_dim: int,
    *,
    quick_gelu: bool,
    compute_dtype,
    remat: str,
    scan: bool,
    rngs: nnx.Rngs,
    attention: str = 'auto',
  ):
    p, w = size.patch_size, size.width
    if image_size % p:
      raise ValueError(f'image_size {image_size} is not divisible by patch size {p}')
    self.patch_size = p
    self.grid = image_size // p
    self.width = w
    self.compute_dtype = compute_dtype
    scale = w**-0.5
    # Conv weight as (p, p, 3, width): the conv over non-overlapping patches is one matmul.
    self.conv1 = layers.normal_param(rngs, (p, p, 3, w), (3 * p * p) ** -0.5, (None, None, None, 'embed'))
    self.class_embedding = layers.normal_param(rngs, (w,), scale, ('embed',))
    self.positional_embedding = layers.normal_param(rngs, (self.grid**2 + 1, w), scale, (None, 'embed'))
    self.ln_pre = layers.LayerNorm(w)
    self.transformer = layers.Transformer(
      w,
      size.depth,
      size.heads,
      size.mlp_ratio,
      causal=False,
      quick_gelu=quick_gelu,
      compute_dtype=compute_dtype,
      remat=remat,
      scan=scan,
      rngs=rngs,
      attention=attention,
    )
    self.ln_post = layers.LayerNorm(w)
    # SuperClass (no text tower) has no contrastive embedding, so no projection to train.
    self.proj = layers.normal_param(rngs, (w, embed_dim), scale, ('embed', None)) if embed_dim else None

  def tokens(self, images: jax.Array) -> jax.Array:
    """Images -> all tokens after ln_post, (B, 1 + patches, width); token 0 is CLS."""
    x = normalize_images(images)
    b, h, w_, c = x.shape
    p, g = self.patch_size, self.grid
    if h != g * p or w_ != g * p:
      raise ValueError(f'image tower built for {g * p}px images, got {h}x{w_}')
    x = x.reshape(b, g, p, g, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, p * p * c)
    kernel = self.conv1[...].reshape(p * p * c, self.width)
    x = x.astype(self.compute_dtype) @ kernel.astype(self.compute_dtype)
    cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (b, 1, self.width))
    x = jnp.concatenate([cls, x], axis=1) + self.positional_embedding[...].astype(x.dtype)
    x = layers.constrain_batch(self.ln_pre(x))
    x = self.transformer(x)
    return self.ln_post(x)

  def embed(self, tokens: jax.Array) -> jax.Array:
    """The contrastive embedding (unnormalised): CLS token times the projection."""
    if self.proj is None:
      return tokens[:, 0]  # SuperClass: the pooled feature itself
    return tokens[:, 0] @ self.proj[...].astype(tokens.dtype)
