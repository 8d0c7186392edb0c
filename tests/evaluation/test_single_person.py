"""The single-person evaluator's stage-1 voxel error on a hand-worked case."""

import numpy as np
import pytest

from cascaded_lift.evaluation.single_person import voxel_errors


def test_voxel_errors_hand_worked():
  gt = np.zeros((2, 3, 3))
  pred = np.zeros((2, 3, 3))
  pred[0, 0] = [3, 4, 0]      # distance 5
  pred[0, 1] = [0, 0, 2]      # distance 2
  pred[1, 0] = [1, 0, 0]      # distance 1
  pred[1, 1] = [100, 0, 0]    # invisible: ignored
  pred[1, 2] = [0, 0, 7]      # joint 2 is beyond num_joints=2: ignored
  vis = np.array([[1, 1, 1], [1, 0, 1]], np.float32)
  got = voxel_errors({"coords": pred, "joints_vox": gt, "joints_vis": vis}, num_joints=2)
  assert got["voxel_error"] == pytest.approx((5 + 2 + 1) / 3)
  assert got["voxel_error_x"] == pytest.approx((3 + 0 + 1) / 3)
  assert got["voxel_error_y"] == pytest.approx(4 / 3)
  assert got["voxel_error_z"] == pytest.approx(2 / 3)
  assert voxel_errors({"coords": pred}, num_joints=2) == {}
