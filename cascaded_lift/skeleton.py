"""Joint sets (skeletons) and operations on joint arrays that depend only on joint names.

A :class:`Skeleton` is an immutable value: joint names, bones as (parent, child) index pairs, the
root joint and the left/right flip pairs. The joint sets of docs/design.md section 2 are module constants:
:data:`H36M` (the model's default, 18 joints, 16 bones), :data:`MPII` (16), :data:`COCO` (17 + Thorax
and Pelvis = 19) and :data:`MUCO` (MuCo-3DHP / MuPoTS-3D, 21).

Datasets store joints in their own order; :func:`map_joints` moves them onto another set by name and
marks joints the source lacks as invisible. :func:`flip_joints` swaps left and right joints (and, given
an image width, mirrors x), which is what horizontal-flip augmentation and the flip test need.

Works on NumPy and jax.numpy arrays with any leading batch axes (joints on axis -2 for coordinates,
axis -1 for visibilities).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from cascaded_lift._backend import array_namespace

Array = Any  # np.ndarray or jax.Array


@dataclasses.dataclass(frozen=True)
class Skeleton:
  """A joint set.

  Attributes:
    name: short identifier, e.g. "h36m".
    joint_names: J names; left/right joints start with "L_"/"R_".
    bones: (parent, child) joint-index pairs; their order is the bone-heatmap channel order.
    root: index of the root joint (root-relative coordinates are taken w.r.t. it).
    num_eval_joints: how many leading joints the standard evaluation uses.
  """

  name: str
  joint_names: tuple[str, ...]
  bones: tuple[tuple[int, int], ...]
  root: int
  num_eval_joints: int | None = None

  def __post_init__(self):
    if len(set(self.joint_names)) != len(self.joint_names):
      raise ValueError(f"{self.name}: duplicate joint names in {self.joint_names}")
    for parent, child in self.bones:
      if not (0 <= parent < self.num_joints and 0 <= child < self.num_joints):
        raise ValueError(f"{self.name}: bone ({parent}, {child}) indexes outside {self.num_joints} joints")
    if not 0 <= self.root < self.num_joints:
      raise ValueError(f"{self.name}: root {self.root} outside {self.num_joints} joints")
    if self.num_eval_joints is None:
      object.__setattr__(self, "num_eval_joints", self.num_joints)

  @property
  def num_joints(self) -> int:
    return len(self.joint_names)

  @property
  def num_bones(self) -> int:
    return len(self.bones)

  def index(self, name: str) -> int:
    """Index of joint `name`; KeyError naming the skeleton when absent."""
    try:
      return self.joint_names.index(name)
    except ValueError:
      raise KeyError(f"joint {name!r} is not in skeleton {self.name!r} ({', '.join(self.joint_names)})") from None

  @property
  def flip_pairs(self) -> tuple[tuple[int, int], ...]:
    """(left, right) index pairs, matched by name: L_X <-> R_X."""
    pairs = []
    for i, n in enumerate(self.joint_names):
      if n.startswith("L_") and ("R_" + n[2:]) in self.joint_names:
        pairs.append((i, self.joint_names.index("R_" + n[2:])))
    return tuple(pairs)

  @property
  def flip_permutation(self) -> np.ndarray:
    """(J,) int array p such that joints[..., p, :] swaps every left joint with its right twin."""
    perm = np.arange(self.num_joints)
    for left, right in self.flip_pairs:
      perm[left], perm[right] = right, left
    return perm

  @property
  def bone_parents(self) -> np.ndarray:
    return np.array([b[0] for b in self.bones], dtype=np.int32)

  @property
  def bone_children(self) -> np.ndarray:
    return np.array([b[1] for b in self.bones], dtype=np.int32)


def _bones(names: Sequence[str], pairs: Sequence[tuple[str, str]]) -> tuple[tuple[int, int], ...]:
  return tuple((names.index(a), names.index(b)) for a, b in pairs)


_H36M_NAMES = ("Pelvis", "R_Hip", "R_Knee", "R_Ankle", "L_Hip", "L_Knee", "L_Ankle", "Torso", "Neck",
               "Nose", "Head", "L_Shoulder", "L_Elbow", "L_Wrist", "R_Shoulder", "R_Elbow", "R_Wrist",
               "Thorax")
H36M = Skeleton(
    name="h36m",
    joint_names=_H36M_NAMES,
    bones=_bones(_H36M_NAMES, [
        ("Pelvis", "Torso"), ("Torso", "Neck"), ("Neck", "Nose"), ("Nose", "Head"),
        ("Neck", "L_Shoulder"), ("L_Shoulder", "L_Elbow"), ("L_Elbow", "L_Wrist"),
        ("Neck", "R_Shoulder"), ("R_Shoulder", "R_Elbow"), ("R_Elbow", "R_Wrist"),
        ("Pelvis", "R_Hip"), ("R_Hip", "R_Knee"), ("R_Knee", "R_Ankle"),
        ("Pelvis", "L_Hip"), ("L_Hip", "L_Knee"), ("L_Knee", "L_Ankle")]),
    root=0,
    num_eval_joints=17,  # Thorax (index 17) is added for MPII supervision, not evaluated.
)

# MPII's "Neck" is the upper neck and "Head" the head top; they map onto Human3.6M's Neck and Head,
# as in the 3DMPPE code base the paper builds on.
_MPII_NAMES = ("R_Ankle", "R_Knee", "R_Hip", "L_Hip", "L_Knee", "L_Ankle", "Pelvis", "Thorax", "Neck",
               "Head", "R_Wrist", "R_Elbow", "R_Shoulder", "L_Shoulder", "L_Elbow", "L_Wrist")
MPII = Skeleton(
    name="mpii",
    joint_names=_MPII_NAMES,
    bones=_bones(_MPII_NAMES, [
        ("Pelvis", "Thorax"), ("Thorax", "Neck"), ("Neck", "Head"),
        ("Thorax", "R_Shoulder"), ("R_Shoulder", "R_Elbow"), ("R_Elbow", "R_Wrist"),
        ("Thorax", "L_Shoulder"), ("L_Shoulder", "L_Elbow"), ("L_Elbow", "L_Wrist"),
        ("Pelvis", "R_Hip"), ("R_Hip", "R_Knee"), ("R_Knee", "R_Ankle"),
        ("Pelvis", "L_Hip"), ("L_Hip", "L_Knee"), ("L_Knee", "L_Ankle")]),
    root=6,
)

# COCO's 17 keypoints plus Thorax (shoulder midpoint) and Pelvis (hip midpoint), see coco_add_thorax_pelvis.
_COCO_NAMES = ("Nose", "L_Eye", "R_Eye", "L_Ear", "R_Ear", "L_Shoulder", "R_Shoulder", "L_Elbow",
               "R_Elbow", "L_Wrist", "R_Wrist", "L_Hip", "R_Hip", "L_Knee", "R_Knee", "L_Ankle",
               "R_Ankle", "Thorax", "Pelvis")
COCO = Skeleton(
    name="coco",
    joint_names=_COCO_NAMES,
    bones=_bones(_COCO_NAMES, [
        ("Pelvis", "Thorax"), ("Thorax", "Nose"), ("Nose", "L_Eye"), ("Nose", "R_Eye"),
        ("L_Eye", "L_Ear"), ("R_Eye", "R_Ear"),
        ("Thorax", "L_Shoulder"), ("L_Shoulder", "L_Elbow"), ("L_Elbow", "L_Wrist"),
        ("Thorax", "R_Shoulder"), ("R_Shoulder", "R_Elbow"), ("R_Elbow", "R_Wrist"),
        ("Pelvis", "L_Hip"), ("L_Hip", "L_Knee"), ("L_Knee", "L_Ankle"),
        ("Pelvis", "R_Hip"), ("R_Hip", "R_Knee"), ("R_Knee", "R_Ankle")]),
    root=18,
)

_MUCO_NAMES = ("Head_top", "Thorax", "R_Shoulder", "R_Elbow", "R_Wrist", "L_Shoulder", "L_Elbow",
               "L_Wrist", "R_Hip", "R_Knee", "R_Ankle", "L_Hip", "L_Knee", "L_Ankle", "Pelvis", "Spine",
               "Head", "R_Hand", "L_Hand", "R_Toe", "L_Toe")
MUCO = Skeleton(
    name="muco",
    joint_names=_MUCO_NAMES,
    bones=_bones(_MUCO_NAMES, [
        ("Head_top", "Head"), ("Head", "Thorax"), ("Thorax", "Spine"), ("Spine", "Pelvis"),
        ("Pelvis", "R_Hip"), ("R_Hip", "R_Knee"), ("R_Knee", "R_Ankle"), ("R_Ankle", "R_Toe"),
        ("Pelvis", "L_Hip"), ("L_Hip", "L_Knee"), ("L_Knee", "L_Ankle"), ("L_Ankle", "L_Toe"),
        ("Thorax", "R_Shoulder"), ("R_Shoulder", "R_Elbow"), ("R_Elbow", "R_Wrist"), ("R_Wrist", "R_Hand"),
        ("Thorax", "L_Shoulder"), ("L_Shoulder", "L_Elbow"), ("L_Elbow", "L_Wrist"), ("L_Wrist", "L_Hand")]),
    root=14,
    num_eval_joints=17,  # MuPoTS-3D evaluates the first 17 joints.
)

SKELETONS: dict[str, Skeleton] = {s.name: s for s in (H36M, MPII, COCO, MUCO)}


def get_skeleton(name: str) -> Skeleton:
  """Looks up a skeleton by name ("h36m", "mpii", "coco", "muco")."""
  try:
    return SKELETONS[name]
  except KeyError:
    raise KeyError(f"unknown skeleton {name!r}; known: {sorted(SKELETONS)}") from None


def mapping_indices(src: Skeleton, dst: Skeleton) -> np.ndarray:
  """(J_dst,) index into src's joints for each dst joint by name, -1 where src lacks it."""
  return np.array([src.joint_names.index(n) if n in src.joint_names else -1 for n in dst.joint_names],
                  dtype=np.int32)


def map_joints(joints: Array, vis: Array, src: Skeleton, dst: Skeleton) -> tuple[Array, Array]:
  """Moves joint arrays from `src`'s order to `dst`'s by name.

  Args:
    joints: (..., J_src, C) coordinates (any C, e.g. 2 px or 3 mm).
    vis: (..., J_src) visibilities.
  Returns:
    (joints (..., J_dst, C), vis (..., J_dst)); joints missing from src are zero and invisible.
  """
  xp = array_namespace(joints, vis)
  if joints.shape[-2] != src.num_joints or vis.shape[-1] != src.num_joints:
    raise ValueError(f"map_joints: expected {src.num_joints} {src.name} joints, got joints {joints.shape}"
                     f" and vis {vis.shape}")
  idx = mapping_indices(src, dst)
  present = idx >= 0
  safe = np.where(present, idx, 0)
  out_j = xp.where(present[:, None], xp.take(joints, safe, axis=-2), 0)
  out_v = xp.where(present, xp.take(vis, safe, axis=-1), 0)
  return out_j.astype(joints.dtype), out_v.astype(vis.dtype)


def flip_joints(joints: Array, skeleton: Skeleton, width: float | None = None) -> Array:
  """Swaps left and right joints of (..., J, C) arrays; with `width`, also mirrors x -> width - 1 - x.

  The mirror uses pixel-index coordinates, so it matches `image[:, ::-1]` of an image `width` wide.
  Without `width` only the order changes (use this for visibilities via flip_vis, or camera-space
  poses where the caller negates x).
  """
  out = joints[..., skeleton.flip_permutation, :]
  if width is not None:
    x = (width - 1) - out[..., 0:1]
    xp = array_namespace(joints)
    out = xp.concatenate([x, out[..., 1:]], axis=-1)
  return out


def flip_vis(vis: Array, skeleton: Skeleton) -> Array:
  """Swaps left and right entries of (..., J) per-joint arrays (visibilities, masks)."""
  return vis[..., skeleton.flip_permutation]
