"""The train state and the pure, jit-compiled train step (the evaluation forward pass is models.build's).

`train_step(state, batch) -> (state, metrics)` is built by :func:`make_train_step` for one stage:
  stage 1: everything but the lifter trains, BatchNorm in train mode (the lifter in eval mode, unused
           by the loss); targets are made on the device from the batch's joint coordinates.
  stage 2: only the lifter trains; the rest runs in eval mode, so its BatchNorm statistics stay fixed.
The optimizer's frozen partition (set_to_zero) keeps every other parameter where it was.

`make_trunk_gradient_fn` measures, for stage 1, how much each loss term drives the shared trunk (the
backbone and the context branch): the norm of each weighted term's gradient with respect to the trunk's
parameters, and its share of their sum (docs/design.md section 5.3). The loop calls it at logging steps.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import flax
from flax import traverse_util
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


# The shared trunk: every stage-1 head reads it, so its gradient is where the terms compete.
TRUNK_PATTERN = r"^(backbone|context)/"


def _stage1_settings(cfg: Any) -> tuple[dict[str, float], str, dict[str, Any]]:
  """(loss weights after the supervision switch, dense-term reduction, target settings) of a config."""
  weights = losses_lib.supervised_weights(dict(cfg.loss_weights), cfg.get("supervision", "full"))
  reduce = cfg.get("loss_normalization", "mean")
  target_cfg = {**dict(cfg.targets), "depth_bins": cfg.data.depth_bins, "heatmap_size": cfg.data.output_size}
  return weights, reduce, target_cfg


def make_train_step(model: Any, tx: optax.GradientTransformation, cfg: Any, skeleton: Skeleton,
                    stage: int, stage_start: int, stage_steps: int, schedule: optax.Schedule | None = None
                    ) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
  """Builds the pure train step of `stage` (1 or 2), which began at global step `stage_start`;
  `stage_steps` (its length) drives the bone-sigma annealing."""
  weights, reduce, target_cfg = _stage1_settings(cfg)

  def loss_fn(params, state: TrainState, batch):
    variables = {"params": params, "batch_stats": state.batch_stats}
    outputs, updates = model.apply(variables, batch["image"], batch["bbox"], train=(stage == 1),
                                   lifter_train=(stage == 2), mutable=["batch_stats"])
    if stage == 1:
      progress = (state.step - stage_start).astype(jnp.float32) / max(stage_steps, 1)
      targets = targets_lib.make_stage1_targets(batch, skeleton, target_cfg, progress=progress)
      total, terms = losses_lib.stage1_loss(outputs, targets, batch, weights, reduce)
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


def make_trunk_gradient_fn(model: Any, cfg: Any, skeleton: Skeleton, stage_start: int, stage_steps: int,
                           trunk: str = TRUNK_PATTERN
                           ) -> Callable[[TrainState, dict[str, jax.Array]], dict[str, jax.Array]]:
  """Builds fn(state, batch) -> {'trunk_grad_norm/<term>', 'trunk_grad_share/<term>'} for stage 1.

  For each stage-1 term k, the norm of the gradient of weight_k * L_k with respect to the parameters
  whose path ('backbone/stage1_block0/conv1/kernel') matches the regex `trunk`, and its share of the sum
  of those norms (shares add up to 1 over the active terms). Terms the config switches off (weight 0,
  e.g. by `supervision`) report 0. One forward pass and one backward pass per active term, with
  BatchNorm in train mode as in the train step.
  """
  weights, reduce, target_cfg = _stage1_settings(cfg)
  active = [k for k in losses_lib.STAGE1_TERMS if weights[k] != 0]
  pattern = re.compile(trunk)

  def fn(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    flat = traverse_util.flatten_dict(state.params, sep="/")
    trunk_params = {k: v for k, v in flat.items() if pattern.search(k)}
    if not trunk_params:
      raise ValueError(f"make_trunk_gradient_fn: no parameter path matches {trunk!r}")
    rest = {k: v for k, v in flat.items() if k not in trunk_params}

    def weighted_terms(trunk_params):
      params = traverse_util.unflatten_dict({**rest, **trunk_params}, sep="/")
      outputs, _ = model.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                               batch["bbox"], train=True, lifter_train=False, mutable=["batch_stats"])
      progress = (state.step - stage_start).astype(jnp.float32) / max(stage_steps, 1)
      targets = targets_lib.make_stage1_targets(batch, skeleton, target_cfg, progress=progress)
      _, terms = losses_lib.stage1_loss(outputs, targets, batch, weights, reduce)
      return jnp.stack([jnp.asarray(weights[k], jnp.float32) * terms[k] for k in active])

    # One forward pass, then one pull-back per term. Not jax.jacrev: that vmaps the backward pass, and
    # the CPU plug-in's custom calls have no batching rule.
    values, pull_back = jax.vjp(weighted_terms, trunk_params)
    norms = []
    for i in range(len(active)):
      (grads,) = pull_back(jnp.zeros_like(values).at[i].set(1.0))
      norms.append(jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(grads))))
    norms = jnp.stack(norms)
    shares = norms / jnp.maximum(jnp.sum(norms), 1e-30)
    out = {}
    for name in losses_lib.STAGE1_TERMS:
      i = active.index(name) if name in active else None
      out[f"trunk_grad_norm/{name}"] = norms[i] if i is not None else jnp.zeros((), jnp.float32)
      out[f"trunk_grad_share/{name}"] = shares[i] if i is not None else jnp.zeros((), jnp.float32)
    return out

  return fn
