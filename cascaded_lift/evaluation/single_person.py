"""Single-person evaluation (Human3.6M, synthetic): predictions over an eval split, metrics, tables, plots.

Writes to <workdir>/eval/: metrics.json (mpjpe, pa_mpjpe, rigid_pa_mpjpe, n_mpjpe, pck3d, auc3d,
num_samples, per-action tables where the set has actions, mean_pose_mpjpe - the error of always
predicting the training mean pose - where the 3D training set is available, and the stage-1 network's
2.5D error in voxels, voxel_error and voxel_error_x/y/z), predictions.json, and PNGs
(per-action errors, example crops with the predicted 2D skeleton next to 3D prediction vs ground truth).

Predictions are compared raw with the raw root-relative ground truth
over the skeleton's evaluation joints, as the paper does.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import numpy as np
from absl import logging

from cascaded_lift import metrics as metrics_lib
from cascaded_lift import platform
from cascaded_lift import skeleton as skeleton_lib
from cascaded_lift.data import pipeline as data_pipeline
from cascaded_lift.inference import plots
from cascaded_lift.models.build import make_predict_step
from cascaded_lift.training.checkpoints import restore_variables


def collect_predictions(config: Any, variables: dict[str, Any], split: str | None = None) -> dict[str, np.ndarray]:
  """Runs the model over the eval split; returns host arrays of every valid example."""
  skeleton = skeleton_lib.get_skeleton(config.skeleton)
  model = platform.build_model(config)
  predict = jax.jit(make_predict_step(model, skeleton, flip_test=config.eval.flip_test))
  variables = jax.device_put(variables, jax.local_devices()[0])
  keep = ("joints_cam", "joints_vox", "joints_vis", "image_id", "subject", "action", "frame", "bbox")
  out: dict[str, list[np.ndarray]] = {k: [] for k in ("pose_3d", "coords", "image") + keep}
  num_images = config.eval.get("num_plot_examples", 4)
  data_cfg = config.data
  if split is not None:
    data_cfg = config.data.copy_and_resolve_references()
    data_cfg.eval.split = split
  for batch in data_pipeline.create_eval_iterator(data_cfg, batch_size=config.eval.batch_size):
    pred = jax.device_get(predict(variables, batch["image"], batch["bbox"]))
    valid = np.asarray(batch["valid"]) > 0
    out["pose_3d"].append(pred["pose_3d"][valid])
    out["coords"].append(pred["coords"][valid])
    for k in keep:
      if k in batch:
        out[k].append(np.asarray(batch[k])[valid])
    if sum(len(x) for x in out["image"]) < num_images:
      out["image"].append(np.asarray(batch["image"])[valid])
  return {k: np.concatenate(v) for k, v in out.items() if v}


def voxel_errors(preds: dict[str, np.ndarray], num_joints: int) -> dict[str, float]:
  """The stage-1 network's 2.5D error: soft-argmax 'coords' against the 'joints_vox' targets (N, J, 3).

  In voxels of the output grid (x, y heatmap px, z depth bins), over the first `num_joints` joints where
  'joints_vis' is set. voxel_error is the mean Euclidean distance, voxel_error_x/y/z the mean absolute
  error per axis. Empty when the eval set has no voxel targets.
  """
  if "joints_vox" not in preds or "coords" not in preds:
    return {}
  pred = np.asarray(preds["coords"], np.float64)[:, :num_joints]
  gt = np.asarray(preds["joints_vox"], np.float64)[:, :num_joints]
  vis = np.asarray(preds.get("joints_vis", np.ones(gt.shape[:2])), np.float64)[:, :num_joints] > 0
  if not vis.any():
    return {}
  diff = (pred - gt)[vis]
  out = {"voxel_error": float(np.linalg.norm(diff, axis=-1).mean())}
  out.update({f"voxel_error_{a}": float(np.abs(diff[:, i]).mean()) for i, a in enumerate("xyz")})
  return out


def evaluate_workdir(config: Any, workdir: str | pathlib.Path, *, variables: dict[str, Any] | None = None,
                     step: int | None = None, split: str | None = None) -> dict[str, Any]:
  """Evaluates `variables` (or the latest / `step` checkpoint of workdir) and writes workdir/eval/*."""
  workdir = pathlib.Path(workdir)
  out_dir = workdir / "eval"
  if variables is None:  # before anything is written: a mistyped workdir stays absent
    variables = restore_variables(workdir, step)
  out_dir.mkdir(parents=True, exist_ok=True)
  skeleton = skeleton_lib.get_skeleton(config.skeleton)
  preds = collect_predictions(config, variables, split)
  nj = skeleton.num_eval_joints
  root = skeleton.root
  # Root alignment (docs/design.md section 7): both poses relative to their own root joint; the lifter's
  # output root is near, not exactly at, zero.
  gt = preds["joints_cam"] - preds["joints_cam"][:, root:root + 1]
  pred = preds["pose_3d"] - preds["pose_3d"][:, root:root + 1]
  pred3d, gt3d = pred[:, :nj], gt[:, :nj]
  results: dict[str, Any] = {
      "mpjpe": metrics_lib.mpjpe(pred3d, gt3d),
      "pa_mpjpe": metrics_lib.pa_mpjpe(pred3d, gt3d),
      "rigid_pa_mpjpe": metrics_lib.rigid_pa_mpjpe(pred3d, gt3d),
      "n_mpjpe": metrics_lib.n_mpjpe(pred3d, gt3d),
      "pck3d": metrics_lib.pck3d(pred3d, gt3d),
      "auc3d": metrics_lib.auc3d(pred3d, gt3d),
      "num_samples": int(len(pred3d)),
      **voxel_errors(preds, nj),
  }
  if config.eval.get("mean_pose_baseline", True):
    # The "always predict the training mean pose" baseline tells how much the model learned.
    mean_pose = data_pipeline.mean_pose(config.data)
    baseline = np.broadcast_to(mean_pose[None, :nj], gt3d.shape)
    results["mean_pose_mpjpe"] = metrics_lib.mpjpe(baseline, gt3d)
  if config.data.eval.name == "human36m":
    per_sample = {"mpjpe": metrics_lib.mpjpe(pred3d, gt3d, per_sample=True),
                  "pa_mpjpe": metrics_lib.pa_mpjpe(pred3d, gt3d, per_sample=True),
                  "rigid_pa_mpjpe": metrics_lib.rigid_pa_mpjpe(pred3d, gt3d, per_sample=True)}
    tables = {name: metrics_lib.per_action(errors, preds["action"]) for name, errors in per_sample.items()}
    results["per_action"] = tables
    (out_dir / "h36m_tables.md").write_text(metrics_lib.format_action_table(
        {"MPJPE": tables["mpjpe"], "PA-MPJPE": tables["pa_mpjpe"], "PA-MPJPE (rigid)": tables["rigid_pa_mpjpe"]}))
    plots.save_bar_chart(out_dir / "per_action_mpjpe.png", tables["mpjpe"]["per_action"], "MPJPE (mm)",
                       "MPJPE per action")
  per_joint = np.linalg.norm(pred3d - gt3d, axis=-1).mean(0)
  plots.save_bar_chart(out_dir / "per_joint_mpjpe.png",
                     {n: float(e) for n, e in zip(skeleton.joint_names[:nj], per_joint)}, "MPJPE (mm)",
                     "MPJPE per joint")
  n_img = min(len(preds.get("image", [])), config.eval.get("num_plot_examples", 4))
  if n_img:
    scale = config.data.image_size / config.data.output_size
    plots.save_examples(out_dir / "examples.png", preds["image"][:n_img], preds["coords"][:n_img, :, :2] * scale,
                      pred[:n_img], gt[:n_img], skeleton)
  with open(out_dir / "metrics.json", "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
  records = [{"image_id": int(preds["image_id"][i]) if "image_id" in preds else i,
              "pose_3d_mm": np.round(pred[i], 2).tolist()} for i in range(len(pred3d))]
  with open(out_dir / "predictions.json", "w", encoding="utf-8") as f:
    json.dump(records, f)
  logging.info("evaluation: %s", {k: v for k, v in results.items() if not isinstance(v, dict)})
  return results
