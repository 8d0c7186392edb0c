"""Optimizers per training stage: Adam with piecewise-constant step decay, and freezing by regex.

A stage config holds `optimizer` ("adam", the paper's, or "sgd" with momentum 0.9), `learning_rate`, `decay_epochs` (epochs after which the rate is multiplied by
`decay_factor`), `trainable` (regexes over '/'-joined parameter paths, e.g. "^lifter/"; a parameter is
trained when any pattern matches) and optional `weight_decay`. Frozen parameters get
optax.set_to_zero(), so their optimizer state is empty and they never move.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import flax
import jax
import optax


def path_str(path: tuple[Any, ...]) -> str:
  """'backbone/stage1_block0/conv1/kernel' for a jax tree path of dict keys."""
  parts = []
  for p in path:
    parts.append(str(getattr(p, "key", getattr(p, "name", p))))
  return "/".join(parts)


def trainable_labels(params: Any, patterns: Sequence[str]) -> Any:
  """A pytree like `params` of "train"/"freeze" labels, from regexes over parameter paths."""
  compiled = [re.compile(p) for p in patterns]
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "train" if any(c.search(path_str(path)) for c in compiled) else "freeze", params)


def step_decay_schedule(learning_rate: float, steps_per_epoch: int, decay_epochs: Sequence[float],
                        decay_factor: float) -> optax.Schedule:
  """lr, multiplied by decay_factor after each epoch in decay_epochs (the paper: x0.1 at epoch 17)."""
  boundaries = {int(round(e * steps_per_epoch)): decay_factor for e in decay_epochs}
  return optax.piecewise_constant_schedule(learning_rate, boundaries)


def make_optimizer(stage_cfg: Any, params: Any, steps_per_epoch: int) -> tuple[optax.GradientTransformation,
                                                                              optax.Schedule]:
  """Adam (AdamW when weight_decay > 0; SGD with momentum when optimizer == "sgd") on the trainable
  parameters, set_to_zero elsewhere."""
  schedule = step_decay_schedule(stage_cfg.learning_rate, steps_per_epoch, tuple(stage_cfg.decay_epochs),
                                 stage_cfg.decay_factor)
  wd = float(stage_cfg.get("weight_decay", 0.0))
  name = stage_cfg.get("optimizer", "adam")
  if name == "adam":
    adam = optax.adamw(schedule, weight_decay=wd) if wd > 0 else optax.adam(schedule)
  elif name == "sgd":
    adam = optax.chain(optax.add_decayed_weights(wd), optax.sgd(schedule, momentum=0.9))
  else:
    raise ValueError(f"stage optimizer must be 'adam' or 'sgd', got {name!r}")
  if stage_cfg.get("grad_clip_norm"):
    adam = optax.chain(optax.clip_by_global_norm(stage_cfg.grad_clip_norm), adam)
  labels = trainable_labels(params, tuple(stage_cfg.trainable))
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(labels)) if isinstance(labels, dict) else {}
  if flat and "train" not in flat.values():
    raise ValueError(f"stage {stage_cfg.get('name', '?')}: no parameter matches trainable="
                     f"{list(stage_cfg.trainable)}")
  return optax.multi_transform({"train": adam, "freeze": optax.set_to_zero()}, labels), schedule
