"""Predictor on real COCO images: the evaluation crop, person boxes processed once and crop boxes not at
all (against an independent 3DMPPE reference, reference_3dmppe.py), 2D joints in image px against a
hand-written reference (model.apply + NumPy flip averaging), camera space (reprojection, distance
prior), the person-batch buckets, checkpoints, and the errors for bad input."""

import json
import pathlib

import jax
import numpy as np
import pytest

import reference_3dmppe as ref
from cascaded_lift import geometry
from cascaded_lift.inference import host
from cascaded_lift.inference import predictor as inference
from cascaded_lift import skeleton as skeleton_lib
from cascaded_lift.data import transforms
from cascaded_lift.inference.cli import load_config

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY = [f"--config.{s}" for s in ["model.resnet_depth=18", "model.resnet_width=8", "model.head_width=16", "model.bone_width=8",
        "model.lifter_width=32", "model.lifter_blocks=1", "model.lifter_layers_per_block=2",
        "data.image_size=64", "data.depth_bins=8"]]
# Fewer head blocks than the paper's: the same code paths, a quarter of the compile time.
TINY_BLOCKS = dict(context_bottlenecks=1, joint_bottlenecks=1, depth_bottlenecks=1, volumetric_bottlenecks=1)


def tiny_config(*extra):
  config = load_config(str(REPO / "configs" / "default.py"), TINY + [f"--config.{e}" for e in extra])
  config.model.update(TINY_BLOCKS)
  return config


@pytest.fixture(scope="module")
def config():
  return tiny_config()


@pytest.fixture(scope="module")
def predictor(config):
  return inference.Predictor.random_init(config, seed=1)


def _coco(fixtures_dir, image_id):
  ann = json.loads((fixtures_dir / "coco" / "annotations" / "person_keypoints_val2017.json").read_text())
  name = next(im["file_name"] for im in ann["images"] if im["id"] == image_id)
  boxes = [a["bbox"] for a in ann["annotations"] if a["image_id"] == image_id and not a["iscrowd"]]
  return fixtures_dir / "coco" / "val2017" / name, np.array(boxes)


def test_crop_is_the_pipelines_eval_crop(fixtures_dir):
  path, boxes = _coco(fixtures_dir, 40083)
  image = host.read_image(path)
  _, crop_boxes = host.check_boxes(boxes, image.shape[1], image.shape[0])
  crops = host.crop_people(image, crop_boxes, 64)
  skel = skeleton_lib.H36M
  for i, box in enumerate(boxes):
    record = {"image": path.read_bytes(), "bbox": box, "joints_img": np.zeros((skel.num_joints, 2)),
              "joints_vis": np.zeros(skel.num_joints)}
    ex = transforms.prepare(record, skel, skel, transforms.CropConfig(image_size=64, jpeg_reduce=False))
    np.testing.assert_array_equal(crops[i], ex["image"])
    np.testing.assert_allclose(crop_boxes[i], ex["bbox"], rtol=1e-6)


def _reference(predictor, crops, crop_boxes):
  """model.apply on the crops and their mirrors, flip-averaged in NumPy; u = x / W * w + x0."""
  n = len(crops)
  apply = jax.jit(lambda v, x, b: predictor.model.apply(v, x, b, train=False))
  both = np.concatenate([crops, crops[:, :, ::-1]])
  out = apply(predictor.variables, both, np.concatenate([crop_boxes, crop_boxes]).astype(np.float32))
  coords, pose = np.asarray(out["coords"], np.float64), np.asarray(out["pose_3d"], np.float64)
  s, w = predictor.image_size, predictor.output_size
  skel = predictor.skeleton
  swap = list(range(skel.num_joints))
  for a, b in skel.flip_pairs:
    swap[a], swap[b] = b, a
  ref_2d, ref_3d = np.zeros((n, skel.num_joints, 2)), np.zeros((n, skel.num_joints, 3))
  for i in range(n):
    for j in range(skel.num_joints):
      fc, fp = coords[n + i, swap[j]].copy(), pose[n + i, swap[j]].copy()
      fc[0] = (s - 1) * w / s - fc[0]   # crop x -> S - 1 - x, in voxel units
      fp[0] = -fp[0]
      x, y = (coords[i, j, :2] + fc[:2]) / 2
      ref_2d[i, j] = [x / w * crop_boxes[i, 2] + crop_boxes[i, 0], y / w * crop_boxes[i, 3] + crop_boxes[i, 1]]
      ref_3d[i, j] = (pose[i, j] + fp) / 2
    ref_3d[i] -= ref_3d[i, skel.root].copy()
  return ref_2d, ref_3d


def test_predictor_on_coco_images(fixtures_dir, predictor):
  crops, crop_boxes, results = [], [], []
  for image_id in (785, 40083):
    path, boxes = _coco(fixtures_dir, image_id)
    image = host.read_image(path)
    h, w = image.shape[:2]
    focal, principal = np.array([500.0, 520.0]), np.array([w / 2 + 3.0, h / 2 - 2.0])
    people = predictor.predict(image, boxes, focal=focal, principal=principal, camera_pose="backprojected")
    assert len(people) == len(boxes)
    for p, box in zip(people, boxes):
      assert p.joints_2d.shape == (18, 2) and p.pose_3d.shape == (18, 3) and p.pose_3d_cam.shape == (18, 3)
      assert np.all(np.isfinite(p.joints_2d)) and np.all(np.isfinite(p.pose_3d_cam))
      np.testing.assert_array_equal(p.box, box)
      x0, y0, bw, bh = p.crop_box  # soft-argmax lies inside the heatmap, so inside the crop box
      assert np.all((p.joints_2d >= [x0, y0]) & (p.joints_2d <= [x0 + bw, y0 + bh]))
      # Every joint projects back onto its predicted 2D position.
      np.testing.assert_allclose(geometry.camera_to_pixel(p.pose_3d_cam, focal, principal), p.joints_2d,
                                 rtol=1e-9, atol=1e-6)
      assert p.root_depth_source == "distance_prior" and p.camera_pose == "backprojected"
    crops.append(host.crop_people(image, np.stack([p.crop_box for p in people]), 64))
    crop_boxes += [p.crop_box for p in people]
    results += people
  ref_2d, ref_3d = _reference(predictor, np.concatenate(crops), np.stack(crop_boxes))
  np.testing.assert_allclose(np.stack([p.joints_2d for p in results]), ref_2d, atol=2e-3)
  np.testing.assert_allclose(np.stack([p.pose_3d for p in results]), ref_3d, atol=2e-2)


def test_person_boxes_are_processed_once_and_crop_boxes_used_as_they_are(fixtures_dir, predictor):
  """Tolerance: crops within 1 grey level of 3DMPPE's warp (its matrix comes from float32 points), under
  0.01 on average; the same crop boxes give the same network output."""
  path, boxes = _coco(fixtures_dir, 40083)
  image = host.read_image(path)
  h, w = image.shape[:2]
  expect = np.stack([ref.process_bbox(b, w, h) for b in boxes])  # 3DMPPE's process_bbox, once
  people = predictor.predict(image, boxes, focal=500.0)
  np.testing.assert_allclose(np.stack([p.crop_box for p in people]), expect, rtol=1e-12, atol=1e-9)
  crops = host.crop_people(image, expect, predictor.image_size)  # the crop the Predictor runs on
  for i, box in enumerate(expect):
    mean, worst = ref.grey_difference(crops[i], ref.crop(image, box, predictor.image_size))
    assert mean < 0.01 and worst <= 1.0, (i, mean, worst)
  # The same windows given as crop boxes (as a bbox_root file holds them) are not processed again.
  as_crop = predictor.predict(image, expect, focal=500.0, box_kind="crop")
  for a, b, box in zip(people, as_crop, expect):
    np.testing.assert_array_equal(b.box, box)
    np.testing.assert_allclose(b.crop_box, a.crop_box, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(b.joints_2d, a.joints_2d, atol=1e-4)
    np.testing.assert_allclose(b.pose_3d, a.pose_3d, atol=1e-3)
    assert b.root_depth == pytest.approx(a.root_depth, rel=1e-9)  # the prior reads the crop window
  # Processing them again (the old behaviour for detections) would enlarge the window 1.25x more.
  twice = predictor.predict(image, expect)
  assert all(p.crop_box[2] > 1.2 * box[2] for p, box in zip(twice, expect))
  with pytest.raises(ValueError, match="box_kind must be one of"):
    predictor.predict(image, boxes, box_kind="detected")
  with pytest.raises(ValueError, match=r"crop box 0 \[900.0, 10.0, 50.0, 50.0\] lies outside"):
    predictor.predict(image, [[900, 10, 50, 50]], box_kind="crop")


def test_camera_space_root_depths(fixtures_dir, predictor):
  path, boxes = _coco(fixtures_dir, 785)
  image = host.read_image(path)
  focal, principal = np.array([600.0, 640.0]), np.array([300.0, 200.0])
  prior, = predictor.predict(image, boxes, focal=focal, principal=principal)
  # The box lies inside the 640x425 image: process_bbox spans x0..x0+w-1, squares and enlarges 1.25x.
  side = max(boxes[0, 2] - 1, boxes[0, 3] - 1) * 1.25
  assert prior.root_depth == pytest.approx(np.sqrt(2000.0 * 2000.0 * 600.0 * 640.0 / side ** 2), rel=1e-9)
  assert prior.root_depth_source == "distance_prior" and prior.camera_pose == "lifted"
  # "lifted": the root sits on the 2D root at that depth, the rest is the root-relative pose.
  root = predictor.skeleton.root
  u, v = prior.joints_2d[root]
  z = prior.root_depth
  np.testing.assert_allclose(prior.root_cam, [(u - 300.0) / 600.0 * z, (v - 200.0) / 640.0 * z, z], rtol=1e-12)
  np.testing.assert_allclose(prior.pose_3d_cam - prior.root_cam, prior.pose_3d, atol=1e-9)
  assert np.all(prior.pose_3d[root] == 0)
  given, = predictor.predict(image, boxes, focal=focal, principal=principal, root_depth=5000.0)
  assert given.root_depth_source == "given" and given.root_cam[2] == 5000.0
  np.testing.assert_allclose(given.root_cam[:2], prior.root_cam[:2] * 5000.0 / z, rtol=1e-9)
  # Default principal point: the image centre in pixel-index coordinates.
  centred, = predictor.predict(image, boxes, focal=600.0)
  np.testing.assert_allclose(geometry.camera_to_pixel(centred.root_cam[None], np.array([600.0, 600.0]),
                                                      np.array([319.5, 212.0]))[0], centred.joints_2d[root])
  no_cam, = predictor.predict(image, boxes)
  assert no_cam.pose_3d_cam is None and no_cam.root_depth_source is None
  np.testing.assert_allclose(no_cam.joints_2d, prior.joints_2d)


def test_people_batch_is_padded_and_masked(fixtures_dir, predictor):
  path, boxes = _coco(fixtures_dir, 40083)
  image = host.read_image(path)
  together = predictor.predict(image, boxes, root_depth=[4000.0, np.nan, 6000.0], focal=500.0)
  assert [p.root_depth_source for p in together] == ["given", "distance_prior", "given"]
  for i, box in enumerate(boxes):  # 3 people run in a batch of 4; each alone in a batch of 1
    alone, = predictor.predict(image, box[None])
    np.testing.assert_allclose(together[i].joints_2d, alone.joints_2d, atol=1e-3)
    np.testing.assert_allclose(together[i].pose_3d, alone.pose_3d, atol=1e-2)
  assert host.bucket_size(3, 32) == 4 and host.bucket_size(9, 8) == 8 and host.bucket_size(1, 4) == 1


def test_bad_input_errors(predictor, tmp_path):
  image = np.zeros((100, 80, 3), np.uint8)
  with pytest.raises(ValueError, match="no person boxes"):
    predictor.predict(image, [])
  with pytest.raises(ValueError, match=r"box 1 \[200.0, 10.0, 30.0, 40.0\] lies outside the 80x100 image"):
    predictor.predict(image, [[10, 10, 30, 40], [200, 10, 30, 40]])
  with pytest.raises(ValueError, match="box 0 .* w, h > 0"):
    predictor.predict(image, [[10, 10, 0, 40]])
  with pytest.raises(ValueError, match=r"\(P, 4\)"):
    predictor.predict(image, [[10, 10, 30]])
  with pytest.raises(ValueError, match="uint8"):
    predictor.predict(image.astype(np.float32), [[10, 10, 30, 40]])
  with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
    predictor.predict(image[..., 0], [[10, 10, 30, 40]])
  with pytest.raises(ValueError, match="need the focal length"):
    predictor.predict(image, [[10, 10, 30, 40]], principal=(40, 50))
  with pytest.raises(ValueError, match="root_depth"):
    predictor.predict(image, [[10, 10, 30, 40]], focal=500, root_depth=[1000.0, 2000.0])
  bad = tmp_path / "broken.jpg"
  bad.write_bytes(b"not an image at all")
  with pytest.raises(ValueError, match="broken.jpg"):
    predictor.predict(bad, [[10, 10, 30, 40]])
  with pytest.raises(FileNotFoundError, match="missing.jpg"):
    host.read_image(tmp_path / "missing.jpg")


def test_checkpoint_restore_and_mismatch(config, predictor, tmp_path):
  from cascaded_lift.training.checkpoints import Checkpointer
  ckpt = Checkpointer(tmp_path, async_save=False)
  ckpt.save(7, jax.device_get(predictor.variables), None, {"stage": 1})
  ckpt.close()
  restored = inference.Predictor.from_checkpoint(config, tmp_path)
  for a, b in zip(jax.tree_util.tree_leaves(restored.variables), jax.tree_util.tree_leaves(predictor.variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  other = tiny_config("model.lifter_width=16")
  with pytest.raises(ValueError, match=r"parameter 'params/lifter/.*' has shape .*32.* expects .*16"):
    inference.Predictor.from_checkpoint(other, tmp_path)
  muco = tiny_config("skeleton=muco")
  with pytest.raises(ValueError, match="has shape"):
    inference.check_variables(muco, predictor.variables)
  partial = {"params": dict(predictor.variables["params"]), "batch_stats": predictor.variables["batch_stats"]}
  del partial["params"]["ordinal_head"]
  with pytest.raises(ValueError, match="'params/ordinal_head/.*' .* is missing"):
    inference.Predictor(config, partial)
