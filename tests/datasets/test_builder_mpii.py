"""MPII builder: both annotation forms (dummy_data) and the real HRNet-form samples round-trip; errors.

Expected records are computed here from the JSON files with plain loops (independently of the
builder's code) and compared with what the built dataset reads back.
"""

import json
import pathlib
import shutil

import cv2
import numpy as np
import pytest

from cascaded_lift import datasets
from cascaded_lift import skeleton
from cascaded_lift.datasets import build
from cascaded_lift.datasets import pose_builder
from cascaded_lift.datasets.mpii import mpii_dataset_builder as mpii

DUMMY = pathlib.Path(datasets.__file__).resolve().parent / "mpii" / "dummy_data"


def _build(manual_dir, tmp_path, config=None):
  return build.build("mpii", config=config, manual_dir=manual_dir, data_dir=tmp_path / "tfds",
                     progress=False)


def _records(builder, split):
  ds = builder.as_data_source(split)
  return [ds[i] for i in range(len(ds))]


def _expected_3dmppe(path: pathlib.Path):
  """(records, n_without_joints) of a 3DMPPE-form file: values stored as they are."""
  data = json.loads(path.read_text())
  images = {im["id"]: im for im in data["images"]}
  out, n_empty = [], 0
  for ann in data["annotations"]:
    kp = ann["keypoints"]
    vis = np.array([1.0 if kp[3 * k + 2] > 0 else 0.0 for k in range(16)])
    if not vis.any():
      n_empty += 1
      continue
    joints = np.array([[kp[3 * k], kp[3 * k + 1]] for k in range(16)])
    im = images[ann["image_id"]]
    out.append({"image_id": im["id"], "file": im["file_name"], "bbox": np.array(ann["bbox"]),
                "joints": joints, "vis": vis})
  return out, n_empty


def _expected_hrnet(path: pathlib.Path):
  """(records, n_without_joints) of an HRNet-form file: 1-based -> 0-based, box from centre/scale."""
  out, n_empty = [], 0
  for rec in json.loads(path.read_text()):
    vis = np.array([1.0 if v else 0.0 for v in rec["joints_vis"]])
    if not vis.any():
      n_empty += 1
      continue
    joints = np.array(rec["joints"], np.float64) - 1.0
    s = rec["scale"]
    # Square of side 200 s, centred 15 s px below the annotated (1-based) centre.
    cx, cy = rec["center"][0] - 1.0, rec["center"][1] - 1.0 + 15.0 * s
    bbox = np.array([cx - 100.0 * s, cy - 100.0 * s, 200.0 * s, 200.0 * s])
    out.append({"image_id": int(rec["image"][:-4]), "file": rec["image"], "bbox": bbox, "joints": joints,
                "vis": vis})
  return out, n_empty


def _check(records, expected, image_dir):
  """Compares records with expected ones (same order); returns the number of joints hidden off-frame."""
  assert len(records) == len(expected) > 0
  hidden = 0
  for rec, exp in zip(records, expected):
    assert int(rec["image_id"]) == exp["image_id"]
    np.testing.assert_allclose(rec["bbox"], exp["bbox"], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(rec["joints_img"], exp["joints"], rtol=1e-6, atol=1e-4)
    source = cv2.imread(str(image_dir / exp["file"]), cv2.IMREAD_COLOR)[..., ::-1]
    np.testing.assert_array_equal(rec["image"], source)
    h, w = source.shape[:2]
    x, y = exp["joints"][:, 0], exp["joints"][:, 1]
    on_frame = (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)
    np.testing.assert_array_equal(rec["joints_vis"], exp["vis"] * on_frame)
    hidden += int(np.sum(exp["vis"] * ~on_frame))
    # Every stored visible joint lies on the frame.
    vis_j = rec["joints_img"][rec["joints_vis"] > 0]
    assert np.all((vis_j >= -0.5) & (vis_j <= np.array([w, h]) - 0.5))
    assert rec["joints_img"].shape == (16, 2) and rec["joints_cam"].shape == (16, 3)
    assert float(rec["has_depth"]) == 0.0 and not np.any(rec["joints_cam"])
  return hidden


def test_3dmppe_form_dummy_data(tmp_path):
  root = DUMMY / "3dmppe"
  builder = _build(root, tmp_path)
  assert builder.forms == {"train": mpii.COCO_FORM}
  assert builder.info.metadata["skeleton"] == "mpii"
  assert builder.info.metadata["joint_names"] == list(skeleton.MPII.joint_names)
  expected, n_empty = _expected_3dmppe(root / "annotations" / "train.json")
  assert _check(_records(builder, "train"), expected, root / "images") == 0
  assert n_empty == 1 and dict(builder.skipped["train"]) == {"no labelled joint": n_empty}


def test_hrnet_form_dummy_data_with_validation(tmp_path):
  root = DUMMY / "hrnet"
  builder = _build(root, tmp_path)
  assert builder.forms == {"train": mpii.HRNET_FORM, "validation": mpii.HRNET_FORM}
  for split, name in (("train", "train.json"), ("validation", "valid.json")):
    expected, n_empty = _expected_hrnet(root / "annotations" / name)
    hidden = _check(_records(builder, split), expected, root / "images")
    assert builder.hidden_joints[split] == hidden
    assert sum(builder.skipped[split].values()) == n_empty
  assert builder.hidden_joints["validation"] == 1  # the dummy head top above the frame
  assert sum(builder.skipped["train"].values()) == 1


def _snapshot(folder: pathlib.Path):
  return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_real_hrnet_form_samples(fixtures_dir, tmp_path):
  root = fixtures_dir / "mpii"
  before = _snapshot(root)
  config = mpii.MpiiConfig(name="fixture", train_files=("mpii_hrnet_form.json",))
  builder = _build(root, tmp_path, config=config)
  assert list(builder.info.splits) == ["train"] and builder.forms["train"] == mpii.HRNET_FORM
  expected, n_empty = _expected_hrnet(root / "annotations" / "mpii_hrnet_form.json")
  records = _records(builder, "train")
  assert _check(records, expected, root / "images") == 0 and n_empty == 0
  assert len(records) == 5 and builder.hidden_joints["train"] == 0
  # Unlabelled joints (-1, -1 in the file) are stored unlabelled; the box covers every labelled joint.
  assert sum(int((r["joints_vis"] == 0).sum()) for r in records) == 4
  for r in records:
    j, b = r["joints_img"][r["joints_vis"] > 0], r["bbox"]
    assert np.all((j >= b[:2]) & (j <= b[:2] + b[2:]))
  assert _snapshot(root) == before  # the shared samples are only read


def test_missing_files_are_all_listed(tmp_path):
  manual = tmp_path / "manual"
  (manual / "annotations").mkdir(parents=True)
  with pytest.raises(FileNotFoundError) as err:
    _build(manual, tmp_path)
  msg = str(err.value)
  assert "annotations/train.json or annotations/mpii_train.json" in msg and "images/" in msg
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match=r"annotations/train\.json[\s\S]*images/"):
    _build(empty, tmp_path / "b")
  # Annotations present but an image gone: the image is named.
  copy = tmp_path / "copy"
  shutil.copytree(DUMMY / "hrnet", copy)
  (copy / "images" / "000000002.jpg").unlink()
  with pytest.raises(FileNotFoundError, match=r"000000002\.jpg[\s\S]*annotations/train\.json"):
    _build(copy, tmp_path / "c")
  # A required validation file that is absent is listed too.
  config = mpii.MpiiConfig(name="need_val", require_validation=True)
  with pytest.raises(FileNotFoundError, match=r"annotations/valid\.json or annotations/mpii_val\.json"):
    _build(DUMMY / "3dmppe", tmp_path / "d", config=config)


def _corrupt(tmp_path, form, edit):
  manual = tmp_path / "manual"
  shutil.copytree(DUMMY / form, manual)
  path = manual / "annotations" / "train.json"
  data = json.loads(path.read_text())
  path.write_text(json.dumps(edit(data)))
  return manual


def test_malformed_record_is_named_by_file_and_index(tmp_path):
  def drop_joint(data):
    data[2]["joints"] = data[2]["joints"][:15]
    return data
  with pytest.raises(pose_builder.RecordError,
                     match=r"train\.json\[2\]: 'joints' has shape \[15, 2\], expected shape \[16, 2\]"):
    _build(_corrupt(tmp_path / "a", "hrnet", drop_joint), tmp_path / "a")

  def no_scale(data):
    del data[0]["scale"]
    return data
  with pytest.raises(pose_builder.RecordError, match=r"train\.json\[0\]: field 'scale' is missing"):
    _build(_corrupt(tmp_path / "b", "hrnet", no_scale), tmp_path / "b")

  def short_keypoints(data):
    data["annotations"][1]["keypoints"] = data["annotations"][1]["keypoints"][:47]
    return data
  with pytest.raises(pose_builder.RecordError,
                     match=r"train\.json: annotations\[1\]: 'keypoints' has 47 values, expected 48"):
    _build(_corrupt(tmp_path / "c", "3dmppe", short_keypoints), tmp_path / "c")

  def wrong_size(data):
    data["images"][1]["width"] += 1
    return data
  with pytest.raises(pose_builder.RecordError, match=r"annotations\[3\]: 000000002\.jpg is 60x80 px"):
    _build(_corrupt(tmp_path / "d", "3dmppe", wrong_size), tmp_path / "d")

  with pytest.raises(pose_builder.RecordError, match=r"train\.json: neither annotation form"):
    _build(_corrupt(tmp_path / "e", "3dmppe", lambda data: {"people": []}), tmp_path / "e")


def _same_records(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["joints_img"], y["joints_img"])


def test_failed_rebuild_keeps_the_previous_dataset(tmp_path, capsys):
  data_dir = tmp_path / "tfds"
  want = _records(_build(DUMMY / "hrnet", tmp_path), "train")
  broken = tmp_path / "broken"
  shutil.copytree(DUMMY / "hrnet", broken)
  (broken / "images" / "000000002.jpg").unlink()
  with pytest.raises(FileNotFoundError, match=r"000000002\.jpg"):
    build.build("mpii", manual_dir=broken, data_dir=data_dir, overwrite=True, progress=False)
  kept = datasets.get_builder("mpii", data_dir=str(data_dir))
  assert kept.is_prepared()
  _same_records(_records(kept, "train"), want)
  assert not list(data_dir.rglob(".rebuild-*")) and not list(data_dir.rglob("*.previous-*"))
  # The command line: one line naming the file, exit status 2, and still nothing lost.
  assert build.main(["mpii", "--manual_dir", str(broken), "--data_dir", str(data_dir), "--overwrite"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("cascaded-lift-build: error:") and "000000002.jpg" in err and "\n" not in err
  _same_records(_records(datasets.get_builder("mpii", data_dir=str(data_dir)), "train"), want)
  # A rebuild that succeeds replaces the files.
  rebuilt = build.build("mpii", manual_dir=DUMMY / "hrnet", data_dir=data_dir, overwrite=True, progress=False)
  assert rebuilt.is_prepared() and pathlib.Path(rebuilt.data_dir) == pathlib.Path(kept.data_dir)
  _same_records(_records(rebuilt, "train"), want)
