"""The model: shapes, parameter counts, logical axes, packing, dtypes, remat, attention kernels."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phi_jax import attention, configs, model, sharding, train_step

SMALL = model.ModelConfig(
  vocab_size=101,
  d_model=64,
  n_layers=2,
  n_heads=4,
  head_dim=16,
  mlp_dim=128,
  rotary_dim=8,
  max_len=64,
)
LOGICAL_NAMES = {"batch", "length", "embed", "heads", "kv", "mlp", "vocab", "layers", "norm"}


def _tokens(batch=2, length=16, vocab=101, seed=0):
  return jnp.asarray(np.random.RandomState(seed).randint(0, vocab, (batch, length)))


@pytest.mark.parametrize("name,expected", [("phi1", 1_418_270_720), ("phi1_small", 356_794_368)])
def test_parameter_count_matches_the_paper(name, expected):
  shapes = model.param_shapes(configs.get(name))  # jax.eval_shape: nothing is allocated
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(shapes))
  assert sum(x.size for x in jax.tree.leaves(shapes)) == expected


def test_every_param_has_a_logical_axis_per_dim():
  shapes = model.param_shapes(SMALL)
  axes = model.logical_axes(SMALL)
  for shape, spec in zip(
    jax.tree.leaves(shapes),
    jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)),
  ):
    assert len(spec) == len(shape.shape)
    assert set(spec) <= LOGICAL_NAMES


def test_init_is_the_released_recipe():
  params = model.init(SMALL, jax.random.key(0))
  assert params["layers"]["attn"]["q_proj"]["kernel"].dtype == jnp.float32
  np.testing.assert_array_equal(params["layers"]["input_layernorm"]["scale"], 1.0)
  np.testing.assert_array_equal(params["lm_head"]["bias"], 0.0)
  assert abs(float(params["embed_tokens"]["embedding"].std()) - 0.02) < 0.002


def test_forward_shapes_and_causality():
  params = model.init(SMALL, jax.random.key(0))
  tokens = _tokens()
  logits = model.forward(SMALL, params, tokens)
  assert logits.shape == (2, 16, 101) and logits.dtype == jnp.float32
  changed = tokens.at[:, 10].set((tokens[:, 10] + 1) % 101)
  logits2 = model.forward(SMALL, params, changed)
  np.testing.assert_array_equal(logits[:, :10], logits2[:, :10])
  assert not np.allclose(logits[:, 10:], logits2[:, 10:])


def test_packed_documents_do_not_see_each_other():
  params = model.init(SMALL, jax.random.key(1))
  doc_a, doc_b = _tokens(1, 7, seed=1), _tokens(1, 9, seed=2)
  packed = jnp.concatenate([doc_a, doc_b], axis=1)
  segments = jnp.asarray([[1] * 7 + [2] * 9])
  logits = model.forward(SMALL, params, packed, segment_ids=segments)
  np.testing.assert_allclose(logits[:, :7], model.forward(SMALL, params, doc_a), atol=1e-5)
  np.testing.assert_allclose(logits[:, 7:], model.forward(SMALL, params, doc_b), atol=1e-5)
  # With masking off, the second document attends to the first (positions still restart).
  unmasked = dataclasses.replace(SMALL, mask_packed_segments=False)
  leaky = model.forward(unmasked, params, packed, segment_ids=segments)
  assert not np.allclose(leaky[:, 7:], logits[:, 7:], atol=1e-3)


def test_positions_restart_per_segment():
  segments = jnp.asarray([[1, 1, 1, 2, 2, 3, 0, 0]])
  np.testing.assert_array_equal(model.positions_from_segments(segments), [[0, 1, 2, 0, 1, 0, 0, 1]])


def test_bf16_compute_keeps_fp32_params_and_tracks_fp32():
  params = model.init(SMALL, jax.random.key(0))
  bf16 = dataclasses.replace(SMALL, dtype="bfloat16")
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(model.init(bf16, jax.random.key(0))))
  exact = model.forward(SMALL, params, _tokens())
  fast = model.forward(bf16, params, _tokens())
  assert fast.dtype == jnp.float32
  assert float(jnp.abs(fast - exact).max()) < 0.05 * float(jnp.abs(exact).max())
  assert not np.array_equal(fast, exact)


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_changes_memory_not_numbers(policy):
  params = model.init(SMALL, jax.random.key(0))
  tokens = _tokens()

  def loss(cfg, p):
    return model.forward(cfg, p, tokens).mean()

  base = jax.grad(lambda p: loss(SMALL, p))(params)
  remat = jax.grad(lambda p: loss(dataclasses.replace(SMALL, remat=policy), p))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), base, remat)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_fused_attention_matches_xla(kv_heads):
  rng = np.random.RandomState(0)
  q = jnp.asarray(rng.randn(2, 12, 4, 16), jnp.float32)
  k = jnp.asarray(rng.randn(2, 12, kv_heads, 16), jnp.float32)
  v = jnp.asarray(rng.randn(2, 12, kv_heads, 16), jnp.float32)
  for segments in (None, jnp.asarray([[1] * 5 + [2] * 7, [1] * 12])):
    np.testing.assert_allclose(
      attention.xla_attention(q, k, v, segment_ids=segments),
      attention.fused_attention(q, k, v, segment_ids=segments),
      atol=1e-5,
    )


@pytest.mark.parametrize("kernel,platform", [("cudnn", "NVIDIA GPUs"), ("splash", "TPUs")])
def test_platform_kernels_are_refused_elsewhere(kernel, platform):
  cfg = configs.get("tiny")
  cfg.model.attention = kernel
  cfg.mesh.update(data=1, fsdp=1, tensor=1)
  with pytest.raises(ValueError, match=f"attention={kernel} runs on {platform} only.*cpu; set "):
    train_step.make_trainer(cfg, sharding.make_mesh(cfg.mesh, jax.devices()[:1]))


def test_splash_attention_matches_xla_with_gradients():
  # Pallas' interpreter runs the TPU kernel here. 384 tokens are three 128-token blocks, so the
  # causal mask skips blocks; 4 query heads over 2 key/value heads; the second row packs three
  # documents whose boundaries fall inside blocks.
  rng = np.random.RandomState(0)
  q = jnp.asarray(rng.randn(2, 384, 4, 64), jnp.float32)
  k = jnp.asarray(rng.randn(2, 384, 2, 64), jnp.float32)
  v = jnp.asarray(rng.randn(2, 384, 2, 64), jnp.float32)
  cotangent = jnp.asarray(rng.randn(2, 384, 4, 64), jnp.float32)
  splash = functools.partial(attention.splash_attention, interpret=True)
  for segments in (None, jnp.asarray([[1] * 384, [1] * 100 + [2] * 200 + [3] * 84])):

    def loss(fn):
      return lambda q, k, v: jnp.sum(fn(q, k, v, segment_ids=segments) * cotangent)

    want, want_grads = jax.value_and_grad(loss(attention.xla_attention), (0, 1, 2))(q, k, v)
    got, got_grads = jax.value_and_grad(loss(splash), (0, 1, 2))(q, k, v)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for name, a, b in zip("qkv", got_grads, want_grads):
      np.testing.assert_allclose(a, b, atol=2e-4, err_msg=f"d{name}")


def test_splash_attention_runs_per_shard_under_a_mesh():
  # Batch over data, heads over tensor: each device's kernel sees 1 row and 2 of the 4 heads.
  mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 2}, jax.devices()[:4])
  rng = np.random.RandomState(1)
  spec = jax.sharding.NamedSharding(mesh, jax.P("data", None, "tensor", None))
  q, k, v = (jax.device_put(rng.randn(2, 256, 4, 64).astype(np.float32), spec) for _ in "qkv")
  segments = jax.device_put(
    np.asarray([[1] * 256, [1] * 70 + [2] * 186]), jax.sharding.NamedSharding(mesh, jax.P("data"))
  )
  splash = functools.partial(attention.splash_attention, interpret=True)

  def loss(fn):
    def scalar(q, k, v):
      with sharding.activation_rules(mesh):
        return jnp.sum(fn(q, k, v, segment_ids=segments) ** 2)

    return jax.jit(jax.value_and_grad(scalar, (0, 1, 2)))

  want, want_grads = loss(attention.xla_attention)(q, k, v)
  got, got_grads = loss(splash)(q, k, v)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for a, b in zip(got_grads, want_grads):
    np.testing.assert_allclose(a, b, atol=2e-4)


def test_splash_attention_names_the_lengths_it_takes():
  q = jnp.zeros((1, 200, 2, 64))
  with pytest.raises(ValueError, match="divisible by 128 \\(got 200\\).*blockwise"):
    attention.splash_attention(q, q, q, interpret=True)


@pytest.mark.parametrize("kv_heads,length,block_size", [(4, 12, 5), (2, 16, 4), (4, 16, 128)])
def test_blockwise_attention_matches_xla_with_gradients(kv_heads, length, block_size):
  rng = np.random.RandomState(0)
  q = jnp.asarray(rng.randn(2, length, 4, 16), jnp.float32)
  k = jnp.asarray(rng.randn(2, length, kv_heads, 16), jnp.float32)
  v = jnp.asarray(rng.randn(2, length, kv_heads, 16), jnp.float32)
  cotangent = jnp.asarray(rng.randn(2, length, 4, 16), jnp.float32)
  split = length // 3
  for segments in (
    None,
    jnp.asarray([[1] * split + [2] * (length - split), [0] * 3 + [1] * (length - 3)]),
  ):

    def loss(fn):
      return lambda q, k, v: jnp.sum(fn(q, k, v, segment_ids=segments) * cotangent)

    blockwise = lambda *a, **kw: attention.blockwise_attention(*a, block_size=block_size, **kw)
    np.testing.assert_allclose(
      blockwise(q, k, v, segment_ids=segments),
      attention.xla_attention(q, k, v, segment_ids=segments),
      atol=1e-5,
    )
    grads = jax.grad(loss(blockwise), argnums=(0, 1, 2))(q, k, v)
    expected = jax.grad(loss(attention.xla_attention), argnums=(0, 1, 2))(q, k, v)
    for got, want in zip(grads, expected):
      np.testing.assert_allclose(got, want, atol=1e-5)


def test_dropout_only_when_asked():
  cfg = dataclasses.replace(SMALL, embed_dropout=0.1, resid_dropout=0.1, attn_dropout=0.1)
  params = model.init(cfg, jax.random.key(0))
  tokens = _tokens()
  eval_logits = model.forward(cfg, params, tokens)
  np.testing.assert_array_equal(eval_logits, model.forward(SMALL, params, tokens))
  train_a = model.forward(cfg, params, tokens, deterministic=False, rng=jax.random.key(1))
  train_b = model.forward(cfg, params, tokens, deterministic=False, rng=jax.random.key(1))
  train_c = model.forward(cfg, params, tokens, deterministic=False, rng=jax.random.key(2))
  np.testing.assert_array_equal(train_a, train_b)
  assert not np.allclose(train_a, eval_logits) and not np.allclose(train_a, train_c)
  with pytest.raises(ValueError, match="rng"):
    model.forward(cfg, params, tokens, deterministic=False)


def test_config_errors_name_the_problem():
  with pytest.raises(KeyError, match="did you mean 'n_layers'"):
    model.ModelConfig.from_dict({"n_layer": 3})
  with pytest.raises(ValueError, match="remat"):
    model.ModelConfig(remat="sometimes")
  with pytest.raises(ValueError, match="n_kv_heads"):
    model.ModelConfig(n_heads=32, n_kv_heads=5)


def test_forward_is_jittable_with_static_config():
  params = model.init(SMALL, jax.random.key(0))
  jitted = jax.jit(model.forward, static_argnums=0)
  np.testing.assert_allclose(
    jitted(SMALL, params, _tokens()), model.forward(SMALL, params, _tokens()), atol=1e-6
  )
