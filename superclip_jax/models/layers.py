"""Parameter-holding building blocks shared by both towers.

Every parameter carries logical axis names (`axes` metadata) that `sharding.py` maps
onto the mesh. Transformer blocks keep their parameters stacked along a leading
'layers' axis and run under `jax.lax.scan`: compile time stays flat in depth, and each
stacked tensor maps onto one OpenCLIP tensor per block (`transformer.resblocks.N.*`).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from superclip_jax import sharding

LAYERS = 'layers'
LN_EPS = 1e-5  # torch.nn.LayerNorm's default, which the OpenAI/OpenCLIP weights assume


def normal_param(rngs: nnx.Rngs, shape: Sequence[int], std: float, axes: Sequence[str | None]) -> nnx.Param:
  """A float32 N(0, std^2) parameter with logical axis names."""
  value = std * jax.random.normal(rngs.params(), tuple(shape), jnp.float32)
  return nnx.Param(value, axes=tuple(axes))


def constant_param(value: float, shape: Sequence[int], axes: Sequence[str | None]) -> nnx.Param:
  """A float32 parameter filled with `value`, with logical axis names."""
  return nnx.Param(jnp.full(tuple(shape), value, jnp.float32), axes=tuple(axes))


def _stacked(depth: int, shape, axes):
  if depth:
    return (depth, *shape), (LAYERS, *axes)
  return tuple(shape), tuple(axes)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
  """LayerNorm computed in float32 (bf16 statistics drift), returned in x's dtype."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = jnp.square(x32 - mean).mean(-1, keepdims=True)
  y = (x32 - mean) * jax.lax.rsqrt(var + LN_EPS) * scale + bias
  return y.astype(x.dtype)


class LayerNorm(nnx.Module):
  """LayerNorm parameters (optionally stacked over `depth` layers)."""

  def __init__(self, dim: int, depth: int = 0):
    shape, axes = _stacked(depth, (dim,), ('embed',))
    self.scale = constant_param(1.0, shape, axes)
    self.bias = constant_param(0.0, shape, axes)

  def __call__(self, x: jax.Array) -> jax.Array:
    return layer_norm(x, self.scale[...], self.bias[...])


class Dense(nnx.Module):
  """Kernel + bias of a linear map whose kernel may have several in/out dimensions."""

  def __init__(self, in_shape, out_shape, in_axes, out_axes, std: float, *, rngs: nnx.Rngs, depth: int = 0):
    kshape, kaxes = _stacked(depth, (*in_shape, *out_shape), (*in_axes, *out_axes))
    bshape, baxes = _stacked(depth, tuple(out_shape), tuple(out_axes))
    self.kernel = normal_param(rngs, kshape, std, kaxes)
    self.bias = constant_param(0.0, bshape, baxes)

  def __call__(self, x: jax.Array, dtype, *, spec: str | None = None, residual: jax.Array | None = None) -> jax.Array:
    """x times the kernel in `dtype`, then `residual` added, then the bias.

    spec: the product as an einsum (a kernel with several in/out dimensions needs one);
    default x @ kernel. The residual goes in before the bias, not after: the other order
    rounds differently (bf16 most of all), and a block's `x + h @ w + b` is kept exact.
    """
    kernel = self.kernel[...].astype(dtype)
    y = x @ kernel if spec is None else jnp.einsum(spec, x, kernel)
    if residual is not None:
      y = residual + y
    return y + self.bias[...].astype(dtype)


def gelu(x: jax.Array, quick: bool) -> jax.Array:
  """Exact GELU (torch.nn.GELU), or OpenAI's QuickGELU x * sigmoid(1.702 x)."""
  if quick:
    return x * jax.nn.sigmoid(1.702 * x)
  return jax.nn.gelu(x, approximate=False)


def constrain_batch(x: jax.Array) -> jax.Array:
  """Keep activations split by the 'batch' rule while the trainer's rules are in force."""
  return sharding.constrain(x, ('batch',) + (None,) * (x.ndim - 1))


def replicate(x: jax.Array) -> jax.Array:
  """All-gather a sharded parameter before a lookup (no-op without a mesh).

  The SPMD partitioner cannot gather rows of a width-sharded table straight into a
  batch-sharded result and would replicate it in the worst layout; asking for the FSDP
  all-gather first is what a matmul gets anyway.
  """
  if jax.sharding.get_abstract_mesh().empty:
    return x
  return jax.lax.with_sharding_constraint(x, jax.sharding.PartitionSpec())


def attention(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool) -> jax.Array:
  """Softmax attention on head-major (B, H, T, K) queries, keys and values; logits and softmax in float32.

  The CPU's (and TPU's) form: both products are plain matmuls batched over (B, H), with no
  transposes around them. Queries are scaled before the product, as OpenAI CLIP and
  OpenCLIP do, which touches T x K values instead of T x T.
  """
  logits = jnp.einsum('bhqk,bhsk->bhqs', q * q.shape[-1] ** -0.5, k, preferred_element_type=jnp.float32)
  if causal:
    t, s = logits.shape[-2:]
    logits = jnp.where(jnp.tril(jnp.ones((t, s), bool)), logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum('bhqs,bhsk->bhqk', probs, v)


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool, implementation: str) -> jax.Array:
  """Softmax attention on token-major (B, T, H, K) operands through jax.nn.dot_product_attention.

  implementation='cudnn' is cuDNN's fused flash attention on NVIDIA GPUs (bf16/fp16 only);
  'xla' is the same function's reference path, which runs anywhere (the tests compare it
  with `attention`). An odd length (197 patches + CLS, 77 text positions) is padded by one
  position that the length mask hides: jax 0.10's cuDNN training path refuses odd lengths
  ("Unsupported sequence length"). Both implementations take the same padded path.
  """
  t = q.shape[1]
  if t % 2 == 0:
    return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation=implementation)
  q, k, v = (jnp.pad(x, ((0, 0), (0, 1), (0, 0), (0, 0))) for x in (q, k, v))
  lengths = jnp.full((q.shape[0],), t, jnp.int32)
  out = jax.nn.dot_product_attention(
    q, k, v, is_causal=causal, query_seq_lengths=lengths, key_value_seq_lengths=lengths, implementation=implementation
  )
  return out[:, :t]


ATTENTION_IMPLEMENTATIONS = ('auto', 'xla', 'cudnn')


def attention_implementation(requested: str, platform: str, compute_dtype, head_dim: int) -> str:
  """'xla' (the einsum `attention`) or 'cudnn' (fused_attention) for a requested setting on a platform.

  'auto' takes cuDNN's fused kernel on GPUs wherever it accepts the operands (16-bit, head
  dim a multiple of 8 up to 128), and the einsum elsewhere: XLA no longer pattern-matches
  the einsum into the fused kernel, and on CPU the einsum is the fastest form.
  """
  if requested not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f'attention implementation {requested!r}: use one of {ATTENTION_IMPLEMENTATIONS}')
  if requested != 'auto':
    return requested
  fits = jnp.dtype(compute_dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)) and head_dim % 8 == 0 and head_dim <= 128
  return 'cudnn' if platform == 'gpu' and fits else 'xla'


_REMAT_POLICIES = {
  'full': None,  # save nothing but the block input; recompute the block in backward
  'dots': jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
  # Every matmul output kept (attention's too); LayerNorm, GELU, softmax and the residual
  # adds recomputed from them in the backward. Same FLOPs to a rounding error and less
  # to store and reload than 'none': the faster CPU step (docs/performance.md, 2026-11-30).
  'elementwise': jax.checkpoint_policies.dots_saveable,
}
# What remat='auto' means per backend (platform_defaults.py says why).
DEFAULT_REMAT = {'cpu': 'elementwise', 'gpu': 'dots', 'tpu': 'dots'}


def remat_setting(requested: str, platform: str) -> str:
  """A concrete remat setting: `requested`, or the backend's default for 'auto'."""
  return DEFAULT_REMAT.get(platform, 'dots') if requested == 'auto' else requested


class Block(nnx.Module):
  """A pre-LN residual block (attention, then MLP) as in OpenAI CLIP.

  With depth > 0 every parameter has a leading 'layers' axis: `depth` blocks stacked, the
  form a Transformer holds. `__call__` runs one block, so it wants the parameters of one
  layer (Transformer.__call__ hands it each layer's slice in turn).
  """

  def __init__(
    self,
    width: int,
    heads: int,
    hidden: int,
    *,
    depth: int,
    causal: bool,
    quick_gelu: bool,
    compute_dtype,
    attention: str,
    rngs: nnx.Rngs,
  ):
    if width % heads:
      raise ValueError(f'width {width} is not divisible by heads {heads}')
    head_dim = width // heads
    # OpenAI CLIP's initialisation (also OpenCLIP's text tower); proj_std scales with the stack's depth.
    attn_std = width**-0.5
    proj_std = width**-0.5 * (2 * max(depth, 1)) ** -0.5
    fc_std = (2 * width) ** -0.5
    self.ln_1 = LayerNorm(width, depth)
    self.attn_in = Dense((width,), (3, heads, head_dim), ('embed',), (None, 'heads', 'kv'), attn_std, rngs=rngs, depth=depth)
    self.attn_out = Dense((heads, head_dim), (width,), ('heads', 'kv'), ('embed',), proj_std, rngs=rngs, depth=depth)
    self.ln_2 = LayerNorm(width, depth)
    self.mlp_fc = Dense((width,), (hidden,), ('embed',), ('mlp',), fc_std, rngs=rngs, depth=depth)
    self.mlp_proj = Dense((hidden,), (width,), ('mlp',), ('embed',), proj_std, rngs=rngs, depth=depth)
    self.causal = causal
    self.quick_gelu = quick_gelu
    self.compute_dtype = compute_dtype
    self.attention = attention

  def attend(self, h: jax.Array) -> tuple[jax.Array, str]:
    """Attention over normalised tokens h (B, T, D): the heads' outputs and the einsum that projects them."""
    dt = self.compute_dtype
    w_in, b_in = self.attn_in.kernel[...].astype(dt), self.attn_in.bias[...].astype(dt)
    impl = attention_implementation(self.attention, jax.default_backend(), dt, w_in.shape[-1])
    if impl == 'xla':
      # Projected straight into head-major (B, H, T, K): see `attention`.
      q, k, v = (jnp.einsum('btd,dhk->bhtk', h, w_in[:, i]) + b_in[i][:, None, :] for i in range(3))
      return attention(q, k, v, causal=self.causal), 'bhtk,hkd->btd'
    q, k, v = (jnp.einsum('btd,dhk->bthk', h, w_in[:, i]) + b_in[i] for i in range(3))
    return fused_attention(q, k, v, self.causal, impl), 'bthk,hkd->btd'

  def __call__(self, x: jax.Array) -> jax.Array:
    dt = self.compute_dtype
    heads, spec = self.attend(self.ln_1(x))
    x = self.attn_out(heads, dt, spec=spec, residual=x)
    h = gelu(self.mlp_fc(self.ln_2(x), dt), self.quick_gelu)
    x = self.mlp_proj(h, dt, residual=x)
    return constrain_batch(x)


class Transformer(Block):
  """`depth` Blocks, their parameters stacked along a leading 'layers' axis, scanned over layers."""

  def __init__(
    self,
    width: int,
    depth: int,
    heads: int,
    mlp_ratio: float,
    *,
    causal: bool,
    quick_gelu: bool,
    compute_dtype,
    remat: str,
    rngs: nnx.Rngs,
    scan: bool = True,
    attention: str = 'auto',
  ):
    super().__init__(
      width,
      heads,
      int(width * mlp_ratio),
      depth=depth,
      causal=causal,
      quick_gelu=quick_gelu,
      compute_dtype=compute_dtype,
      attention=attention,
      rngs=rngs,
    )
    self.remat = remat
    self.scan = scan
    self.depth = depth

  def __call__(self, x: jax.Array) -> jax.Array:
    # Scan over layers: each step merges one layer's slice of the stacked state into this
    # module's graph and runs it as one Block. jax.lax.scan over the split state (not nnx.scan)
    # traces to exactly the program of a scan over the plain arrays: nothing but the block
    # enters the loop, and no module state is carried or handed back out.
    graphdef, stacked = nnx.split(self)

    def body(carry, layer):
      return Block.__call__(nnx.merge(graphdef, layer), carry), None

    remat = remat_setting(self.remat, jax.default_backend())
    if remat != 'none':
      body = jax.checkpoint(body, policy=_REMAT_POLICIES[remat], prevent_cse=False)
    x = x.astype(self.compute_dtype)
    if self.scan:
      x, _ = jax.lax.scan(body, x, stacked)
      return x
    # Unrolled: compile time grows with depth; the layers' parameters are the same stacked arrays.
    for i in range(self.depth):
      x, _ = body(x, jax.tree.map(lambda p, i=i: p[i], stacked))
    return x
