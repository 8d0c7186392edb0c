"""Camera geometry, boxes and crop transforms against the real Human3.6M annotations and hand cases."""

import json
import pickle

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cascaded_lift import geometry as g


def _h36m_mmpose_frames(fixtures_dir):
  root = fixtures_dir / "h36m_mmpose"
  body = np.load(root / "test_h36m_body3d.npz", allow_pickle=True)
  cams = pickle.load(open(root / "cameras.pkl", "rb"))
  coco = json.load(open(root / "h36m_coco.json"))
  names = [str(n) for n in body["imgname"]]
  for im in coco["images"]:
    ann = next(a for a in coco["annotations"] if a["image_id"] == im["id"])
    subject = im["file_name"].split("_")[0]
    cam_id = im["file_name"].split(".")[1].split("_")[0]
    idx = next(i for i, n in enumerate(names) if n.endswith(im["file_name"]))
    yield cams[(subject, cam_id)], np.array(ann["keypoints_3d"]).reshape(17, 4)[:, :3] * 1000.0, body, idx


def test_projection_with_distortion_reproduces_h36m_annotations(fixtures_dir):
  n = 0
  for cam, world_mm, body, idx in _h36m_mmpose_frames(fixtures_dir):
    # cameras.pkl stores R camera-to-world and the camera centre T in metres.
    R = cam["R"].T
    t = g.camera_center_to_translation(R, cam["T"][:, 0] * 1000.0)
    cam_mm = g.world_to_camera(world_mm, R, t)
    np.testing.assert_allclose(cam_mm, body["S"][idx, :, :3] * 1000.0, atol=1e-3)
    uv = g.camera_to_pixel(cam_mm, cam["f"][:, 0], cam["c"][:, 0], k=cam["k"][:, 0], p=cam["p"][:, 0])
    assert np.abs(uv - body["part"][idx, :, :2]).max() < 0.01
    # Without distortion the error is pixels, so the distortion terms really are exercised.
    uv_plain = g.camera_to_pixel(cam_mm, cam["f"][:, 0], cam["c"][:, 0])
    assert np.abs(uv_plain - body["part"][idx, :, :2]).max() > 0.5
    n += 1
  assert n == 4


def test_world_camera_round_trip_numpy_and_jit():
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(5, 3, 3)))
  t = rng.normal(size=(5, 3)) * 1000
  pts = rng.normal(size=(5, 17, 3)) * 500
  cam = g.world_to_camera(pts, q, t)
  # Hand-written loop as the reference.
  for b in range(5):
    for n in range(17):
      np.testing.assert_allclose(cam[b, n], q[b] @ pts[b, n] + t[b], rtol=1e-10)
  np.testing.assert_allclose(g.camera_to_world(cam, q, t), pts, atol=1e-8)
  cam_j = jax.jit(g.world_to_camera)(jnp.asarray(pts, jnp.float32), jnp.asarray(q, jnp.float32),
                                     jnp.asarray(t, jnp.float32))
  assert isinstance(cam_j, jax.Array)
  np.testing.assert_allclose(cam_j, cam, rtol=1e-4, atol=1e-2)


def test_pixel_camera_round_trip():
  rng = np.random.default_rng(1)
  pts = np.concatenate([rng.normal(size=(3, 10, 2)) * 400, rng.uniform(2000, 6000, size=(3, 10, 1))], -1)
  f, c = np.array([1145.0, 1143.0]), np.array([512.0, 515.0])
  uv = g.camera_to_pixel(pts, f, c)
  np.testing.assert_allclose(uv[0, 0], f * pts[0, 0, :2] / pts[0, 0, 2] + c)
  back = g.pixel_to_camera(np.concatenate([uv, pts[..., 2:]], -1), f, c)
  np.testing.assert_allclose(back, pts, rtol=1e-10)


def test_process_bbox_hand_cases():
  # A 100x50 box well inside the image: square 100x100 about its centre (150, 125), then x1.25.
  out = g.process_bbox(np.array([100.0, 100.0, 101.0, 51.0]), 1000, 1000)
  np.testing.assert_allclose(out, [150 - 62.5, 125 - 62.5, 125.0, 125.0])
  # Clipped at the left edge first: x in [0, 49] -> w 49, h 99 -> square 99 about (24.5, 49.5).
  out = g.process_bbox(np.array([-50.0, 0.0, 100.0, 100.0]), 1000, 1000)
  np.testing.assert_allclose(out, [24.5 - 99 * 0.625, 49.5 - 99 * 0.625, 99 * 1.25, 99 * 1.25])
  with pytest.raises(ValueError, match="empty"):
    g.process_bbox(np.array([2000.0, 10.0, 50.0, 50.0]), 1000, 1000)
  batched = g.process_bbox(jnp.array([[100.0, 100.0, 101.0, 51.0]] * 3), 1000, 1000)
  np.testing.assert_allclose(batched, [[87.5, 62.5, 125.0, 125.0]] * 3, rtol=1e-6)


def test_crop_transform_maps_box_to_crop_and_inverts():
  box = np.array([100.0, 200.0, 300.0, 300.0])
  m = g.crop_transform(box, (64, 64))
  pts = np.array([[100.0, 200.0], [250.0, 350.0], [400.0, 500.0]])
  np.testing.assert_allclose(g.apply_affine(pts, m), [[0, 0], [32, 32], [64, 64]], atol=1e-9)
  # Flip mirrors about the crop: x -> 63 - x (matches crop[:, ::-1]).
  mf = g.crop_transform(box, (64, 64), flip=True)
  np.testing.assert_allclose(g.apply_affine(pts, mf), [[63, 0], [31, 32], [-1, 64]], atol=1e-9)
  # Scale 2 shows twice the area: the box corner moves half way to the centre.
  ms = g.crop_transform(box, (64, 64), scale=2.0)
  np.testing.assert_allclose(g.apply_affine(pts[:1], ms), [[16, 16]], atol=1e-9)
  # Rotation keeps the centre and distances.
  mr = g.crop_transform(box, (64, 64), rot=30.0)
  out = g.apply_affine(pts, mr)
  np.testing.assert_allclose(out[1], [32, 32], atol=1e-9)
  np.testing.assert_allclose(np.linalg.norm(out[0] - out[1]), np.hypot(32, 32), atol=1e-9)
  for mat in (m, mf, ms, mr):
    inv = g.invert_affine(mat)
    np.testing.assert_allclose(g.apply_affine(g.apply_affine(pts, mat), inv), pts, atol=1e-9)
  np.testing.assert_allclose(g.crop_transform(box, (64, 64), rot=30.0, inverse=True), g.invert_affine(mr))


def test_crop_transform_agrees_with_cv2_warp():
  img = np.zeros((400, 400), np.float32)
  img[250, 150] = 1.0  # a single bright pixel at x=150, y=250
  box = np.array([50.0, 60.0, 280.0, 280.0])
  for flip in (False, True):
    m = g.crop_transform(box, (140, 140), flip=flip)  # 2x down-sampling: the point lands on a pixel
    crop = cv2.warpAffine(img, m.astype(np.float64), (140, 140), flags=cv2.INTER_LINEAR)
    yx = np.unravel_index(np.argmax(crop), crop.shape)
    expect = g.apply_affine(np.array([[150.0, 250.0]]), m)[0]
    assert abs(yx[1] - expect[0]) <= 0.5 and abs(yx[0] - expect[1]) <= 0.5


def test_crop_transform_batched_jit_matches_numpy():
  rng = np.random.default_rng(2)
  boxes = np.concatenate([rng.uniform(0, 100, (4, 2)), rng.uniform(50, 300, (4, 1)).repeat(2, 1)], 1)
  scale, rot, flip = rng.uniform(0.75, 1.25, 4), rng.uniform(-30, 30, 4), rng.uniform(size=4) > 0.5
  ref = np.stack([g.crop_transform(boxes[i], (256, 256), scale[i], rot[i], flip[i]) for i in range(4)])
  got = jax.jit(lambda b, s, r, f: g.crop_transform(b, (256, 256), s, r, f))(boxes, scale, rot, flip)
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("fn", [g.pixel_to_camera, g.camera_to_pixel])
def test_bad_intrinsics_are_named(fn):
  pts = np.array([[[10.0, 20.0, 3000.0]]])
  c = np.array([[320.0, 240.0]])
  for f, match in ((np.array([[-500.0, 500.0]]), "focal lengths must be positive"),
                   (np.array([[0.0, 500.0]]), "focal lengths must be positive"),
                   (np.array([[np.nan, 500.0]]), "focal length and principal point must be finite"),
                   (np.array([[500.0]]), r"f and c must be \(\.\.\., 2\)")):
    with pytest.raises(ValueError, match=f"{fn.__name__}: {match}"):
      fn(pts, f, c)
  fn(pts, np.array([[500.0, 500.0]]), c)  # valid intrinsics pass
