"""Training targets: stated properties (chex, with and without jit) and plain NumPy references."""

import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cascaded_lift import skeleton as sk
from cascaded_lift.training import targets as tg

H, W, D = 16, 20, 12  # small and non-square, so a swapped axis cannot pass


def targets_config(**overrides):
  """make_stage1_targets' config: every key of tg.CONFIG_KEYS (configs/default.py's values), overridden."""
  cfg = {"sigma": 2.0, "bone_sigma_start": 4.0, "bone_sigma_end": 2.0, "depth_bins": D, "ordinal_threshold": 0.1,
         "heatmap_size": (H, W), "volume_method": "scatter", **overrides}
  assert set(tg.CONFIG_KEYS) <= set(cfg)
  return cfg


# ---------------------------------------------------------------- NumPy references (loops on purpose)

def ref_joint_heatmaps(xy, vis, sigma):
  b_, j_ = vis.shape
  out = np.zeros((b_, H, W, j_))
  for b in range(b_):
    for j in range(j_):
      if not vis[b, j]:
        continue
      for i in range(H):
        for k in range(W):
          d2 = (k - xy[b, j, 0]) ** 2 + (i - xy[b, j, 1]) ** 2
          out[b, i, k, j] = math.exp(-d2 / (2 * sigma ** 2))
  return out


def ref_segment_distance(p, a, b):
  ab, ap = b - a, p - a
  length2 = float(ab @ ab)
  if length2 == 0:
    return float(np.linalg.norm(ap))
  t = float(ap @ ab) / length2
  if t <= 0:
    return float(np.linalg.norm(ap))
  if t >= 1:
    return float(np.linalg.norm(p - b))
  return abs(ab[0] * ap[1] - ab[1] * ap[0]) / math.sqrt(length2)  # perpendicular distance


def ref_bone_heatmaps(xy, vis, bones, sigma):
  b_ = vis.shape[0]
  out = np.zeros((b_, H, W, len(bones)))
  mask = np.zeros((b_, len(bones)))
  for b in range(b_):
    for n, (p, c) in enumerate(bones):
      mask[b, n] = float(vis[b, p] and vis[b, c])
      if not mask[b, n]:
        continue
      for i in range(H):
        for k in range(W):
          d = ref_segment_distance(np.array([k, i], float), xy[b, p, :2].astype(float), xy[b, c, :2].astype(float))
          out[b, i, k, n] = math.exp(-d * d / (2 * sigma ** 2))
  return out, mask


def ref_keep(coords, vis, has_depth):
  """Joints for the depth targets: visible, with depth, inside crop and depth range."""
  x, y, z = coords[..., 0], coords[..., 1], coords[..., 2]
  keep = np.zeros(vis.shape, bool)
  for b in range(vis.shape[0]):
    for j in range(vis.shape[1]):
      keep[b, j] = (vis[b, j] > 0 and has_depth[b] > 0 and 0 <= x[b, j] < W and 0 <= y[b, j] < H
                    and 0 <= z[b, j] < D)
  return keep


def ref_depth_targets(coords, vis, has_depth, sigma, threshold):
  keep = ref_keep(coords, vis, has_depth)
  heat = ref_joint_heatmaps(coords, keep, sigma)
  b_, j_ = vis.shape
  volume = np.zeros((b_, H, W, D))
  labels = np.zeros((b_, H, W, D))
  mask = np.zeros((b_, H, W))
  for b in range(b_):
    for j in range(j_):
      if keep[b, j]:
        d = int(math.floor(coords[b, j, 2]))
        volume[b, :, :, d] = np.maximum(volume[b, :, :, d], heat[b, :, :, j])
    for i in range(H):
      for k in range(W):
        best, best_j = 0.0, -1
        for j in range(j_):
          if heat[b, i, k, j] > best:
            best, best_j = heat[b, i, k, j], j
        if best > threshold:
          mask[b, i, k] = 1
          d = int(math.floor(coords[b, best_j, 2]))
          labels[b, i, k, :d] = 1
  return volume, labels, mask


def random_joints(seed, b=4, j=18):
  """Random voxel joints, some outside the crop / depth range, some invisible, one 2D-only sample."""
  rng = np.random.default_rng(seed)
  coords = np.stack([rng.uniform(-3, W + 3, (b, j)), rng.uniform(-3, H + 3, (b, j)),
                     rng.uniform(-2, D + 2, (b, j))], -1).astype(np.float32)
  coords[0, :3, :2] = [[4, 5], [4, 5], [9, 3]]   # exact pixel centres and a coincident pair
  vis = (rng.uniform(size=(b, j)) > 0.25).astype(np.float32)
  has_depth = np.ones(b, np.float32)
  has_depth[1] = 0
  return coords, vis, has_depth


# ---------------------------------------------------------------- stated properties

class PropertyTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_joint_heatmap_peaks_at_joint_with_stated_sigma(self):
    for sigma in (1.5, 2.0, 3.0):
      xy = jnp.array([[[9.0, 7.0], [3.0, 12.0]]])
      f = self.variant(lambda p, s: tg.joint_heatmaps(p, jnp.ones(p.shape[:2]), (H, W), s))
      heat = np.asarray(f(xy, sigma))
      chex.assert_shape(heat, (1, H, W, 2))
      for j, (x, y) in enumerate([(9, 7), (3, 12)]):
        m = heat[0, :, :, j]
        self.assertEqual(np.unravel_index(np.argmax(m), m.shape), (y, x))
        self.assertAlmostEqual(float(m[y, x]), 1.0, places=6)
        # Gaussian fall-off with the stated sigma along both axes and both directions.
        for k in (1, 2, 3):
          expect = math.exp(-k * k / (2 * sigma ** 2))
          for val in (m[y, x + k], m[y, x - k], m[y + k, x], m[y - k, x]):
            self.assertAlmostEqual(float(val), expect, places=6)
      # ... and the profile's second moment is sigma^2 (joint well inside a wide grid).
      big = np.asarray(tg.joint_heatmaps(jnp.array([[[20.0, 20.0]]]), jnp.ones((1, 1)), (41, 41), sigma))
      row = big[0, 20, :, 0]
      var = np.sum(row * (np.arange(41) - 20) ** 2) / np.sum(row)
      self.assertAlmostEqual(var, sigma ** 2, places=4)

  @chex.variants(with_jit=True, without_jit=True)
  def test_bone_heatmap_is_one_on_segment_and_symmetric(self):
    sigma = 2.0
    xy = jnp.array([[[3.0, 8.0], [14.0, 8.0], [4.0, 2.0], [12.0, 10.0]]])  # horizontal, then 45 degrees
    f = self.variant(lambda p: tg.bone_heatmaps(p, jnp.ones((1, 4)), np.array([0, 2]), np.array([1, 3]),
                                                (H, W), sigma))
    heat, mask = f(xy)
    heat = np.asarray(heat)
    np.testing.assert_array_equal(mask, [[1, 1]])
    np.testing.assert_allclose(heat[0, 8, 3:15, 0], 1.0, atol=1e-6)
    for k in (1, 2, 3, 5):
      np.testing.assert_allclose(heat[0, 8 - k, 3:15, 0], heat[0, 8 + k, 3:15, 0], atol=1e-7)
      np.testing.assert_allclose(heat[0, 8 + k, 3:15, 0], math.exp(-k * k / (2 * sigma ** 2)), rtol=1e-5)
      assert np.all(heat[0, 8 + k, 3:15, 0] < heat[0, 8 + k - 1, 3:15, 0])
    # Past an end the distance is to the end point, the same on both ends.
    np.testing.assert_allclose(heat[0, 8, 3 - 2, 0], heat[0, 8, 14 + 2, 0], atol=1e-7)
    # 45-degree bone from (4, 2) to (12, 10) lies on y = x - 2: reflecting across that line maps
    # pixel (x, y) to (y + 2, x - 2), and the heatmap must not change.
    checked = 0
    for i in range(H):
      for k in range(W):
        ri, rk = k - 2, i + 2   # pixel (x=k, y=i) reflects to (x=i+2, y=k-2)
        if 0 <= ri < H and 0 <= rk < W:
          np.testing.assert_allclose(heat[0, i, k, 1], heat[0, ri, rk, 1], atol=1e-6)
          checked += 1
    assert checked > 150
    for t in range(9):
      self.assertAlmostEqual(float(heat[0, 2 + t, 4 + t, 1]), 1.0, places=5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_depth_bin_is_floor_and_shared_bins_keep_max(self):
    coords = jnp.array([[[5.0, 6.0, 7.9], [8.0, 6.0, 7.2], [15.0, 3.0, 0.0], [2.0, 2.0, 11.99]]])
    ones = jnp.ones((1, 4))
    vol = np.asarray(self.variant(lambda c: tg.depth_centric_volume(c, ones, jnp.ones(1), (H, W), D))(coords))
    heat = np.asarray(tg.joint_heatmaps(coords, ones, (H, W)))
    np.testing.assert_allclose(vol[0, :, :, 7], np.maximum(heat[0, :, :, 0], heat[0, :, :, 1]), atol=1e-7)
    np.testing.assert_allclose(vol[0, :, :, 0], heat[0, :, :, 2], atol=1e-7)
    np.testing.assert_allclose(vol[0, :, :, 11], heat[0, :, :, 3], atol=1e-7)
    assert np.all(np.delete(vol[0], [0, 7, 11], axis=-1) == 0)
    self.assertEqual(float(vol[0, 6, 5, 7]), 1.0)
    self.assertEqual(float(vol[0, 6, 8, 7]), 1.0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_ordinal_targets_are_monotone_with_switch_at_label(self):
    coords, vis, has_depth = random_joints(1)
    labels, mask = self.variant(lambda c, v, h: tg.ordinal_depth_labels(c, v, h, (H, W), D))(
        coords, vis, has_depth)
    labels, mask = np.asarray(labels), np.asarray(mask).astype(bool)
    assert mask.any() and not mask.all()
    steps = np.diff(labels, axis=-1)
    assert np.all(steps <= 0)                       # 1...1 0...0
    assert np.all(labels[~mask] == 0)
    assert not mask[1].any()                         # the 2D-only sample has no ordinal labels
    # The switch sits at the bin of the nearest kept joint (labels[c] = [d > c], sum = d).
    keep = ref_keep(coords, vis, has_depth)
    for b, i, k in zip(*np.nonzero(mask)):
      d2 = np.where(keep[b], (coords[b, :, 0] - k) ** 2 + (coords[b, :, 1] - i) ** 2, np.inf)
      d = int(math.floor(coords[b, np.argmin(d2), 2]))
      self.assertEqual(int(labels[b, i, k].sum()), d)
      if d < D:
        self.assertEqual(labels[b, i, k, d], 0)
      if d > 0:
        self.assertEqual(labels[b, i, k, d - 1], 1)


# ---------------------------------------------------------------- NumPy references on random inputs

@pytest.mark.parametrize("seed", [0, 1])
def test_joint_and_bone_heatmaps_match_reference(seed):
  coords, vis, _ = random_joints(seed)
  sigma = 1.7
  np.testing.assert_allclose(tg.joint_heatmaps(coords, vis, (H, W), sigma), ref_joint_heatmaps(coords, vis, sigma),
                             atol=1e-6)
  coords[2, 5] = coords[2, 4]   # a zero-length bone (R_Wrist... any pair) must be a point Gaussian
  bones = sk.H36M.bones
  heat, mask = tg.bone_heatmaps(coords, vis, sk.H36M.bone_parents, sk.H36M.bone_children, (H, W), 3.1)
  ref_heat, ref_mask = ref_bone_heatmaps(coords, vis, bones, 3.1)
  np.testing.assert_array_equal(mask, ref_mask)
  np.testing.assert_allclose(heat, ref_heat, atol=1e-5)


@pytest.mark.parametrize("method", ["scatter", "reduce"])
def test_depth_targets_match_reference(method):
  coords, vis, has_depth = random_joints(2)
  coords[3, 6:9] = [[3.0, 4.0, 5.5], [4.0, 4.0, 5.1], [4.0, 5.0, 5.9]]  # three joints sharing bin 5
  vis[3, 6:9] = 1
  ref_vol, ref_labels, ref_mask = ref_depth_targets(coords, vis, has_depth, 2.0, 0.1)
  vol = tg.depth_centric_volume(coords, vis, has_depth, (H, W), D, method=method)
  np.testing.assert_allclose(vol, ref_vol, atol=1e-6)
  labels, mask = tg.ordinal_depth_labels(coords, vis, has_depth, (H, W), D, threshold=0.1)
  np.testing.assert_array_equal(mask, ref_mask)
  np.testing.assert_array_equal(labels, ref_labels)
  assert np.all(np.asarray(vol)[1] == 0)  # 2D-only sample


def test_coord_mask_matches_rules():
  coords, vis, has_depth = random_joints(3)
  coords[1, 0, 2] = -50.0   # far outside the depth range, but sample 1 has no depth: x, y still count
  vis[1, 0] = 1
  coords[1, 0, :2] = [3, 3]
  got = np.asarray(tg.coord_mask(coords, vis, has_depth, (H, W), D))
  for b in range(4):
    for j in range(18):
      x, y, z = coords[b, j]
      in_xy = 0 <= x < W and 0 <= y < H
      in_z = 0 <= z < D
      xy_ok = bool(vis[b, j]) and in_xy and (in_z or not has_depth[b])
      np.testing.assert_array_equal(got[b, j], [xy_ok, xy_ok, xy_ok and bool(has_depth[b])], err_msg=f"{b} {j}")
  assert got[1, 0, 0] == 1 and got[1, 0, 2] == 0


def test_bone_sigma_schedule():
  assert float(tg.bone_sigma(0.0, 6.0, 2.0)) == 6.0
  assert float(tg.bone_sigma(1.0, 6.0, 2.0)) == 2.0
  assert float(tg.bone_sigma(0.25, 6.0, 2.0)) == pytest.approx(5.0)
  assert float(tg.bone_sigma(3.0, 6.0, 2.0)) == 2.0 and float(tg.bone_sigma(-1.0, 6.0, 2.0)) == 6.0
  vals = [float(tg.bone_sigma(p, 6.0, 2.0)) for p in np.linspace(0, 1, 11)]
  assert all(a > b for a, b in zip(vals, vals[1:]))


def test_vmap_and_dtype():
  coords, vis, has_depth = random_joints(4)
  stacked = [np.stack([a, a[::-1]]) for a in (coords, vis, has_depth)]
  for fn in (lambda c, v, h: tg.joint_heatmaps(c, v, (H, W)),
             lambda c, v, h: tg.depth_centric_volume(c, v, h, (H, W), D),
             lambda c, v, h: tg.ordinal_depth_labels(c, v, h, (H, W), D)[0]):
    batched = jax.vmap(fn)(*stacked)
    np.testing.assert_array_equal(batched[0], fn(coords, vis, has_depth))
    np.testing.assert_array_equal(batched[1], fn(coords[::-1], vis[::-1], has_depth[::-1]))
  f32 = tg.joint_heatmaps(coords, vis, (H, W))
  bf = tg.joint_heatmaps(coords, vis, (H, W), dtype=jnp.bfloat16)
  assert bf.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(bf, np.float32), f32, atol=4e-3)


def test_make_stage1_targets_assembles_the_parts():
  coords, vis, has_depth = random_joints(5)
  batch = {"joints_vox": coords, "joints_vis": vis, "has_depth": has_depth}
  cfg = ml_collections.ConfigDict({"sigma": 1.5, "depth_bins": D, "bone_sigma_start": 5.0, "bone_sigma_end": 2.0,
                                   "ordinal_threshold": 0.3, "heatmap_size": (H, W), "volume_method": "scatter"})
  out = jax.jit(lambda b, p: tg.make_stage1_targets(b, sk.H36M, cfg, progress=p))(batch, 0.5)
  assert float(out["bone_sigma"]) == pytest.approx(3.5)
  np.testing.assert_allclose(out["joint_heatmaps"], ref_joint_heatmaps(coords, vis, 1.5), atol=1e-6)
  ref_bones, ref_bmask = ref_bone_heatmaps(coords, vis, sk.H36M.bones, 3.5)
  np.testing.assert_allclose(out["bone_heatmaps"], ref_bones, atol=1e-5)
  np.testing.assert_array_equal(out["bone_mask"], ref_bmask)
  ref_vol, ref_labels, ref_mask = ref_depth_targets(coords, vis, has_depth, 1.5, 0.3)
  np.testing.assert_allclose(out["depth_volume"], ref_vol, atol=1e-6)
  np.testing.assert_array_equal(out["ordinal_labels"], ref_labels)
  np.testing.assert_array_equal(out["ordinal_mask"], ref_mask)
  np.testing.assert_array_equal(out["joint_mask"], vis)
  np.testing.assert_array_equal(out["coord_mask"], tg.coord_mask(coords, vis, has_depth, (H, W), D))
  # A fixed (possibly traced) bone_sigma in the config wins over the schedule.
  fixed = tg.make_stage1_targets(batch, sk.H36M, targets_config(bone_sigma=jnp.float32(2.5)), progress=0.5)
  assert float(fixed["bone_sigma"]) == 2.5 and fixed["depth_volume"].shape == (4, H, W, D)


def test_make_stage1_targets_names_bad_fields():
  coords, vis, has_depth = random_joints(6)
  batch = {"joints_vox": coords, "joints_vis": vis, "has_depth": has_depth}
  with pytest.raises(ValueError, match="joints_vox"):
    tg.make_stage1_targets({"joints_vox": coords[:, :16], "joints_vis": vis[:, :16], "has_depth": has_depth},
                           sk.H36M, targets_config())
  with pytest.raises(KeyError, match="has_depth"):
    tg.make_stage1_targets({"joints_vox": coords, "joints_vis": vis}, sk.H36M, targets_config())
  # Every config key is required: the code has no defaults (they live in the configs).
  for key in tg.CONFIG_KEYS:
    cfg = targets_config()
    del cfg[key]
    with pytest.raises(KeyError, match=f"config has no '{key}'"):
      tg.make_stage1_targets(batch, sk.H36M, cfg, progress=0.5)
  with pytest.raises(KeyError, match="heatmap_size"):
    tg.make_stage1_targets(batch, sk.H36M, {})
  with pytest.raises(ValueError, match="size must be"):
    tg.make_stage1_targets(batch, sk.H36M, targets_config(heatmap_size=(0, 4)))
  with pytest.raises(ValueError, match="visibility"):
    tg.joint_heatmaps(coords, vis[:, :3], (H, W))


def test_full_size_shapes_and_compile():
  """B=64, J=18, 64x64, D=64 under eval_shape and an AOT compile (nothing runs at full size)."""
  b, j, s, d = 64, 18, 64, 64
  spec = {"joints_vox": jax.ShapeDtypeStruct((b, j, 3), jnp.float32),
          "joints_vis": jax.ShapeDtypeStruct((b, j), jnp.float32),
          "has_depth": jax.ShapeDtypeStruct((b,), jnp.float32)}
  cfg = targets_config(heatmap_size=s, depth_bins=d)
  c, v, h = spec["joints_vox"], spec["joints_vis"], spec["has_depth"]
  shapes = {
      "joint": jax.eval_shape(lambda c, v: tg.joint_heatmaps(c, v, (s, s), dtype=jnp.bfloat16), c, v),
      "bone": jax.eval_shape(lambda c, v: tg.bone_heatmaps(c, v, sk.H36M.bone_parents, sk.H36M.bone_children,
                                                           (s, s), 3.0)[0], c, v),
      "volume": jax.eval_shape(lambda c, v, h: tg.depth_centric_volume(c, v, h, (s, s), d), c, v, h),
      "ordinal": jax.eval_shape(lambda c, v, h: tg.ordinal_depth_labels(c, v, h, (s, s), d)[0], c, v, h),
      "coord": jax.eval_shape(lambda c, v, h: tg.coord_mask(c, v, h, (s, s), d), c, v, h),
  }
  assert shapes["joint"].shape == (b, s, s, j) and shapes["joint"].dtype == jnp.bfloat16
  assert shapes["bone"].shape == (b, s, s, 16)
  assert shapes["volume"].shape == shapes["ordinal"].shape == (b, s, s, d)
  assert shapes["coord"].shape == (b, j, 3)
  compiled = jax.jit(lambda batch, p: tg.make_stage1_targets(batch, sk.H36M, cfg, progress=p)).lower(
      spec, jax.ShapeDtypeStruct((), jnp.float32)).compile()
  out = compiled.out_info
  assert out["depth_volume"].shape == (b, s, s, d) and out["bone_heatmaps"].shape == (b, s, s, 16)
