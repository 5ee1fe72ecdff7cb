"""The train state and the sharded, jitted train step (gradient accumulation inside)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from phi_jax import configs, sharding
from phi_jax import losses as losses_lib
from phi_jax import model as model_lib
from phi_jax import optimizer as optimizer_lib

# A batch is a dict of [global_batch, seq_len] arrays with these keys.
BATCH_KEYS = ("inputs", "targets", "loss_weights", "segment_ids", "positions")


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class Trainer:
  """Everything compiled for one (config, mesh): the step, the init, and their shardings."""

  mesh: Mesh
  state_sharding: Any  # TrainState of NamedShardings
  batch_sharding: NamedSharding
  init_state: Callable[[jax.Array], TrainState]  # rng -> sharded fresh state
  state_from_params: Callable[[Any], TrainState]  # params -> step 0, fresh optimizer state
  step: Callable[[TrainState, dict], tuple[TrainState, dict]]  # donates the state
  abstract_state: Any  # TrainState of ShapeDtypeStructs carrying shardings
  micro_batches: int


def micro_batch_count(train: Any) -> int:
  """How many micro-batches one global batch is split into (`configs.check`, which the entry
  points run, vets the sizes)."""
  return int(train.global_batch) // (int(train.micro_batch) or int(train.global_batch))


def token_loss(model_config, params, batch, rng, deterministic, loss_chunk=0):
  """(sum of weighted token cross-entropies, sum of weights) for one (micro-)batch.
  loss_chunk > 0 computes the lm_head, the loss and its gradient that many positions at a time
  (`losses.lm_head_cross_entropy`); 0 materializes the whole batch's logits."""
  kwargs = dict(
    segment_ids=batch["segment_ids"],
    positions=batch["positions"],
    deterministic=deterministic,
    rng=rng,
  )
  weights = batch["loss_weights"].astype(jnp.float32)
  if loss_chunk:
    hidden = model_lib.forward(model_config, params, batch["inputs"], return_hidden=True, **kwargs)
    loss_sum = losses_lib.lm_head_cross_entropy(
      hidden, params["lm_head"], batch["targets"], weights, loss_chunk
    )
  else:
    logits = model_lib.forward(model_config, params, batch["inputs"], **kwargs)
    loss_sum = jnp.sum(losses_lib.cross_entropy(logits, batch["targets"]) * weights)
  return loss_sum, jnp.sum(weights)


def split_micro_batches(batch: dict, count: int) -> dict:
  """[G, T] -> [count, G/count, T], micro-batch i taking rows i, i+count, ... so that every
  device keeps feeding its own rows (no resharding between micro-batches)."""

  def split(x):
    return x.reshape(x.shape[0] // count, count, *x.shape[1:]).swapaxes(0, 1)

  return jax.tree.map(split, batch)


def _train_step(
  model_config,
  optimizer,
  schedule,
  micro_batches,
  seed,
  loss_chunk,
  param_sharding,
  state: TrainState,
  batch: dict,
):
  deterministic = not (
    model_config.embed_dropout or model_config.resid_dropout or model_config.attn_dropout
  )
  step_rng = jax.random.fold_in(jax.random.key(seed), state.step)  # dropout from (seed, step)
  total_weight = jnp.maximum(jnp.sum(batch["loss_weights"].astype(jnp.float32)), 1.0)

  def micro_grads(carry, inputs):
    index, micro = inputs
    loss_fn = lambda p: token_loss(
      model_config, p, micro, jax.random.fold_in(step_rng, index), deterministic, loss_chunk
    )
    (loss_sum, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.with_sharding_constraint(grads, param_sharding)
    grad_sum, loss_total = carry
    return (jax.tree.map(jnp.add, grad_sum, grads), loss_total + loss_sum), None

  zeros = jax.tree.map(jnp.zeros_like, state.params)
  micro = split_micro_batches(batch, micro_batches)
  (grad_sum, loss_sum), _ = jax.lax.scan(
    micro_grads, (zeros, jnp.zeros((), jnp.float32)), (jnp.arange(micro_batches), micro)
  )
  grads = jax.tree.map(lambda g: g / total_weight, grad_sum)

  loss, grad_norm = loss_sum / total_weight, optax.global_norm(grads)
  # A non-finite loss or gradient leaves params and optimizer state as they were; the host stops
  # or goes on by train.on_nonfinite. A cond, not a select: no extra pass over the whole state.
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

  def apply_update(_):
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return optax.apply_updates(state.params, updates), opt_state

  params, opt_state = jax.lax.cond(
    finite, apply_update, lambda _: (state.params, state.opt_state), None
  )
  metrics = {
    "loss": loss,
    "grad_norm": grad_norm,
    "learning_rate": schedule(state.step),
    "tokens": total_weight,
    "nonfinite": ~finite,
  }
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_trainer(cfg: Any, mesh: Mesh) -> Trainer:
  """Builds the jitted init and step for `cfg` on `mesh` with explicit in/out shardings."""
  if configs.memory_fit_needed(cfg):
    raise ValueError(
      "train.micro_batch='auto' / model.remat='auto' are chosen by compiling the step: "
      "build the trainer from phi_jax.aot.fit's config (train.run does this)"
    )
  model_config = model_lib.as_model_config(cfg)
  platform = mesh.devices.flat[0].platform
  kernel_platform = {"cudnn": ("gpu", "NVIDIA GPUs"), "splash": ("tpu", "TPUs")}
  if model_config.attention in kernel_platform:
    needs, described = kernel_platform[model_config.attention]
    if platform != needs:
      other = "blockwise" if platform == "cpu" else "cudnn" if platform == "gpu" else "xla"
      raise ValueError(
        f"model.attention={model_config.attention} runs on {described} only, and this mesh's "
        f"devices are {platform}; set --config.model.attention={other} here"
      )
  optimizer = optimizer_lib.make_optimizer(cfg.optim)
  schedule = optimizer_lib.learning_rate_schedule(cfg.optim)
  micro_batches = micro_batch_count(cfg.train)

  def state_from_params(params):
    return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params)
    )

  def fresh_state(rng):
    return state_from_params(model_lib.init(model_config, rng))

  abstract = jax.eval_shape(fresh_state, jax.random.key(0))
  param_specs = model_lib.logical_axes(model_config)
  opt_specs = optax.tree_map_params(
    optimizer,
    lambda _, spec: spec,
    abstract.opt_state,
    param_specs,
    transform_non_params=lambda _: P(),
    is_leaf=lambda x: isinstance(x, P),
  )
  state_specs = TrainState(step=P(), params=param_specs, opt_state=opt_specs)
  state_sharding = sharding.logical_sharding(state_specs, mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  batch_shardings = {key: batch_sharding for key in BATCH_KEYS}
  replicated = NamedSharding(mesh, P())

  step_fn = functools.partial(
    _train_step,
    model_config,
    optimizer,
    schedule,
    micro_batches,
    int(cfg.train.seed),
    int(cfg.train.loss_chunk),
    state_sharding.params,
  )

  def with_rules(fn):
    @functools.wraps(fn)
    def wrapped(*args):
      with sharding.activation_rules(mesh):
        return fn(*args)

    return wrapped

  step = jax.jit(
    with_rules(step_fn),
    in_shardings=(state_sharding, batch_shardings),
    out_shardings=(state_sharding, replicated),
    donate_argnums=(0,),
  )
  init_state = jax.jit(fresh_state, out_shardings=state_sharding)
  from_params = jax.jit(
    state_from_params, in_shardings=(state_sharding.params,), out_shardings=state_sharding
  )
  abstract_state = jax.tree.map(
    lambda shape, s: jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=s),
    abstract,
    state_sharding,
  )
  return Trainer(
    mesh=mesh,
    state_sharding=state_sharding,
    batch_sharding=batch_sharding,
    init_state=init_state,
    state_from_params=from_params,
    step=step,
    abstract_state=abstract_state,
    micro_batches=micro_batches,
  )


def abstract_batch(cfg: Any, batch_sharding: NamedSharding) -> dict:
  shape = (int(cfg.train.global_batch), int(cfg.train.seq_len))
  return {
    key: jax.ShapeDtypeStruct(
      shape, jnp.float32 if key == "loss_weights" else jnp.int32, sharding=batch_sharding
    )
    for key in BATCH_KEYS
  }
