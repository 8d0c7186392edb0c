"""A config's network: construction, shapes of its variables, and the evaluation forward pass.

Shared by training, evaluation, inference and export, so that each builds the same model and runs the
same forward pass. `ops` is chosen by cascaded_lift.platform; here it is only passed through.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from cascaded_lift import heatmaps
from cascaded_lift.errors import ConfigError
from cascaded_lift import skeleton as skeleton_lib
from cascaded_lift.models.cascade import CascadedLiftNet
from cascaded_lift.models.ops import STANDARD_OPS, LayerOps

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def build_model(config: Any, ops: LayerOps = STANDARD_OPS) -> CascadedLiftNet:
  """CascadedLiftNet from config.model (constructor kwargs), config.skeleton, config.dtype and `ops`."""
  skeleton = skeleton_lib.get_skeleton(config.skeleton)
  dtype = config.get("dtype", "float32")
  if dtype not in DTYPES:
    raise ConfigError(f"config.dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
  model = CascadedLiftNet(num_joints=skeleton.num_joints, num_bones=skeleton.num_bones,
                          depth_bins=config.data.depth_bins, root_index=skeleton.root,
                          dtype=DTYPES[dtype], ops=ops, **dict(config.model))
  if config.data.image_size % model.resnet_output_stride:
    raise ConfigError(f"config: data.image_size {config.data.image_size} must be a multiple of "
                     f"model.resnet_output_stride ({model.resnet_output_stride})")
  return model


def check_heatmap_size(config: Any, model: CascadedLiftNet) -> None:
  """Raises unless config.data.output_size (the targets' heatmap side) is what the model outputs."""
  size, want = config.data.image_size, model.output_size(config.data.image_size)
  if config.data.output_size != want:
    raise ConfigError(
        f"config: data.output_size {config.data.output_size} does not fit the model: its heatmaps for "
        f"data.image_size {size} are image_size / {model.output_stride} = {want} px (model.resnet_output_stride "
        f"{model.resnet_output_stride}, model.num_deconvs {model.num_deconvs})")


def input_shapes(config: Any, batch: int = 1) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
  """(images (B, S, S, 3) uint8, boxes (B, 4) float32) for the config's crop size S."""
  size = config.data.image_size
  return (jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8),
          jax.ShapeDtypeStruct((batch, 4), jnp.float32))


def variables_template(config: Any) -> Any:
  """ShapeDtypeStructs of {'params', 'batch_stats'} for the model of `config` (no compilation)."""
  model = build_model(config)
  images, boxes = input_shapes(config)
  shapes = jax.eval_shape(lambda k: model.init(k, jnp.zeros(images.shape, images.dtype),
                                               jnp.ones(boxes.shape, boxes.dtype), train=False), jax.random.key(0))
  return {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}


def make_predict_step(model: CascadedLiftNet, skeleton: skeleton_lib.Skeleton,
                      flip_test: bool) -> Callable[..., dict[str, jax.Array]]:
  """The evaluation forward pass: (variables, images, boxes) -> {'coords', 'pose_3d'} in float32.

  BatchNorm in inference mode; with flip_test, heatmaps.flip_test averages the prediction with that of
  the mirrored crop. Used by evaluation, the Predictor and export alike.
  """

  def predict(variables, images, boxes):
    apply_fn = functools.partial(model.apply, variables, train=False)
    if flip_test:
      return heatmaps.flip_test(apply_fn, images, boxes, skeleton)
    out = apply_fn(images, boxes)
    return {"coords": out["coords"].astype(jnp.float32), "pose_3d": out["pose_3d"].astype(jnp.float32)}

  return predict
