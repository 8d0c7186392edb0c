"""Devices, the data-parallel mesh and moving host batches onto it.

Data parallelism is jax.jit over a one-axis device Mesh: the batch axis is sharded over every device
of every process, parameters and optimizer state are replicated. jit inserts the gradient all-reduce
and computes BatchNorm statistics over the global batch, so the model names no device axis and a run
on N devices takes the same steps as one on a single device (up to float summation order).
(jax.pmap is in maintenance mode and is itself implemented on jit + shard_map.)
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None) -> None:
  """Calls jax.distributed.initialize when asked by arguments or the environment.

  Multi-host runs set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (or run under a
  cluster JAX auto-detects, e.g. SLURM or Cloud TPU, with CASCADED_LIFT_DISTRIBUTED=1). Single-process
  runs call nothing.
  """
  coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and "JAX_NUM_PROCESSES" in os.environ:
    num_processes = int(os.environ["JAX_NUM_PROCESSES"])
  if process_id is None and "JAX_PROCESS_ID" in os.environ:
    process_id = int(os.environ["JAX_PROCESS_ID"])
  if coordinator or os.environ.get("CASCADED_LIFT_DISTRIBUTED") == "1":
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    logging.info("jax.distributed: process %d of %d, %d global devices", jax.process_index(),
                 jax.process_count(), jax.device_count())


def create_mesh() -> Mesh:
  """A one-axis mesh ("data",) over all global devices."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def local_batch_size(global_batch_size: int) -> int:
  """Per-process batch; the global batch must split evenly over processes and devices."""
  if global_batch_size % jax.device_count():
    raise ValueError(f"batch_size {global_batch_size} is not divisible by the {jax.device_count()} devices")
  return global_batch_size // jax.process_count()


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles per-process NumPy batches into global arrays sharded along the batch axis.

  Non-numeric entries (strings) stay on the host and are dropped here.
  """
  sharding = batch_sharding(mesh)
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if value.dtype.kind in "biuf":
      out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out


def to_host(tree: Any) -> Any:
  """NumPy copies of (replicated) arrays; works when arrays span several processes.

  jax.device_get refuses arrays that are not fully addressable from this process; a replicated
  array's local shard holds the whole value, so that is what is copied.
  """
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(jax.device_get(x)) if isinstance(x, jax.Array) else x
  return jax.tree_util.tree_map(get, tree)
