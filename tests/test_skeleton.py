"""Joint sets: sizes, bones, flipping and mapping by name."""

import jax.numpy as jnp
import numpy as np
import pytest

from cascaded_lift import skeleton as sk


def test_joint_sets_match_design():
  assert sk.H36M.num_joints == 18 and sk.H36M.num_bones == 16 and sk.H36M.num_eval_joints == 17
  assert sk.H36M.joint_names[sk.H36M.root] == "Pelvis" and sk.H36M.joint_names[17] == "Thorax"
  assert sk.MPII.num_joints == 16 and sk.COCO.num_joints == 19 and sk.MUCO.num_joints == 21
  assert sk.MUCO.joint_names[sk.MUCO.root] == "Pelvis"
  names = sk.H36M.joint_names
  assert [(names[a], names[b]) for a, b in sk.H36M.bones][:2] == [("Pelvis", "Torso"), ("Torso", "Neck")]
  for s in sk.SKELETONS.values():
    for left, right in s.flip_pairs:
      assert s.joint_names[left][2:] == s.joint_names[right][2:]
      assert s.joint_names[left].startswith("L_") and s.joint_names[right].startswith("R_")


def test_flip_is_an_involution_and_swaps_sides():
  rng = np.random.default_rng(0)
  joints = rng.normal(size=(2, 18, 3))
  flipped = sk.flip_joints(joints, sk.H36M)
  np.testing.assert_array_equal(sk.flip_joints(flipped, sk.H36M), joints)
  l_wrist, r_wrist = sk.H36M.index("L_Wrist"), sk.H36M.index("R_Wrist")
  np.testing.assert_array_equal(flipped[:, l_wrist], joints[:, r_wrist])
  np.testing.assert_array_equal(flipped[:, 0], joints[:, 0])  # Pelvis stays
  mirrored = sk.flip_joints(jnp.asarray(joints), sk.H36M, width=64)
  np.testing.assert_allclose(mirrored[:, l_wrist, 0], 63 - joints[:, r_wrist, 0], rtol=1e-6)
  np.testing.assert_allclose(mirrored[:, l_wrist, 1:], joints[:, r_wrist, 1:], rtol=1e-6)
  np.testing.assert_array_equal(sk.flip_vis(np.arange(18), sk.H36M)[[l_wrist, r_wrist]], [r_wrist, l_wrist])


def test_map_joints_by_name_marks_missing_invisible():
  mpii = np.arange(16 * 2, dtype=np.float32).reshape(16, 2)
  vis = np.ones(16, np.float32)
  out, out_vis = sk.map_joints(mpii, vis, sk.MPII, sk.H36M)
  assert out.shape == (18, 2) and out_vis.shape == (18,)
  for j, name in enumerate(sk.H36M.joint_names):
    if name in sk.MPII.joint_names:
      np.testing.assert_array_equal(out[j], mpii[sk.MPII.index(name)])
      assert out_vis[j] == 1
    else:
      assert name in ("Torso", "Nose") and out_vis[j] == 0 and np.all(out[j] == 0)
  out_j, vis_j = sk.map_joints(jnp.asarray(mpii[None]), jnp.asarray(vis[None]), sk.MPII, sk.H36M)
  np.testing.assert_array_equal(out_j[0], out)
  with pytest.raises(ValueError, match="16 mpii joints"):
    sk.map_joints(mpii[:5], vis[:5], sk.MPII, sk.H36M)
  with pytest.raises(KeyError, match="Chin"):
    sk.H36M.index("Chin")
