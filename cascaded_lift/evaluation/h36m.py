"""Human3.6M evaluation in the paper's setting: the detected boxes when the dataset has them.

  metrics = evaluate_workdir(config, workdir)   # the evaluator of eval datasets named "human36m"

The paper, like 3DMPPE whose data it uses, evaluates Human3.6M on the boxes and root depths of
bbox_root/bbox_root_human36m_output.json. config.data.eval.boxes chooses (configs/h36m.py: "auto"):
  "auto"      the detected boxes when the dataset was built with that file, else the ground-truth boxes
              (with a warning in the log);
  "detected"  the detected boxes (an error when the dataset stores none);
  "gt"        the annotated (ground-truth) boxes.
The older flag data.eval.use_det_bbox = True means "detected".

Detected boxes are CROP boxes (RootNet squared and enlarged them before writing the file) and are
cropped as they are; the ground-truth boxes are PERSON boxes, processed once (clip, square, enlarge
1.25x). A test frame without a detection (has_det = 0) falls back to its ground-truth box; the count is
reported.

With detected boxes the evaluation runs twice, so both settings are on record: on the ground-truth
boxes into <workdir>/eval/gt_boxes/ (single_person's full output: metrics.json, tables, plots), then on
the detected boxes into <workdir>/eval/. <workdir>/eval/metrics.json then holds
  the detected-box metrics at the top level (the paper's setting: mpjpe, pa_mpjpe, ..., per_action),
  "boxes": {"used": "detected" | "gt", "requested", "box_kind", "records", "detected", "gt_fallback",
            "root_depth", "root_error_mm"},
  "gt_boxes": the ground-truth-box metrics (only when the top level used detections).
Without detections the top level is the ground-truth-box result and "boxes" says so.

Root depths: the lifter predicts root-relative 3D in mm directly, so the root depth enters neither
MPJPE nor PA-MPJPE (3DMPPE's PoseNet back-projects its 2.5D output with it; this model does not).
The detected roots are scored on their own: boxes.root_error_mm is the mean distance (mm) between
det_root_cam and the annotated root joint over the frames with a detection.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import tempfile
from typing import Any

import numpy as np
from absl import logging

from cascaded_lift.data import config as data_config
from cascaded_lift.data import pipeline as data_pipeline
from cascaded_lift.data import schema
from cascaded_lift.data import sources
from cascaded_lift.evaluation import single_person
from cascaded_lift.training.checkpoints import restore_variables

GT_DIR = "gt_boxes"


def _eval_spec(config: Any, split: str | None) -> Any:
  spec = config.data.eval
  if split is not None:
    spec = spec.copy_and_resolve_references()
    with spec.unlocked():
      spec.split = split
  return spec


def detection_summary(src: sources.PoseSource) -> dict[str, Any]:
  """Counts of the records with and without a detection, and the detected roots' mean error (mm).

  Reads every record of `src` once. root_error_mm = mean |det_root_cam - joints_cam[root]| over the
  records with has_det = 1 (None when there are none).
  """
  root = src.skeleton.root
  errors, n = [], len(src)
  for i in range(n):
    record = src[i]
    if float(record.get("has_det", 0.0)) > 0:
      gt_root = np.asarray(record["joints_cam"], np.float64)[root]
      errors.append(float(np.linalg.norm(np.asarray(record["det_root_cam"], np.float64) - gt_root)))
  return {"records": n, "detected": len(errors), "gt_fallback": n - len(errors),
          "root_error_mm": float(np.mean(errors)) if errors else None}


def _with_boxes(config: Any, boxes: str, mean_pose_baseline: bool | None = None) -> Any:
  """A copy of config that evaluates on `boxes` ("detected" or "gt")."""
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.data.eval.boxes = boxes
    cfg.data.eval.use_det_bbox = boxes == "detected"
    if mean_pose_baseline is not None:
      cfg.eval.mean_pose_baseline = mean_pose_baseline
  return cfg


def _write(out_dir: pathlib.Path, results: dict[str, Any]) -> None:
  with open(out_dir / "metrics.json", "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)


def evaluate_workdir(config: Any, workdir: str | pathlib.Path, *, variables: dict[str, Any] | None = None,
                     step: int | None = None, split: str | None = None) -> dict[str, Any]:
  """Evaluates `variables` (or the latest / `step` checkpoint of workdir) on config.data.eval, into
  workdir/eval/ (module docstring); returns what eval/metrics.json holds."""
  workdir = pathlib.Path(workdir)
  if variables is None:  # before anything is written: a mistyped workdir stays absent
    variables = restore_variables(workdir, step)
  spec = _eval_spec(config, split)
  src = sources.load_source(spec, bool(config.data.get("build_if_missing", True)))
  requested = data_config.eval_boxes(spec)
  used = data_pipeline.choose_eval_boxes(spec, src)  # warns when "auto" finds no detections
  boxes: dict[str, Any] = {"used": used, "requested": requested,
                           "box_kind": schema.BOX_CROP if used == "detected" else schema.BOX_PERSON}
  if used == "gt":
    results = single_person.evaluate_workdir(_with_boxes(config, "gt"), workdir, variables=variables, split=split)
    boxes.update(records=int(results["num_samples"]), detected=0, gt_fallback=int(results["num_samples"]),
                 root_depth=None, root_error_mm=None)
    results["boxes"] = boxes
    _write(workdir / "eval", results)
    logging.info("evaluation (%s): ground-truth boxes", src.label)
    return results

  boxes.update(detection_summary(src), root_depth="detection")
  eval_dir = workdir / "eval"
  eval_dir.mkdir(parents=True, exist_ok=True)
  # Ground-truth boxes first, into a scratch workdir whose eval/ then becomes eval/gt_boxes/.
  with tempfile.TemporaryDirectory(dir=eval_dir, prefix=".gt_boxes-") as scratch:
    gt = single_person.evaluate_workdir(_with_boxes(config, "gt"), scratch, variables=variables, split=split)
    shutil.rmtree(eval_dir / GT_DIR, ignore_errors=True)
    shutil.move(str(pathlib.Path(scratch) / "eval"), str(eval_dir / GT_DIR))
  # The paper's setting into eval/; the mean-pose baseline depends on the poses only, not on the boxes.
  results = single_person.evaluate_workdir(_with_boxes(config, "detected", mean_pose_baseline=False), workdir,
                                           variables=variables, split=split)
  if "mean_pose_mpjpe" in gt:
    results["mean_pose_mpjpe"] = gt["mean_pose_mpjpe"]
  results["boxes"] = boxes
  results["gt_boxes"] = gt
  _write(eval_dir, results)
  logging.info("evaluation (%s): detected boxes for %d of %d frames (mpjpe %.2f mm; ground-truth boxes %.2f mm, "
               "in eval/%s/)", src.label, boxes["detected"], boxes["records"], results["mpjpe"], gt["mpjpe"], GT_DIR)
  return results
