"""config.init.checkpoint: a run that starts from trained weights (fine-tuning) instead of ImageNet ones.

  init.checkpoint = ""                                 # the default: initialise, then init.backbone_weights
  init.checkpoint = "~/runs/released_p2"               # a workdir: its latest checkpoint, every variable
  init.checkpoint = "~/Downloads/snapshot_20.pth.tar"  # a state dict in the released naming (weights/convert.py)

training.loop.train loads it after initialising the network and before the first stage, and only when
the run starts: when the workdir already holds the run's own checkpoints, they are restored and the key
is ignored (it may even point at a file that is gone; workdir.IGNORED_FIELDS never compares init.*).

A workdir must hold a network of exactly the config's shapes (every parameter and BatchNorm statistic;
the first difference is named); differences in what its config.json says about the crop and heatmap
geometry are logged as warnings, since fine-tuning at another crop size can be meant. A state-dict file
goes through convert.import_torch_state_dict: a part it lacks (the released file has no ordinal-depth
head; a lifter-only file has no PoseNet) keeps its initial values and is logged. The ImageNet start
(init.backbone_weights) is used only when the checkpoint lacks the backbone, so fine-tuning the released
model needs no ImageNet download.
"""

from __future__ import annotations

import pathlib
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging

from cascaded_lift.errors import ConfigError, UserError
from cascaded_lift.training import released
from cascaded_lift.training import workdir as workdir_lib
from cascaded_lift.training.builders import backbone_weights_path, load_pretrained
from cascaded_lift.training.checkpoints import restore_variables

FIELD = "config.init.checkpoint"


def has_checkpoints(workdir: str | pathlib.Path) -> bool:
  """Whether workdir/checkpoints holds a saved step (a run to resume); cheap, reads directory names only."""
  folder = pathlib.Path(workdir).expanduser() / "checkpoints"
  return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def checkpoint_path(config: Any) -> pathlib.Path | None:
  """The workdir or file config.init.checkpoint names ('~' expanded), or None when it is empty.

  ConfigError when it does not exist, or is a folder without checkpoints.
  """
  value = str(config.get("init", {}).get("checkpoint", "") or "").strip()
  if not value:
    return None
  path = pathlib.Path(value).expanduser()
  if path.is_dir():
    if not has_checkpoints(path):
      raise ConfigError(f"{FIELD}={value!r}: the folder holds no checkpoints (give a workdir with checkpoints/ or a "
                        ".pth / .safetensors / .npz state dict)")
  elif not path.is_file():
    raise ConfigError(f"{FIELD}={value!r}: no such file or workdir")
  return path


def check_start(config: Any, workdir: str | pathlib.Path) -> None:
  """The start's settings, checked before training creates or compiles anything (ConfigError).

  Resuming (workdir holds checkpoints) ignores init.checkpoint; without it, backbone_weights must resolve
  as before. With init.checkpoint, backbone_weights is looked at only if the checkpoint lacks the backbone.
  """
  if config.get("init", {}).get("checkpoint"):
    if not has_checkpoints(workdir):
      checkpoint_path(config)
    return
  backbone_weights_path(config)


def _shapes(variables: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  return {f"{c}/{jax.tree_util.keystr(p, simple=True, separator='/')}": tuple(np.shape(x))
          for c in ("params", "batch_stats") for p, x in jax.tree_util.tree_flatten_with_path(variables.get(c, {}))[0]}


def _from_workdir(variables: Mapping[str, Any], config: Any, path: pathlib.Path) -> dict[str, Any]:
  loaded = restore_variables(path)
  want, got = _shapes(variables), _shapes(loaded)
  for name, shape in want.items():
    if name not in got:
      raise ConfigError(f"{FIELD}={str(path)!r}: its checkpoint has no {name!r} {shape}, which this config's network "
                        "has (another architecture or skeleton)")
    if got[name] != shape:
      raise ConfigError(f"{FIELD}={str(path)!r}: {name!r} has shape {got[name]} there but {shape} in this config's "
                        "network (another architecture or skeleton)")
  extra = sorted(set(got) - set(want))
  if extra:
    raise ConfigError(f"{FIELD}={str(path)!r}: its checkpoint has {extra[0]!r}, which this config's network lacks")
  saved = workdir_lib.read_run_config(path) or {}
  for key, old, new in workdir_lib.differences(saved, workdir_lib.flatten(config)):
    if any(key == f.rstrip(".") or key.startswith(f) for f in workdir_lib.MEANING_FIELDS):
      logging.warning("%s: the weights were trained with %s = %r, this run uses %r", FIELD, key, old, new)
  logging.info("%s: starting from every variable of %s", FIELD, path)
  return {"params": loaded["params"], "batch_stats": loaded["batch_stats"]}


def _from_file(variables: Mapping[str, Any], config: Any, path: pathlib.Path) -> dict[str, Any]:
  try:
    state_dict = released.load_released_state_dict(path)
    new, report = released.import_state_dict(state_dict, variables, path, config)
  except UserError as e:
    raise ConfigError(f"{FIELD}: {e}") from None
  logging.info("%s: loaded %s from %s; kept as initialised (absent from the file): %s; skipped: %d unused keys",
               FIELD, ", ".join(report["loaded"]), path, ", ".join(report["kept"]) or "nothing", len(report["skipped"]))
  if "backbone" in report["kept"]:  # e.g. a lifter-only file: the backbone still gets its usual start
    new = load_pretrained(new, backbone_weights_path(config))
  return new


def load(variables: Mapping[str, Any], config: Any, sharding: jax.sharding.Sharding | None = None) -> dict[str, Any]:
  """The initialised `variables` with config.init.checkpoint's weights in them, placed with `sharding`.

  Returns `variables` unchanged when the key is empty. Errors are ConfigErrors naming the file or
  workdir and the key or parameter.
  """
  path = checkpoint_path(config)
  if path is None:
    return dict(variables)
  new = _from_workdir(variables, config, path) if path.is_dir() else _from_file(variables, config, path)
  new = {"params": new["params"], "batch_stats": new.get("batch_stats", {})}
  return jax.device_put(new, sharding) if sharding is not None else new
