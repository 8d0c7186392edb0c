"""Model construction and variable initialisation from a config (shared by training, eval, inference)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

from cascaded_lift import skeleton as skeleton_lib
from cascaded_lift.models import CascadedLiftNet

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def build_model(config: Any) -> CascadedLiftNet:
  """CascadedLiftNet from config.model (constructor kwargs), config.skeleton and config.dtype."""
  skeleton = skeleton_lib.get_skeleton(config.skeleton)
  kwargs = dict(config.model)
  model = CascadedLiftNet(num_joints=skeleton.num_joints, num_bones=skeleton.num_bones,
                          depth_bins=config.data.depth_bins, root_index=skeleton.root,
                          dtype=_DTYPES[config.get("dtype", "float32")], **kwargs)
  if config.data.image_size % model.resnet_output_stride:
    raise ValueError(f"config: data.image_size {config.data.image_size} must be a multiple of "
                     f"model.resnet_output_stride ({model.resnet_output_stride})")
  return model


def check_heatmap_size(config: Any, model: CascadedLiftNet) -> None:
  """Raises unless config.data.output_size (the targets' heatmap side) is what the model outputs."""
  size, want = config.data.image_size, model.output_size(config.data.image_size)
  if config.data.output_size != want:
    raise ValueError(
        f"config: data.output_size {config.data.output_size} does not fit the model: its heatmaps for "
        f"data.image_size {size} are image_size / {model.output_stride} = {want} px (model.resnet_output_stride "
        f"{model.resnet_output_stride}, model.num_deconvs {model.num_deconvs})")


def input_shapes(config: Any, batch: int = 1) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
  size = config.data.image_size
  return (jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8),
          jax.ShapeDtypeStruct((batch, 4), jnp.float32))


def init_variables(model: CascadedLiftNet, config: Any, rng: jax.Array,
                   sharding: jax.sharding.Sharding | None = None) -> dict[str, Any]:
  """{'params', 'batch_stats'} created directly with `sharding` (replicated) by a jitted init."""
  images, boxes = input_shapes(config)

  def init(key):
    variables = model.init(key, jnp.zeros(images.shape, images.dtype), jnp.ones(boxes.shape, boxes.dtype),
                           train=False)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}

  return jax.jit(init, out_shardings=sharding)(rng)


def load_pretrained(variables: dict[str, Any], path: str, sharding: jax.sharding.Sharding | None = None
                    ) -> dict[str, Any]:
  """Loads ImageNet ResNet weights (torchvision naming: .safetensors, .npz or .pth) into the backbone."""
  from cascaded_lift import convert  # pylint: disable=g-import-not-at-top
  logging.info("loading backbone weights from %s", path)
  new = convert.load_resnet_into(variables, path)
  return jax.device_put(new, sharding) if sharding is not None else new
