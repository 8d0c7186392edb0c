"""Variable initialisation for training: a jitted, sharded init and the ImageNet backbone weights."""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

from cascaded_lift import platform
from cascaded_lift.errors import ConfigError
from cascaded_lift.models.build import input_shapes
from cascaded_lift.models.cascade import CascadedLiftNet
from cascaded_lift.weights import convert, imagenet


def init_variables(model: CascadedLiftNet, config: Any, rng: jax.Array,
                   sharding: jax.sharding.Sharding | None = None) -> dict[str, Any]:
  """{'params', 'batch_stats'} created directly with `sharding` (replicated) by a jitted init, compiled
  with platform.init_compiler_options(config) (on CPU: without LLVM's optimisations, by default)."""
  images, boxes = input_shapes(config)

  def init(key):
    variables = model.init(key, jnp.zeros(images.shape, images.dtype), jnp.ones(boxes.shape, boxes.dtype),
                           train=False)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}

  compiled = jax.jit(init, out_shardings=sharding).lower(rng).compile(
      compiler_options=platform.init_compiler_options(config))
  return compiled(rng)


def backbone_weights_path(config: Any) -> pathlib.Path | None:
  """The file config.init.backbone_weights names, or None for "none" (a random start on purpose).

  A registered name ("resnet50") means its converted file in the ImageNet cache; "" and a name not yet
  cached raise ConfigError giving the `cascaded-lift-weights` command to run (weights/imagenet.py).
  Only checks that the file exists, so training calls it first, before any expensive work.
  """
  return imagenet.resolve_backbone_weights(config.init.get("backbone_weights", ""))


def load_pretrained(variables: dict[str, Any], path: str | pathlib.Path | None,
                    sharding: jax.sharding.Sharding | None = None) -> dict[str, Any]:
  """Loads ImageNet ResNet weights (torchvision naming: .safetensors, .npz or .pth) into the backbone.

  path None (config.init.backbone_weights = "none") keeps the random initialisation, and says so.
  """
  if path is None:
    logging.info("backbone starts from random weights (config.init.backbone_weights='none')")
    return variables
  logging.info("loading backbone weights from %s", path)
  try:
    new = convert.load_resnet_into(variables, path)
  except (ValueError, KeyError) as e:  # a file for another network (missing / mis-shaped keys), or damaged
    raise ConfigError(f"config.init.backbone_weights: {e}") from None
  return jax.device_put(new, sharding) if sharding is not None else new
