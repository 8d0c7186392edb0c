"""Tests for cascaded_lift.heatmaps: soft-argmax, the lifting input and the flip test."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cascaded_lift import heatmaps
from cascaded_lift.skeleton import H36M, Skeleton


def _numpy_soft_argmax_3d(vol: np.ndarray) -> np.ndarray:
  """Reference: an explicit loop over every voxel of every joint (float64)."""
  b, j, d, h, w = vol.shape
  out = np.zeros((b, j, 3))
  for bi in range(b):
    for ji in range(j):
      e = np.exp(vol[bi, ji].astype(np.float64) - vol[bi, ji].max())
      e /= e.sum()
      for zi in range(d):
        for yi in range(h):
          for xi in range(w):
            out[bi, ji] += e[zi, yi, xi] * np.array([xi, yi, zi])
  return out


def test_soft_argmax_3d_one_hot_returns_index():
  rng = np.random.default_rng(0)
  d, h, w = 6, 7, 9
  idx = [(0, 0, 0), (5, 6, 8), (2, 3, 4), (1, 6, 0)]  # (z, y, x), corners included
  vol = np.zeros((1, len(idx), d, h, w), np.float32) + rng.normal(0, 0.01, (1, len(idx), d, h, w))
  for j, (z, y, x) in enumerate(idx):
    vol[0, j, z, y, x] = 60.0  # exp(-60) * 378 voxels leaves < 1e-20 elsewhere
  got = np.asarray(heatmaps.soft_argmax_3d(jnp.asarray(vol)))
  want = np.array([[(x, y, z) for z, y, x in idx]], np.float32)
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_soft_argmax_3d_matches_numpy_loop():
  vol = np.random.default_rng(1).normal(0, 2, (2, 3, 4, 5, 6)).astype(np.float32)
  got = heatmaps.soft_argmax_3d(jnp.asarray(vol))
  chex.assert_shape(got, (2, 3, 3))
  chex.assert_type(got, jnp.float32)
  np.testing.assert_allclose(np.asarray(got), _numpy_soft_argmax_3d(vol), rtol=1e-5, atol=1e-5)


def test_soft_argmax_3d_channels_last_layout_matches_numpy_loop():
  # The model's layout (B, H, W, J, D): the same volumes, axes moved, must give the same coordinates.
  vol = np.random.default_rng(6).normal(0, 2, (2, 3, 4, 5, 6)).astype(np.float32)  # (B, J, D, H, W)
  got = heatmaps.soft_argmax_3d(jnp.asarray(vol.transpose(0, 3, 4, 1, 2)), layout="BHWJD")
  chex.assert_shape(got, (2, 3, 3))
  np.testing.assert_allclose(np.asarray(got), _numpy_soft_argmax_3d(vol), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="layout"):
    heatmaps.soft_argmax_3d(jnp.asarray(vol), layout="BDHWJ")


@pytest.mark.parametrize("layout", ["BJDHW", "BHWJD"])
def test_soft_argmax_3d_gradient_matches_finite_differences(layout):
  with jax.enable_x64():  # finite differences need float64 to resolve a 1e-6 tolerance
    vol = jnp.asarray(np.random.default_rng(7).normal(0, 1, (1, 2, 3, 4, 3)), jnp.float64)
    jax.test_util.check_grads(lambda v: heatmaps.soft_argmax_3d(v, layout=layout), (vol,), order=1,
                              modes=("rev",), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_soft_argmax_3d_gaussian_blob_returns_centre(dtype):
  d, h, w = 32, 24, 28
  centres = np.array([[10.3, 12.6, 15.2], [18.0, 8.5, 11.7]])  # (x, y, z), > 4 sigma from the edges
  z, y, x = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
  sigma = 1.5
  logits = np.stack([-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * sigma ** 2) for c in centres])
  got = heatmaps.soft_argmax_3d(jnp.asarray(logits[None], dtype))
  chex.assert_type(got, jnp.float32)
  # bfloat16 rounds the logits themselves (8 bits), which moves the expectation by a few hundredths.
  np.testing.assert_allclose(np.asarray(got[0]), centres, atol=1e-3 if dtype == jnp.float32 else 0.05)


def test_soft_argmax_3d_bfloat16_uses_float32_softmax():
  # Large logits in bf16: a bf16 softmax would put visible mass errors on the expectation; ours must
  # equal the float32 computation on the same (bf16-representable) values.
  vol = jnp.asarray(np.random.default_rng(2).normal(0, 8, (1, 2, 16, 16, 16)), jnp.bfloat16)
  np.testing.assert_allclose(np.asarray(heatmaps.soft_argmax_3d(vol)),
                             np.asarray(heatmaps.soft_argmax_3d(vol.astype(jnp.float32))), atol=1e-5)


def test_soft_argmax_2d_one_hot_and_gaussian():
  h, w = 10, 12
  maps = np.full((1, 2, h, w), -50.0, np.float32)
  maps[0, 0, 7, 3] = 50.0
  yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  maps[0, 1] = -((xx - 5.4) ** 2 + (yy - 4.2) ** 2) / (2 * 1.2 ** 2)
  got = heatmaps.soft_argmax_2d(jnp.asarray(maps))
  chex.assert_shape(got, (1, 2, 2))
  np.testing.assert_allclose(np.asarray(got[0]), [[3.0, 7.0], [5.4, 4.2]], atol=1e-3)


def test_soft_argmax_rejects_wrong_rank():
  with pytest.raises(ValueError, match="B, J, D, H, W"):
    heatmaps.soft_argmax_3d(jnp.zeros((2, 3, 4, 5)))
  with pytest.raises(ValueError, match="B, J, H, W"):
    heatmaps.soft_argmax_2d(jnp.zeros((2, 3, 4)))


def test_lifting_input_hand_worked():
  # Two joints, root = 1, 8 x 8 heatmaps, D = 16, box [100, 50, 80, 160].
  coords = np.array([[[2.0, 4.0, 12.0], [4.0, 2.0, 5.0]]], np.float32)
  boxes = np.array([[100.0, 50.0, 80.0, 160.0]], np.float32)
  got = np.asarray(heatmaps.lifting_input(coords, boxes, depth_bins=16, output_size=8, root=1))
  # joint 0: u = 2/8*80+100 = 120, v = 4/8*160+50 = 130, z = (12/16*2-1)*1000 = 500
  # joint 1 (root): u = 140, v = 90, z forced to 0
  want = [[120.0, 130.0, 120.0 - 140.0, 130.0 - 90.0, 500.0, 140.0, 90.0, 0.0, 0.0, 0.0]]
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_lifting_input_rectangular_output_and_loop_reference():
  rng = np.random.default_rng(3)
  b, j, d, (h, w) = 3, 5, 8, (6, 10)
  coords = rng.uniform(0, 6, (b, j, 3)).astype(np.float32)
  boxes = rng.uniform(10, 200, (b, 4)).astype(np.float32)
  got = np.asarray(heatmaps.lifting_input(coords, boxes, d, (h, w), root=2))
  want = np.zeros((b, 5 * j))
  for i in range(b):
    x0, y0, bw, bh = boxes[i]
    ur, vr = coords[i, 2, 0] / w * bw + x0, coords[i, 2, 1] / h * bh + y0
    for k in range(j):
      u, v = coords[i, k, 0] / w * bw + x0, coords[i, k, 1] / h * bh + y0
      z = 0.0 if k == 2 else (coords[i, k, 2] / d * 2 - 1) * 1000
      want[i, 5 * k:5 * k + 5] = [u, v, u - ur, v - vr, z]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)


def test_flip_test_averages_mirrored_prediction():
  rng = np.random.default_rng(4)
  b, j, s = 2, H36M.num_joints, 32
  images = jnp.asarray(rng.uniform(0, 255, (b, s, s, 3)), jnp.float32)
  boxes = jnp.asarray(rng.uniform(0, 100, (b, 4)), jnp.float32)
  plain = {"coords": rng.uniform(0, 8, (b, j, 3)), "pose_3d": rng.normal(0, 300, (b, j, 3))}
  flipped = {"coords": rng.uniform(0, 8, (b, j, 3)), "pose_3d": rng.normal(0, 300, (b, j, 3))}
  calls = []

  def apply_fn(imgs, bxs):
    np.testing.assert_array_equal(np.asarray(bxs), np.asarray(boxes))  # the same box both times
    is_flipped = bool(np.array_equal(np.asarray(imgs), np.asarray(images)[:, :, ::-1]))
    calls.append(is_flipped)
    out = flipped if is_flipped else plain
    return {k: jnp.asarray(v, jnp.float32) for k, v in out.items()}

  got = heatmaps.flip_test(apply_fn, images, boxes, H36M)
  assert sorted(calls) == [False, True]
  # Reference by joint names: the flipped run's "L_X" is the plain run's "R_X".
  names = H36M.joint_names
  width = (s - 1) * (s // 4) / s
  for k, n in enumerate(names):
    twin = names.index("R_" + n[2:]) if n.startswith("L_") else (
        names.index("L_" + n[2:]) if n.startswith("R_") else k)
    fc = flipped["coords"][:, twin].copy()
    fc[:, 0] = width - fc[:, 0]
    fp = flipped["pose_3d"][:, twin].copy()
    fp[:, 0] = -fp[:, 0]
    np.testing.assert_allclose(np.asarray(got["coords"][:, k]), (plain["coords"][:, k] + fc) / 2, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got["pose_3d"][:, k]), (plain["pose_3d"][:, k] + fp) / 2,
                               rtol=1e-5, atol=1e-3)


def test_flip_test_is_exact_for_a_mirror_equivariant_model():
  # A toy "model" that knows each joint's crop x and reports voxel x = crop x * W / S and pose x in mm
  # proportional to the offset from the crop centre. On the mirrored crop it sees every point at
  # S - 1 - x and, like a trained network, calls the mirrored left hip a right hip. Averaging must then
  # give back the unflipped prediction exactly.
  s, w = 16, 4
  toy = Skeleton("toy", ("L_Hip", "R_Hip", "Pelvis"), ((2, 0), (2, 1)), root=2)
  xs = np.array([[3.0, 11.0, 7.0]])  # crop x of L_Hip, R_Hip, Pelvis

  def apply_fn(imgs, _):
    mirrored = bool(np.asarray(imgs)[0, 0, 0, 0] == 1.0)
    cx = (s - 1 - xs)[:, toy.flip_permutation] if mirrored else xs
    coords = np.stack([cx * w / s, np.ones_like(cx), np.full_like(cx, 2.0)], -1)
    pose = np.stack([(cx - (s - 1) / 2) * 10.0, np.zeros_like(cx), np.ones_like(cx)], -1)
    return {"coords": jnp.asarray(coords, jnp.float32), "pose_3d": jnp.asarray(pose, jnp.float32)}

  img = np.zeros((1, s, s, 3), np.float32)
  img[0, 0, -1, 0] = 1.0  # marker: the mirror moves it to column 0
  got = heatmaps.flip_test(apply_fn, jnp.asarray(img), jnp.zeros((1, 4)), toy)
  plain = apply_fn(jnp.asarray(img), None)
  np.testing.assert_allclose(np.asarray(got["coords"]), np.asarray(plain["coords"]), atol=1e-6)
  np.testing.assert_allclose(np.asarray(got["pose_3d"]), np.asarray(plain["pose_3d"]), atol=1e-5)


def test_soft_argmax_under_jit_and_grad():
  vol = jnp.asarray(np.random.default_rng(5).normal(0, 1, (1, 2, 3, 4, 5)), jnp.float32)
  g = jax.jit(jax.grad(lambda v: jnp.sum(heatmaps.soft_argmax_3d(v) * jnp.array([1.0, 2.0, 3.0]))))(vol)
  chex.assert_tree_all_finite(g)
  assert float(jnp.abs(g).sum()) > 0
