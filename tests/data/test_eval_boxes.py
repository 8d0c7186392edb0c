"""Evaluation boxes and crops on the real Human3.6M fixture frames: a detected box as a bbox_root file
holds it (the ground-truth box processed once) is cropped as it is, the annotated box is processed once,
both give 3DMPPE's crop, and evaluation always warps the full-resolution image.

Tolerance against the 3DMPPE reference (reference_3dmppe.py): at most 1 grey level on any pixel and
under 0.01 on average. The reference builds its matrix from float32 points (cv2.getAffineTransform),
ours in float64, so a few bilinear samples round the other way.
"""

import logging

import numpy as np
import pytest

import h36m_fixture
from h36m_fixture import with_dets, without_dets  # noqa: F401  (pytest fixtures)
import reference_3dmppe as ref
from cascaded_lift import geometry
from cascaded_lift import skeleton
from cascaded_lift.data import config as data_config
from cascaded_lift.data import pipeline
from cascaded_lift.data import sources
from cascaded_lift.data import transforms

S = 256


def _cfg(data_dir, boxes, image_size=S, jpeg_reduce=True):
  cfg = data_config.default_data_config()
  cfg.eval = data_config.source_config("human36m", "test", h36m_fixture.CONFIG_NAME, data_dir)
  cfg.eval.boxes = boxes
  cfg.skeleton, cfg.image_size, cfg.output_size = "h36m", image_size, image_size // 4
  cfg.read_threads, cfg.jpeg_reduce, cfg.build_if_missing = 0, jpeg_reduce, False
  return cfg


def _batch(cfg):
  return next(iter(pipeline.create_eval_iterator(cfg, batch_size=4)))


def _records(data_dir):
  src = sources.load_source(h36m_fixture.spec(data_dir), build_if_missing=False)
  return [src[i] for i in range(len(src))]


def test_detected_crop_box_gives_the_3dmppe_crop_of_the_gt_box(with_dets):
  det, gt = _batch(_cfg(with_dets, "detected")), _batch(_cfg(with_dets, "gt"))
  records = _records(with_dets)
  assert len(records) == 4 and all(float(r["has_det"]) == 1 for r in records)
  for i, r in enumerate(records):
    image = transforms.decode_image(r["image"], "fixture")
    height, width = image.shape[:2]
    expect_box = ref.process_bbox(r["bbox"], width, height)
    np.testing.assert_allclose(r["det_bbox"], expect_box, rtol=1e-6)  # stored as the file holds it
    # The detected crop box is used as is, the annotated person box is processed once: same window.
    np.testing.assert_allclose(det["bbox"][i], expect_box, rtol=1e-5)
    np.testing.assert_allclose(gt["bbox"][i], expect_box, rtol=1e-5)
    expect = ref.crop(image, expect_box, S)[..., ::-1]  # BGR -> RGB
    for batch in (det, gt):
      mean, worst = ref.grey_difference(batch["image"][i], expect)
      assert mean < 0.01 and worst <= 1.0, (i, mean, worst)
    # The old double processing (process_bbox on the detected box) would have given a 1.56x window.
    twice = transforms.crop_image(image, geometry.process_bbox(expect_box, width, height), S)[..., ::-1]
    assert ref.grey_difference(twice, expect)[0] > 10.0


def test_prepare_names_the_box_field_and_kind(with_dets):
  r = dict(_records(with_dets)[0])
  r["det_bbox"] = np.array([5000.0, 5000.0, 300.0, 300.0], np.float32)
  with pytest.raises(ValueError, match=r"record 0.*'det_bbox' \(crop box\).*outside the 1000x100\d image"):
    transforms.prepare(r, skeleton.H36M, skeleton.H36M, transforms.CropConfig(), use_det_bbox=True)
  r["det_bbox"] = np.array([10.0, 10.0, 0.0, 300.0], np.float32)
  with pytest.raises(ValueError, match=r"'det_bbox' \(crop box\).*no area"):
    transforms.prepare(r, skeleton.H36M, skeleton.H36M, transforms.CropConfig(), use_det_bbox=True)
  r["has_det"] = np.float32(0.0)  # no detection: the person box, processed once
  ex = transforms.prepare(r, skeleton.H36M, skeleton.H36M, transforms.CropConfig(), use_det_bbox=True)
  image = transforms.decode_image(r["image"], "fixture")
  np.testing.assert_allclose(ex["bbox"], ref.process_bbox(r["bbox"], image.shape[1], image.shape[0]), rtol=1e-5)


def test_eval_crop_is_the_full_resolution_warp_when_training_reduces(with_dets):
  """64 px crops of ~400-500 px boxes: training decodes at 1/4 resolution, evaluation never does."""
  size = 64
  crop = transforms.CropConfig(image_size=size, output_size=16, jpeg_reduce=True)
  batch = _batch(_cfg(with_dets, "gt", image_size=size, jpeg_reduce=True))
  for i, r in enumerate(_records(with_dets)):
    image = transforms.decode_image(r["image"], "fixture")
    box = ref.process_bbox(r["bbox"], image.shape[1], image.shape[0])
    assert transforms._reduce_factor(box[2], size, True) == 4  # the training path would reduce
    full = ref.crop(image, box, size)[..., ::-1]
    mean, worst = ref.grey_difference(batch["image"][i], full)
    assert mean < 0.01 and worst <= 1.0, (i, mean, worst)
    # The training path (prepare with jpeg_reduce) warps the reduced decode: visibly smoother.
    train = transforms.prepare(r, skeleton.H36M, skeleton.H36M, crop)["image"]
    assert ref.grey_difference(train, full)[0] > 1.0


def test_auto_boxes_use_detections_only_when_the_dataset_has_them(with_dets, without_dets, caplog):
  src_det = sources.load_source(h36m_fixture.spec(with_dets), build_if_missing=False)
  src_gt = sources.load_source(h36m_fixture.spec(without_dets), build_if_missing=False)
  assert src_det.has_detections and src_gt.has_detections  # the fields exist either way
  assert src_det.stores_detections() and not src_gt.stores_detections()
  assert pipeline.choose_eval_boxes({"boxes": "auto"}, src_det) == "detected"
  with caplog.at_level(logging.WARNING):
    assert pipeline.choose_eval_boxes({"boxes": "auto"}, src_gt) == "gt"
  assert "built without detections" in caplog.text and "ground-truth" in caplog.text
  with pytest.raises(ValueError, match=r"human36m/fixture\[test\].*stores no detections"):
    pipeline.choose_eval_boxes({"boxes": "detected"}, src_gt)
  with pytest.raises(ValueError, match="stores no detections"):
    pipeline.choose_eval_boxes({"use_det_bbox": True}, src_gt)  # the older flag means "detected"
  assert data_config.eval_boxes({"use_det_bbox": False}) == "gt" and data_config.eval_boxes({}) == "gt"
  assert data_config.eval_boxes({"use_det_bbox": True, "boxes": "auto"}) == "detected"
  with pytest.raises(ValueError, match="contradicts"):
    data_config.eval_boxes({"use_det_bbox": True, "boxes": "gt"})
  with pytest.raises(ValueError, match="must be one of"):
    data_config.eval_boxes({"boxes": "detections"})
  # Without detections, "auto" evaluates on the ground-truth boxes.
  gt = _batch(_cfg(without_dets, "auto"))
  for i, r in enumerate(_records(without_dets)):
    image = transforms.decode_image(r["image"], "fixture")
    np.testing.assert_allclose(gt["bbox"][i], ref.process_bbox(r["bbox"], image.shape[1], image.shape[0]), rtol=1e-5)
