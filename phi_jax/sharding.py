"""Device meshes and the one table that maps the model's logical axes onto them.

Mesh axes: `data` (pure data parallelism), `fsdp` (data parallelism with params and optimizer
state sharded), `tensor` (Megatron-style tensor parallelism over heads, MLP and vocab).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes. Rules are tried in order and a mesh axis is used at most once per
# array, so activations (which have `batch`) shard `embed` nowhere, while params shard it on fsdp.
LOGICAL_AXIS_RULES = (
  ("batch", ("data", "fsdp")),
  ("embed", "fsdp"),
  ("heads", "tensor"),
  ("mlp", "tensor"),
  ("vocab", "tensor"),
  ("length", None),
  ("kv", None),
  ("layers", None),
  ("norm", None),
)


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Axis sizes with one `-1` resolved to the remaining devices; checked against the count."""
  sizes = [int(mesh_config[name]) for name in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(
        f"mesh {dict(zip(MESH_AXES, sizes))}: {num_devices} devices are not "
        f"divisible by the fixed axes' product {known}"
      )
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(
      f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
      f"{num_devices} are available; set one axis to -1 to use the rest"
    )
  return tuple(sizes)


def make_mesh(mesh_config: Mapping[str, int], devices: list | None = None) -> Mesh:
  """The mesh over `devices` (default: all, every host's); TPU topology-aware device order."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_config, len(devices))
  return jax.make_mesh(
    shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
  )


def logical_sharding(logical_specs: Any, mesh: Mesh) -> Any:
  """A pytree of logical PartitionSpecs -> NamedShardings on `mesh` via LOGICAL_AXIS_RULES."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, LOGICAL_AXIS_RULES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """[batch, length] arrays: rows split over every data-parallel axis."""
  return NamedSharding(mesh, P(("data", "fsdp"), None))


def data_parallel_size(mesh: Mesh) -> int:
  """Devices that split the batch (data x fsdp)."""
  return mesh.shape["data"] * mesh.shape["fsdp"]


@contextlib.contextmanager
def activation_rules(mesh: Mesh):
  """Within it, the model's logical activation constraints bind to `mesh` (use while tracing)."""
  with (
    jax.sharding.use_abstract_mesh(mesh.abstract_mesh),
    nn.logical_axis_rules(LOGICAL_AXIS_RULES),
  ):
    yield
