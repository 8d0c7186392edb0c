"""The synthetic TFDS builder: builds from nothing, reads back, and its labels match its pictures."""

import multiprocessing

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cascaded_lift import skeleton
from cascaded_lift.datasets import build as build_lib
from cascaded_lift.datasets import pose_builder
from cascaded_lift.datasets.synthetic import kinematics
from cascaded_lift.datasets.synthetic import render
from cascaded_lift.datasets.synthetic import synthetic_dataset_builder as synth


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def built(tfds_dir):
  return build_lib.build("synthetic", config="small", data_dir=tfds_dir, progress=False)


def _pinhole(points, f, c):
  """Reference projection written out: u = fx X / Z + cx, v = fy Y / Z + cy."""
  out = np.zeros((len(points), 2))
  for i, (x, y, z) in enumerate(points.astype(np.float64)):
    out[i] = (f[0] * x / z + c[0], f[1] * y / z + c[1])
  return out


def test_builds_and_reads_back(built, tfds_dir):
  assert built.info.splits["train"].num_examples == 48
  assert built.info.splits["test"].num_examples == 16
  assert built.info.metadata["skeleton"] == "h36m"
  assert "skeleton: h36m" in built.info.description
  ds = built.as_data_source("train")  # default decoding: TFDS decodes the JPEG itself
  ex = ds[3]
  assert ex["image"].shape == (64, 64, 3) and ex["image"].dtype == np.uint8
  assert ex["joints_img"].shape == (18, 2) and ex["joints_cam"].shape == (18, 3)
  assert ex["has_depth"] == 1.0 and np.all(ex["joints_vis"] == 1)
  assert ex["image"].std() > 5  # something was drawn
  # Built files are readable by name through tfds.data_source alone, without the builder class.
  test = tfds.data_source("synthetic/small", split="test", data_dir=tfds_dir, download=False)
  assert len(test) == 16 and test[0]["joints_cam"].shape == (18, 3)


def test_stored_joints_reproject_through_stored_intrinsics(built):
  for split in ("train", "test"):
    ds = built.as_data_source(split)
    for i in range(len(ds)):
      ex = ds[i]
      uv = _pinhole(ex["joints_cam"], ex["focal"], ex["principal"])
      assert np.abs(uv - ex["joints_img"]).max() < 0.01, (split, i)
      assert np.all(ex["joints_cam"][:, 2] > 1000)


def test_build_is_deterministic_and_splits_use_disjoint_subjects(built):
  ds = built.as_data_source("train")
  cfg = built.builder_config
  ex = synth.generate_example(cfg, "train", 7)
  stored = ds[7]
  # The stored record is the seeded generator's output (joints exactly; image through JPEG).
  np.testing.assert_allclose(stored["joints_cam"], ex["joints_cam"], rtol=1e-6)
  assert np.abs(stored["image"].astype(int) - ex["image"]).mean() < 6
  again = synth.generate_example(cfg, "train", 7)
  assert np.array_equal(again["image"], ex["image"])
  assert not np.allclose(synth.generate_example(cfg, "train", 8)["joints_cam"], ex["joints_cam"])
  train_subjects = {int(ds[i]["subject"]) for i in range(len(ds))}
  test_ds = built.as_data_source("test")
  test_subjects = {int(test_ds[i]["subject"]) for i in range(len(test_ds))}
  assert train_subjects and test_subjects and not train_subjects & test_subjects
  ids = [int(ds[i]["image_id"]) for i in range(len(ds))] + [int(test_ds[i]["image_id"]) for i in range(len(test_ds))]
  assert len(set(ids)) == len(ids)


def _angle(u, v):
  return np.degrees(np.arccos(np.clip(np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v), -1, 1)))


def test_poses_are_anatomical():
  cfg = synth.SyntheticConfig(name="t", width=128, height=128)
  j = kinematics.J
  bone_by_subject = {}
  for i in range(60):
    ex = synth.generate_example(cfg, "train", i)
    p = ex["joints_cam"]
    np.testing.assert_allclose(p[j["Thorax"]], (p[j["L_Shoulder"]] + p[j["R_Shoulder"]]) / 2, atol=1e-6)
    for side in "LR":
      # Knees and elbows bend one way only, within their range; limbs never pass through themselves.
      thigh, shin = p[j[f"{side}_Knee"]] - p[j[f"{side}_Hip"]], p[j[f"{side}_Ankle"]] - p[j[f"{side}_Knee"]]
      assert _angle(thigh, shin) <= 145.5
      upper, fore = p[j[f"{side}_Elbow"]] - p[j[f"{side}_Shoulder"]], p[j[f"{side}_Wrist"]] - p[j[f"{side}_Elbow"]]
      assert _angle(upper, fore) <= 150.5
    lengths = {}
    for a, b in skeleton.H36M.bones:
      lengths[(a, b)] = np.linalg.norm(p[a] - p[b])
    # Left and right bones of one body are equally long, and near an adult's.
    for (a, b), length in lengths.items():
      name_a, name_b = skeleton.H36M.joint_names[a], skeleton.H36M.joint_names[b]
      if name_b.startswith("L_"):
        twin = (skeleton.H36M.index(name_a.replace("L_", "R_")), skeleton.H36M.index(name_b.replace("L_", "R_")))
        assert abs(length - lengths[twin]) < 1e-6
    assert 350 < lengths[(j["L_Hip"], j["L_Knee"])] < 560
    # The same subject has the same body in every example.
    key = ex["subject"]
    vec = np.array(sorted(lengths.values()))
    if key in bone_by_subject:
      np.testing.assert_allclose(vec, bone_by_subject[key], rtol=1e-9)
    bone_by_subject[key] = vec
    # The whole person is in the frame.
    assert np.all(ex["joints_img"] >= 0) and np.all(ex["joints_img"] <= 127)


def test_render_paints_left_blue_right_red_and_respects_depth():
  # Hand-made pose, person facing the camera 4 m away: left wrist (image right) and right wrist.
  body = kinematics.Body(bones=dict(kinematics.MEAN_BONES), girth=1.0)
  angles = {k: 0.0 for k in kinematics.sample_angles(np.random.default_rng(0))[1]}
  angles.update(L_sh_elev=90.0, L_sh_plane=0.0, R_sh_elev=90.0, R_sh_plane=0.0)  # arms out sideways
  pts = kinematics.forward_kinematics(body, angles)
  cam = pts @ np.diag([1.0, -1.0, -1.0]).T + np.array([0.0, 0.0, 4000.0])  # facing the camera
  f, c = np.array([500.0, 500.0]), np.array([127.5, 127.5])
  uv = _pinhole(cam, f, c)
  img = render.render_person(np.zeros((256, 256, 3), np.uint8), cam, f, c, 1.0, np.random.default_rng(0))
  j = kinematics.J
  mid_l = np.round((uv[j["L_Shoulder"]] + uv[j["L_Elbow"]]) / 2).astype(int)
  mid_r = np.round((uv[j["R_Shoulder"]] + uv[j["R_Elbow"]]) / 2).astype(int)
  assert mid_l[0] > mid_r[0]  # facing us, the person's left is on the image's right
  pl, pr = img[mid_l[1], mid_l[0]].astype(int), img[mid_r[1], mid_r[0]].astype(int)
  assert pl[2] > pl[0] + 40 and pr[0] > pr[2] + 40, (pl, pr)
  # Lay the left forearm horizontally across the chest, 250 mm in front of the torso joint, then
  # 250 mm behind it: the pixel over the torso joint shows the arm (blue) only in the first case.
  for dz, expect_arm in ((-250.0, True), (250.0, False)):
    p = cam.copy()
    p[j["L_Elbow"]] = p[j["Torso"]] + np.array([120.0, 0.0, dz])
    p[j["L_Wrist"]] = p[j["Torso"]] + np.array([-120.0, 0.0, dz])
    img = render.render_person(np.zeros((256, 256, 3), np.uint8), p, f, c, 1.0, np.random.default_rng(0))
    mid = np.round(_pinhole(((p[j["L_Elbow"]] + p[j["L_Wrist"]]) / 2)[None], f, c)[0]).astype(int)
    px = img[mid[1], mid[0]].astype(int)
    is_blue = px[2] > px[1] + 30 and px[2] > px[0] + 30
    is_green = px[1] > px[0] + 30 and px[1] > px[2] + 30
    assert (is_blue, is_green) == (expect_arm, not expect_arm), (dz, px)


def test_make_example_names_the_record_and_field():
  class Tiny(pose_builder.PoseDatasetBuilder):
    SKELETON = skeleton.MPII
    def _split_generators(self, dl_manager):
      return {}
    def _generate_examples(self):
      yield from ()
  b = Tiny.__new__(Tiny)  # validation needs no data_dir
  jpeg = pose_builder.encode_jpeg(np.zeros((8, 8, 3), np.uint8))
  good = dict(image=jpeg, bbox=[0, 0, 4, 4], joints_img=np.zeros((16, 2)), joints_vis=np.ones(16))
  ex = b.make_example("rec7", **good)
  assert ex["has_depth"] == 0 and ex["joints_cam"].shape == (16, 3) and ex["image_id"] == -1
  with pytest.raises(pose_builder.RecordError, match="rec7.*joints_img.*shape"):
    b.make_example("rec7", **dict(good, joints_img=np.zeros((17, 2))))
  with pytest.raises(pose_builder.RecordError, match="rec7.*'image'.*missing"):
    b.make_example("rec7", **dict(good, image=None))
  with pytest.raises(pose_builder.RecordError, match="rec7.*not a JPEG"):
    b.make_example("rec7", **dict(good, image=b"\x89PNG...."))
  with pytest.raises(pose_builder.RecordError, match="rec7.*bbox.*no area"):
    b.make_example("rec7", **dict(good, bbox=[3, 3, 0, 5]))
  with pytest.raises(pose_builder.RecordError, match="rec7.*joints_cam.*NaN"):
    b.make_example("rec7", **dict(good, joints_cam=np.full((16, 3), np.nan)))


def test_command_line_builds(tmp_path, capsys):
  assert build_lib.main(["synthetic", "--config", "small_2d", "--data_dir", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert "train: 32 examples" in out
  assert build_lib.main(["no_such_dataset", "--data_dir", str(tmp_path)]) == 2  # a user error: one line
  err = capsys.readouterr().err.strip()
  assert err.startswith("cascaded-lift-build: error:") and "no_such_dataset" in err and "\n" not in err


def test_parallel_build_writes_the_same_dataset(built, tmp_path, monkeypatch):
  # The pool path (spawned worker processes) must store exactly what the in-process path stores.
  monkeypatch.setattr(synth, "PARALLEL_MIN_EXAMPLES", 0)
  monkeypatch.setattr(synth, "BUILD_WORKERS", 2)
  contexts = []

  class RecordingMultiprocessing:  # the real module, with a record of the pools the builder starts
    def get_context(self, method):
      contexts.append(method)
      return multiprocessing.get_context(method)

  monkeypatch.setattr(synth, "multiprocessing", RecordingMultiprocessing())
  pooled = build_lib.build("synthetic", config="small", data_dir=str(tmp_path), progress=False)
  assert contexts == ["spawn", "spawn"]  # one pool per split
  for split in ("train", "test"):
    a, b = built.as_data_source(split), pooled.as_data_source(split)
    assert len(a) == len(b)
    for i in range(len(a)):
      for key, value in a[i].items():
        np.testing.assert_array_equal(np.asarray(b[i][key]), np.asarray(value), err_msg=f"{split}[{i}] {key}")
