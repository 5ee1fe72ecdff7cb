"""The chunked lm_head loss equals the plain one (values, and gradients with respect to params and
loss weights; differentiated or not), and scan_unroll is exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phi_jax import configs, train_step
from phi_jax import model as model_lib


def _setup(**model_overrides):
  cfg = configs.get("tiny")
  cfg.model.update(
    vocab_size=512,
    d_model=64,
    n_layers=2,
    n_heads=4,
    head_dim=16,
    mlp_dim=128,
    rotary_dim=8,
    **model_overrides,
  )
  model_config = model_lib.as_model_config(cfg)
  params = model_lib.init(model_config, jax.random.key(0))
  batch_size, length = 3, 32
  tokens = jax.random.randint(jax.random.key(1), (batch_size, length + 1), 0, 512)
  batch = {
    "inputs": tokens[:, :-1],
    "targets": tokens[:, 1:],
    "loss_weights": jax.random.uniform(jax.random.key(2), (batch_size, length)),
    "segment_ids": jnp.ones((batch_size, length), jnp.int32),
    "positions": jnp.broadcast_to(jnp.arange(length), (batch_size, length)),
  }
  return model_config, params, batch


def _loss_and_grads(model_config, params, batch, chunk):
  """(loss, d loss / d params, d loss / d loss_weights, loss computed without differentiating)."""

  def loss_fn(params, weights):
    return train_step.token_loss(
      model_config, params, {**batch, "loss_weights": weights}, None, True, chunk
    )[0]

  loss, (grads, weight_grads) = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))(
    params, batch["loss_weights"]
  )
  return loss, grads, weight_grads, jax.jit(loss_fn)(params, batch["loss_weights"])


@pytest.mark.parametrize("chunk", [4, 32])
def test_chunked_loss_matches_plain_loss_and_gradients(chunk):
  model_config, params, batch = _setup()
  plain_loss, plain_grads, plain_weight_grads, _ = _loss_and_grads(model_config, params, batch, 0)
  loss, grads, weight_grads, undifferentiated = _loss_and_grads(model_config, params, batch, chunk)
  np.testing.assert_allclose(loss, plain_loss, rtol=1e-6)
  np.testing.assert_allclose(undifferentiated, plain_loss, rtol=1e-6)
  np.testing.assert_allclose(weight_grads, plain_weight_grads, rtol=1e-5)  # the token losses
  for path, a, b in zip(
    jax.tree_util.tree_leaves_with_path(plain_grads),
    jax.tree.leaves(plain_grads),
    jax.tree.leaves(grads),
  ):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path[0]))
  # and the plain loss is the textbook one: -log softmax(logits)[target]
  logits = model_lib.forward(model_config, params, batch["inputs"])
  reference = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["targets"][..., None], -1)
  np.testing.assert_allclose(
    plain_loss, jnp.sum(reference[..., 0] * batch["loss_weights"]), rtol=1e-5
  )


def test_chunk_must_divide_the_length():
  model_config, params, batch = _setup()
  with pytest.raises(ValueError, match="loss_chunk=5 must be a positive divisor"):
    _loss_and_grads(model_config, params, batch, 5)
  cfg = configs.get("tiny")
  cfg.train.loss_chunk = 100
  with pytest.raises(configs.ConfigError, match="loss_chunk=100 must be 0 or a divisor"):
    configs.check(cfg, num_devices=1)


def test_unrolled_layer_scan_is_the_same_function():
  model_config, params, batch = _setup()
  unrolled, _, _ = _setup(scan_unroll=2)
  np.testing.assert_allclose(
    model_lib.forward(unrolled, params, batch["inputs"]),
    model_lib.forward(model_config, params, batch["inputs"]),
    rtol=1e-5,
    atol=1e-5,
  )
