"""A network exported by inference/export.py, loaded and run without model code (no Flax).

  p = load_exported("exported/", max_batch=32)
  people = p.predict(image_rgb, boxes, focal=(fx, fy))     # as inference.predictor.Predictor.predict

Serialization needs the `flatbuffers` package (a jax.export dependency that jax does not install).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from cascaded_lift import skeleton as skeleton_lib
from cascaded_lift.inference import host

EXPORT_FILE = "predict.jax_export"
VARIABLES_FILE = "variables.npz"
META_FILE = "meta.json"
FORMAT_VERSION = 1


def need_flatbuffers() -> None:
  """ImportError with the install command when jax.export's serializer is missing."""
  try:
    import flatbuffers  # pylint: disable=g-import-not-at-top,unused-import  # noqa: F401  (optional dependency)
  except ImportError:
    raise ImportError("jax.export serialization needs the 'flatbuffers' package: pip install flatbuffers") from None


class ExportedPredictor(host.BasePredictor):
  """Runs an exported network; predict() as Predictor.predict (flip test fixed at export)."""

  def __init__(self, exported: jax_export.Exported, variables: Any, meta: dict[str, Any], max_batch: int = 32):
    self.exported = exported
    self.meta = meta
    self.skeleton = skeleton_lib.get_skeleton(meta["skeleton"])
    if list(self.skeleton.joint_names) != list(meta["joint_names"]):
      raise ValueError(f"exported model: joint names {meta['joint_names']} differ from skeleton "
                       f"{self.skeleton.name!r} of this library version")
    self.image_size = int(meta["image_size"])
    self.output_size = int(meta["output_size"])
    self.bbox_scale = float(meta["bbox_scale"])
    self.flip_test = bool(meta["flip_test"])
    self.max_batch = int(max_batch)
    self.variables = jax.device_put(variables)
    self._call = jax.jit(exported.call)

  def _run(self, crops: np.ndarray, boxes: np.ndarray, flip_test: bool) -> tuple[np.ndarray, np.ndarray]:
    if flip_test != self.flip_test:
      raise ValueError(f"this model was exported with flip_test={self.flip_test}; export again to change it")
    return jax.device_get(self._call(self.variables, crops, boxes))


def load_exported(path: str | pathlib.Path, max_batch: int = 32) -> ExportedPredictor:
  """Loads an export folder written by :func:`export_predictor`.

  Raises FileNotFoundError naming a missing file, ValueError for an unknown format version or a
  variables file that does not fit the exported function.
  """
  need_flatbuffers()
  path = pathlib.Path(path)
  for name in (EXPORT_FILE, VARIABLES_FILE, META_FILE):
    if not (path / name).is_file():
      raise FileNotFoundError(f"exported model {str(path)!r}: {name} is missing")
  meta = json.loads((path / META_FILE).read_text())
  if meta.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"exported model {str(path)!r}: format_version {meta.get('format_version')} is not "
                     f"{FORMAT_VERSION}")
  exported = jax_export.deserialize(bytearray((path / EXPORT_FILE).read_bytes()))
  # in_tree is ((variables, crops, boxes), {}): the variables' structure is the first argument's.
  var_def = exported.in_tree.children()[0].children()[0]
  with np.load(path / VARIABLES_FILE) as data:
    leaves = [data[f"leaf_{i:05d}"] for i in range(len(meta["leaf_dtypes"]))]
  leaves = [leaf if str(leaf.dtype) == dt else leaf.view(jnp.dtype(dt))
            for leaf, dt in zip(leaves, meta["leaf_dtypes"])]
  if var_def.num_leaves != len(leaves):
    raise ValueError(f"exported model {str(path)!r}: {VARIABLES_FILE} holds {len(leaves)} arrays, the exported "
                     f"function takes {var_def.num_leaves}")
  for i, (leaf, aval) in enumerate(zip(leaves, exported.in_avals)):
    if tuple(leaf.shape) != tuple(aval.shape):
      raise ValueError(f"exported model {str(path)!r}: variable {meta['leaf_paths'][i]!r} has shape {leaf.shape}, "
                       f"the exported function expects {aval.shape}")
  return ExportedPredictor(exported, jax.tree_util.tree_unflatten(var_def, leaves), meta, max_batch)
