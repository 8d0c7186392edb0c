"""cascaded-lift-predict: the three outputs per image, box sources (command line, COCO annotations,
scored detections), config loading, and clear errors."""

import json
import pathlib

import cv2
import numpy as np
import pytest

from cascaded_lift.inference import cli as predict_cli

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY = ["model.resnet_depth=18", "model.resnet_width=8", "model.head_width=16", "model.bone_width=8",
        "model.lifter_width=32", "model.lifter_blocks=1", "model.lifter_layers_per_block=2",
        "model.context_bottlenecks=1", "model.joint_bottlenecks=1", "model.depth_bottlenecks=1",
        "model.volumetric_bottlenecks=1", "data.image_size=64", "data.depth_bins=8"]
MODEL_ARGS = ["--config", str(REPO / "configs" / "default.py"), "--random-init", "--max-batch", "1"]


def _sets():
  return [f"--config.{s}" for s in TINY]


def _coco(fixtures_dir):
  return fixtures_dir / "coco" / "val2017", fixtures_dir / "coco" / "annotations" / "person_keypoints_val2017.json"


def test_single_image_writes_json_overlay_and_plot(fixtures_dir, tmp_path):
  images, _ = _coco(fixtures_dir)
  path = images / "000000000785.jpg"
  box = [280.79, 44.73, 218.7, 346.68]
  rc = predict_cli.main([str(path), "--box", ",".join(map(str, box)), "--focal", "500", "--out", str(tmp_path)]
                        + MODEL_ARGS + _sets())
  assert rc == 0
  record = json.loads((tmp_path / "000000000785.json").read_text())
  assert record["skeleton"] == "h36m" and len(record["joint_names"]) == 18 and record["model"]["random_init"]
  assert record["principal_source"] == "image_centre" and record["principal"] == [319.5, 212.0]
  person, = record["people"]
  assert person["box"] == pytest.approx(box)
  assert np.array(person["joints_2d_px"]).shape == (18, 2) and np.array(person["pose_3d_cam_mm"]).shape == (18, 3)
  assert person["root_depth_source"] == "distance_prior" and person["score"] is None
  original = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
  overlay = cv2.imread(str(tmp_path / "000000000785_overlay.png"))
  assert overlay.shape == original.shape
  # Everything drawn (box outline, label, skeleton) lies within the crop box, up to the line width.
  rows, cols = np.nonzero(np.any(overlay != original, axis=-1))
  assert len(rows) > 100
  x0, y0, w, h = person["crop_box"]
  assert cols.min() >= x0 - 4 and cols.max() <= x0 + w + 4 and rows.min() >= y0 - 4 and rows.max() <= y0 + h + 4
  joints = np.array(person["joints_2d_px"])
  assert np.all(overlay[np.round(joints[:, 1]).astype(int), np.round(joints[:, 0]).astype(int)] == 255)  # dots
  plot = cv2.imread(str(tmp_path / "000000000785_3d.png"))
  assert plot is not None and plot.shape[0] > 100 and plot.std() > 5


def test_folder_with_coco_annotations_and_detections(fixtures_dir, tmp_path):
  images, annotations = _coco(fixtures_dir)
  folder = tmp_path / "images"
  folder.mkdir()
  for name in ("000000000785.jpg", "000000040083.jpg"):  # links, not copies
    (folder / name).symlink_to(images / name)
  out = tmp_path / "out"
  rc = predict_cli.main([str(folder), "--boxes", str(annotations), "--out", str(out)] + MODEL_ARGS + _sets())
  assert rc == 0
  ann = json.loads(annotations.read_text())
  for image_id in (785, 40083):
    want = [a["bbox"] for a in ann["annotations"] if a["image_id"] == image_id and not a["iscrowd"]]
    got = json.loads((out / f"{image_id:012d}.json").read_text())["people"]
    assert [p["box"] for p in got] == [pytest.approx(b) for b in want]
    assert all(p["pose_3d_cam_mm"] is None for p in got)
    assert (out / f"{image_id:012d}_overlay.png").is_file() and (out / f"{image_id:012d}_3d.png").is_file()
  detections = [{"image_id": 785, "bbox": [280.0, 45.0, 220.0, 340.0], "score": 0.9, "category_id": 1},
                {"image_id": 785, "bbox": [10.0, 10.0, 50.0, 50.0], "score": 0.3, "category_id": 1},
                {"file_name": "000000040083.jpg", "bbox": [40.0, 110.0, 170.0, 170.0], "score": 0.95,
                 "category_id": 2}]
  det_file = tmp_path / "detections.json"
  det_file.write_text(json.dumps(detections))
  out2 = tmp_path / "out2"
  rc = predict_cli.main([str(folder), "--boxes", str(det_file), "--score-threshold", "0.5", "--out", str(out2)]
                        + MODEL_ARGS + _sets())
  assert rc == 0
  people = json.loads((out2 / "000000000785.json").read_text())["people"]
  assert [(p["box"], p["score"]) for p in people] == [([280.0, 45.0, 220.0, 340.0], 0.9)]
  assert not (out2 / "000000040083.json").exists()  # only a non-person detection: skipped


def test_errors(fixtures_dir, tmp_path, capsys):
  images, annotations = _coco(fixtures_dir)
  bad = tmp_path / "broken.jpg"
  bad.write_bytes(b"\xff\xd8 not really a jpeg")
  base = ["--out", str(tmp_path / "out")] + MODEL_ARGS + _sets()
  assert predict_cli.main([str(bad), "--box", "1,1,5,5"] + base) == 1
  assert "broken.jpg" in capsys.readouterr().err
  assert predict_cli.main([str(images / "000000000785.jpg"), "--box", "700,10,50,50"] + base) == 1
  assert "lies outside the 640x425 image" in capsys.readouterr().err
  assert predict_cli.main([str(images / "000000000785.jpg")] + base) == 2
  assert "no person boxes" in capsys.readouterr().err
  assert predict_cli.main([str(images), "--box", "1,1,5,5"] + base) == 2
  assert "single image" in capsys.readouterr().err
  assert predict_cli.main([str(images / "000000000785.jpg"), "--box", "1,1,5"] + base) == 2
  assert "4 comma-separated" in capsys.readouterr().err
  assert predict_cli.main([str(images / "000000000785.jpg"), "--box", "1,1,5,5", "--config.data.nope=1"]
                          + base) == 2
  assert "data.nope" in capsys.readouterr().err
  assert predict_cli.main([str(tmp_path / "nothing.jpg"), "--boxes", str(annotations)] + base) == 2
  assert "does not exist" in capsys.readouterr().err
  a_file = tmp_path / "a_file"
  a_file.write_text("")
  assert predict_cli.main([str(images / "000000000785.jpg"), "--box", "1,1,5,5", "--out", str(a_file)]
                          + MODEL_ARGS + _sets()) == 2
  assert "--out" in capsys.readouterr().err


def test_load_config_file_with_argument_and_overrides():
  config = predict_cli.load_config(str(REPO / "configs" / "h36m.py") + ":protocol=2",
                                   ["--config.data.image_size=128", "--config.skeleton=muco", "--config.eval.flip_test=False"])
  assert config.protocol == 2 and config.data.eval.config == "protocol2"
  assert config.data.image_size == 128 and config.skeleton == "muco" and config.eval.flip_test is False
