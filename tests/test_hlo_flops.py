"""Matmul FLOPs from HLO text (phi_jax.hlo_flops): loop bodies count once per trip."""

import jax
import jax.numpy as jnp

from phi_jax import hlo_flops


def test_loop_bodies_count_once_per_trip():
  def chain(x, w):
    return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=5)[0]

  text = jax.jit(chain).lower(jnp.ones((8, 16)), jnp.ones((16, 16))).compile().as_text()
  flops, once, trips = hlo_flops.matmul_flops(text)
  assert flops == 5 * 2 * 8 * 16 * 16
  assert once == 2 * 8 * 16 * 16
  assert trips == [5]
