"""The grain input pipeline: augmentation geometry, determinism, resumption, mixing, evaluation."""

import cv2
import numpy as np
import pytest

from cascaded_lift import skeleton
from cascaded_lift.data import augment
from cascaded_lift.data import config as data_config
from cascaded_lift.data import pipeline
from cascaded_lift.data import transforms
from cascaded_lift.datasets.synthetic import synthetic_dataset_builder as synth

H36M = skeleton.H36M
S, OUT, D = 128, 32, 64


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _cfg(data_dir, **overrides):
  cfg = data_config.default_data_config()
  for key in ("train_3d", "eval"):
    cfg[key].config = "small"
    cfg[key].data_dir = data_dir
  cfg.image_size, cfg.output_size, cfg.read_threads = 64, 16, 0
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


def _jpeg(image_rgb):
  ok, buf = cv2.imencode(".jpg", image_rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
  assert ok
  return buf.tobytes()


def _marker_records():
  """18 joints on a 6 x 3 grid (40 px apart) in a 480x400 frame; one image per joint with a marker."""
  gx, gy = np.meshgrid(np.arange(3) * 40.0 + 200.0, np.arange(6) * 40.0 + 90.0)
  joints = np.stack([gx.ravel(), gy.ravel()], axis=1)  # (18, 2)
  rng = np.random.default_rng(0)
  joints_cam = np.concatenate([rng.normal(0, 200, (18, 2)), 4000 + rng.normal(0, 300, (18, 1))], 1)
  base = {"bbox": np.array([180.0, 70.0, 120.0, 240.0]), "joints_img": joints, "joints_vis": np.ones(18),
          "joints_cam": joints_cam, "has_depth": 1.0, "_source": "markers", "_index": 0}
  records = []
  for j in range(18):
    img = np.zeros((400, 480, 3), np.uint8)
    cv2.circle(img, (int(joints[j, 0]), int(joints[j, 1])), 4, (255, 255, 255), -1)
    records.append(dict(base, image=_jpeg(img)))
  return records, joints_cam


def _centroid(img):
  gray = img.astype(np.float64).mean(-1)
  w = np.where(gray > 60, gray, 0.0)
  ys, xs = np.mgrid[:img.shape[0], :img.shape[1]]
  return np.array([(w * xs).sum(), (w * ys).sum()]) / w.sum()


def _param_sets():
  fixed = [augment.AugmentParams(1.0, 0.0, False), augment.AugmentParams(1.2, 25.0, True, (0.8, 1.2, 1.0)),
           augment.AugmentParams(0.8, -30.0, False, (1.2, 0.9, 0.8)), augment.AugmentParams(1.1, 10.0, True)]
  cfg = augment.AugmentConfig(occlusion_prob=0.0)  # training ranges, markers kept visible
  sampled = [augment.sample_params(np.random.default_rng(seed), cfg, S) for seed in range(6)]
  assert any(p.flip for p in sampled) and any(not p.flip for p in sampled)
  return fixed + sampled


@pytest.mark.parametrize("jpeg_reduce", [True, False])
def test_markers_land_on_transformed_joints(jpeg_reduce):
  records, joints_cam = _marker_records()
  crop = transforms.CropConfig(image_size=S, output_size=OUT, depth_bins=D, jpeg_reduce=jpeg_reduce)
  perm = H36M.flip_permutation
  errors = []
  for params in _param_sets():
    for j, rec in enumerate(records):
      ex = transforms.prepare(rec, H36M, H36M, crop, params)
      # After a flip the marker drawn at joint j is the joint labelled with j's left/right twin.
      k = perm[j] if params.flip else j
      expected = ex["joints_vox"][k, :2] * (S / OUT)
      found = _centroid(ex["image"])
      errors.append(np.linalg.norm(found - expected))
      assert errors[-1] < 0.4, (params, j, found, expected)
      # Depth: the root sits at D/2 exactly; others at (z_rel / 1000 + 1) / 2 * D of the joint shown.
      assert ex["joints_vox"][H36M.root, 2] == D / 2
      z_rel = joints_cam[j, 2] - joints_cam[H36M.root, 2]
      assert abs(ex["joints_vox"][k, 2] - (z_rel / 1000 + 1) / 2 * D) < 1e-3
      assert ex["joints_vis"][k] == 1
  # On average far below a pixel: a half-pixel slip (e.g. in the reduced-JPEG mapping) shows here.
  assert np.mean(errors) < 0.15


def test_pose_3d_turns_with_the_crop():
  # A synthetic pose moved onto the optical axis 20 m away, projected exactly: there the crop's 2D
  # layout is a scaled copy of the root-relative pose's x, y (weak perspective) whatever the
  # rotation and flip, so image and 3D augmentation must agree.
  cfg = synth.SyntheticConfig(name="t", width=256, height=256)
  ex = synth.generate_example(cfg, "train", 3)
  cam = ex["joints_cam"] - ex["joints_cam"][H36M.root] + np.array([0.0, 0.0, 20000.0])
  f, c = np.array([5000.0, 5000.0]), np.array([500.0, 500.0])
  uv = cam[:, :2] / cam[:, 2:] * f + c
  box = np.concatenate([uv.min(0) - 10, uv.max(0) - uv.min(0) + 20])
  rec = {"image": _jpeg(np.zeros((1000, 1000, 3), np.uint8)), "bbox": box, "joints_img": uv,
         "joints_vis": np.ones(18), "joints_cam": cam, "has_depth": 1.0}
  ex = {"joints_cam": cam}
  crop = transforms.CropConfig(image_size=S, output_size=OUT, depth_bins=D)
  for params in _param_sets():
    out = transforms.prepare(rec, H36M, H36M, crop, params)
    d = out["joints_vox"][:, :2] - out["joints_vox"][H36M.root, :2]
    p = out["pose_3d"][:, :2]
    a = (d * p).sum() / (p * p).sum()
    assert a > 0
    assert np.linalg.norm(d - a * p) < 0.05 * np.linalg.norm(d), params
    # Independent reference for the 3D augmentation: rotate, mirror and swap written out.
    rel = ex["joints_cam"] - ex["joints_cam"][H36M.root]
    t = np.deg2rad(params.rot)
    ref = np.stack([np.cos(t) * rel[:, 0] + np.sin(t) * rel[:, 1],
                    -np.sin(t) * rel[:, 0] + np.cos(t) * rel[:, 1], rel[:, 2]], axis=1)
    if params.flip:
      ref = ref[H36M.flip_permutation] * np.array([-1.0, 1.0, 1.0])
    np.testing.assert_allclose(out["pose_3d"], ref, atol=1e-2)


def test_bad_records_raise_naming_the_record():
  records, _ = _marker_records()
  crop = transforms.CropConfig(image_size=S, output_size=OUT)
  rec = dict(records[0], _source="h36m/p1[train]", _index=41, image_id=9041)
  with pytest.raises(ValueError, match=r"h36m/p1\[train\] record 41 \(image_id 9041\).*decoded"):
    transforms.prepare(dict(rec, image=rec["image"][:200]), H36M, H36M, crop)
  with pytest.raises(KeyError, match=r"record 41.*'joints_img' is missing"):
    transforms.prepare({k: v for k, v in rec.items() if k != "joints_img"}, H36M, H36M, crop)
  with pytest.raises(ValueError, match=r"record 41.*empty after clipping"):
    transforms.prepare(dict(rec, bbox=np.array([900.0, 900.0, 50.0, 50.0])), H36M, H36M, crop)
  with pytest.raises(ValueError, match=r"record 41.*'joints_vis' has shape"):
    transforms.prepare(dict(rec, joints_vis=np.ones(17)), H36M, H36M, crop)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_batches_match_interfaces_and_seed_fixes_order(data_dir):
  cfg = _cfg(data_dir)
  batches = _take(pipeline.create_train_iterator(cfg, batch_size=8), 3)
  b = batches[0]
  assert b["image"].shape == (8, 64, 64, 3) and b["image"].dtype == np.uint8
  assert b["bbox"].shape == (8, 4) and b["joints_vox"].shape == (8, 18, 3) and b["joints_vis"].shape == (8, 18)
  assert b["pose_3d"].shape == (8, 18, 3) and b["has_depth"].shape == b["valid"].shape == (8,)
  assert all(v.dtype == np.float32 for k, v in b.items() if k != "image")
  np.testing.assert_array_equal(b["joints_vox"][:, H36M.root, 2], D / 2)
  np.testing.assert_array_equal(b["pose_3d"][:, H36M.root], 0)
  again = _take(pipeline.create_train_iterator(cfg, batch_size=8), 3)
  assert all(_same(x, y) for x, y in zip(batches, again))
  other = next(pipeline.create_train_iterator(_cfg(data_dir, seed=1), batch_size=8))
  assert not np.array_equal(other["image"], b["image"])


def test_restored_state_continues_with_the_same_samples(data_dir):
  cfg = _cfg(data_dir)
  it = pipeline.create_train_iterator(cfg, batch_size=8)
  _take(it, 4)  # 48 records / 8 = 6 steps per epoch: resume mid-epoch and run past its end
  state = it.get_state()
  expected = _take(it, 4)
  fresh = pipeline.create_train_iterator(cfg, batch_size=8)
  fresh.set_state(state)
  assert all(_same(x, y) for x, y in zip(expected, _take(fresh, 4)))
  assert pipeline.steps_per_epoch(cfg, 8) == 6


def test_each_epoch_visits_every_record_once_per_shard(data_dir):
  # Augmented crops differ per epoch, but pose_3d (rotation off, no flip) identifies the record.
  cfg = _cfg(data_dir)
  cfg.augment.rotation_prob = 0.0
  cfg.augment.flip_prob = 0.0
  seen = []
  for shard in range(2):
    it = pipeline.create_train_iterator(cfg, batch_size=4, shard_index=shard, shard_count=2)
    keys = [tuple(np.round(p[H36M.index("Head")], 2)) for b in _take(it, 6) for p in b["pose_3d"]]
    assert len(set(keys)) == 24  # one epoch of this shard's 24 records, no repeats
    seen.append(set(keys))
  assert not seen[0] & seen[1]


def test_mixed_batches_are_half_3d_half_2d(data_dir):
  cfg = _cfg(data_dir, train_2d=data_config.source_config("synthetic", "train", "small_2d", data_dir))
  b = next(pipeline.create_train_iterator(cfg, batch_size=8))
  np.testing.assert_array_equal(b["has_depth"], [1, 1, 1, 1, 0, 0, 0, 0])
  assert np.all(b["pose_3d"][4:] == 0) and np.all(np.abs(b["pose_3d"][:4]).sum((1, 2)) > 0)
  # The 2D half comes from MPII-ordered labels mapped by name: Torso and Nose are missing there.
  for name in ("Torso", "Nose"):
    np.testing.assert_array_equal(b["joints_vis"][:, H36M.index(name)], [1, 1, 1, 1, 0, 0, 0, 0])
  assert np.all(b["joints_vis"][4:, H36M.index("Head")] == 1)
  with pytest.raises(ValueError, match="even"):
    pipeline.create_train_iterator(cfg, batch_size=7)


def test_workers_give_the_same_batches_as_in_process(data_dir):
  cfg = _cfg(data_dir)
  expected = _take(pipeline.create_train_iterator(cfg, batch_size=8), 3)
  it = pipeline.create_train_iterator(_cfg(data_dir, worker_count=2), batch_size=8)
  try:
    assert all(_same(x, y) for x, y in zip(expected, _take(it, 3)))
  finally:
    it.close()


def test_eval_covers_every_example_once_and_pads(data_dir):
  cfg = _cfg(data_dir)
  assert pipeline.eval_num_examples(cfg) == 16
  ids, counts = [], []
  for shard in range(3):
    batches = list(pipeline.create_eval_iterator(cfg, batch_size=4, shard_index=shard, shard_count=3))
    counts.append(len(batches))
    for b in batches:
      ids += list(b["image_id"][b["valid"] == 1])
      assert b["joints_cam"].shape == (4, 18, 3) and b["focal"].shape == (4, 2)
      assert b["image_id"].dtype == np.int64 and b["subject"].dtype == np.int32
  assert counts == [2, 2, 2]  # ceil(ceil(16 / 3) / 4) batches on every shard
  assert sorted(ids) == [10_000_000 + i for i in range(16)]
  # Unaugmented: the crop is the processed box, joints_img are the stored ones.
  b = next(pipeline.create_eval_iterator(cfg, batch_size=4))
  np.testing.assert_allclose(b["joints_vox"][:, :, :2] * 64 / 16 * b["bbox"][:, None, 2:] / 64
                             + b["bbox"][:, None, :2], b["joints_img"], atol=1e-3)


def test_mean_pose_is_the_average_root_relative_pose(data_dir):
  cfg = _cfg(data_dir)
  cfg_small = synth.Builder.builder_configs["small"]
  ref = np.zeros((18, 3))
  for i in range(cfg_small.num_train):
    p = synth.generate_example(cfg_small, "train", i)["joints_cam"]
    ref += (p - p[0]) / cfg_small.num_train
  np.testing.assert_allclose(pipeline.mean_pose(cfg), ref, atol=1e-2)
