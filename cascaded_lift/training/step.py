"""The train state and the pure, jit-compiled train step (the evaluation forward pass is models.build's).

`train_step(state, batch) -> (state, metrics)` is built by :func:`make_train_step` for one stage:
  stage 1: everything but the lifter trains, BatchNorm in train mode (the lifter in eval mode, unused
           by the loss); targets are made on the device from the batch's joint coordinates.
  stage 2: only the lifter trains; the rest runs in eval mode, so its BatchNorm statistics stay fixed.
The optimizer's frozen partition (set_to_zero) keeps every other parameter where it was.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from cascaded_lift.training import losses as losses_lib
from cascaded_lift.training import targets as targets_lib
from cascaded_lift.skeleton import Skeleton


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint must hold to resume a stage exactly.

  step: global optimisation step (int32 scalar), counted over both stages.
  params / batch_stats: the model variables.
  opt_state: the optax state of the current stage's optimizer.
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any

  def variables(self) -> dict[str, Any]:
    return {"params": self.params, "batch_stats": self.batch_stats}


def make_train_step(model: Any, tx: optax.GradientTransformation, cfg: Any, skeleton: Skeleton,
                    stage: int, stage_start: int, stage_steps: int, schedule: optax.Schedule | None = None
                    ) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
  """Builds the pure train step of `stage` (1 or 2), which began at global step `stage_start`;
  `stage_steps` (its length) drives the bone-sigma annealing."""
  weights = dict(cfg.loss_weights)
  target_cfg = {**dict(cfg.targets), "depth_bins": cfg.data.depth_bins, "heatmap_size": cfg.data.output_size}

  def loss_fn(params, state: TrainState, batch):
    variables = {"params": params, "batch_stats": state.batch_stats}
    outputs, updates = model.apply(variables, batch["image"], batch["bbox"], train=(stage == 1),
                                   lifter_train=(stage == 2), mutable=["batch_stats"])
    if stage == 1:
      progress = (state.step - stage_start).astype(jnp.float32) / max(stage_steps, 1)
      targets = targets_lib.make_stage1_targets(batch, skeleton, target_cfg, progress=progress)
      total, terms = losses_lib.stage1_loss(outputs, targets, batch, weights)
      terms["bone_sigma"] = targets["bone_sigma"]
    else:
      total, terms = losses_lib.stage2_loss(outputs, batch, skeleton, geodesic=cfg.geodesic_normalization)
    return total, (terms, updates["batch_stats"])

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    (total, (terms, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, state, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": total, **{(k if k == "bone_sigma" else f"loss/{k}"): v for k, v in terms.items()},
               "grad_norm": optax.global_norm(grads)}
    if schedule is not None:
      metrics["learning_rate"] = schedule(state.step - stage_start)  # the rate this update used
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats, opt_state=opt_state)
    return new_state, metrics

  return train_step
