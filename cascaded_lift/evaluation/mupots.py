"""MuPoTS-3D multi-person evaluation driver: top-down predictions per frame -> MuPoTSEvaluator -> tables.

  results = evaluate_mupots(config, variables, config.data.eval, out_dir)             # the paper's setting
  results = evaluate_mupots(config, variables, builder, out_dir, boxes="gt")          # annotated boxes
  results = evaluate_workdir(config, workdir)   # eval.py: latest checkpoint, writes workdir/eval/

Defaults are the paper's protocol (3DMPPE's evaluation): RootNet's detected boxes and root depths from
bbox_root_mupots_output.json, the official script's matching and bone-length rescaling (mupots_score).
The other variants are arguments (and config.eval.mupots fields) and are named in the results' settings.

Per frame (one record of the mupots_3d builder: the whole image, all annotated people, intrinsics):
  1. boxes (`boxes`): "detected" = the frame's detections (the builder's det_bbox, or a `detections`
     JSON file): CROP boxes, already squared and enlarged by RootNet, cropped as they are (a file of
     tight detector boxes says detections_box_kind="person"); "gt" = every annotated person's box
     (valid or not: a real detector would see them too): PERSON boxes, processed once (clip, square,
     enlarge 1.25x); "auto" (default) = "detected" when the data stores detections (the first frame's
     has_det, which the builder sets alike on every frame), else "gt" with a warning;
  2. the network on every box (predictor_lib.Predictor: the evaluation crop from the full-resolution
     image, flip test, batched people) -> 2D joints in image px and root-relative 3D;
  3. camera space with the frame's intrinsics (host.to_camera); the root depth is an option,
     recorded in the results: "gt" (the annotated root depth; annotated boxes only), "detection" (the
     detections' root_cam Z, as 3DMPPE evaluates), "prior" (the distance prior of the box size), or
     "auto" = "detection" with detections that carry root_cam, else "gt" for annotated boxes, else "prior";
  4. MuPoTSEvaluator.add_frame: predictions matched to annotated people by their predicted 2D joints,
     root-relative, rescaled to the ground-truth bone lengths, 3DPCK/AUC on the first 17 joints.
3DPCK is computed on root-relative poses, so the root depth does not change it; how good the absolute
root is gets reported separately as the mean root position error (mm) of matched people, "root_error_mm".

The model's skeleton must be MuCo's 21 joints (config.skeleton == "muco"), the joint set MuPoTS-3D
records are stored in. `predict_fn` replaces steps 1-2's network (e.g. a "perfect predictor" that
returns the ground truth, or another model): it gets a :class:`Frame` and returns (joints_2d (P, J, 2)
px, pose_3d (P, J, 3) root-relative mm) for frame.boxes.

Writes out_dir/mupots_metrics.json (the returned dict) and out_dir/mupots_metrics.md (the settings and
the paper-layout tables of format_mupots_table, both modes: "all annotated" and "only matched").
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import logging
import pathlib
from typing import Any, Callable, Iterator, Mapping

import cv2
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from cascaded_lift import skeleton as skeleton_lib
from cascaded_lift.data import config as data_config
from cascaded_lift.data import schema, sources, transforms
from cascaded_lift.evaluation import mupots_score
from cascaded_lift.inference import host
from cascaded_lift.inference import predictor as predictor_lib
from cascaded_lift.training.checkpoints import restore_variables

log = logging.getLogger(__name__)

ROOT_DEPTHS = ("auto", "gt", "detection", "prior")
BOXES = data_config.EVAL_BOXES  # "auto", "detected", "gt"
METRICS_JSON = "mupots_metrics.json"
METRICS_MD = "mupots_metrics.md"


@dataclasses.dataclass
class Frame:
  """One test frame: image (H, W, 3) uint8 RGB, boxes (P, 4) px to predict, intrinsics, the raw record.

  box_kind says what `boxes` are ("person": processed once before cropping; "crop": crop windows used as
  they are); crop_boxes (P, 4) px are the windows the evaluation crop shows (host.check_boxes).
  """
  image: np.ndarray
  boxes: np.ndarray
  focal: np.ndarray
  principal: np.ndarray
  sequence: int
  record: Mapping[str, Any]
  box_kind: str = schema.BOX_PERSON
  crop_boxes: np.ndarray | None = None


PredictFn = Callable[[Frame], tuple[np.ndarray, np.ndarray]]


def _open_records(data: Any) -> tuple[str, Any, skeleton_lib.Skeleton | None]:
  """(label, random-access records, dataset skeleton if known) from a source, builder, spec or sequence."""
  if isinstance(data, sources.PoseSource):
    return data.label, data, data.skeleton
  if hasattr(data, "as_data_source"):  # a TFDS builder
    meta = data.info.metadata or {}
    skel = skeleton_lib.get_skeleton(meta["skeleton"]) if "skeleton" in meta else getattr(data, "SKELETON", None)
    ds = data.as_data_source(split="test", decoders={"image": tfds.decode.SkipDecoding()})
    return f"{data.name}[test]", ds, skel
  if isinstance(data, (Mapping, ml_collections.ConfigDict)):  # a dataset spec {name, split, config, data_dir}
    src = sources.load_source(data)
    return src.label, src, src.skeleton
  if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
    return "records", data, None
  raise TypeError(f"evaluate_mupots: cannot read frames from {type(data).__name__}; pass a PoseSource, a TFDS "
                  "builder, a dataset spec {name, split, ...} or a sequence of records")


def _decode(record: Mapping[str, Any], what: str) -> np.ndarray:
  image = record["image"]
  if isinstance(image, np.ndarray) and image.ndim == 3:  # already decoded (RGB, as TFDS decodes)
    return image
  if isinstance(image, np.ndarray) and image.dtype == object:
    image = image.item()
  return cv2.cvtColor(transforms.decode_image(image, what, 1), cv2.COLOR_BGR2RGB)


def _frames(records: Any, indices: range, threads: int = 2, lookahead: int = 4) -> Iterator[tuple[dict, np.ndarray]]:
  """(record, decoded image) in order, decoded `lookahead` frames ahead on threads (cv2 drops the GIL)."""
  def load(i):
    record = dict(records[i])
    return record, _decode(record, f"MuPoTS-3D record {i}")

  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    pending = collections.deque()
    it = iter(indices)
    for i in it:
      pending.append(pool.submit(load, i))
      if len(pending) >= lookahead:
        break
    while pending:
      yield pending.popleft().result()
      nxt = next(it, None)
      if nxt is not None:
        pending.append(pool.submit(load, nxt))


def load_detection_file(path: str | pathlib.Path, score_threshold: float = 0.0) -> dict[int, dict[str, np.ndarray]]:
  """{image_id: {"bbox": (N, 4), "root_cam": (N, 3) or absent}} from a 3DMPPE-style bbox_root JSON list."""
  path = pathlib.Path(path)
  try:
    data = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"detections {str(path)!r}: cannot read JSON ({e})") from None
  if not isinstance(data, list):
    raise ValueError(f"detections {str(path)!r}: expected a list of {{image_id, bbox, root_cam, score}}")
  boxes, roots = collections.defaultdict(list), collections.defaultdict(list)
  for i, e in enumerate(data):
    if not isinstance(e, dict) or "image_id" not in e or np.shape(e.get("bbox")) != (4,):
      raise ValueError(f"detections {str(path)!r}: entry {i} needs image_id and bbox [x0, y0, w, h]")
    if float(e.get("score", 1.0)) < score_threshold:
      continue
    boxes[int(e["image_id"])].append(e["bbox"])
    if "root_cam" in e:
      roots[int(e["image_id"])].append(e["root_cam"])
  out = {}
  for k, b in boxes.items():
    out[k] = {"bbox": np.asarray(b, np.float64).reshape(-1, 4)}
    if len(roots[k]) == len(b):
      out[k]["root_cam"] = np.asarray(roots[k], np.float64).reshape(-1, 3)
  return out


def _frame_boxes(record: Mapping[str, Any], use_detections: bool, detections: dict | None,
                 what: str) -> tuple[np.ndarray, np.ndarray | None]:
  """(boxes (P, 4), detected root_cam (P, 3) or None) of one frame."""
  if detections is not None:
    det = detections.get(int(record["image_id"]), {})
    return det.get("bbox", np.zeros((0, 4))), det.get("root_cam", np.zeros((0, 3)) if not det else None)
  if use_detections:
    if not float(record.get("has_det", 0.0)) or "det_bbox" not in record:
      raise ValueError(f"{what}: no stored detections (build mupots_3d with bbox_root_mupots_output.json, or "
                       "pass detections=<file>)")
    return (np.asarray(record["det_bbox"], np.float64).reshape(-1, 4),
            np.asarray(record["det_root_cam"], np.float64).reshape(-1, 3))
  return np.asarray(record["bbox"], np.float64).reshape(-1, 4), None


def _choose_boxes(boxes: str, use_detections: bool | None, det_table: dict | None, records: Any,
                  label: str) -> bool:
  """Whether the frames' boxes are detections, from `boxes` ("auto" | "detected" | "gt") and the older
  flag use_detections (True = "detected", False = "gt"); a detections file means "detected"."""
  if boxes not in BOXES:
    raise ValueError(f"evaluate_mupots: boxes must be one of {BOXES}, got {boxes!r}")
  if use_detections is not None:
    legacy = "detected" if use_detections else "gt"
    if boxes not in ("auto", legacy):
      raise ValueError(f"evaluate_mupots: use_detections={use_detections} contradicts boxes={boxes!r}")
    boxes = legacy
  if det_table is not None:
    if boxes == "gt":
      raise ValueError("evaluate_mupots: a detections file was given with boxes='gt'")
    return True
  if boxes == "gt":
    return False
  stored = len(records) > 0 and float(dict(records[0]).get("has_det", 0.0)) > 0
  if not stored and boxes == "auto":
    log.warning("%s: boxes='auto' and the data stores no detections (bbox_root_mupots_output.json): "
                "evaluating with the annotated boxes, not the paper's detected ones", label)
  return stored or boxes == "detected"  # "detected" without them fails per frame, naming the record


def evaluate_mupots(config: Any, variables: Any, data_source_or_builder: Any, out_dir: str | pathlib.Path,
                    use_detections: bool | None = None, *, boxes: str = "auto", root_depth: str = "auto",
                    detections: str | pathlib.Path | None = None, score_threshold: float = 0.0,
                    detections_box_kind: str = schema.BOX_CROP, predict_fn: PredictFn | None = None,
                    flip_test: bool | None = None, camera_pose: str = "lifted", matching: str = "mpii",
                    match_threshold: float | None = None, bone_tree: str = "official",
                    max_frames: int | None = None, max_batch: int = 32) -> dict[str, Any]:
  """Evaluates on MuPoTS-3D and writes out_dir/mupots_metrics.{json,md} (module docstring).

  Args:
    config: the training config (skeleton must be "muco").
    variables: {'params', 'batch_stats'}; unused (may be None) when predict_fn is given.
    data_source_or_builder: a PoseSource, a prepared mupots_3d TFDS builder, a dataset spec
      (e.g. config.data.eval) or a sequence of records of the multi-person schema.
    out_dir: output folder (created).
    use_detections: the older flag: True = boxes "detected", False = "gt"; None = use `boxes`.
    boxes: "auto" (default: detections when stored) | "detected" | "gt" (module docstring, step 1).
    root_depth: "auto" | "gt" | "detection" | "prior".
    detections: a bbox_root JSON file ({image_id, bbox, root_cam, score}) to use instead of the
      stored detections (implies boxes "detected"); score_threshold filters it.
    detections_box_kind: what the detections' boxes are: "crop" (default; bbox_root files, the stored
      det_bbox) or "person" (tight boxes of another detector, processed once).
    predict_fn: replaces the network (see :class:`Frame`); None = predictor_lib.Predictor(config, variables).
    flip_test: None = config.eval.flip_test.  camera_pose: see host.to_camera.
    matching, match_threshold, bone_tree: MuPoTSEvaluator's rules (default: the official script's).
    max_frames: evaluate only the first frames (quick checks).  max_batch: people per network call.
  Returns:
    MuPoTSEvaluator.results() plus "settings" and "root_error_mm" ({"mean", "sequences"}).
  """
  if config.skeleton != skeleton_lib.MUCO.name:
    raise ValueError(f"evaluate_mupots: MuPoTS-3D needs a model with the MuCo skeleton (21 joints, config.skeleton "
                     f"= 'muco'), this config has {config.skeleton!r}")
  if root_depth not in ROOT_DEPTHS:
    raise ValueError(f"evaluate_mupots: root_depth must be one of {ROOT_DEPTHS}, got {root_depth!r}")
  schema.check_box_kind(detections_box_kind, "evaluate_mupots: detections_box_kind")
  det_table = load_detection_file(detections, score_threshold) if detections is not None else None
  label, records, data_skeleton = _open_records(data_source_or_builder)
  requested = boxes if use_detections is None else ("detected" if use_detections else "gt")
  use_detections = _choose_boxes(boxes, use_detections, det_table, records, label)
  box_kind = detections_box_kind if use_detections else schema.BOX_PERSON
  if root_depth == "gt" and use_detections:
    raise ValueError("evaluate_mupots: root_depth='gt' needs annotated boxes (a detection has no annotated person)")
  if root_depth == "detection" and not use_detections:
    raise ValueError("evaluate_mupots: root_depth='detection' needs detected boxes (boxes='detected')")
  if data_skeleton is not None and data_skeleton.name != skeleton_lib.MUCO.name:
    raise ValueError(f"evaluate_mupots: {label} stores joints of skeleton {data_skeleton.name!r}, not MuCo/MuPoTS")
  skel = skeleton_lib.MUCO
  flip = bool(config.get("eval", {}).get("flip_test", True)) if flip_test is None else bool(flip_test)
  predictor_name = "network" if predict_fn is None else getattr(predict_fn, "__name__", "custom")
  predictor = None
  if predict_fn is None:
    predictor = predictor_lib.Predictor(config, variables, flip_test=flip, max_batch=max_batch)

    def predict_fn(frame: Frame) -> tuple[np.ndarray, np.ndarray]:
      people = predictor.predict(frame.image, frame.boxes, flip_test=flip, box_kind=frame.box_kind)
      return np.stack([p.joints_2d for p in people]), np.stack([p.pose_3d for p in people])

  # The crop windows (and the distance prior) use the model's box enlargement, as the Predictor does.
  bbox_scale = predictor.bbox_scale if predictor is not None else float(config.data.get("bbox_scale", 1.25))
  evaluator = mupots_score.MuPoTSEvaluator(skel, matching=matching, match_threshold=match_threshold,
                                           bone_tree=bone_tree)
  root = skel.root
  root_errors: dict[int, list[float]] = collections.defaultdict(list)
  sources_used: collections.Counter = collections.Counter()
  n = len(records) if max_frames is None else min(len(records), int(max_frames))
  num_predictions = 0
  for record, image in _frames(records, range(n)):
    what = f"{label} record {record.get('_index', '?')} (image_id {int(record['image_id'])})"
    seq = int(record["subject"])
    focal = np.asarray(record["focal"], np.float64).reshape(2)
    principal = np.asarray(record["principal"], np.float64).reshape(2)
    gt_cam = np.asarray(record["joints_cam"], np.float64).reshape(-1, skel.num_joints, 3)
    gt_img = np.asarray(record["joints_img"], np.float64).reshape(-1, skel.num_joints, 2)
    valid = np.asarray(record.get("is_valid", np.ones(len(gt_cam))), np.float64).reshape(-1)
    boxes, det_root = _frame_boxes(record, use_detections, det_table, what)
    num_predictions += len(boxes)
    if len(boxes):
      height, width = image.shape[:2]
      _, crop_boxes = host.check_boxes(boxes, width, height, what, bbox_scale, box_kind)
      joints_2d, pose_3d = predict_fn(Frame(image, boxes, focal, principal, seq, record, box_kind, crop_boxes))
      joints_2d = np.asarray(joints_2d, np.float64).reshape(len(boxes), skel.num_joints, 2)
      pose_3d = np.asarray(pose_3d, np.float64).reshape(len(boxes), skel.num_joints, 3)
      mode = root_depth
      if mode == "auto":
        mode = "detection" if use_detections and det_root is not None else ("gt" if not use_detections else "prior")
      if mode == "detection" and det_root is None:
        raise ValueError(f"{what}: root_depth='detection' but the detections carry no root_cam")
      z = {"gt": lambda: gt_cam[:, root, 2], "detection": lambda: det_root[:, 2],
           "prior": lambda: host.distance_prior_depth(crop_boxes, focal)}[mode]()
      sources_used[mode] += len(boxes)
      pose_cam, root_cam = host.to_camera(joints_2d, pose_3d, root, focal, principal, z, camera_pose)
    else:
      joints_2d = np.zeros((0, skel.num_joints, 2))
      pose_cam = root_cam = np.zeros((0, skel.num_joints, 3))
    match = evaluator.add_frame(seq, pose_cam, joints_2d, gt_cam, gt_img, valid)
    for i, k in enumerate(match):
      if k >= 0:
        root_errors[seq].append(float(np.linalg.norm(root_cam[k] - gt_cam[i, root])))

  results = evaluator.results()
  all_err = [e for errs in root_errors.values() for e in errs]
  results["root_error_mm"] = {"mean": float(np.mean(all_err)) if all_err else None,
                              "sequences": {f"TS{s}": float(np.mean(v)) for s, v in sorted(root_errors.items())}}
  results["settings"] = {
      "dataset": label, "frames": n, "boxes": "detections" if use_detections else "annotations",
      "boxes_requested": requested, "box_kind": box_kind,
      "detections_file": None if detections is None else str(detections), "predictions": num_predictions,
      "root_depth": root_depth, "root_depth_used": dict(sources_used), "camera_pose": camera_pose,
      "flip_test": flip, "matching": evaluator.matching, "match_threshold": evaluator.match_threshold,
      "bone_tree": evaluator.bone_tree, "predict_fn": predictor_name,
      "evaluated_joints": skel.num_eval_joints}
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / METRICS_JSON).write_text(json.dumps(results, indent=2))
  (out_dir / METRICS_MD).write_text(format_report(results))
  return results


def format_report(results: Mapping[str, Any]) -> str:
  """Markdown: the settings, the 3DPCK/AUC tables of both modes, the root position error."""
  s = results["settings"]
  lines = ["# MuPoTS-3D evaluation", "",
           f"- data: {s['dataset']}, {s['frames']} frames, boxes from {s['boxes']} ({s['box_kind']} boxes; "
           f"asked: {s['boxes_requested']}; {s['predictions']} people predicted)",
           f"- root depth: {s['root_depth']} (used: {s['root_depth_used']}), camera pose: {s['camera_pose']}",
           f"- flip test: {s['flip_test']}, matching: {s['matching']} (threshold {s['match_threshold']} px), "
           f"bone-length rescaling: {s['bone_tree']} tree, first {s['evaluated_joints']} joints; "
           "3DPCK threshold 150 mm", ""]
  table = mupots_score.format_mupots_table(results)
  lines += [table if table else "(no annotated people evaluated)", ""]
  err = results["root_error_mm"]["mean"]
  lines.append(f"Mean root position error of matched people: {err:.1f} mm" if err is not None
               else "Mean root position error: no matched people")
  return "\n".join(lines) + "\n"


def evaluate_workdir(config: Any, workdir: str | pathlib.Path, *, variables: Any = None, step: int | None = None,
                     split: str | None = None, **kwargs: Any) -> dict[str, Any]:
  """The registered MuPoTS-3D evaluator: the latest (or `step`) checkpoint of workdir on config.data.eval,
  into workdir/eval/.

  Boxes from config.data.eval.boxes ("auto" | "detected" | "gt"; or the older use_det_bbox), the other
  settings from config.eval.mupots when the config has it (root_depth, matching, match_threshold,
  bone_tree, camera_pose, score_threshold); keyword arguments override both and go to
  :func:`evaluate_mupots`. `split` replaces config.data.eval.split.
  """
  if variables is None:
    variables = restore_variables(workdir, step)
    predictor_lib.check_variables(config, variables, f"checkpoint in {str(workdir)!r}")
  spec = config.data.eval
  if split is not None:
    spec = spec.copy_and_resolve_references()
    spec.split = split
  if "use_detections" not in kwargs and "detections" not in kwargs:  # those speak for themselves
    kwargs.setdefault("boxes", data_config.eval_boxes(spec))
  for key, value in dict(config.get("eval", {}).get("mupots", None) or {}).items():
    if value is not None:  # unset placeholders keep evaluate_mupots's defaults
      kwargs.setdefault(key, value)
  return evaluate_mupots(config, variables, spec, pathlib.Path(workdir) / "eval", **kwargs)
