"""Orbax checkpoints of the train state, the data iterator position and the stage bookkeeping.

Layout: <workdir>/checkpoints/<global step>/{state, data, meta}. Orbax writes each checkpoint into a
temporary folder and renames it when complete, so a crash mid-save leaves the previous checkpoint as
the latest good one. Saves are asynchronous; `wait()` blocks until the last one is on disk.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


def _iterator_state_to_json(state: Any) -> dict[str, Any]:
  """grain iterator states are bytes (JSON) or dicts; store them as a JSON object."""
  if isinstance(state, (bytes, bytearray)):
    return {"encoding": "bytes", "value": state.decode("utf-8")}
  return {"encoding": "json", "value": json.loads(json.dumps(state))}


def _iterator_state_from_json(blob: dict[str, Any]) -> Any:
  if blob["encoding"] == "bytes":
    return blob["value"].encode("utf-8")
  return blob["value"]


class Checkpointer:
  """Saves and restores (TrainState, data iterator state, meta) under workdir/checkpoints."""

  def __init__(self, workdir: str | pathlib.Path, max_to_keep: int = 3, async_save: bool = True):
    self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=async_save)
    handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler()}
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: Any, meta: dict[str, Any]) -> None:
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(_iterator_state_to_json(data_state) if data_state is not None else None),
        meta=ocp.args.JsonSave(meta))
    self.manager.save(step, args=args, force=True)

  def restore_meta(self, step: int | None = None) -> dict[str, Any]:
    step = self.latest_step() if step is None else step
    out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return out["meta"]

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """Restores into the structure, dtypes and shardings of `abstract_state` (ShapeDtypeStructs ok)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
    data = out["data"]
    return out["state"], (_iterator_state_from_json(data) if data else None), out["meta"]

  def restore_variables(self, step: int | None = None,
                        sharding: jax.sharding.Sharding | None = None) -> dict[str, Any]:
    """{'params', 'batch_stats'} of a checkpoint, placed with `sharding` (default: the first local device).

    Works whatever mesh the checkpoint was written from (e.g. trained on 8 devices, evaluated on 1):
    the target layout comes from the checkpoint's own metadata.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    metadata = self.manager.item_metadata(step)["state"]
    abstract = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                                      metadata)
    state = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    return {"params": state["params"], "batch_stats": state["batch_stats"]}

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def restore_variables(workdir: str | pathlib.Path, step: int | None = None) -> dict[str, Any]:
  """{'params', 'batch_stats'} of the latest (or given) checkpoint in workdir, on the first local device."""
  checkpointer = Checkpointer(workdir, async_save=False)
  try:
    return checkpointer.restore_variables(step)
  finally:
    checkpointer.close()
