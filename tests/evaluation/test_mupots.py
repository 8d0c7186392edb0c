"""MuPoTS-3D driver on the mupots_3d builder's dummy data: result structure with a tiny random MuCo
model, 100 % 3DPCK for a ground-truth "perfect predictor", root-depth options and detection boxes, the
paper's defaults (detected crop boxes, official matching and rescaling); and on a real COCO image, that
detected crop boxes as a bbox_root file holds them give 3DMPPE's crops of the annotated boxes."""

import json
import logging
import pathlib

import numpy as np
import pytest

import reference_3dmppe as ref
from cascaded_lift import geometry
from cascaded_lift.evaluation import mupots
from cascaded_lift.inference import host
from cascaded_lift.inference import predictor as inference
from cascaded_lift.datasets import build as build_lib
from cascaded_lift.datasets.mupots_3d import mupots_3d_dataset_builder as mupots_builder
from cascaded_lift.inference.cli import load_config

REPO = pathlib.Path(__file__).resolve().parents[2]
DUMMY = pathlib.Path(mupots_builder.__file__).resolve().parent / "dummy_data"
TINY = [f"--config.{s}" for s in ["skeleton=muco", "model.resnet_depth=18", "model.resnet_width=8", "model.head_width=16",
        "model.bone_width=8", "model.lifter_width=32", "model.lifter_blocks=1", "model.lifter_layers_per_block=2",
        "model.context_bottlenecks=1", "model.joint_bottlenecks=1", "model.depth_bottlenecks=1",
        "model.volumetric_bottlenecks=1", "data.image_size=64", "data.depth_bins=8"]]
ROOT = 14  # Pelvis in MuCo order


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tfds")
  build_lib.build("mupots_3d", manual_dir=DUMMY, data_dir=path, progress=False)
  return path


@pytest.fixture(scope="module")
def builder(data_dir):
  from cascaded_lift import datasets
  return datasets.get_builder("mupots_3d", data_dir=str(data_dir))


@pytest.fixture(scope="module")
def config():
  return load_config(str(REPO / "configs" / "default.py"), TINY)


@pytest.fixture(scope="module")
def annotations():
  return json.loads((DUMMY / "MuPoTS-3D.json").read_text())


def perfect(frame):
  """The annotated person whose box centre is nearest to each box: its 2D joints and root-relative 3D."""
  cam = np.asarray(frame.record["joints_cam"], np.float64)
  img = np.asarray(frame.record["joints_img"], np.float64)
  centres = np.asarray(frame.record["bbox"])[:, :2] + np.asarray(frame.record["bbox"])[:, 2:] / 2
  out_2d, out_3d = [], []
  for box in frame.boxes:
    k = int(np.argmin(np.linalg.norm(centres - (box[:2] + box[2:] / 2), axis=1)))
    out_2d.append(img[k])
    out_3d.append(cam[k] - cam[k, ROOT])
  return np.stack(out_2d), np.stack(out_3d)


def test_random_model_results_and_files(config, builder, annotations, tmp_path):
  variables = inference.random_variables(config, seed=0)
  results = mupots.evaluate_mupots(config, variables, builder, tmp_path, boxes="gt", flip_test=False, max_batch=1)
  assert json.loads((tmp_path / "mupots_metrics.json").read_text()) == json.loads(json.dumps(results))
  report = (tmp_path / "mupots_metrics.md").read_text()
  assert "| all_annotated |" in report and "| only_matched |" in report and "root depth: auto" in report
  assert "matching: mpii (threshold 40.0 px)" in report and "official tree" in report
  valid = [a for a in annotations["annotations"] if a["is_valid"]]
  assert results["counts"]["total"]["annotated"] == len(valid) == 4
  assert set(results["all_annotated"]["sequences"]) == {"TS1", "TS7"}
  s = results["settings"]
  assert s["frames"] == 3 and s["boxes"] == "annotations" and s["predict_fn"] == "network"
  assert s["box_kind"] == "person" and s["boxes_requested"] == "gt"
  assert s["predictions"] == len(annotations["annotations"]) and s["root_depth_used"] == {"gt": 5}
  pooled = results["all_annotated"]["pooled"]
  assert 0.0 <= pooled["pck"] <= 100.0 and set(pooled["groups"]) == {
      "Head", "Neck", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle"}


def test_workdir_entry_point(config, data_dir, tmp_path):
  """eval.py's call: the latest checkpoint of a workdir on config.data.eval, into workdir/eval/."""
  from cascaded_lift.data import config as data_config
  from cascaded_lift.training.checkpoints import Checkpointer
  variables = inference.random_variables(config, seed=0)
  ckpt = Checkpointer(tmp_path, async_save=False)
  ckpt.save(3, variables, None, {})
  ckpt.close()
  cfg = config.copy_and_resolve_references()
  cfg.data.eval = data_config.source_config("mupots_3d", "test", data_dir=str(data_dir))
  cfg.data.eval.use_det_bbox = True
  results = mupots.evaluate_workdir(cfg, tmp_path, flip_test=False, max_batch=1)
  assert results["settings"]["boxes"] == "detections" and results["settings"]["root_depth_used"] == {"detection": 3}
  assert json.loads((tmp_path / "eval" / "mupots_metrics.json").read_text())["counts"] == results["counts"]


def test_perfect_predictor_scores_100_percent(config, data_dir, annotations, tmp_path):
  spec = {"name": "mupots_3d", "split": "test", "config": None, "data_dir": str(data_dir)}
  results = mupots.evaluate_mupots(config, None, spec, tmp_path, boxes="gt", predict_fn=perfect)
  for mode in ("all_annotated", "only_matched"):
    assert results[mode]["mean"]["pck"] == 100.0 and results[mode]["pooled"]["pck_all_joints"] == 100.0
  assert results["counts"]["total"] == {"annotated": 4, "matched": 4}
  assert results["settings"]["predict_fn"] == "perfect"
  # Ground-truth root depth at the annotated 2D root puts the root on the annotated one (up to the
  # 0.001 px rounding of the stored 2D joints).
  assert results["root_error_mm"]["mean"] < 0.1
  prior = mupots.evaluate_mupots(config, None, spec, tmp_path / "prior", boxes="gt", predict_fn=perfect,
                                 root_depth="prior")
  assert prior["settings"]["root_depth_used"] == {"prior": 5} and prior["all_annotated"]["mean"]["pck"] == 100.0
  # Independent reference: the prior's depth for each valid person, compared with the annotated root.
  expected = []
  for ann in annotations["annotations"]:
    if ann["is_valid"]:
      img = next(im for im in annotations["images"] if im["id"] == ann["image_id"])
      fx, fy, _, _ = img["intrinsic"]
      x0, y0, w, h = ann["bbox"]
      w, h = min(x0 + w - 1, img["width"] - 1) - max(x0, 0), min(y0 + h - 1, img["height"] - 1) - max(y0, 0)
      z = np.sqrt(2000.0 ** 2 * fx * fy) / (1.25 * max(w, h))
      root = np.array(ann["keypoints_cam"][ROOT])
      expected.append(np.linalg.norm(root) * abs(z - root[2]) / root[2])  # same ray, another depth
  assert prior["root_error_mm"]["mean"] == pytest.approx(np.mean(expected), rel=1e-3)


def test_detection_boxes_and_root_depths(config, builder, annotations, tmp_path):
  results = mupots.evaluate_mupots(config, None, builder, tmp_path, use_detections=True, predict_fn=perfect)
  dets = json.loads((DUMMY / "bbox_root" / "bbox_root_mupots_output.json").read_text())
  assert results["settings"]["boxes"] == "detections" and results["settings"]["root_depth_used"] == {"detection": 3}
  # Detected valid people score 100 %; a valid person without a detection counts as a miss.
  assert results["only_matched"]["pooled"]["pck"] == 100.0
  assert results["counts"]["total"] == {"annotated": 4, "matched": 2}
  assert results["all_annotated"]["pooled"]["pck"] == pytest.approx(50.0)
  expected = []
  for det in dets:  # the detection's Z on the annotated root's ray, for the valid people it found
    anns = [a for a in annotations["annotations"] if a["image_id"] == det["image_id"]]
    centres = np.array([[a["bbox"][0] + a["bbox"][2] / 2, a["bbox"][1] + a["bbox"][3] / 2] for a in anns])
    b = det["bbox"]
    ann = anns[int(np.argmin(np.linalg.norm(centres - [b[0] + b[2] / 2, b[1] + b[3] / 2], axis=1)))]
    if ann["is_valid"]:
      root = np.array(ann["keypoints_cam"][ROOT])
      expected.append(np.linalg.norm(root) * abs(det["root_cam"][2] - root[2]) / root[2])
  assert len(expected) == 2
  assert results["root_error_mm"]["mean"] == pytest.approx(np.mean(expected), rel=1e-3)
  # The same detections from the JSON file instead of the stored fields.
  from_file = mupots.evaluate_mupots(config, None, builder, tmp_path / "file",
                                     detections=DUMMY / "bbox_root" / "bbox_root_mupots_output.json",
                                     predict_fn=perfect)
  assert from_file["all_annotated"] == results["all_annotated"]
  assert from_file["root_error_mm"] == results["root_error_mm"]
  # A plain list of records works too.
  import tensorflow_datasets as tfds
  records = list(builder.as_data_source("test", decoders={"image": tfds.decode.SkipDecoding()}))
  from_list = mupots.evaluate_mupots(config, None, records, tmp_path / "list", use_detections=True, predict_fn=perfect)
  assert from_list["all_annotated"] == results["all_annotated"] and from_list["settings"]["dataset"] == "records"


def test_errors(config, builder, tmp_path):
  h36m = load_config(str(REPO / "configs" / "default.py"))
  with pytest.raises(ValueError, match="MuCo skeleton"):
    mupots.evaluate_mupots(h36m, None, builder, tmp_path, predict_fn=perfect)
  with pytest.raises(ValueError, match="needs annotated boxes"):
    mupots.evaluate_mupots(config, None, builder, tmp_path, use_detections=True, root_depth="gt", predict_fn=perfect)
  with pytest.raises(ValueError, match="needs detected boxes"):
    mupots.evaluate_mupots(config, None, builder, tmp_path, boxes="gt", root_depth="detection", predict_fn=perfect)
  with pytest.raises(ValueError, match="boxes must be one of"):
    mupots.evaluate_mupots(config, None, builder, tmp_path, boxes="detections", predict_fn=perfect)
  with pytest.raises(ValueError, match="contradicts"):
    mupots.evaluate_mupots(config, None, builder, tmp_path, boxes="gt", use_detections=True, predict_fn=perfect)
  with pytest.raises(ValueError, match="detections_box_kind must be one of"):
    mupots.evaluate_mupots(config, None, builder, tmp_path, detections_box_kind="tight", predict_fn=perfect)
  with pytest.raises(ValueError, match="root_depth must be one of"):
    mupots.evaluate_mupots(config, None, builder, tmp_path, root_depth="magic", predict_fn=perfect)


def test_defaults_are_the_papers_protocol(config, builder, tmp_path, caplog):
  """Detected crop boxes and root depths when the data stores them, the official matching and rescaling."""
  results = mupots.evaluate_mupots(config, None, builder, tmp_path, predict_fn=perfect)
  s = results["settings"]
  assert (s["boxes"], s["box_kind"], s["boxes_requested"]) == ("detections", "crop", "auto")
  assert (s["matching"], s["match_threshold"], s["bone_tree"]) == ("mpii", 40.0, "official")
  assert s["root_depth_used"] == {"detection": 3}
  # The older rules stay selectable and are named.
  other = mupots.evaluate_mupots(config, None, builder, tmp_path / "other", predict_fn=perfect,
                                 matching="distance", bone_tree="skeleton")
  assert (other["settings"]["matching"], other["settings"]["match_threshold"]) == ("distance", 100.0)
  assert other["settings"]["bone_tree"] == "skeleton"
  assert other["all_annotated"] == results["all_annotated"]  # a perfect predictor scores 100 % either way
  # Data built without the bbox_root file: "auto" falls back to the annotated boxes, with a warning.
  import tensorflow_datasets as tfds
  records = [dict(r, has_det=np.float32(0.0)) for r in builder.as_data_source(
      "test", decoders={"image": tfds.decode.SkipDecoding()})]
  with caplog.at_level(logging.WARNING):
    fallback = mupots.evaluate_mupots(config, None, records, tmp_path / "gt", predict_fn=perfect)
  assert "stores no detections" in caplog.text and "annotated boxes" in caplog.text
  assert fallback["settings"]["boxes"] == "annotations" and fallback["settings"]["box_kind"] == "person"
  with pytest.raises(ValueError, match="no stored detections"):
    mupots.evaluate_mupots(config, None, records, tmp_path / "det", boxes="detected", predict_fn=perfect)


def test_eval_config_section_chooses_the_variants(config, data_dir, tmp_path):
  from cascaded_lift.data import config as data_config
  from cascaded_lift.training.checkpoints import Checkpointer
  import ml_collections
  ckpt = Checkpointer(tmp_path, async_save=False)
  ckpt.save(1, inference.random_variables(config, seed=0), None, {})
  ckpt.close()
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.data.eval = data_config.source_config("mupots_3d", "test", data_dir=str(data_dir))
    cfg.data.eval.boxes = "gt"
    cfg.eval.mupots = ml_collections.ConfigDict(dict(
        root_depth="prior", matching="distance", match_threshold=ml_collections.config_dict.placeholder(float),
        bone_tree="skeleton", camera_pose="lifted"))
  s = mupots.evaluate_workdir(cfg, tmp_path, predict_fn=perfect)["settings"]
  assert (s["boxes"], s["root_depth_used"], s["matching"], s["match_threshold"], s["bone_tree"]) == (
      "annotations", {"prior": 5}, "distance", 100.0, "skeleton")


def _coco_frame(fixtures_dir):
  """A MuPoTS-schema record of a real COCO image with three people: annotated person boxes, detections
  as a bbox_root file holds them (3DMPPE's process_bbox of those boxes, with a root position), and a
  made-up but fixed pose per person (MuPoTS ground truth does not exist for this image)."""
  ann = json.loads((fixtures_dir / "coco" / "annotations" / "person_keypoints_val2017.json").read_text())
  image_info = next(im for im in ann["images"] if im["id"] == 40083)
  path = fixtures_dir / "coco" / "val2017" / image_info["file_name"]
  boxes = np.array([a["bbox"] for a in ann["annotations"] if a["image_id"] == 40083 and not a["iscrowd"]])
  width, height = image_info["width"], image_info["height"]
  focal, principal = np.array([1500.0, 1500.0]), np.array([width / 2.0, height / 2.0])
  rng = np.random.default_rng(0)
  uv = boxes[:, None, :2] + boxes[:, None, 2:] * rng.uniform(0.1, 0.9, (len(boxes), 21, 2))
  z = 4000.0 + rng.normal(0.0, 150.0, (len(boxes), 21, 1))
  cam = geometry.pixel_to_camera(np.concatenate([uv, z], -1), focal, principal)
  det = np.stack([ref.process_bbox(b, width, height) for b in boxes])
  return {"image": path.read_bytes(), "bbox": boxes.astype(np.float32), "joints_img": uv.astype(np.float32),
          "joints_cam": cam.astype(np.float32), "joints_vis": np.ones((len(boxes), 21), np.float32),
          "is_valid": np.ones(len(boxes), np.float32), "has_depth": np.float32(1), "focal": focal,
          "principal": principal, "image_id": 40083, "subject": 1, "action": -1, "frame": 0,
          "has_det": np.float32(1), "det_bbox": det.astype(np.float32),
          "det_root_cam": cam[:, ROOT].astype(np.float32)}


def test_detected_crop_boxes_give_the_3dmppe_crops_on_a_real_image(config, fixtures_dir, tmp_path):
  """The driver crops a detection as it is and an annotated box processed once: the same window, and
  3DMPPE's crop within 1 grey level (under 0.01 on average; its matrix comes from float32 points)."""
  record = _coco_frame(fixtures_dir)
  image = host.read_image(fixtures_dir / "coco" / "val2017" / "000000040083.jpg")
  size = int(config.data.image_size)
  seen = {}

  def capture(frame):
    seen[frame.box_kind] = (np.array(frame.boxes), np.array(frame.crop_boxes),
                            host.crop_people(frame.image, frame.crop_boxes, size))
    n = len(frame.boxes)
    return np.zeros((n, 21, 2)), np.zeros((n, 21, 3))

  mupots.evaluate_mupots(config, None, [record], tmp_path / "det", boxes="detected", predict_fn=capture)
  mupots.evaluate_mupots(config, None, [record], tmp_path / "gt", boxes="gt", predict_fn=capture)
  det_boxes, det_windows, det_crops = seen["crop"]
  gt_boxes, gt_windows, gt_crops = seen["person"]
  np.testing.assert_array_equal(det_windows, det_boxes)  # used as they are
  np.testing.assert_allclose(gt_windows, record["det_bbox"], rtol=1e-6)  # processed once
  for i, box in enumerate(record["det_bbox"]):
    expect = ref.crop(image, box, size)
    for crops in (det_crops, gt_crops):
      mean, worst = ref.grey_difference(crops[i], expect)
      assert mean < 0.01 and worst <= 1.0, (i, mean, worst)

  # The network path (the Predictor told the box kind): the same crops give the same results. With
  # every annotation matched (huge window) and the distance prior (read off the crop window) as root
  # depth, any difference in the crops would show in the 3DPCK and the root error.
  variables = inference.random_variables(config, seed=3)
  kwargs = dict(root_depth="prior", match_threshold=1e9, flip_test=False, max_batch=4)
  det = mupots.evaluate_mupots(config, variables, [record], tmp_path / "net_det", boxes="detected", **kwargs)
  gt = mupots.evaluate_mupots(config, variables, [record], tmp_path / "net_gt", boxes="gt", **kwargs)
  assert det["counts"]["total"] == gt["counts"]["total"] == {"annotated": 3, "matched": 3}
  assert det["root_error_mm"]["mean"] == pytest.approx(gt["root_error_mm"]["mean"], rel=1e-6)
  for mode in ("all_annotated", "only_matched"):
    assert det[mode]["pooled"]["pck_all_joints"] == pytest.approx(gt[mode]["pooled"]["pck_all_joints"])
    assert det[mode]["pooled"]["auc"] == pytest.approx(gt[mode]["pooled"]["auc"])
