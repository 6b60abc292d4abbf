"""The ring contrastive losses (config.loss.chunked) equal the plain ones, in value and gradient,
and need less memory per device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from superclip_jax import losses, ring_loss, sharding


def _embeddings(b, d, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(2, b, d)).astype(np.float32)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _plain(kind):
  if kind == 'softmax':
    return lambda a, t, s, b: losses.softmax_contrastive_loss(a, t, s)
  return losses.sigmoid_contrastive_loss


def _ring(kind, axes):
  return lambda a, t, s, b: ring_loss.contrastive(a, t, s, b, kind=kind, batch_axes=axes)


def _jit_value_and_grad(fn, mesh, axes):
  batch = NamedSharding(mesh, P(axes))
  rep = NamedSharding(mesh, P())
  return jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3)), in_shardings=(batch, batch, rep, rep))


@pytest.mark.parametrize('kind', ['softmax', 'sigmoid'])
@pytest.mark.parametrize(
  'mesh_shape,axes', [((8, 1, 1), ('data', 'fsdp')), ((2, 2, 2), ('data', 'fsdp')), ((2, 4, 1), ('data', 'fsdp'))]
)
def test_ring_equals_plain_in_value_and_gradient(kind, mesh_shape, axes):
  mesh = sharding.make_mesh(mesh_shape)
  img, txt = _embeddings(64, 16)
  args = (img, txt, jnp.float32(2.3), jnp.float32(-4.0))
  with jax.set_mesh(mesh):
    v_ref, g_ref = _jit_value_and_grad(_plain(kind), mesh, axes)(*args)
    v, g = _jit_value_and_grad(_ring(kind, axes), mesh, axes)(*args)
  assert float(v) == pytest.approx(float(v_ref), rel=2e-6)
  names = ('image', 'text', 'log_scale', 'bias')
  for name, a, b in zip(names, g, g_ref):
    if kind == 'softmax' and name == 'bias':
      continue  # the softmax loss has no bias
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-7, err_msg=name)


@pytest.mark.parametrize('kind', ['softmax', 'sigmoid'])
def test_ring_needs_less_memory_per_device(kind):
  # B = 4096 on 8 devices: plain gathers (512 x 4096) logits per device, the ring (512 x 512) at a time;
  # what the ring keeps is the text blocks that passed (the embeddings, O(global x D)), not logits.
  mesh = sharding.make_mesh((8, 1, 1))
  axes = ('data', 'fsdp')
  sds = jax.ShapeDtypeStruct((4096, 512), jnp.float32)
  scalar = jax.ShapeDtypeStruct((), jnp.float32)
  temps = {}
  with jax.set_mesh(mesh):
    for name, fn in (('plain', _plain(kind)), ('ring', _ring(kind, axes))):
      compiled = _jit_value_and_grad(fn, mesh, axes).lower(sds, sds, scalar, scalar).compile()
      temps[name] = compiled.memory_analysis().temp_size_in_bytes
  print(f'{kind}: temporary bytes per device, plain {temps["plain"] / 1e6:.1f} MB, ring {temps["ring"] / 1e6:.1f} MB')
  assert temps['ring'] < 0.7 * temps['plain'], temps
