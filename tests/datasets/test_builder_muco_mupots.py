"""MuCo-3DHP and MuPoTS-3D builders: the person-selection rule, builds from dummy_data, and errors."""

import json
import math
import pathlib
import re
import shutil

import numpy as np
import pytest

from cascaded_lift.datasets import build as build_lib
from cascaded_lift.datasets import pose_builder
from cascaded_lift.datasets.muco_3dhp import muco_3dhp_dataset_builder as muco
from cascaded_lift.datasets.mupots_3d import mupots_3d_dataset_builder as mupots

MUCO_DUMMY = pathlib.Path(muco.__file__).resolve().parent / "dummy_data"
MUPOTS_DUMMY = pathlib.Path(mupots.__file__).resolve().parent / "dummy_data"


def _records(builder, split):
  ds = builder.as_data_source(split)
  return [ds[i] for i in range(len(ds))]


def _reference_selection(roots, min_distance, plane):
  """The documented rule, one pair at a time in plain Python."""
  closest = min(range(len(roots)), key=lambda i: (roots[i][2], i))
  keep = []
  for i, ri in enumerate(roots):
    ok = True
    for j, rj in enumerate(roots):
      if i == j:
        continue
      d3 = math.dist(ri, rj)
      if plane == "camera_xy":
        dp = math.hypot(ri[0] - rj[0], ri[1] - rj[1])
      else:  # pixel offset / focal, converted to mm at the nearer root's depth
        dp = min(ri[2], rj[2]) * math.hypot(ri[0] / ri[2] - rj[0] / rj[2], ri[1] / ri[2] - rj[1] / rj[2])
      ok = ok and dp >= min_distance and d3 >= min_distance
    if i == closest or ok:
      keep.append(i)
  return keep


@pytest.mark.parametrize("roots, camera_xy, pixel_at_depth", [
    # C is 304 mm from A in X/Y; B is far from both; A is the closest although listed second.
    ([(300, 50, 4000), (0, 0, 3000), (1400, 100, 6000)], [1, 2], [1, 2]),
    # E is 600 mm from D in X/Y, but only 0.1 * 2500 = 250 mm apart in the image at D's depth.
    ([(0, 0, 2500), (600, 0, 6000)], [0, 1], [0]),
    # In the image plane 3000 - 2800 * 2000 / 2300 = 565 mm, but only 361 mm apart in 3D.
    ([(3000, 0, 2000), (2800, 0, 2300), (-2000, 0, 5000)], [0, 2], [0, 2]),
    # Three people in a row 600 mm apart: the middle one is kept (>= 500 from both neighbours).
    ([(-600, 0, 5000), (0, 0, 5000), (600, 0, 5000)], [0, 1, 2], [0, 1, 2]),
    ([(0, 0, 4000)], [0], [0]),
])
def test_select_people_hand_cases(roots, camera_xy, pixel_at_depth):
  assert muco.select_people(np.array(roots, float), 500.0, "camera_xy") == camera_xy
  assert muco.select_people(np.array(roots, float), 500.0, "pixel_at_depth") == pixel_at_depth


def test_select_people_matches_the_rule_on_random_crowds():
  rng = np.random.default_rng(0)
  for _ in range(200):
    roots = rng.uniform([-2500, -500, 2000], [2500, 500, 8000], size=(rng.integers(1, 6), 3))
    for plane in ("camera_xy", "pixel_at_depth"):
      assert muco.select_people(roots, 500.0, plane) == _reference_selection(roots.tolist(), 500.0, plane)
  with pytest.raises(ValueError, match="unknown plane distance"):
    muco.select_people(np.ones((2, 3)), 500.0, "image")


@pytest.mark.parametrize("config, kept", [("default", [1, 2, 3, 4]), ("pixel_at_depth", [1, 2, 3])])
def test_muco_builds_one_record_per_selected_person(tmp_path, config, kept):
  builder = build_lib.build("muco_3dhp", config=config, manual_dir=MUCO_DUMMY, data_dir=tmp_path, progress=False)
  recs = _records(builder, "train")
  data = json.loads((MUCO_DUMMY / "MuCo-3DHP.json").read_text())
  assert builder.info.metadata["skeleton"] == "muco" and not builder.info.metadata["multi_person"]
  assert len(recs) == len(kept)
  for r, a in zip(recs, kept):
    ann = data["annotations"][a]
    img = data["images"][ann["image_id"]]
    assert r["image"].shape == (96, 96, 3)
    np.testing.assert_allclose(r["joints_cam"], ann["keypoints_cam"], atol=1e-3)
    np.testing.assert_allclose(r["joints_img"], ann["keypoints_img"], atol=1e-3)
    np.testing.assert_allclose(r["bbox"], ann["bbox"], atol=1e-3)
    np.testing.assert_array_equal(r["joints_vis"], np.ones(21))
    np.testing.assert_allclose(r["focal"], img["f"])
    np.testing.assert_allclose(r["principal"], img["c"])
    assert int(r["image_id"]) == img["id"] and int(r["subject"]) == -1 and float(r["has_depth"]) == 1


def _copy(src, tmp_path):
  return pathlib.Path(shutil.copytree(src, tmp_path / "manual"))


def test_muco_errors_name_missing_files_and_bad_records(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"(?s)1 required file.*MuCo-3DHP\.json.*augmented_set"):
    build_lib.build("muco_3dhp", manual_dir=tmp_path, data_dir=tmp_path / "a", progress=False)
  manual = _copy(MUCO_DUMMY, tmp_path)
  data = json.loads((manual / "MuCo-3DHP.json").read_text())
  data["annotations"][2]["keypoints_cam"] = data["annotations"][2]["keypoints_cam"][:20]
  (manual / "MuCo-3DHP.json").write_text(json.dumps(data))
  with pytest.raises(pose_builder.RecordError, match=re.escape(
      "MuCo-3DHP.json: annotations[2]: field 'keypoints_cam' has shape 20x3, expected 21x3")):
    build_lib.build("muco_3dhp", manual_dir=manual, data_dir=tmp_path / "b", progress=False)


def test_mupots_builds_one_record_per_frame_with_all_people(tmp_path):
  builder = build_lib.build("mupots_3d", manual_dir=MUPOTS_DUMMY, data_dir=tmp_path, progress=False)
  recs = _records(builder, "test")
  data = json.loads((MUPOTS_DUMMY / "MuPoTS-3D.json").read_text())
  dets = json.loads((MUPOTS_DUMMY / "bbox_root/bbox_root_mupots_output.json").read_text())
  assert builder.info.metadata["multi_person"]
  assert [(int(r["subject"]), int(r["frame"])) for r in recs] == [(1, 0), (7, 3), (7, 4)]
  for r, img in zip(recs, data["images"], strict=True):
    anns = [a for a in data["annotations"] if a["image_id"] == img["id"]]
    p = len(anns)
    assert r["image"].shape == (img["height"], img["width"], 3)
    assert r["bbox"].shape == (p, 4) and r["joints_cam"].shape == (p, 21, 3)
    assert r["joints_img"].shape == (p, 21, 2) and r["joints_vis"].shape == (p, 21)
    np.testing.assert_allclose(r["focal"], img["intrinsic"][:2])
    np.testing.assert_allclose(r["principal"], img["intrinsic"][2:])
    for k, ann in enumerate(anns):
      np.testing.assert_allclose(r["joints_cam"][k, :17], ann["keypoints_cam"], atol=1e-3)
      np.testing.assert_allclose(r["joints_img"][k, :17], ann["keypoints_img"], atol=1e-3)
      np.testing.assert_allclose(r["bbox"][k], ann["bbox"], atol=1e-3)
      assert not r["joints_cam"][k, 17:].any() and not r["joints_img"][k, 17:].any()
      np.testing.assert_array_equal(r["joints_vis"][k], [1.0] * 17 + [0.0] * 4)
      assert r["is_valid"][k] == ann["is_valid"]
    mine = [d for d in dets if d["image_id"] == img["id"]]
    assert float(r["has_det"]) == 1.0 and r["det_bbox"].shape == (len(mine), 4)
    if mine:
      np.testing.assert_allclose(r["det_bbox"], [d["bbox"] for d in mine], atol=1e-3)
      np.testing.assert_allclose(r["det_root_cam"], [d["root_cam"] for d in mine], atol=1e-3)
  assert list(recs[0]["is_valid"]) == [1.0, 0.0]


def test_mupots_without_detection_file(tmp_path):
  manual = _copy(MUPOTS_DUMMY, tmp_path)
  shutil.rmtree(manual / "bbox_root")
  recs = _records(build_lib.build("mupots_3d", manual_dir=manual, data_dir=tmp_path / "a", progress=False),
                  "test")
  assert [float(r["has_det"]) for r in recs] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("edit, pattern", [
    (lambda d: d["images"][1].pop("intrinsic"), re.escape("MuPoTS-3D.json: images[1]: missing 'intrinsic'")),
    (lambda d: d["images"][0].__setitem__("file_name", "seq1/frame0.jpg"),
     re.escape("MuPoTS-3D.json: images[0]: file_name 'seq1/frame0.jpg' is not of the form")),
    (lambda d: d["annotations"][3].pop("is_valid"), re.escape("MuPoTS-3D.json: annotations[3]: missing 'is_valid'")),
    (lambda d: d["annotations"][1]["keypoints_img"].pop(), re.escape(
        "MuPoTS-3D.json: annotations[1]: field 'keypoints_img' has shape 16x2, expected 17x2")),
])
def test_mupots_malformed_record_names_file_and_index(tmp_path, edit, pattern):
  manual = _copy(MUPOTS_DUMMY, tmp_path)
  data = json.loads((manual / "MuPoTS-3D.json").read_text())
  edit(data)
  (manual / "MuPoTS-3D.json").write_text(json.dumps(data))
  with pytest.raises(pose_builder.RecordError, match=pattern):
    build_lib.build("mupots_3d", manual_dir=manual, data_dir=tmp_path / "a", progress=False)


def test_mupots_missing_files_are_all_listed(tmp_path):
  manual = _copy(MUPOTS_DUMMY, tmp_path)
  (manual / "MuPoTS-3D.json").unlink()
  shutil.rmtree(manual / "MultiPersonTestSet")
  with pytest.raises(FileNotFoundError, match=r"(?s)2 required file.*MuPoTS-3D\.json.*MultiPersonTestSet"):
    build_lib.build("mupots_3d", manual_dir=manual, data_dir=tmp_path / "a", progress=False)
