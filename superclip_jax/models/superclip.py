"""SuperCLIP: the two towers, the token classifier and the contrastive temperature."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from superclip_jax import tree_names
from superclip_jax.models import layers, presets, variants
from superclip_jax.models.text import TextTower
from superclip_jax.models.vit import ImageTower

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything that fixes the parameter shapes and the forward pass (saved with exports)."""

  variant: str = 'superclip'
  image: presets.TowerSize = presets.IMAGE_TOWERS['B/16']
  text: presets.TowerSize | None = presets.TEXT_TOWERS['B']
  embed_dim: int = 512
  image_size: int = 224
  vocab_size: int = 49408
  context_length: int = 77
  eot_id: int = 49407
  quick_gelu: bool = False
  compute_dtype: str = 'float32'
  remat: str = 'none'
  attention: str = 'auto'  # layers.attention_implementation: 'auto' | 'xla' | 'cudnn'
  scan_layers: bool = True
  contrastive: str = 'softmax'
  logit_scale_init: float = 2.6592600878
  sigmoid_scale_init: float = 2.302585093
  sigmoid_bias_init: float = -10.0

  # The variant's parts (models/variants.py), asked by name rather than by comparing variant strings.
  @property
  def has_text_tower(self) -> bool:
    return variants.has_text_tower(self.variant)

  @property
  def has_token_head(self) -> bool:
    return variants.has_token_head(self.variant)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> 'ModelConfig':
    """Resolve the trainer config's model section (presets plus overrides)."""
    m = config.model
    image = presets.image_tower_size(m.image, m.image_width, m.image_depth, m.image_heads, m.patch_size)
    text = None
    if variants.has_text_tower(m.variant):
      text = presets.text_tower_size(m.text, m.text_width, m.text_depth, m.text_heads)
    return cls(
      variant=m.variant,
      image=image,
      text=text,
      embed_dim=m.embed_dim,
      image_size=m.image_size,
      vocab_size=m.vocab_size,
      context_length=m.context_length,
      eot_id=config.tokenizer.eot_id,
      quick_gelu=m.quick_gelu,
      compute_dtype=m.compute_dtype,
      remat=m.remat,
      attention=m.attention,
      scan_layers=m.scan_layers,
      contrastive=config.loss.contrastive if variants.has_text_tower(m.variant) else 'none',
      logit_scale_init=config.loss.logit_scale_init,
      sigmoid_scale_init=config.loss.sigmoid_scale_init,
      sigmoid_bias_init=config.loss.sigmoid_bias_init,
    )

  def for_inference(self) -> 'ModelConfig':
    """The same model without the token classifier (used in training only); SuperClass keeps it."""
    # Attention back to 'auto': a model trained with cuDNN attention on GPUs evaluates anywhere.
    cfg = dataclasses.replace(self, attention='auto')
    return dataclasses.replace(cfg, variant='clip') if cfg.has_text_tower and cfg.has_token_head else cfg

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> 'ModelConfig':
    d = {k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}}
    d['image'] = presets.TowerSize(**d['image'])
    d['text'] = presets.TowerSize(**d['text']) if d.get('text') else None
    return cls(**d)


class TokenClassifier(nnx.Module):
  """LayerNorm -> Dense(width -> vocab, bias) on the mean of all patch tokens (CLS excluded)."""

  def __init__(self, width: int, vocab_size: int, compute_dtype, *, rngs: nnx.Rngs):
    self.norm = layers.LayerNorm(width)
    # docs/method.md: weight N(0, width^-0.5), bias 0 (std width^-0.5, i.e. variance 1/width).
    # Own logical axes, so the mesh rules can split the head apart from the towers (config.mesh.rules).
    self.head = layers.Dense((width,), (vocab_size,), ('classifier_embed',), ('vocab',), width**-0.5, rngs=rngs)
    self.compute_dtype = compute_dtype

  def pool(self, tokens: jax.Array) -> jax.Array:
    """Mean over every patch token after ln_post; token 0 (CLS) is left out."""
    return tokens[:, 1:].astype(jnp.float32).mean(axis=1)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    """Image tower tokens (B, 1 + P, width) -> float32 logits over the vocabulary (B, V)."""
    h = self.norm(self.pool(tokens)).astype(self.compute_dtype)
    # bf16 operands, f32 accumulation and output: 768-term sums are not rounded to bf16.
    logits = jnp.matmul(h, self.head.kernel[...].astype(self.compute_dtype), preferred_element_type=jnp.float32)
    return logits + self.head.bias[...]


class SuperCLIP(nnx.Module):
  """CLIP plus the token classifier; `variant` drops the head ('clip') or the text tower ('superclass')."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dt = _DTYPES[cfg.compute_dtype]
    common = dict(
      quick_gelu=cfg.quick_gelu, compute_dtype=dt, remat=cfg.remat, scan=cfg.scan_layers, rngs=rngs, attention=cfg.attention
    )
    self.image_tower = ImageTower(cfg.image, cfg.image_size, cfg.embed_dim if cfg.has_text_tower else 0, **common)
    # A missing part is None (a static attribute); present parts are assigned once.
    self.text_tower = (
      TextTower(cfg.text, cfg.vocab_size, cfg.context_length, cfg.embed_dim, cfg.eot_id, **common) if cfg.has_text_tower else None
    )
    self.token_classifier = TokenClassifier(cfg.image.width, cfg.vocab_size, dt, rngs=rngs) if cfg.has_token_head else None
    scale_init = {'softmax': cfg.logit_scale_init, 'sigmoid': cfg.sigmoid_scale_init}.get(cfg.contrastive)
    self.logit_scale = layers.constant_param(scale_init, (), ()) if scale_init is not None else None
    self.logit_bias = layers.constant_param(cfg.sigmoid_bias_init, (), ()) if cfg.contrastive == 'sigmoid' else None

  def encode_image(self, images: jax.Array) -> jax.Array:
    """Images (uint8 pixels or normalised floats) -> L2-normalised float32 embeddings."""
    return _l2_normalize(self.image_tower.embed(self.image_tower.tokens(images)))

  def encode_text(self, ids: jax.Array) -> jax.Array:
    """Token ids -> L2-normalised float32 embeddings."""
    return _l2_normalize(self.text_tower(ids))

  def __call__(self, images: jax.Array, text: jax.Array | None = None) -> dict[str, jax.Array]:
    """Training forward: normalised embeddings, token-classifier logits, temperature."""
    tokens = self.image_tower.tokens(images)
    out = {}
    if self.text_tower is not None:
      out['image_embedding'] = _l2_normalize(self.image_tower.embed(tokens))
      out['text_embedding'] = self.encode_text(text)
    if self.token_classifier is not None:
      out['token_logits'] = self.token_classifier(tokens)
    if self.logit_scale is not None:
      out['logit_scale'] = self.logit_scale[...]
    if self.logit_bias is not None:
      out['logit_bias'] = self.logit_bias[...]
    return out


def _l2_normalize(x: jax.Array) -> jax.Array:
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


class ModelDef:
  """A model's structure without its values: rebuilds the module from a pure params dict.

  The train state holds parameters as a plain nested dict of arrays (what optax,
  Orbax and weight converters want); `bind` turns it back into a callable NNX module
  inside jit, where it costs nothing at run time.
  """

  def __init__(self, cfg: ModelConfig, seed: int = 0):
    self.cfg = cfg
    abstract = nnx.eval_shape(lambda: SuperCLIP(cfg, rngs=nnx.Rngs(seed)))
    self.graphdef, self.abstract_state = nnx.split(abstract)
    self.seed = seed

  def init(self) -> dict:
    """Freshly initialised parameters as a pure dict (call under jit for sharded creation)."""
    _, state = nnx.split(SuperCLIP(self.cfg, rngs=nnx.Rngs(self.seed)))
    return nnx.to_pure_dict(state)

  def bind(self, params: dict) -> SuperCLIP:
    """The module with these parameter values."""
    state = jax.tree.map(lambda x: x, self.abstract_state)  # fresh Variables, shared structure
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(self.graphdef, state)

  def logical_axes(self) -> dict:
    """Pure dict of each parameter's logical axis names (a tuple per leaf)."""
    leaves = jax.tree_util.tree_leaves_with_path(self.abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    flat = {}
    for path, var in leaves:
      axes = var.get_metadata().get('axes')
      if axes is None:
        raise ValueError(f'parameter {jax.tree_util.keystr(path)} has no logical axes')
      flat[tuple(tree_names.key(k) for k in path)] = tuple(axes)
    return tree_names.nest(flat, sep=None)

  def shapes(self) -> dict:
    """Pure dict of ShapeDtypeStructs."""
    return nnx.to_pure_dict(self.abstract_state)


def count_params(params: dict) -> int:
  """Total number of parameters."""
  return sum(int(x.size) for x in jax.tree.leaves(params))
