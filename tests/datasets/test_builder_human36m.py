"""Human3.6M builder: dummy_data and the real fixture frames, against plain-NumPy references."""

import json
import logging
import pathlib
import pickle
import re
import shutil

import cv2
import numpy as np
import pytest

from cascaded_lift.datasets import build as build_lib
from cascaded_lift.datasets import pose_builder
from cascaded_lift.datasets.human36m import h36m_source
from cascaded_lift.datasets.human36m import human36m_dataset_builder as h36m

DUMMY = pathlib.Path(h36m.__file__).resolve().parent / "dummy_data"


def _build(manual_dir, data_dir, config="protocol1"):
  return build_lib.build("human36m", config=config, manual_dir=manual_dir, data_dir=data_dir, progress=False)


def _records(builder, split):
  ds = builder.as_data_source(split)
  return [ds[i] for i in range(len(ds))]


def _copy_dummy(tmp_path):
  return pathlib.Path(shutil.copytree(DUMMY, tmp_path / "manual"))


def _reference(manual_dir, subject, file_name):
  """Independent reference for one frame: (joints_cam (18, 3), joints_img (18, 2), annotation, image)."""
  ann_dir = pathlib.Path(manual_dir) / "annotations"
  data = json.loads((ann_dir / f"Human36M_subject{subject}_data.json").read_text())
  cams = json.loads((ann_dir / f"Human36M_subject{subject}_camera.json").read_text())
  joints = json.loads((ann_dir / f"Human36M_subject{subject}_joint_3d.json").read_text())
  img = next(im for im in data["images"] if im["file_name"] == file_name)
  ann = next(a for a in data["annotations"] if a["image_id"] == img["id"])
  world = joints[str(img["action_idx"])][str(img["subaction_idx"])][str(img["frame_idx"])]
  world = world + [[(world[11][k] + world[14][k]) / 2 for k in range(3)]]  # Thorax
  cam = cams[str(img["cam_idx"])]
  cam_pts, uv = [], []
  for x in world:  # X_cam = R X + t, then the pinhole projection, one joint at a time
    p = [sum(cam["R"][r][k] * x[k] for k in range(3)) + cam["t"][r] for r in range(3)]
    cam_pts.append(p)
    uv.append([cam["f"][0] * p[0] / p[2] + cam["c"][0], cam["f"][1] * p[1] / p[2] + cam["c"][1]])
  return np.array(cam_pts), np.array(uv), img, ann


def test_protocol1_dummy_records_match_the_annotation_files(tmp_path):
  builder = _build(DUMMY, tmp_path / "tfds")
  train, test = _records(builder, "train"), _records(builder, "test")
  # Train: S1 frames 0 and 5 (frame 3 is not a multiple of 5); test: S9 frame 0 and S11 frame 64
  # (S11's frame 0 is in the corrupt sequence).
  assert [(int(r["subject"]), int(r["frame"])) for r in train] == [(1, 0), (1, 5)]
  assert [(int(r["subject"]), int(r["frame"])) for r in test] == [(9, 0), (11, 64)]
  assert dict(builder.skipped["test"]) == {"known corrupt sequence": 1}
  assert not builder.skipped["train"]
  assert builder.info.metadata["skeleton"] == "h36m"
  dets = {d["image_id"]: d for d in json.loads((DUMMY / h36m_source.DETECTIONS_FILE).read_text())}
  for split, recs in (("train", train), ("test", test)):
    for r in recs:
      seq = {(1, 0): "s_01_act_02_subact_01_ca_01", (1, 5): "s_01_act_02_subact_01_ca_01",
             (9, 0): "s_09_act_05_subact_01_ca_02", (11, 64): "s_11_act_03_subact_01_ca_01"}[
                 (int(r["subject"]), int(r["frame"]))]
      file_name = f"{seq}/{seq}_{int(r['frame']) + 1:06d}.jpg"
      cam_ref, uv_ref, img, ann = _reference(DUMMY, int(r["subject"]), file_name)
      assert r["image"].shape == (100, 100, 3)
      assert r["joints_cam"].shape == (18, 3) and r["joints_img"].shape == (18, 2)
      np.testing.assert_allclose(r["joints_cam"], cam_ref, atol=0.05)
      np.testing.assert_allclose(r["joints_img"], uv_ref, atol=1e-3)
      np.testing.assert_allclose(r["bbox"], ann["bbox"], atol=1e-4)
      expected_vis = [float(v) for v in ann["keypoints_vis"]] + [float(ann["keypoints_vis"][11] and
                                                                      ann["keypoints_vis"][14])]
      np.testing.assert_array_equal(r["joints_vis"], expected_vis)
      assert (int(r["image_id"]), int(r["action"])) == (img["id"], img["action_idx"])
      assert float(r["has_depth"]) == 1.0
      disk = cv2.imread(str(DUMMY / "images" / file_name))[..., ::-1]
      assert np.abs(r["image"].astype(int) - disk).mean() < 1.0  # the stored bytes are the file's
      if img["id"] in dets:
        assert split == "test" and float(r["has_det"]) == 1.0
        np.testing.assert_allclose(r["det_bbox"], dets[img["id"]]["bbox"], atol=1e-3)
        np.testing.assert_allclose(r["det_root_cam"], dets[img["id"]]["root_cam"], atol=1e-3)
      else:
        assert float(r["has_det"]) == 0.0 and not r["det_bbox"].any()
  # Frame 5's L_Shoulder is annotated invisible, so its Thorax is too.
  assert train[1]["joints_vis"][11] == 0 and train[1]["joints_vis"][17] == 0


def test_detected_boxes_are_stored_as_the_file_holds_them_and_tight_ones_warned(tmp_path, caplog):
  """det_bbox keeps the bbox_root file's box (a crop box, data/schema.py); a box that is not square
  cannot be one RootNet wrote, and the build says so (and still stores it as given)."""
  manual = _copy_dummy(tmp_path)
  path = manual / h36m_source.DETECTIONS_FILE
  dets = json.loads(path.read_text())
  dets[0]["bbox"] = [10.0, 20.0, 30.0, 60.0]  # a tight detector box, 1:2
  path.write_text(json.dumps(dets))
  with caplog.at_level(logging.WARNING):
    builder = _build(manual, tmp_path / "tfds")
  assert "1 of 2 detected boxes are not square" in caplog.text and "bbox_root_human36m_output.json" in caplog.text
  stored = {int(r["image_id"]): r["det_bbox"] for r in _records(builder, "test") if float(r["has_det"])}
  np.testing.assert_allclose(stored[dets[0]["image_id"]], [10.0, 20.0, 30.0, 60.0])
  np.testing.assert_allclose(stored[dets[1]["image_id"]], dets[1]["bbox"], rtol=1e-6)
  assert pose_builder.check_crop_boxes("x", np.array(dets[1]["bbox"])[None], "f.json") == 0


def test_protocol2_moves_s9_into_training(tmp_path):
  builder = _build(DUMMY, tmp_path / "tfds", "protocol2")
  assert sorted({int(r["subject"]) for r in _records(builder, "train")}) == [1, 9]
  assert [int(r["subject"]) for r in _records(builder, "test")] == [11]


def test_custom_sampling_counts_missing_and_truncated_images(tmp_path):
  manual = _copy_dummy(tmp_path)
  truncated = manual / "images/s_01_act_02_subact_01_ca_01/s_01_act_02_subact_01_ca_01_000006.jpg"
  truncated.write_bytes(truncated.read_bytes()[:1500])
  config = h36m.Human36MConfig(name="every_frame", train_subjects=(1,), test_subjects=(9,),
                               train_every=1, test_every=1, num_threads=2)
  builder = _build(manual, tmp_path / "tfds", config)
  # S1 frames 0, 3, 5: frame 3 has no image file, frame 5's file is cut short.
  assert [int(r["frame"]) for r in _records(builder, "train")] == [0]
  assert dict(builder.skipped["train"]) == {"missing image file": 1,
                                            "truncated JPEG file (no end-of-image marker)": 1}
  assert len(_records(builder, "test")) == 1


def _rewrite_cameras_as_centres(src_dir, dst_dir, subjects):
  """Copies the camera files with t replaced by the camera centre C = -R^T t (older releases)."""
  for s in subjects:
    cams = json.loads((src_dir / f"Human36M_subject{s}_camera.json").read_text())
    for cam in cams.values():
      R, t = np.array(cam["R"]), np.array(cam["t"])
      cam["t"] = (-R.T @ t).tolist()
    (dst_dir / f"Human36M_subject{s}_camera.json").write_text(json.dumps(cams))


def test_camera_centre_convention_is_detected_and_gives_the_same_joints(tmp_path):
  manual = _copy_dummy(tmp_path)
  _rewrite_cameras_as_centres(DUMMY / "annotations", manual / "annotations", [1, 9, 11])
  ref = _build(DUMMY, tmp_path / "ref")
  centre = _build(manual, tmp_path / "centre")
  assert set(ref.camera_conventions.values()) == {h36m_source.CONVENTION_TRANSLATION}
  assert set(centre.camera_conventions.values()) == {h36m_source.CONVENTION_CENTER}
  for split in ("train", "test"):
    for a, b in zip(_records(ref, split), _records(centre, split), strict=True):
      np.testing.assert_allclose(a["joints_cam"], b["joints_cam"], atol=1e-2)
      np.testing.assert_allclose(a["joints_img"], b["joints_img"], atol=1e-3)


def test_camera_of_another_subject_cannot_be_read_either_way():
  world = np.array(json.loads((DUMMY / "annotations/Human36M_subject1_joint_3d.json").read_text())
                   ["2"]["1"]["0"])[None]
  box = np.array([[0.0, 0.0, 10.0, 10.0]])  # a box far from where the person projects
  cam = h36m_source.Camera(R=np.eye(3), t=np.array([0.0, 0.0, 5000.0]), f=np.array([100.0, 100.0]),
                           c=np.array([50.0, 50.0]))
  with pytest.raises(pose_builder.RecordError, match="cams.json: camera 1: cannot tell the camera convention"):
    h36m_source.detect_convention(world, box, cam, "cams.json: camera 1")


def test_missing_annotation_files_are_all_listed(tmp_path):
  manual = _copy_dummy(tmp_path)
  (manual / "annotations/Human36M_subject6_joint_3d.json").unlink()
  (manual / "annotations/Human36M_subject9_camera.json").unlink()
  with pytest.raises(FileNotFoundError) as err:
    _build(manual, tmp_path / "tfds")
  msg = str(err.value)
  assert "Human36M_subject6_joint_3d.json" in msg and "Human36M_subject9_camera.json" in msg
  assert "Human36M_subject1_data.json" not in msg  # only what is missing
  assert "3DMPPE" in msg  # followed by the download instructions


@pytest.mark.parametrize("edit, pattern", [
    (lambda d: d["annotations"][2].pop("bbox"),
     re.escape("Human36M_subject1_data.json: annotations[2]: missing 'bbox'")),
    (lambda d: d["annotations"][0].__setitem__("bbox", [1.0, 2.0, 0.0, 5.0]),
     r"Human36M_subject1_data\.json: annotations\[0\] \(s_01_\S+\.jpg\): field 'bbox' .* has no area"),
    (lambda d: d["images"][1].pop("frame_idx"),
     re.escape("Human36M_subject1_data.json: images[1]: missing 'frame_idx'")),
])
def test_malformed_record_names_file_and_index(tmp_path, edit, pattern):
  manual = _copy_dummy(tmp_path)
  path = manual / "annotations/Human36M_subject1_data.json"
  data = json.loads(path.read_text())
  edit(data)
  path.write_text(json.dumps(data))
  with pytest.raises(pose_builder.RecordError, match=pattern):
    _build(manual, tmp_path / "tfds")


# ------------------------------------------------------------------------------------------------
# The real Human3.6M frames (subjects 1, 5, 7, 8; one frame each) in ../shared/fixtures.

_FIXTURE_CONFIG = dict(train_subjects=(1, 5, 7, 8), test_subjects=(), train_every=1)


def test_fixture_frames_reproject_onto_the_annotations(fixtures_dir, tmp_path):
  manual = fixtures_dir / "h36m_3dmppe"
  builder = _build(manual, tmp_path / "tfds", h36m.Human36MConfig(name="fixture", **_FIXTURE_CONFIG))
  assert list(builder.info.splits) == ["train"]
  recs = _records(builder, "train")
  assert [int(r["subject"]) for r in recs] == [1, 5, 7, 8]
  assert builder.camera_conventions == {(1, 1): "R X + t", (5, 1): "R X + t", (7, 2): "R X + t",
                                        (8, 2): "R X + t"}
  body = np.load(fixtures_dir / "h36m_mmpose/test_h36m_body3d.npz")
  cams = pickle.load(open(fixtures_dir / "h36m_mmpose/cameras.pkl", "rb"))
  for k, r in enumerate(recs):  # the mmpose file holds the same frames in the same subject order
    assert str(body["imgname"][k]).startswith(f"S{int(r['subject'])}/")
    box = r["bbox"]
    inside = ((r["joints_img"] >= box[:2]) & (r["joints_img"] <= box[:2] + box[2:])).all(-1)
    assert inside.all()
    # mmpose's 2D annotation includes lens distortion; the undistorted projection is within 3 px.
    assert np.abs(r["joints_img"][:17] - body["part"][k, :, :2]).max() < 3.0
    # Its camera-frame joints (metres) come from its own calibration (camera centre convention).
    np.testing.assert_allclose(r["joints_cam"][:17], body["S"][k, :, :3] * 1000.0, atol=0.5)
    cam_id = pathlib.PurePosixPath(str(body["imgname"][k])).name.split(".")[1].split("_")[0]
    cam = cams[(f"S{int(r['subject'])}", cam_id)]
    np.testing.assert_allclose(r["focal"], cam["f"][:, 0], rtol=1e-6)
    _, uv_ref, _, _ = _reference(manual, int(r["subject"]), _file_name(manual, r))
    assert np.abs(r["joints_img"] - uv_ref).max() < 3.0
    assert r["image"].shape[:2] in ((1002, 1000), (1000, 1000))


def _file_name(manual, rec):
  data = json.loads((manual / f"annotations/Human36M_subject{int(rec['subject'])}_data.json").read_text())
  return next(im["file_name"] for im in data["images"] if im["id"] == int(rec["image_id"]))


def test_fixture_camera_centre_copy_is_detected(fixtures_dir, tmp_path):
  fixture = fixtures_dir / "h36m_3dmppe"
  manual = tmp_path / "manual"
  (manual / "annotations").mkdir(parents=True)
  (manual / "images").symlink_to(fixture / "images")  # never copy the fixture images
  for s in (1, 5, 7, 8):
    for kind in ("data", "joint_3d"):
      shutil.copy(fixture / f"annotations/Human36M_subject{s}_{kind}.json", manual / "annotations")
  _rewrite_cameras_as_centres(fixture / "annotations", manual / "annotations", [1, 5, 7, 8])
  config = h36m.Human36MConfig(name="fixture", **_FIXTURE_CONFIG)
  ref = _build(fixture, tmp_path / "ref", config)
  centre = _build(manual, tmp_path / "centre", config)
  assert set(centre.camera_conventions.values()) == {"R (X - t)"}
  assert set(ref.camera_conventions.values()) == {"R X + t"}
  for a, b in zip(_records(ref, "train"), _records(centre, "train"), strict=True):
    np.testing.assert_allclose(b["joints_cam"], a["joints_cam"], atol=1e-2)
