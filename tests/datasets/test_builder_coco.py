"""COCO builder: dummy_data and the real val2017 samples round-trip, skips, derived joints, errors.

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
from cascaded_lift.datasets import manual_io as sources

DUMMY = pathlib.Path(datasets.__file__).resolve().parent / "coco" / "dummy_data"


def _build(manual_dir, tmp_path, config=None):
  return build.build("coco", config=config, manual_dir=manual_dir, data_dir=tmp_path / "tfds",
                     progress=False)


def _records(builder, split):
  ds = builder.as_data_source(split)
  return [ds[i] for i in range(len(ds))]


def _expected(ann_file: pathlib.Path):
  """(records, n_crowd, n_empty) from the annotation file; records as dicts of plain arrays."""
  data = json.loads(ann_file.read_text())
  images = {im["id"]: im for im in data["images"]}
  out, n_crowd, n_empty = [], 0, 0
  for ann in data["annotations"]:
    if ann.get("iscrowd", 0):
      n_crowd += 1
      continue
    kp = ann["keypoints"]
    if all(kp[3 * k + 2] == 0 for k in range(17)):
      n_empty += 1
      continue
    joints = np.zeros((19, 2))
    vis = np.zeros(19)
    for k in range(17):
      joints[k] = kp[3 * k], kp[3 * k + 1]
      vis[k] = 1.0 if kp[3 * k + 2] > 0 else 0.0
    for out_k, (a, b) in ((17, (5, 6)), (18, (11, 12))):  # Thorax, Pelvis
      if vis[a] and vis[b]:
        joints[out_k] = (joints[a] + joints[b]) / 2
        vis[out_k] = 1.0
    im = images[ann["image_id"]]
    out.append({"image_id": ann["image_id"], "bbox": np.array(ann["bbox"]), "joints": joints, "vis": vis,
                "file_name": im["file_name"], "size": (im["height"], im["width"])})
  return out, n_crowd, n_empty


def _by_key(items, image_id, bbox):
  return sorted(items, key=lambda r: (int(r[image_id]), *np.round(np.asarray(r[bbox], np.float64), 2)))


def _check_split(builder, split, ann_file, image_dir, exact_images=True):
  expected, n_crowd, n_empty = _expected(ann_file)
  got = _records(builder, split)
  assert len(got) == len(expected) > 0
  for exp, rec in zip(_by_key(expected, "image_id", "bbox"), _by_key(got, "image_id", "bbox")):
    assert int(rec["image_id"]) == exp["image_id"]
    np.testing.assert_allclose(rec["bbox"], exp["bbox"], rtol=1e-6)
    np.testing.assert_allclose(rec["joints_img"], exp["joints"], rtol=1e-6)
    np.testing.assert_array_equal(rec["joints_vis"], exp["vis"])
    assert rec["image"].shape == (*exp["size"], 3) and rec["image"].dtype == np.uint8
    source = cv2.imread(str(image_dir / exp["file_name"]), cv2.IMREAD_COLOR)[..., ::-1]
    if exact_images:
      np.testing.assert_array_equal(rec["image"], source)
    else:  # greyscale sources are re-encoded as RGB JPEG
      assert np.abs(rec["image"].astype(int) - source.astype(int)).mean() < 2.0
    assert float(rec["has_depth"]) == 0.0 and not np.any(rec["joints_cam"])
    assert not np.any(rec["focal"]) and int(rec["subject"]) == -1
  counts = builder.skipped[split]
  assert sum(n for r, n in counts.items() if "crowd" in r) == n_crowd
  assert sum(n for r, n in counts.items() if "no labelled" in r) == n_empty
  assert sum(counts.values()) == n_crowd + n_empty
  return got


def test_builds_dummy_data_and_reads_back(tmp_path):
  builder = _build(DUMMY, tmp_path)
  assert builder.info.metadata["skeleton"] == "coco"
  assert builder.info.metadata["joint_names"] == list(skeleton.COCO.joint_names)
  assert set(builder.info.splits) == {"train", "validation"}
  train = _check_split(builder, "train", DUMMY / "annotations/person_keypoints_train2017.json",
                       DUMMY / "train2017", exact_images=False)
  _check_split(builder, "validation", DUMMY / "annotations/person_keypoints_val2017.json", DUMMY / "val2017")
  assert builder.skipped["train"] and not builder.skipped["validation"]  # crowd + empty are in train
  # The dummy train split has a person missing a hip: Pelvis must be invisible there, Thorax visible.
  assert any(r["joints_vis"][18] == 0 and r["joints_vis"][17] == 1 for r in train)
  for rec in train:
    assert rec["joints_img"].shape == (19, 2) and rec["joints_vis"].shape == (19,)
    assert rec["bbox"].shape == (4,) and rec["joints_cam"].shape == (19, 3)


def _snapshot(folder: pathlib.Path):
  return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_real_samples_match_annotations(fixtures_dir, tmp_path):
  root = fixtures_dir / "coco"
  before = _snapshot(root)
  builder = _build(root, tmp_path, config="val2017")
  assert list(builder.info.splits) == ["validation"]
  got = _check_split(builder, "validation", root / "annotations/person_keypoints_val2017.json",
                     root / "val2017")
  assert sum(builder.skipped["validation"].values()) == 2  # two people without keypoints
  # Thorax / Pelvis are the midpoints of the stored shoulders / hips wherever both are labelled.
  n_thorax = 0
  for rec in got:
    j, v = rec["joints_img"], rec["joints_vis"]
    for out_k, (a, b) in ((17, (5, 6)), (18, (11, 12))):
      assert v[out_k] == v[a] * v[b]
      if v[out_k]:
        np.testing.assert_allclose(j[out_k], (j[a] + j[b]) / 2, rtol=1e-6)
        n_thorax += out_k == 17
    # Every stored visible joint lies on the frame.
    h, w = rec["image"].shape[:2]
    vis_j = j[v > 0]
    assert np.all((vis_j >= -0.5) & (vis_j <= np.array([w, h]) - 0.5))
  assert n_thorax >= 5
  assert builder.hidden_joints["validation"] == 0
  assert _snapshot(root) == before  # the shared samples are only read


def test_boxes_without_area_are_skipped_and_counted(tmp_path):
  def flat_boxes(data):
    data["annotations"][0]["bbox"][3] = 0.0  # zero height
    data["annotations"][3]["bbox"][2] = -4.0  # negative width
  def flat_box(data):
    data["annotations"][0]["bbox"][3] = 0.0  # zero height
  builder = _build(_corrupt(tmp_path / "a", flat_box), tmp_path / "a")
  assert len(builder.as_data_source("train")) == 1  # of the two people the dummy train split keeps
  assert sum(n for r, n in builder.skipped["train"].items() if "box" in r) == 1
  assert len(builder.as_data_source("validation")) == 2
  # When nothing is left the error says why (TFDS cannot write an empty split).
  with pytest.raises(ValueError, match=r"coco\[train\]: no usable person .*box empty once clipped to the frame: 2"):
    _build(_corrupt(tmp_path / "b", flat_boxes), tmp_path / "b")


def test_jpeg_header_matches_decoded_size(fixtures_dir):
  paths = sorted((fixtures_dir / "coco" / "val2017").glob("*.jpg")) + sorted(DUMMY.rglob("*.jpg"))
  for path in paths:
    decoded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    channels = 1 if decoded.ndim == 2 else decoded.shape[2]
    assert sources.jpeg_info(path.read_bytes()) == (decoded.shape[0], decoded.shape[1], channels), path
  assert sources.jpeg_info(b"not a jpeg") is None


def _exif_orientation_segment(orientation: int) -> bytes:
  """An APP1 Exif segment holding only the orientation tag (big-endian TIFF, one IFD entry)."""
  tiff = b"MM\x00\x2a\x00\x00\x00\x08" + (1).to_bytes(2, "big")
  tiff += b"\x01\x12\x00\x03\x00\x00\x00\x01" + orientation.to_bytes(2, "big") + b"\x00\x00"
  tiff += b"\x00\x00\x00\x00"
  payload = b"Exif\x00\x00" + tiff
  return b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload


def test_frames_are_rgb_on_their_stored_pixel_grid(tmp_path):
  # Greyscale JPEG -> 3-component JPEG of the same pixels.
  grey = DUMMY / "train2017" / "000000000002.jpg"
  data, h, w = sources.read_frame("coco", grey, "r")
  assert sources.jpeg_info(data) == (h, w, 3) == (56, 40, 3)
  source = cv2.imread(str(grey), cv2.IMREAD_GRAYSCALE)
  assert np.abs(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).astype(int)
                - source[..., None]).mean() < 2.0
  # A frame with an Exif "rotate 90" tag: OpenCV would turn it; the stored bytes must not.
  plain = (DUMMY / "train2017" / "000000000001.jpg").read_bytes()
  tagged = plain[:2] + _exif_orientation_segment(6) + plain[2:]
  assert cv2.imdecode(np.frombuffer(tagged, np.uint8), cv2.IMREAD_COLOR).shape == (64, 48, 3)
  path = tmp_path / "tagged.jpg"
  path.write_bytes(tagged)
  data, h, w = sources.read_frame("coco", path, "r")
  assert (h, w) == (48, 64) and data == plain
  assert sources.strip_exif(plain) is plain


def test_missing_files_are_all_listed(tmp_path):
  empty = tmp_path / "manual"
  empty.mkdir()
  with pytest.raises(FileNotFoundError) as err:
    _build(empty, tmp_path)
  msg = str(err.value)
  for name in ("annotations/person_keypoints_train2017.json", "annotations/person_keypoints_val2017.json",
               "train2017/", "val2017/"):
    assert name in msg
  # Folders present but an image gone: the image is named, with the annotation file citing it.
  manual = tmp_path / "copy"
  shutil.copytree(DUMMY, manual)
  (manual / "val2017" / "000000000003.jpg").unlink()
  with pytest.raises(FileNotFoundError, match=r"000000000003\.jpg[\s\S]*person_keypoints_val2017\.json"):
    _build(manual, tmp_path / "b")


def _corrupt(tmp_path, edit):
  manual = tmp_path / "manual"
  shutil.copytree(DUMMY, manual)
  path = manual / "annotations" / "person_keypoints_train2017.json"
  data = json.loads(path.read_text())
  edit(data)
  path.write_text(json.dumps(data))
  return manual


def test_malformed_record_is_named_by_file_and_index(tmp_path):
  def short_keypoints(data):
    data["annotations"][3]["keypoints"] = data["annotations"][3]["keypoints"][:50]
  with pytest.raises(pose_builder.RecordError,
                     match=r"person_keypoints_train2017\.json: annotations\[3\]: 'keypoints' has 50 values, "
                           r"expected 51"):
    _build(_corrupt(tmp_path / "a", short_keypoints), tmp_path / "a")

  def short_box(data):
    data["annotations"][0]["bbox"] = data["annotations"][0]["bbox"][:3]
  with pytest.raises(pose_builder.RecordError, match=r"annotations\[0\]: 'bbox' has 3 values, expected 4"):
    _build(_corrupt(tmp_path / "b", short_box), tmp_path / "b")

  def bad_flag(data):
    data["annotations"][3]["keypoints"][2] = 3
  with pytest.raises(pose_builder.RecordError, match=r"annotations\[3\]: keypoint visibility"):
    _build(_corrupt(tmp_path / "c", bad_flag), tmp_path / "c")

  def unknown_image(data):
    data["annotations"][0]["image_id"] = 999
  with pytest.raises(pose_builder.RecordError, match=r"annotations\[0\]: image_id 999 is not in images"):
    _build(_corrupt(tmp_path / "d", unknown_image), tmp_path / "d")
