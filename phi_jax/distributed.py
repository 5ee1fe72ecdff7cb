"""Multi-host start-up: one `jax.distributed.initialize` call driven by config or environment."""

from __future__ import annotations

import os
from typing import Any

import jax


def initialize(distributed: Any) -> None:
  """Joins the multi-process job described by `cfg.distributed` (no-op when not enabled).

  Empty fields fall back to JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, and
  then to jax's own cluster auto-detection (Cloud TPU VMs, SLURM, ...).
  """
  if not distributed.enabled or jax.distributed.is_initialized():
    return
  address = distributed.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  num_processes = int(distributed.num_processes or os.environ.get("JAX_NUM_PROCESSES", 0)) or None
  process_id = int(distributed.process_id)
  if process_id < 0:
    process_id = int(os.environ["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in os.environ else None
  if jax.config.jax_platforms in (None, "", "cpu") and distributed.cpu_collectives:
    # CPU devices across processes need a collectives backend (gloo ships with jaxlib).
    jax.config.update("jax_cpu_collectives_implementation", distributed.cpu_collectives)
  jax.distributed.initialize(
    coordinator_address=address, num_processes=num_processes, process_id=process_id
  )
