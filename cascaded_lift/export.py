"""The inference network serialized with jax.export (StableHLO) and a loader that needs no model code.

  export_predictor(predictor, "exported/")                 # from a live inference.Predictor
  p = load_exported("exported/")                           # imports no Flax and no cascaded_lift.models
  people = p.predict(image_rgb, boxes, focal=(fx, fy))     # same API and results as Predictor.predict

The exported function is (variables, crops (B, S, S, 3) uint8, boxes (B, 4) float32) -> (coords
(B, J, 3) voxel units, pose_3d (B, J, 3) mm), the evaluation forward pass of inference.forward_fn with
the flip test on or off as chosen at export time. The batch dimension B is symbolic, so one artifact
serves every batch size (the loader still pads to the predictor's buckets, which bounds how many
shapes get compiled). Cropping, 2D joints in image pixels and camera space stay on the host and are
shared with inference.Predictor.

Files written to the export folder:
  predict.jax_export   Exported.serialize() bytes (StableHLO + calling convention), lowered for
                       `platforms` (default: the current backend; e.g. ("cpu", "cuda") for both).
  variables.npz        the variables' leaves in flattening order ("leaf_00000", ...).
  meta.json            skeleton, image/output size, box enlargement, flip test, leaf paths and dtypes.

Serialization needs the `flatbuffers` package (a jax.export dependency that jax does not install).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from cascaded_lift import inference
from cascaded_lift import skeleton as skeleton_lib

EXPORT_FILE = "predict.jax_export"
VARIABLES_FILE = "variables.npz"
META_FILE = "meta.json"
FORMAT_VERSION = 1


def _need_flatbuffers() -> None:
  try:
    import flatbuffers  # pylint: disable=g-import-not-at-top,unused-import  # noqa: F401
  except ImportError:
    raise ImportError("jax.export serialization needs the 'flatbuffers' package: pip install flatbuffers") from None


def export_predictor(predictor: inference.Predictor, out_dir: str | pathlib.Path, *,
                     flip_test: bool | None = None, platforms: Sequence[str] | None = None) -> pathlib.Path:
  """Serializes the predictor's network and variables into out_dir (created); returns out_dir.

  Args:
    predictor: a live inference.Predictor.
    out_dir: folder for predict.jax_export, variables.npz and meta.json.
    flip_test: bake the flip test in (None: the predictor's default).
    platforms: lowering platforms, e.g. ("cpu", "cuda"); None = the default backend.
  """
  _need_flatbuffers()
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  flip = predictor.flip_test if flip_test is None else bool(flip_test)
  fn = jax.jit(inference.forward_fn(predictor.model, predictor.skeleton, flip))
  variables = jax.device_get(predictor.variables)
  spec = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), variables)
  b, = jax_export.symbolic_shape("b")
  s = predictor.image_size
  # XLA's own convolutions: the oneDNN custom calls (conv_ops) exist only in this process, and an
  # exported artifact must run wherever jax does. (Imported here: loading needs no model code.)
  from cascaded_lift.models import conv_ops  # pylint: disable=g-import-not-at-top
  with conv_ops.cpu_conv("xla"):
    exported = jax_export.export(fn, platforms=tuple(platforms) if platforms else None)(
        spec, jax.ShapeDtypeStruct((b, s, s, 3), jnp.uint8), jax.ShapeDtypeStruct((b, 4), jnp.float32))
  (out_dir / EXPORT_FILE).write_bytes(bytes(exported.serialize()))

  leaves_with_paths = jax.tree_util.tree_flatten_with_path(variables)[0]
  arrays, dtypes = {}, []
  for i, (_, leaf) in enumerate(leaves_with_paths):
    leaf = np.asarray(leaf)
    dtypes.append(str(leaf.dtype))
    # NumPy cannot store bfloat16 & co. in .npz: keep the raw bits, the dtype name goes into meta.json.
    arrays[f"leaf_{i:05d}"] = leaf if leaf.dtype.kind in "biufc" else leaf.view(f"u{leaf.dtype.itemsize}")
  np.savez(out_dir / VARIABLES_FILE, **arrays)
  meta = {"format_version": FORMAT_VERSION, "skeleton": predictor.skeleton.name,
          "joint_names": list(predictor.skeleton.joint_names), "image_size": predictor.image_size,
          "output_size": predictor.output_size, "bbox_scale": predictor.bbox_scale, "flip_test": flip,
          "platforms": list(exported.platforms), "batch": "symbolic",
          "leaf_paths": [inference._path_str(p) for p, _ in leaves_with_paths],  # pylint: disable=protected-access
          "leaf_dtypes": dtypes}
  (out_dir / META_FILE).write_text(json.dumps(meta, indent=1))
  return out_dir


class ExportedPredictor(inference.BasePredictor):
  """Runs an exported network; predict() as inference.Predictor.predict (flip test fixed at export)."""

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
  _need_flatbuffers()
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
