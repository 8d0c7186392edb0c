"""Losses: NumPy references, masking (values and gradients), zero at the target, full-size compile."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cascaded_lift.training import losses as ls
from cascaded_lift import skeleton as sk
from cascaded_lift.training import targets as tg

B, H, W, D, J, NB = 4, 8, 8, 6, 18, 16
WEIGHTS = {"bone": 1.0, "joint": 2.0, "volume_3d": 0.5, "depth": 0.1, "coord": 0.01}


def targets_config(**overrides):
  """make_stage1_targets' config: every key of tg.CONFIG_KEYS (configs/default.py's values), overridden."""
  cfg = {"sigma": 2.0, "bone_sigma_start": 4.0, "bone_sigma_end": 2.0, "depth_bins": D, "ordinal_threshold": 0.1,
         "heatmap_size": (H, W), "volume_method": "scatter", **overrides}
  assert set(tg.CONFIG_KEYS) <= set(cfg)
  return cfg


def make_case(seed):
  """Random predictions, targets and a batch with one 2D-only sample and one padding sample."""
  rng = np.random.default_rng(seed)
  coords = np.stack([rng.uniform(-1, W + 1, (B, J)), rng.uniform(-1, H + 1, (B, J)),
                     rng.uniform(-1, D + 1, (B, J))], -1).astype(np.float32)
  batch = {"joints_vox": coords, "joints_vis": (rng.uniform(size=(B, J)) > 0.3).astype(np.float32),
           "has_depth": np.array([1, 0, 1, 1], np.float32), "valid": np.array([1, 1, 1, 0], np.float32),
           "pose_3d": rng.normal(0, 300, (B, J, 3)).astype(np.float32)}
  targets = jax.tree.map(np.array, tg.make_stage1_targets(batch, sk.H36M, targets_config(bone_sigma=2.0)))
  outputs = {"bone_heatmaps": rng.uniform(0, 1, (B, H, W, NB)).astype(np.float32),
             "joint_heatmaps": rng.uniform(0, 1, (B, H, W, J)).astype(np.float32),
             "depth_volume": rng.uniform(0, 1, (B, H, W, D)).astype(np.float32),
             "ordinal_logits": rng.normal(0, 3, (B, H, W, D)).astype(np.float32),
             "coords": (coords + rng.normal(0, 2, coords.shape)).astype(np.float32),
             "pose_3d": rng.normal(0, 300, (B, J, 3)).astype(np.float32)}
  return outputs, targets, batch


# ---------------------------------------------------------------- NumPy references (loops on purpose)

def ref_stage1(outputs, targets, batch, reduce="mean"):
  """Per-term sums over the elements that take part, divided by their count ("mean") or, for the dense
  terms, by the number of samples that take part ("sample_sum")."""
  has_depth, valid = batch["has_depth"], batch["valid"]
  sums, counts, samples = {k: 0.0 for k in WEIGHTS}, {k: 0 for k in WEIGHTS}, {k: 0 for k in WEIGHTS}
  for b in range(B):
    if not valid[b]:
      continue
    for key, out_key, mask in (("bone", "bone_heatmaps", targets["bone_mask"]),
                               ("joint", "joint_heatmaps", targets["joint_mask"])):
      samples[key] += int(any(mask[b]))
      for c in range(mask.shape[1]):
        if mask[b, c]:
          sums[key] += float(np.sum((outputs[out_key][b, ..., c].astype(np.float64)
                                     - targets[out_key][b, ..., c]) ** 2))
          counts[key] += H * W
    if has_depth[b]:
      sums["volume_3d"] += float(np.sum((outputs["depth_volume"][b].astype(np.float64)
                                         - targets["depth_volume"][b]) ** 2))
      counts["volume_3d"] += H * W * D
      samples["volume_3d"] += 1
      samples["depth"] += int(targets["ordinal_mask"][b].any())
      for i in range(H):
        for k in range(W):
          if targets["ordinal_mask"][b, i, k]:
            for c in range(D):
              p = 1 / (1 + math.exp(-float(outputs["ordinal_logits"][b, i, k, c])))
              t = targets["ordinal_labels"][b, i, k, c]
              sums["depth"] -= t * math.log(p) + (1 - t) * math.log(1 - p)
              counts["depth"] += 1
    for j in range(J):
      for a in range(3):
        if targets["coord_mask"][b, j, a]:
          sums["coord"] += abs(float(outputs["coords"][b, j, a]) - float(targets["coords"][b, j, a]))
          counts["coord"] += 1
  if reduce == "sample_sum":
    counts = {k: (samples[k] if k != "coord" else counts[k]) for k in WEIGHTS}
  return {k: sums[k] / max(counts[k], 1) for k in WEIGHTS}


def ref_geodesic(pose, names):
  idx = {n: names.index(n) for n in names}
  g = 0.0
  for side in "LR":
    path = ["Neck", "Torso", "Pelvis", f"{side}_Hip", f"{side}_Knee"]
    g += sum(float(np.linalg.norm(pose[idx[a]] - pose[idx[b]])) for a, b in zip(path, path[1:])) / 2
  return g


# ---------------------------------------------------------------- tests

def test_stage1_terms_match_reference():
  outputs, targets, batch = make_case(0)
  total, terms = jax.jit(lambda o, t, b: ls.stage1_loss(o, t, b, WEIGHTS))(outputs, targets, batch)
  ref = ref_stage1(outputs, targets, batch)
  assert set(terms) == set(WEIGHTS)
  for k in WEIGHTS:
    assert terms[k].dtype == jnp.float32
    np.testing.assert_allclose(terms[k], ref[k], rtol=2e-5, err_msg=k)
  np.testing.assert_allclose(total, sum(WEIGHTS[k] * ref[k] for k in WEIGHTS), rtol=2e-5)


def test_sample_sum_terms_match_reference():
  outputs, targets, batch = make_case(3)
  total, terms = jax.jit(lambda o, t, b: ls.stage1_loss(o, t, b, WEIGHTS, "sample_sum"))(outputs, targets, batch)
  ref = ref_stage1(outputs, targets, batch, "sample_sum")
  mean_terms = ref_stage1(outputs, targets, batch)
  for k in WEIGHTS:
    np.testing.assert_allclose(terms[k], ref[k], rtol=2e-5, err_msg=k)
    if k != "coord":  # a per-sample sum is many elements' worth of the mean
      assert float(terms[k]) > 50 * mean_terms[k], k
  np.testing.assert_allclose(total, sum(WEIGHTS[k] * ref[k] for k in WEIGHTS), rtol=2e-5)
  with pytest.raises(ValueError, match="reduce must be one of"):
    ls.stage1_loss(outputs, targets, batch, WEIGHTS, "sum")


def test_masked_sample_sum_hand_worked():
  values = np.arange(12, dtype=np.float32).reshape(3, 4)
  mask = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]], np.float32)
  # samples 0 and 2 take part: (0 + 2 + 9) / 2
  np.testing.assert_allclose(ls.masked_sample_sum(values, mask), 5.5)
  np.testing.assert_allclose(ls.masked_sample_sum(values, np.zeros_like(mask)), 0.0)


@pytest.mark.parametrize("supervision,kept", [("baseline", {"coord"}), ("jh", {"joint", "coord"}),
                                              ("jh_bh", {"bone", "joint", "coord"}), ("full", set(WEIGHTS))])
def test_supervision_switch_zeroes_terms_and_their_gradients(supervision, kept):
  outputs, targets, batch = make_case(4)
  weights = ls.supervised_weights(WEIGHTS, supervision)
  assert {k for k, w in weights.items() if w} == kept
  assert all(weights[k] == WEIGHTS[k] for k in kept)
  grads = jax.grad(lambda o: ls.stage1_loss(o, targets, batch, weights)[0])(outputs)
  for term, key in (("bone", "bone_heatmaps"), ("joint", "joint_heatmaps"), ("volume_3d", "depth_volume"),
                    ("depth", "ordinal_logits"), ("coord", "coords")):
    assert bool(np.any(np.asarray(grads[key]) != 0)) == (term in kept), (supervision, term)
  with pytest.raises(ValueError, match="supervision must be one of"):
    ls.supervised_weights(WEIGHTS, "jh_dc")


def test_ordinal_loss_matches_torch():
  torch = pytest.importorskip("torch")
  outputs, targets, batch = make_case(1)
  got = ls.ordinal_depth_loss(outputs["ordinal_logits"], targets["ordinal_labels"], targets["ordinal_mask"],
                              batch["has_depth"], batch["valid"])
  w = targets["ordinal_mask"] * (batch["has_depth"] * batch["valid"])[:, None, None]
  w = np.broadcast_to(w[..., None], outputs["ordinal_logits"].shape)
  ref = torch.nn.functional.binary_cross_entropy_with_logits(
      torch.from_numpy(outputs["ordinal_logits"]).double(), torch.from_numpy(targets["ordinal_labels"]).double(),
      weight=torch.from_numpy(np.ascontiguousarray(w)).double(), reduction="sum") / w.sum()
  np.testing.assert_allclose(got, float(ref), rtol=1e-5)


def test_masked_entries_change_neither_value_nor_gradient():
  outputs, targets, batch = make_case(2)
  loss_fn = jax.jit(jax.value_and_grad(lambda o: ls.stage1_loss(o, targets, batch, WEIGHTS)[0]))
  value, grads = loss_fn(outputs)
  chex.assert_tree_all_finite(grads)
  # Scramble everything a mask excludes: invisible joints' and unsupervised bones' channels, the whole
  # padding sample, the 2D-only sample's volume and ordinal logits, unlabelled pixels, masked coords.
  rng = np.random.default_rng(9)
  scrambled = jax.tree.map(np.copy, outputs)
  excluded = {
      "joint_heatmaps": np.broadcast_to((targets["joint_mask"] * batch["valid"][:, None] == 0)[:, None, None],
                                        (B, H, W, J)),
      "bone_heatmaps": np.broadcast_to((targets["bone_mask"] * batch["valid"][:, None] == 0)[:, None, None],
                                       (B, H, W, NB)),
      "depth_volume": np.broadcast_to((batch["has_depth"] * batch["valid"] == 0)[:, None, None, None], (B, H, W, D)),
      "ordinal_logits": np.broadcast_to(((targets["ordinal_mask"] * (batch["has_depth"] * batch["valid"])[:, None, None])
                                         == 0)[..., None], (B, H, W, D)),
      "coords": targets["coord_mask"] * batch["valid"][:, None, None] == 0,
  }
  for key, mask in excluded.items():
    assert mask.any() and not mask.all(), key
    scrambled[key] = np.where(mask, rng.normal(0, 50, mask.shape), outputs[key]).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(grads[key])[mask], 0, err_msg=key)
    assert np.any(np.asarray(grads[key])[~mask] != 0), key
  value2, grads2 = loss_fn(scrambled)
  assert float(value2) == float(value)
  for key in excluded:
    np.testing.assert_array_equal(grads2[key], grads[key], err_msg=key)
  # The 2D-only sample's depth targets are empty, and it changes no depth term when dropped entirely.
  assert not targets["ordinal_mask"][1].any() and not targets["depth_volume"][1].any()
  assert not targets["coord_mask"][1, :, 2].any()


def test_padding_sample_is_ignored():
  outputs, targets, batch = make_case(3)
  _, terms = ls.stage1_loss(outputs, targets, batch, WEIGHTS)
  keep = np.array([0, 1, 2])   # drop the padding sample (valid = 0) altogether
  sub = lambda tree: jax.tree.map(lambda a: a[keep] if np.ndim(a) and np.shape(a)[0] == B else a, tree)
  _, terms_sub = ls.stage1_loss(sub(outputs), sub(targets), sub(batch), WEIGHTS)
  for k in WEIGHTS:
    np.testing.assert_allclose(terms[k], terms_sub[k], rtol=1e-5, err_msg=k)


def test_zero_at_target_positive_elsewhere():
  _, targets, batch = make_case(4)
  perfect = {"bone_heatmaps": targets["bone_heatmaps"], "joint_heatmaps": targets["joint_heatmaps"],
             "depth_volume": targets["depth_volume"], "coords": targets["coords"],
             "ordinal_logits": np.where(targets["ordinal_labels"] > 0, 40.0, -40.0).astype(np.float32)}
  total, terms = ls.stage1_loss(perfect, targets, batch, WEIGHTS)
  for k in WEIGHTS:
    assert float(terms[k]) < 1e-12, k
  assert float(total) < 1e-12
  for k, key in (("bone", "bone_heatmaps"), ("joint", "joint_heatmaps"), ("volume_3d", "depth_volume"),
                 ("coord", "coords"), ("depth", "ordinal_logits")):
    off = dict(perfect)
    off[key] = perfect[key] + np.float32(0.3 if k != "depth" else -100.0)
    assert float(ls.stage1_loss(off, targets, batch, WEIGHTS)[1][k]) > 1e-3, k
  pose = batch["pose_3d"]
  out = {"pose_3d": np.asarray(ls.geodesic_normalize(pose, sk.H36M))}
  assert float(ls.stage2_loss(out, batch, sk.H36M)[0]) < 1e-4
  assert float(ls.stage2_loss({"pose_3d": pose}, batch, sk.H36M, geodesic=False)[0]) == 0.0
  assert float(ls.stage2_loss({"pose_3d": pose + 1.0}, batch, sk.H36M, geodesic=False)[0]) == pytest.approx(1.0)


def test_nothing_to_supervise_gives_zero_not_nan():
  outputs, targets, batch = make_case(5)
  empty = dict(batch, valid=np.zeros(B, np.float32))
  total, terms = ls.stage1_loss(outputs, targets, empty, WEIGHTS)
  assert float(total) == 0.0 and all(float(v) == 0.0 for v in terms.values())
  grads = jax.grad(lambda o: ls.stage1_loss(o, targets, empty, WEIGHTS)[0])(outputs)
  chex.assert_tree_all_finite(grads)
  assert float(ls.stage2_loss(outputs, dict(batch, has_depth=np.zeros(B, np.float32)), sk.H36M)[0]) == 0.0
  # The depth terms check has_depth themselves, whatever the pixel mask says.
  no_depth, ones = np.zeros(B, np.float32), np.ones(B, np.float32)
  assert float(ls.ordinal_depth_loss(outputs["ordinal_logits"], targets["ordinal_labels"], np.ones((B, H, W)),
                                     no_depth, ones)) == 0.0
  assert float(ls.volume_loss(outputs["depth_volume"], targets["depth_volume"], no_depth, ones)) == 0.0


def test_geodesic_normalize_hand_worked():
  names = sk.H36M.joint_names
  pose = np.zeros((J, 3), np.float32)
  at = lambda n, xyz: pose.__setitem__(names.index(n), xyz)
  at("Torso", [0, -200, 0]); at("Neck", [0, -450, 0])
  at("L_Hip", [120, 0, 0]); at("L_Knee", [120, 400, 0])
  at("R_Hip", [-100, 0, 0]); at("R_Knee", [-100, 500, 0])
  # Left path 250 + 200 + 120 + 400 = 970, right 250 + 200 + 100 + 500 = 1050: g = 1010.
  assert ref_geodesic(pose, names) == pytest.approx(1010.0)
  assert float(ls.geodesic_length(pose, sk.H36M)) == pytest.approx(1010.0)
  out = np.asarray(ls.geodesic_normalize(pose, sk.H36M))
  np.testing.assert_allclose(out, pose * 1077.0 / 1010.0, rtol=1e-6)
  np.testing.assert_allclose(ls.geodesic_normalize(pose, sk.H36M, target_mm=500.0), pose * 500.0 / 1010.0, rtol=1e-6)
  # Batched, scale-invariant, zeros unchanged.
  rng = np.random.default_rng(0)
  poses = rng.normal(0, 300, (3, J, 3)).astype(np.float32)
  scaled = poses * np.array([0.5, 2.0, 3.0], np.float32)[:, None, None]
  np.testing.assert_allclose(ls.geodesic_normalize(scaled, sk.H36M), ls.geodesic_normalize(poses, sk.H36M),
                             rtol=1e-5, atol=1e-3)
  for p in poses:
    assert ref_geodesic(np.asarray(ls.geodesic_normalize(p, sk.H36M)), names) == pytest.approx(1077.0, rel=1e-5)
  np.testing.assert_array_equal(ls.geodesic_normalize(np.zeros((J, 3)), sk.H36M), 0)
  # MuCo names the path joints differently; MPII has no torso joint at all.
  assert float(ls.geodesic_length(rng.normal(size=(21, 3)), sk.MUCO)) > 0
  with pytest.raises(KeyError, match="Torso"):
    ls.geodesic_normalize(np.zeros((16, 3)), sk.MPII)


def test_stage2_loss_matches_reference():
  outputs, _, batch = make_case(6)
  total, terms = jax.jit(lambda o, b: ls.stage2_loss(o, b, sk.H36M))(outputs, batch)
  num, den = 0.0, 0
  for b in range(B):
    if not (batch["valid"][b] and batch["has_depth"][b]):
      continue
    gt = batch["pose_3d"][b].astype(np.float64) * 1077.0 / ref_geodesic(batch["pose_3d"][b], sk.H36M.joint_names)
    for j in range(J):
      if batch["joints_vis"][b, j]:
        num += float(np.abs(outputs["pose_3d"][b, j] - gt[j]).sum())
        den += 3
  np.testing.assert_allclose(total, num / den, rtol=1e-5)
  assert terms == {"pose": total}


def test_weights_and_dtypes():
  outputs, targets, batch = make_case(7)
  with pytest.raises(KeyError, match="volume_3d"):
    ls.stage1_loss(outputs, targets, batch, {k: v for k, v in WEIGHTS.items() if k != "volume_3d"})
  with pytest.raises(KeyError, match="bones"):
    ls.stage1_loss(outputs, targets, batch, dict(WEIGHTS, bones=1.0))
  # A zero weight skips its term, so a model without that output still trains.
  no_ord = {k: v for k, v in outputs.items() if k != "ordinal_logits"}
  total, terms = ls.stage1_loss(no_ord, targets, batch, dict(WEIGHTS, depth=0))
  full_total, full_terms = ls.stage1_loss(outputs, targets, batch, WEIGHTS)
  assert float(terms["depth"]) == 0.0
  np.testing.assert_allclose(total, full_total - WEIGHTS["depth"] * full_terms["depth"], rtol=1e-5)
  # bfloat16 predictions give float32 losses close to the float32 ones.
  bf = jax.tree.map(lambda a: jnp.asarray(a, jnp.bfloat16) if a.dtype == np.float32 else a, outputs)
  bf_total, bf_terms = ls.stage1_loss(bf, targets, batch, WEIGHTS)
  assert bf_total.dtype == jnp.float32
  for k in WEIGHTS:
    assert bf_terms[k].dtype == jnp.float32
    np.testing.assert_allclose(bf_terms[k], full_terms[k], rtol=2e-2, err_msg=k)


def test_full_size_targets_and_loss_compile():
  """Targets + stage-1 loss + its gradient at B=64, J=18, 64x64, D=64: AOT compile only."""
  b, s, d = 64, 64, 64
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  batch = {"joints_vox": f32(b, J, 3), "joints_vis": f32(b, J), "has_depth": f32(b), "valid": f32(b),
           "pose_3d": f32(b, J, 3)}
  bf = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16)
  outputs = {"bone_heatmaps": bf(b, s, s, NB), "joint_heatmaps": bf(b, s, s, J), "depth_volume": bf(b, s, s, d),
             "ordinal_logits": bf(b, s, s, d), "coords": f32(b, J, 3), "pose_3d": f32(b, J, 3)}
  cfg = targets_config(heatmap_size=s, depth_bins=d)

  def step(outputs, batch, progress):
    def loss(o):
      t = tg.make_stage1_targets(batch, sk.H36M, cfg, progress=progress, dtype=jnp.bfloat16)
      total1, terms = ls.stage1_loss(o, t, batch, WEIGHTS)
      total2, _ = ls.stage2_loss(o, batch, sk.H36M)
      return total1 + total2, terms
    return jax.value_and_grad(loss, has_aux=True)(outputs)

  compiled = jax.jit(step).lower(outputs, batch, f32()).compile()
  (total, terms), grads = compiled.out_info
  assert total.shape == () and total.dtype == jnp.float32 and set(terms) == set(WEIGHTS)
  assert grads["depth_volume"].shape == (b, s, s, d) and grads["depth_volume"].dtype == jnp.bfloat16
