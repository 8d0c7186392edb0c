"""The train step's trunk-gradient measurement against per-term jax.grad, and the supervision switch in it."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from cascaded_lift import platform
from cascaded_lift import skeleton as sk
from cascaded_lift.configs import tiny
from cascaded_lift.training import losses as ls
from cascaded_lift.training import targets as tg
from cascaded_lift.training.builders import init_variables
from cascaded_lift.training.step import TRUNK_PATTERN, TrainState, make_train_step, make_trunk_gradient_fn

B = 4


def setup(supervision="full", normalization="mean", platform_ops="standard"):
  config = tiny.get_config()
  config.supervision = supervision
  config.loss_normalization = normalization
  config.platform_ops = platform_ops
  skeleton = sk.get_skeleton(config.skeleton)
  model = platform.build_model(config)
  variables = init_variables(model, config, jax.random.key(0))
  rng = np.random.default_rng(0)
  s, hm, d, j = config.data.image_size, config.data.output_size, config.data.depth_bins, skeleton.num_joints
  batch = {"image": rng.uniform(0, 255, (B, s, s, 3)).astype(np.float32),
           "bbox": np.tile(np.array([[0, 0, 64, 64]], np.float32), (B, 1)),
           "joints_vox": np.stack([rng.uniform(0, hm - 1, (B, j)), rng.uniform(0, hm - 1, (B, j)),
                                   rng.uniform(0, d - 1, (B, j))], -1).astype(np.float32),
           "joints_vis": np.ones((B, j), np.float32), "has_depth": np.ones((B,), np.float32),
           "valid": np.ones((B,), np.float32)}
  tx = optax.adam(1e-3)
  state = TrainState(step=jnp.asarray(0, jnp.int32), params=variables["params"],
                     batch_stats=variables["batch_stats"], opt_state=tx.init(variables["params"]))
  return config, skeleton, model, tx, state, batch


def reference_trunk_norms(config, skeleton, model, state, batch):
  """Per term: jax.grad of weight * L_term alone over all parameters, norm over the trunk's paths.

  One compiled gradient for all terms: the term is picked by a one-hot vector of its weight.
  """
  weights = ls.supervised_weights(dict(config.loss_weights), config.supervision)
  target_cfg = {**dict(config.targets), "depth_bins": config.data.depth_bins,
                "heatmap_size": config.data.output_size}
  every_term = {k: 1.0 for k in ls.STAGE1_TERMS}

  @jax.jit
  @jax.grad
  def term_grad(params, pick):
    outputs, _ = model.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"], batch["bbox"],
                             train=True, lifter_train=False, mutable=["batch_stats"])
    targets = tg.make_stage1_targets(batch, skeleton, target_cfg, progress=jnp.float32(0.0))
    terms = ls.stage1_loss(outputs, targets, batch, every_term, config.loss_normalization)[1]
    return sum(pick[i] * terms[k] for i, k in enumerate(ls.STAGE1_TERMS))

  norms = {}
  for i, term in enumerate(ls.STAGE1_TERMS):
    if not weights[term]:
      norms[term] = 0.0
      continue
    pick = np.zeros(len(ls.STAGE1_TERMS), np.float32)
    pick[i] = weights[term]
    grads = traverse_util.flatten_dict(term_grad(state.params, pick), sep="/")
    norms[term] = float(np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64)))
                                    for k, g in grads.items() if re.search(TRUNK_PATTERN, k))))
  return norms


# "cpu": the XLA:CPU plug-in's layers (custom calls without batching rules) must work here too.
@pytest.mark.parametrize("supervision,normalization,platform_ops", [("full", "mean", "standard"),
                                                                    ("jh", "sample_sum", "cpu")])
def test_trunk_gradients_match_per_term_grad(supervision, normalization, platform_ops):
  config, skeleton, model, _, state, batch = setup(supervision, normalization, platform_ops)
  fn = jax.jit(make_trunk_gradient_fn(model, config, skeleton, stage_start=0, stage_steps=10))
  got = jax.device_get(fn(state, batch))
  ref = reference_trunk_norms(config, skeleton, model, state, batch)
  total = sum(ref.values())
  for term in ls.STAGE1_TERMS:
    np.testing.assert_allclose(got[f"trunk_grad_norm/{term}"], ref[term], rtol=1e-4, atol=1e-9, err_msg=term)
    np.testing.assert_allclose(got[f"trunk_grad_share/{term}"], ref[term] / total, rtol=1e-4, atol=1e-9,
                               err_msg=term)
  kept = ls.SUPERVISION[supervision]
  assert all((ref[t] > 0) == (t in kept) for t in ls.STAGE1_TERMS), ref
  np.testing.assert_allclose(sum(got[f"trunk_grad_share/{t}"] for t in ls.STAGE1_TERMS), 1.0, rtol=1e-5)


def test_train_step_uses_the_supervision_switch():
  """The loss the step minimises is the switched one: the joint term is logged, the bone term is not."""
  config, skeleton, model, tx, state, batch = setup("jh")
  step = jax.jit(make_train_step(model, tx, config, skeleton, stage=1, stage_start=0, stage_steps=10))
  _, metrics = step(state, batch)
  assert float(metrics["loss/bone"]) == 0.0 and float(metrics["loss/volume_3d"]) == 0.0
  assert float(metrics["loss/joint"]) > 0 and float(metrics["loss/coord"]) > 0
  np.testing.assert_allclose(metrics["loss"], config.loss_weights.joint * metrics["loss/joint"]
                             + config.loss_weights.coord * metrics["loss/coord"], rtol=1e-6)


def test_unknown_trunk_pattern_is_named():
  config, skeleton, model, _, state, batch = setup()
  fn = make_trunk_gradient_fn(model, config, skeleton, 0, 10, trunk=r"^trunk/")
  with pytest.raises(ValueError, match=r"\^trunk/"):
    fn(state, batch)
