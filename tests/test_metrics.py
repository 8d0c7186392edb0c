"""Pose metrics against hand-worked cases, an independent Procrustes (Horn's quaternions) and plain loops."""

import numpy as np
import pytest

from cascaded_lift import metrics as m


def _rotation(rng):
  q, r = np.linalg.qr(rng.normal(size=(3, 3)))
  q = q * np.sign(np.diag(r))
  return q if np.linalg.det(q) > 0 else -q


def _poses(rng, n=4, j=17):
  return rng.normal(size=(n, j, 3)) * 300.0


def _horn_similarity_error(pred, gt):
  """Mean error after the best proper similarity transform, via Horn's unit-quaternion solution.

  Quaternions only describe rotations, so this reference can never use a reflection.
  """
  p0, g0 = pred - pred.mean(0), gt - gt.mean(0)
  s = p0.T @ g0  # S[a, b] = sum_j p_a g_b
  sxx, sxy, sxz, syx, syy, syz, szx, szy, szz = s.ravel()
  n = np.array([[sxx + syy + szz, syz - szy, szx - sxz, sxy - syx],
                [syz - szy, sxx - syy - szz, sxy + syx, szx + sxz],
                [szx - sxz, sxy + syx, -sxx + syy - szz, syz + szy],
                [sxy - syx, szx + sxz, syz + szy, -sxx - syy + szz]])
  w, v = np.linalg.eigh(n)
  q0, qx, qy, qz = v[:, np.argmax(w)]
  rot = np.array([[q0**2 + qx**2 - qy**2 - qz**2, 2 * (qx * qy - q0 * qz), 2 * (qx * qz + q0 * qy)],
                  [2 * (qy * qx + q0 * qz), q0**2 - qx**2 + qy**2 - qz**2, 2 * (qy * qz - q0 * qx)],
                  [2 * (qz * qx - q0 * qy), 2 * (qz * qy + q0 * qx), q0**2 - qx**2 - qy**2 + qz**2]])
  rp = p0 @ rot.T  # column-vector convention: g ~ s R p
  scale = (rp * g0).sum() / (p0 * p0).sum()
  return np.linalg.norm(scale * rp - g0, axis=-1).mean()


def test_mpjpe_hand_case():
  gt = np.zeros((2, 3, 3))
  pred = np.array([[[3, 4, 0], [0, 0, 2], [1, 2, 2]],      # errors 5, 2, 3
                   [[6, 8, 0], [0, 0, 0], [0, 0, 0]]], float)  # errors 10, 0, 0
  assert m.mpjpe(pred, gt) == pytest.approx(20.0 / 6.0)
  np.testing.assert_allclose(m.mpjpe(pred, gt, per_sample=True), [10 / 3, 10 / 3])
  assert isinstance(m.mpjpe(pred, gt), float)
  # Only the first joint of each sample: (5 + 10) / 2.
  mask = np.array([[1, 0, 0], [1, 0, 0]])
  assert m.mpjpe(pred, gt, mask) == pytest.approx(7.5)


def test_root_relative():
  pose = np.arange(12.0).reshape(1, 4, 3)
  out = m.root_relative(pose, 2)
  np.testing.assert_array_equal(out[0, 2], 0.0)
  np.testing.assert_array_equal(out[0, 0], pose[0, 0] - pose[0, 2])


def test_pa_mpjpe_undoes_similarity_and_rigid_only_without_scale():
  rng = np.random.default_rng(0)
  gt = _poses(rng)
  pred_sim, pred_rigid = np.empty_like(gt), np.empty_like(gt)
  for i in range(len(gt)):
    rot, t = _rotation(rng), rng.normal(size=3) * 1000
    pred_sim[i] = 1.7 * gt[i] @ rot.T + t
    pred_rigid[i] = gt[i] @ rot.T + t
  assert m.pa_mpjpe(pred_sim, gt) < 1e-8
  assert m.rigid_pa_mpjpe(pred_sim, gt) > 50.0  # scale 1.7 on ~500 mm poses cannot be undone rigidly
  assert m.rigid_pa_mpjpe(pred_rigid, gt) < 1e-8
  assert m.pa_mpjpe(pred_rigid, gt) < 1e-8


def test_pa_mpjpe_does_not_undo_a_reflection_and_matches_horn():
  rng = np.random.default_rng(1)
  gt = _poses(rng)
  mirrored = gt * np.array([-1.0, 1.0, 1.0])
  per = m.pa_mpjpe(mirrored, gt, per_sample=True)
  assert np.all(per > 10.0)
  ref = [_horn_similarity_error(mirrored[i], gt[i]) for i in range(len(gt))]
  np.testing.assert_allclose(per, ref, rtol=1e-6)
  # And on generic noisy predictions the two solutions agree as well.
  noisy = gt @ _rotation(rng).T * 0.8 + rng.normal(size=gt.shape) * 60.0
  ref = [_horn_similarity_error(noisy[i], gt[i]) for i in range(len(gt))]
  np.testing.assert_allclose(m.pa_mpjpe(noisy, gt, per_sample=True), ref, rtol=1e-6)


def test_n_mpjpe_undoes_scale_and_uses_least_squares_scale():
  rng = np.random.default_rng(2)
  gt = _poses(rng)
  assert m.n_mpjpe(gt * 0.6, gt) < 1e-9
  assert m.mpjpe(gt * 0.6, gt) > 50.0
  noisy = gt * 1.3 + rng.normal(size=gt.shape) * 50.0
  per = m.n_mpjpe(noisy, gt, per_sample=True)
  for i in range(len(gt)):
    s = np.linalg.lstsq(noisy[i].reshape(-1, 1), gt[i].reshape(-1), rcond=None)[0][0]
    assert per[i] == pytest.approx(np.linalg.norm(s * noisy[i] - gt[i], axis=-1).mean(), rel=1e-9)


@pytest.mark.parametrize("fn", [m.mpjpe, m.pa_mpjpe, m.rigid_pa_mpjpe, m.n_mpjpe, m.pck3d, m.auc3d])
def test_masks_equal_sliced_arrays(fn):
  rng = np.random.default_rng(3)
  gt = _poses(rng, n=5)
  pred = gt * 1.1 + rng.normal(size=gt.shape) * 80.0
  joint_mask = rng.random((5, 17)) < 0.7
  joint_mask[:, :4] = True  # at least 4 joints each so the alignments are well posed
  # Per-sample values on the sliced joints, then the joint-weighted mean over samples.
  vals = [fn(pred[i:i + 1, joint_mask[i]], gt[i:i + 1, joint_mask[i]]) for i in range(5)]
  counts = joint_mask.sum(1)
  assert fn(pred, gt, joint_mask) == pytest.approx(np.dot(vals, counts) / counts.sum(), rel=1e-9)
  np.testing.assert_allclose(fn(pred, gt, joint_mask, per_sample=True), vals, rtol=1e-9)
  # A sample mask equals dropping the samples.
  keep = np.array([1, 0, 1, 1, 0], bool)
  assert fn(pred, gt, keep) == pytest.approx(fn(pred[keep], gt[keep]), rel=1e-9)
  per = fn(pred, gt, keep, per_sample=True)
  assert np.all(np.isnan(per[~keep])) and not np.any(np.isnan(per[keep]))


def test_pck_threshold_is_strict():
  gt = np.zeros((1, 2, 3))
  pred = np.array([[[150.0, 0, 0], [0, 149.9, 0]]])
  assert m.pck3d(pred[:, :1], gt[:, :1]) == 0.0
  assert m.pck3d(pred[:, 1:], gt[:, 1:]) == 100.0
  assert m.pck3d(pred, gt) == pytest.approx(50.0)
  assert m.pck3d(pred, gt, threshold=200.0) == 100.0


def test_auc_perfect_and_spread_errors_against_loop():
  rng = np.random.default_rng(4)
  gt = _poses(rng, n=6)
  assert m.auc3d(gt, gt) == pytest.approx(30.0 / 31.0 * 100.0)
  # Error magnitudes half-way between thresholds so rounding cannot move a joint across one.
  mags = 5.0 * rng.integers(0, 40, size=(6, 17)) + 2.5
  dirs = rng.normal(size=(6, 17, 3))
  dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
  pred = gt + mags[..., None] * dirs
  pcks = []
  for t in range(0, 151, 5):
    hits = 0
    for i in range(6):
      for j in range(17):
        hits += mags[i, j] < t
    pcks.append(100.0 * hits / (6 * 17))
  assert m.auc3d(pred, gt) == pytest.approx(np.mean(pcks), rel=1e-12)
  assert m.pck3d(pred, gt) == pytest.approx(pcks[-1], rel=1e-12)
  per = m.auc3d(pred, gt, per_sample=True)
  for i in range(6):
    ref = np.mean([100.0 * np.mean(mags[i] < t) for t in range(0, 151, 5)])
    assert per[i] == pytest.approx(ref, rel=1e-12)


def test_accepts_jax_arrays():
  jnp = pytest.importorskip("jax.numpy")
  rng = np.random.default_rng(5)
  gt = _poses(rng, n=2).astype(np.float32)
  pred = gt + 10.0
  assert m.mpjpe(jnp.asarray(pred), jnp.asarray(gt)) == pytest.approx(np.sqrt(300.0), rel=1e-5)


def test_bad_input_raises_clear_errors():
  with pytest.raises(ValueError, match="mpjpe: pred and gt"):
    m.mpjpe(np.zeros((2, 17, 3)), np.zeros((2, 16, 3)))
  with pytest.raises(ValueError, match="pa_mpjpe: mask"):
    m.pa_mpjpe(np.zeros((2, 17, 3)), np.zeros((2, 17, 3)), np.ones((3,)))
  with pytest.raises(ValueError, match="no valid joints"):
    m.pck3d(np.zeros((2, 17, 3)), np.zeros((2, 17, 3)), np.zeros((2,)))


def test_per_action_against_loop():
  rng = np.random.default_rng(6)
  n = 200
  errors = rng.random(n) * 100
  actions = rng.integers(2, 17, size=n)
  actions[actions == 7] = 8  # Posing has no samples
  valid = rng.random(n) < 0.9
  errors[3] = np.nan  # a sample without valid joints is skipped
  res = m.per_action(errors, actions, valid)
  sums, counts = {}, {}
  for e, a, v in zip(errors, actions, valid):
    if v and not np.isnan(e):
      sums[a] = sums.get(a, 0.0) + e
      counts[a] = counts.get(a, 0) + 1
  assert "Posing" not in res["per_action"]
  names = {2: "Directions", 3: "Discussion", 4: "Eating", 5: "Greeting", 6: "Phoning", 8: "Purchases",
           9: "Sitting", 10: "SittingDown", 11: "Smoking", 12: "Photo", 13: "Waiting", 14: "Walking",
           15: "WalkDog", 16: "WalkTogether"}
  for a, name in names.items():
    assert res["per_action"][name] == pytest.approx(sums[a] / counts[a])
    assert res["counts"][name] == counts[a]
  assert res["total"] == pytest.approx(sum(sums.values()) / sum(counts.values()))
  assert res["mean_of_actions"] == pytest.approx(np.mean([sums[a] / counts[a] for a in sums]))
  with pytest.raises(ValueError, match="action ids \\[1\\]"):
    m.per_action(np.ones(3), np.array([1, 2, 3]))


def test_action_table_layout():
  res = m.per_action(np.array([10.0, 20.0, 40.0]), np.array([2, 12, 12]))
  table = m.format_action_table({"MPJPE": res}, markdown=True)
  header, _, row = table.splitlines()
  cols = [c.strip() for c in header.strip("|").split("|")]
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert cols[:7] == ["Metric", "Dir.", "Disc.", "Eat", "Greet", "Phone", "Photo"]
  assert cols[-2:] == ["Avg", "All"] and len(cols) == 18
  assert cells[1] == "10.0" and cells[6] == "30.0" and cells[2] == "-"
  assert cells[-2] == "20.0" and cells[-1] == "23.3"  # (10 + 30) / 2 and (10 + 20 + 40) / 3
  plain = m.format_action_table({"MPJPE": res}, markdown=False, short_names=False)
  assert "WalkTogether" in plain.splitlines()[0] and "|" not in plain


@pytest.mark.parametrize("fn", [m.mpjpe, m.pa_mpjpe, m.rigid_pa_mpjpe, m.n_mpjpe, m.pck3d, m.auc3d])
def test_masked_non_finite_values_change_no_metric(fn):
  rng = np.random.default_rng(3)
  gt = rng.normal(size=(4, 17, 3)) * 300.0
  pred = gt + rng.normal(size=gt.shape) * 40.0
  mask = np.ones((4, 17), bool)
  mask[1, 3] = False   # one joint
  mask[2] = False      # a whole sample
  bad_pred, bad_gt = pred.copy(), gt.copy()
  bad_pred[1, 3], bad_pred[2] = np.nan, np.nan
  bad_gt[1, 3] = np.inf
  want = fn(pred, gt, mask)
  assert np.isfinite(want)
  assert fn(bad_pred, bad_gt, mask) == pytest.approx(want, rel=1e-12)
  per_sample = fn(bad_pred, bad_gt, mask, per_sample=True)
  np.testing.assert_allclose(per_sample[[0, 1, 3]], fn(pred, gt, mask, per_sample=True)[[0, 1, 3]], rtol=1e-12)
  assert np.isnan(per_sample[2])  # no valid joint in that sample


def test_mask_values_other_than_zero_and_one_are_refused():
  pose = np.zeros((2, 17, 3))
  with pytest.raises(ValueError, match="mpjpe: mask must hold only 0/1"):
    m.mpjpe(pose, pose, np.full((2, 17), 0.5))
