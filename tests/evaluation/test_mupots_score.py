"""MuPoTS-3D evaluator on hand-built frames: matching, bone-length rescaling, modes, validity."""

import numpy as np
import pytest

from cascaded_lift import metrics
from cascaded_lift.evaluation import mupots_score as me
from cascaded_lift.skeleton import MUCO

# A hand-made root-relative MuCo pose (first 17 joints), mm, camera axes (y down).
_POSE = {
    "Head_top": (0, -700, 0), "Thorax": (0, -450, 0), "R_Shoulder": (-180, -430, 0),
    "R_Elbow": (-200, -150, 30), "R_Wrist": (-210, 100, 60), "L_Shoulder": (180, -430, 0),
    "L_Elbow": (200, -150, 20), "L_Wrist": (220, 90, 80), "R_Hip": (-110, 0, 0), "R_Knee": (-120, 420, 40),
    "R_Ankle": (-120, 830, 60), "L_Hip": (110, 0, 0), "L_Knee": (120, 420, 30), "L_Ankle": (125, 830, 70),
    "Pelvis": (0, 0, 0), "Spine": (0, -220, 10), "Head": (0, -580, 10)}
REL = np.array([_POSE[n] for n in MUCO.joint_names[:17]], float)
F, C = 1500.0, np.array([1024.0, 1024.0])


def _project(cam):
  return cam[..., :2] / cam[..., 2:3] * F + C


def _people():
  """Two annotated people (2, 17, 3) camera mm and their 2D (2, 17, 2)."""
  a = REL + np.array([-800.0, 0.0, 4500.0])
  # Person B: arms raised, turned 90 degrees about the vertical axis, 5 % smaller.
  b_rel = REL.copy()
  for side, sx in (("R_", -1), ("L_", 1)):
    b_rel[MUCO.index(side + "Elbow")] = (sx * 190, -700, 0)
    b_rel[MUCO.index(side + "Wrist")] = (sx * 200, -950, 20)
  turn = np.array([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]])
  b = 0.95 * b_rel @ turn.T + np.array([700.0, 100.0, 5000.0])
  cam = np.stack([a, b])
  return cam, _project(cam)


def _names(*names):
  return [MUCO.index(n) for n in names]


def test_bone_tree_walks_outwards_from_the_pelvis():
  order, parents = me.bone_tree(MUCO)
  name = lambda j: MUCO.joint_names[j]
  expect = {"Head_top": "Head", "Head": "Thorax", "Thorax": "Spine", "Spine": "Pelvis", "R_Hip": "Pelvis",
            "L_Ankle": "L_Knee", "R_Shoulder": "Thorax", "L_Wrist": "L_Elbow"}
  for child, parent in expect.items():
    assert name(parents[MUCO.index(child)]) == parent
  assert parents[MUCO.root] == -1 and len(order) == 16
  pos = {j: i for i, j in enumerate(order)}
  for j in order:
    assert parents[j] == MUCO.root or pos[parents[j]] < pos[j]


def test_official_tree_hangs_head_top_off_thorax():
  """The official script's parents (mpii_get_joints('relevant'), o1), 1-based there."""
  official_o1 = [2, 16, 2, 3, 4, 2, 6, 7, 15, 9, 10, 15, 12, 13, 15, 15, 2]
  order, parents = me.bone_tree(MUCO, rule="official")
  for j, p in enumerate(official_o1):
    assert parents[j] == (-1 if j == MUCO.root else p - 1), MUCO.joint_names[j]
  pos = {j: i for i, j in enumerate(order)}
  assert sorted(order) == [j for j in range(17) if j != MUCO.root]
  assert all(parents[j] == MUCO.root or pos[parents[j]] < pos[j] for j in order)
  with pytest.raises(ValueError, match="unknown rule"):
    me.bone_tree(MUCO, rule="mpii")
  from cascaded_lift.skeleton import H36M
  with pytest.raises(ValueError, match="needs joint 'Head_top'"):
    me.bone_tree(H36M, rule="official")


def test_default_rescaling_is_the_official_one():
  """Head_top off Thorax (official) or off Head (MUCO bones): the trees give different Head_top errors
  when the predicted head leans, and the evaluator's default is the official tree."""
  head_top, head = _names("Head_top", "Head")
  pred = REL.copy()
  pred[head] += [60.0, 0.0, 0.0]  # the head leans: Head moves, Head_top stays
  errors = {}
  for tree in ("official", "skeleton"):
    order, parents = me.bone_tree(MUCO, rule=tree)
    out = me.rescale_to_bone_lengths(pred, REL, order, parents)
    errors[tree] = np.linalg.norm(out[head_top] - REL[head_top])
  # Official: Head_top keeps its direction from Thorax (unchanged) and its true length: no error.
  assert errors["official"] == pytest.approx(0.0, abs=1e-9)
  assert errors["skeleton"] > 10.0
  default = me.MuPoTSEvaluator()
  assert default.bone_tree == "official" and default.matching == "mpii" and default.match_threshold == 40.0
  np.testing.assert_array_equal(default.parents, me.bone_tree(MUCO, rule="official")[1])
  assert me.MuPoTSEvaluator(bone_tree="skeleton").parents[head_top] == head
  with pytest.raises(ValueError, match="unknown bone_tree"):
    me.MuPoTSEvaluator(bone_tree="muco")


def test_rescale_keeps_directions_and_takes_gt_lengths():
  rng = np.random.default_rng(0)
  pred = rng.normal(size=(17, 3)) * 300
  pred -= pred[MUCO.root]
  order, parents = me.bone_tree(MUCO)
  out = me.rescale_to_bone_lengths(pred, REL, order, parents)
  bones = [(a, b) for a, b in MUCO.bones if a < 17 and b < 17]
  assert len(bones) == 16
  for a, b in bones:
    v_out, v_pred, v_gt = out[b] - out[a], pred[b] - pred[a], REL[b] - REL[a]
    assert np.linalg.norm(v_out) == pytest.approx(np.linalg.norm(v_gt))
    # Same direction (whichever end the skeleton lists first).
    assert np.dot(v_out, v_pred) == pytest.approx(np.linalg.norm(v_out) * np.linalg.norm(v_pred))


def test_swapped_predictions_are_matched_to_the_right_people():
  cam, uv = _people()
  ev = me.MuPoTSEvaluator()
  match = ev.add_frame(1, cam[::-1], uv[::-1], cam, uv)
  np.testing.assert_array_equal(match, [1, 0])
  res = ev.results()
  for mode in ("all_annotated", "only_matched"):
    assert res[mode]["sequences"]["TS1"]["pck"] == 100.0
    assert res[mode]["sequences"]["TS1"]["auc"] == pytest.approx(100.0 * 30 / 31)
  # Had the evaluator paired prediction k with person k, the poses (1.5 m apart) would all fail.
  ev2 = me.MuPoTSEvaluator(match_threshold=1e9)
  ev2.add_frame(1, cam[::-1], uv, cam, uv)  # 2D says "same order", 3D is swapped
  assert ev2.results()["all_annotated"]["sequences"]["TS1"]["pck"] < 50.0


def test_twice_too_long_bones_score_full_after_rescaling():
  cam, uv = _people()
  roots = cam[:, MUCO.root:MUCO.root + 1]
  pred = roots + np.array([0, 0, 700.0]) + 2.0 * (cam - roots)  # wrong depth and scale, same directions
  ev = me.MuPoTSEvaluator()
  ev.add_frame(2, pred, uv, cam, uv)
  assert ev.results()["all_annotated"]["pooled"]["pck"] == 100.0
  assert ev.results()["all_annotated"]["pooled"]["pck_all_joints"] == 100.0
  # Without the rescaling most joints are off by far more than 150 mm.
  assert metrics.pck3d(2.0 * (cam - roots), cam - roots) < 50.0


def test_missing_prediction_all_annotated_vs_only_matched():
  cam, uv = _people()
  bad = cam.copy()
  r_elbow, r_wrist = _names("R_Elbow", "R_Wrist")
  bad[0, r_wrist] = 2 * bad[0, r_elbow] - bad[0, r_wrist]  # forearm reversed: wrist 2 x 252 mm off
  ev = me.MuPoTSEvaluator()
  ev.add_frame(3, bad, uv, cam, uv)        # frame 1: both found, person A's right wrist wrong
  ev.add_frame(3, cam[1:], uv[1:], cam, uv)  # frame 2: person A not detected
  res = ev.results()
  # 14 evaluated joints per person; matched: 3 people, 41 of 42 right; all annotated: 4 people.
  only, every = res["only_matched"]["sequences"]["TS3"], res["all_annotated"]["sequences"]["TS3"]
  assert only["pck"] == pytest.approx(100 * 41 / 42)
  assert every["pck"] == pytest.approx(100 * 41 / 56)
  assert only["groups"]["Wrist"] == pytest.approx(100 * 5 / 6)
  assert every["groups"]["Wrist"] == pytest.approx(100 * 5 / 8)
  assert only["groups"]["Elbow"] == 100.0 and every["groups"]["Elbow"] == pytest.approx(75.0)
  assert every["pck_all_joints"] == pytest.approx(100 * 50 / 68)
  assert res["counts"]["TS3"] == {"annotated": 4, "matched": 3}
  # A second sequence: the mean over sequences and the pooled value weigh people differently.
  ev.add_frame(5, cam, uv, cam, uv)
  res = ev.results()["all_annotated"]
  assert res["mean"]["pck"] == pytest.approx((100 * 41 / 56 + 100) / 2)
  assert res["pooled"]["pck"] == pytest.approx(100 * (41 + 28) / 84)
  assert res["mean"]["people"] == 6 and set(res["sequences"]) == {"TS3", "TS5"}
  assert "TS3" in me.format_mupots_table(ev.results())


def test_invalid_annotations_are_ignored():
  cam, uv = _people()
  # An invalid person listed first, at person B's image position but with a different 3D pose: if it
  # were used it would take B's prediction.
  ghost = cam[1:] + np.array([0, 0, 3000.0])
  gt3, gt2 = np.concatenate([ghost, cam]), np.concatenate([uv[1:], uv])
  ev_ref, ev = me.MuPoTSEvaluator(), me.MuPoTSEvaluator()
  ev_ref.add_frame(1, cam[1:], uv[1:], cam, uv)
  match = ev.add_frame(1, cam[1:], uv[1:], gt3, gt2, gt_valid=np.array([0, 1, 1]))
  np.testing.assert_array_equal(match, [-1, -1, 0])
  assert ev.results() == ev_ref.results()
  assert ev.results()["counts"]["total"] == {"annotated": 2, "matched": 1}


def test_match_threshold_and_mpii_rule():
  cam, uv = _people()
  far = uv + 150.0  # every joint 212 px away
  assert me.MuPoTSEvaluator().add_frame(1, cam, far, cam, uv).tolist() == [-1, -1]
  assert me.MuPoTSEvaluator(match_threshold=250).add_frame(1, cam, far, cam, uv).tolist() == [0, 1]
  # Official rule: the free prediction with the most matching joints within +-40 px in x and y wins.
  k = _names(*me.MUPOTS_MATCHING_JOINTS)
  gt = uv[1:, k]  # (1, 13, 2)
  preds = np.stack([gt[0] + 300.0, gt[0] + 300.0])
  preds[0, :3] = gt[0, :3]          # 3 joints exactly on
  preds[1, 3:13] = gt[0, 3:13] + 39.0  # 10 joints just inside the window
  assert me.match_people(gt, preds, 40.0, "mpii").tolist() == [1]
  assert me.match_people(gt, gt + 40.0, 40.0, "mpii").tolist() == [-1]  # the window is strict
  zeros = np.zeros_like(uv[:1])  # a prediction with all joints at (0, 0) is missing, never matched
  assert me.match_people(np.zeros_like(uv), zeros, 40.0, "mpii").tolist() == [-1, -1]


def test_bad_frames_raise():
  cam, uv = _people()
  ev = me.MuPoTSEvaluator()
  with pytest.raises(ValueError, match="sequence=4.*pred_2d"):
    ev.add_frame(4, cam, uv[:1], cam, uv)
  with pytest.raises(ValueError, match="gt_3d"):
    ev.add_frame(4, cam, uv, cam[:, :10], uv)
  with pytest.raises(ValueError, match="gt_valid"):
    ev.add_frame(4, cam, uv, cam, uv, gt_valid=np.ones(3))
  # No prediction at all is fine: everyone is unmatched.
  ev.add_frame(4, np.zeros((0, 17, 3)), np.zeros((0, 17, 2)), cam, uv)
  assert ev.results()["all_annotated"]["sequences"]["TS4"]["pck"] == 0.0
  assert ev.results()["only_matched"]["mean"] is None
