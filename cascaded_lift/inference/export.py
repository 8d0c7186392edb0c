"""The inference network serialized with jax.export (StableHLO); inference/exported.py loads it.

  export_predictor(predictor, "exported/")                 # from a live inference.predictor.Predictor
  p = exported.load_exported("exported/")                  # imports no Flax and no cascaded_lift.models
  people = p.predict(image_rgb, boxes, focal=(fx, fy))     # same API and results as Predictor.predict

The exported function is (variables, crops (B, S, S, 3) uint8, boxes (B, 4) float32) -> (coords
(B, J, 3) voxel units, pose_3d (B, J, 3) mm), the evaluation forward pass (models.build.make_predict_step)
of the network built from the standard layers (models.STANDARD_OPS: an artifact must run wherever jax
does, and the CPU plug-in's custom calls exist only in this process), with the flip test on or off as
chosen at export time. The batch dimension B is symbolic, so one artifact
serves every batch size (the loader still pads to the predictor's buckets, which bounds how many
shapes get compiled). Cropping, 2D joints in image pixels and camera space stay on the host and are
shared with the live Predictor (inference/host.py).

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

from cascaded_lift.inference.exported import EXPORT_FILE, FORMAT_VERSION, META_FILE, VARIABLES_FILE, need_flatbuffers
from cascaded_lift.inference.predictor import Predictor, path_str
from cascaded_lift.models import STANDARD_OPS
from cascaded_lift.models.build import build_model, make_predict_step


def export_predictor(predictor: Predictor, out_dir: str | pathlib.Path, *,
                     flip_test: bool | None = None, platforms: Sequence[str] | None = None) -> pathlib.Path:
  """Serializes the predictor's network and variables into out_dir (created); returns out_dir.

  Args:
    predictor: a live Predictor.
    out_dir: folder for predict.jax_export, variables.npz and meta.json.
    flip_test: bake the flip test in (None: the predictor's default).
    platforms: lowering platforms, e.g. ("cpu", "cuda"); None = the default backend.
  """
  need_flatbuffers()
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  flip = predictor.flip_test if flip_test is None else bool(flip_test)
  step = make_predict_step(build_model(predictor.config, STANDARD_OPS), predictor.skeleton, flip)
  fn = jax.jit(lambda v, crops, boxes: tuple(step(v, crops, boxes)[k] for k in ("coords", "pose_3d")))
  variables = jax.device_get(predictor.variables)
  spec = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), variables)
  b, = jax_export.symbolic_shape("b")
  s = predictor.image_size
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
          "leaf_paths": [path_str(p) for p, _ in leaves_with_paths],
          "leaf_dtypes": dtypes}
  (out_dir / META_FILE).write_text(json.dumps(meta, indent=1))
  return out_dir


