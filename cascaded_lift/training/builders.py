"""Variable initialisation for training: a jitted, sharded init and the ImageNet backbone weights."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

from cascaded_lift.models.build import input_shapes
from cascaded_lift.models.cascade import CascadedLiftNet
from cascaded_lift.weights import convert


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
  logging.info("loading backbone weights from %s", path)
  new = convert.load_resnet_into(variables, path)
  return jax.device_put(new, sharding) if sharding is not None else new
