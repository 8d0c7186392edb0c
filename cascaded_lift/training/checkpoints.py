"""Orbax checkpoints of the train state, the data iterator position and the stage bookkeeping.

Layout: <workdir>/checkpoints/<global step>/{state, data, meta}. Orbax writes each checkpoint into a
temporary folder and renames it when complete, so a crash mid-save leaves the previous checkpoint as
the latest good one. Saves are asynchronous; `wait()` blocks until the last one is on disk.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable, TypeVar

import jax
import orbax.checkpoint as ocp
from absl import logging

from cascaded_lift.errors import CheckpointError, WorkdirError

T = TypeVar("T")
ON_DAMAGED = ("error", "previous")


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

  def __init__(self, workdir: str | pathlib.Path, max_to_keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    """read_only: for eval and inference; the folder must exist and nothing is created in it."""
    self.directory = pathlib.Path(workdir).expanduser().absolute() / "checkpoints"
    if read_only and not self.directory.is_dir():
      raise WorkdirError(f"no checkpoints in {str(workdir)!r} (expected the folder {str(self.directory)!r}; is it "
                         "the training workdir?)")
    self._options = dict(max_to_keep=max_to_keep, async_save=async_save, read_only=read_only)
    self._open()

  def _open(self) -> None:
    o = self._options
    options = ocp.CheckpointManagerOptions(max_to_keep=o["max_to_keep"], create=not o["read_only"],
                                           enable_async_checkpointing=o["async_save"] and not o["read_only"])
    handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler()}
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def steps(self) -> list[int]:
    """The saved steps, oldest first."""
    return sorted(self.manager.all_steps())

  def _check_step(self, step: int | None) -> int:
    """`step`, or the latest; CheckpointError naming the steps there when it does not exist."""
    steps = self.steps()
    if not steps:
      raise CheckpointError(f"no checkpoint in {str(self.directory)!r}")
    if step is None:
      return steps[-1]
    if step not in steps:
      raise CheckpointError(f"no checkpoint at step {step} in {str(self.directory)!r}; the steps there are "
                            f"{', '.join(map(str, steps))}")
    return step

  def _reading(self, step: int, fn: Callable[[], T]) -> T:
    """fn(), with a failure to read checkpoint `step` reported as a CheckpointError that names the step,
    the cause and the other steps there."""
    try:
      return fn()
    except Exception as e:  # orbax, tensorstore and JSON errors: the files of that step are damaged
      cause = " ".join(str(e).split())[:300]
      earlier = [s for s in self.steps() if s < step]
      hint = (f"the earlier checkpoints {', '.join(map(str, earlier))} are there: evaluate one with --step, or "
              "resume training from the newest with --config.checkpoint.on_damaged=previous"
              if earlier else "there is no earlier checkpoint")
      raise CheckpointError(f"checkpoint {step} in {str(self.directory)!r} is damaged or incomplete "
                            f"({type(e).__name__}: {cause}); {hint}") from e

  def set_aside(self, step: int) -> pathlib.Path:
    """Renames a damaged step's folder to damaged-<step> (kept, no longer a checkpoint); returns the new path."""
    source = self.directory / str(step)
    target = self.directory / f"damaged-{step}"
    os.replace(source, target)
    self.manager.close()
    self._open()
    logging.warning("checkpoint %d was damaged: moved to %s; resuming from step %s", step, target,
                    self.latest_step())
    return target

  def save(self, step: int, state: Any, data_state: Any, meta: dict[str, Any]) -> None:
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(_iterator_state_to_json(data_state) if data_state is not None else None),
        meta=ocp.args.JsonSave(meta))
    self.manager.save(step, args=args, force=True)

  def restore_meta(self, step: int | None = None) -> dict[str, Any]:
    """The stage bookkeeping of a checkpoint, after checking that its state's metadata reads too."""
    step = self._check_step(step)

    def read():
      self.manager.item_metadata(step)["state"].keys()  # the state's tree and shapes
      return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    return self._reading(step, read)

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """Restores into the structure, dtypes and shardings of `abstract_state` (ShapeDtypeStructs ok)."""
    step = self._check_step(step)
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)
    out = self._reading(step, lambda: self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore())))
    data = out["data"]
    return out["state"], (_iterator_state_from_json(data) if data else None), out["meta"]

  def restore_variables(self, step: int | None = None,
                        sharding: jax.sharding.Sharding | None = None) -> dict[str, Any]:
    """{'params', 'batch_stats'} of a checkpoint, placed with `sharding` (default: the first local device).

    Works whatever mesh the checkpoint was written from (e.g. trained on 8 devices, evaluated on 1):
    the target layout comes from the checkpoint's own metadata.
    """
    step = self._check_step(step)
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def read():
      metadata = self.manager.item_metadata(step)["state"]
      abstract = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                                        metadata)
      return self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]

    state = self._reading(step, read)
    return {"params": state["params"], "batch_stats": state["batch_stats"]}

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def restore_variables(workdir: str | pathlib.Path, step: int | None = None) -> dict[str, Any]:
  """{'params', 'batch_stats'} of the latest (or given) checkpoint in workdir, on the first local device."""
  checkpointer = Checkpointer(workdir, async_save=False, read_only=True)
  try:
    return checkpointer.restore_variables(step)
  finally:
    checkpointer.close()
