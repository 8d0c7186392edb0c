"""MuPoTS-3D multi-person evaluation (docs/design.md section 7), in the manner of the dataset's MATLAB script.

Per frame, the annotated people (only those with is_valid) are matched to the predicted people by 2D
joint proximity. Each matched prediction is made root-relative (Pelvis) and rescaled to the ground
truth's bone lengths - walking a bone tree outwards from the root, each predicted bone keeps its
direction and gets the ground-truth length - and then compared joint by joint with the root-relative
ground truth; a joint is correct when its error is strictly below 150 mm (3DPCK).

Defaults follow the official script (mpii_mupots_multiperson_eval.m, as the paper and 3DMPPE score):
matching="mpii" and bone_tree="official". The earlier rules stay selectable and are named in the
results' settings: matching="distance", bone_tree="skeleton".

Two modes, both always computed:
- "all_annotated": an annotated person without a matched prediction counts as 0 % on all joints.
- "only_matched": such people are skipped.

Joint groups (MuCo/MuPoTS joint names; the first 17 joints are evaluated):
    Head: Head_top              Neck: Thorax
    Shoulder: R_/L_Shoulder     Elbow: R_/L_Elbow      Wrist: R_/L_Wrist
    Hip: R_/L_Hip               Knee: R_/L_Knee        Ankle: R_/L_Ankle
The "total" 3DPCK/AUC is over the union of the groups (14 joints; Pelvis, Spine and Head are left out),
as in the official script; "pck_all_joints" is the same over all 17 evaluated joints, for reference.
AUC is the mean 3DPCK over 0, 5, ..., 150 mm (31 thresholds, like :func:`cascaded_lift.metrics.auc3d`;
the official script's curve runs to 195 mm, so its AUC differs).

Results are per sequence TS1..TS20, as the mean over sequences (what papers report as "Total") and
pooled over all people of all sequences.

Rules (the defaults are the official script's):
- bone_tree="official" (default): the official parents (mpii_get_joints('relevant')): Head_top and Head
  both hang off Thorax, Thorax off Spine, Spine off Pelvis, limbs as usual
  (:data:`MUPOTS_OFFICIAL_PARENTS`). bone_tree="skeleton": the bones of the skeleton (MUCO) among the
  first 17 joints, where Head_top hangs off Head. Any parent-before-child order gives the same result.
- matching="mpii" (default): annotations in order each take the still-free prediction with the most
  matching joints (Thorax through L_Ankle, the official joints 2..14) within +-`match_threshold` px
  (default 40) in both x and y, if that count is > 0; predicted joints at exactly (0, 0) count as
  missing. matching="distance": greedy on the mean 2D distance over the matching joints: the globally
  closest (annotation, prediction) pair is matched first, and a pair matches only when that mean
  distance is <= `match_threshold` px (default 100).
- Differences from the official script that remain: AUC over 0..150 mm (31 thresholds) rather than
  0..195 mm; a predicted bone of zero length (no direction; the script divides by zero) puts its child
  on its parent.
"""

from __future__ import annotations

import collections
from typing import Any, Mapping, Sequence

import numpy as np

from cascaded_lift.metrics import AUC_THRESHOLDS_MM, PCK_THRESHOLD_MM
from cascaded_lift.skeleton import MUCO, Skeleton

Array = Any

MUPOTS_JOINT_GROUPS: dict[str, tuple[str, ...]] = {
    "Head": ("Head_top",), "Neck": ("Thorax",), "Shoulder": ("R_Shoulder", "L_Shoulder"),
    "Elbow": ("R_Elbow", "L_Elbow"), "Wrist": ("R_Wrist", "L_Wrist"), "Hip": ("R_Hip", "L_Hip"),
    "Knee": ("R_Knee", "L_Knee"), "Ankle": ("R_Ankle", "L_Ankle")}
# Joints used to match predictions to annotations (the official script's joints 2..14).
MUPOTS_MATCHING_JOINTS: tuple[str, ...] = (
    "Thorax", "R_Shoulder", "R_Elbow", "R_Wrist", "L_Shoulder", "L_Elbow", "L_Wrist", "R_Hip", "R_Knee",
    "R_Ankle", "L_Hip", "L_Knee", "L_Ankle")
_DEFAULT_THRESHOLDS = {"distance": 100.0, "mpii": 40.0}
MATCHING_RULES = ("mpii", "distance")
# Parents in the official script's bone-length rescaling (mpii_get_joints('relevant'), o1), by name.
MUPOTS_OFFICIAL_PARENTS: dict[str, str] = {
    "Head_top": "Thorax", "Thorax": "Spine", "R_Shoulder": "Thorax", "R_Elbow": "R_Shoulder",
    "R_Wrist": "R_Elbow", "L_Shoulder": "Thorax", "L_Elbow": "L_Shoulder", "L_Wrist": "L_Elbow",
    "R_Hip": "Pelvis", "R_Knee": "R_Hip", "R_Ankle": "R_Knee", "L_Hip": "Pelvis", "L_Knee": "L_Hip",
    "L_Ankle": "L_Knee", "Spine": "Pelvis", "Head": "Thorax"}
BONE_TREES = ("official", "skeleton")


def bone_tree(skeleton: Skeleton = MUCO, num_joints: int | None = None,
              rule: str = "skeleton") -> tuple[np.ndarray, np.ndarray]:
  """Parent of every joint and a root-outwards order over the first joints.

  rule="skeleton": the skeleton's bones, used undirected (MUCO lists Head_top -> Head -> Thorax ->
  Spine -> Pelvis towards the root). rule="official": the official MuPoTS-3D script's parents
  (:data:`MUPOTS_OFFICIAL_PARENTS`, by joint name). Either is restricted to joints < num_joints
  (default skeleton.num_eval_joints) and walked breadth-first from the root.
  Returns:
    (order (num_joints - 1,) joint indices, each after its parent; parents (num_joints,), -1 at the root).
  """
  if rule not in BONE_TREES:
    raise ValueError(f"bone_tree: unknown rule {rule!r}; use one of {BONE_TREES}")
  n = skeleton.num_eval_joints if num_joints is None else num_joints
  if rule == "official":
    missing = [c for pair in MUPOTS_OFFICIAL_PARENTS.items() for c in pair if c not in skeleton.joint_names]
    if missing:
      raise ValueError(f"bone_tree: the official MuPoTS-3D tree needs joint {missing[0]!r}, which skeleton "
                       f"{skeleton.name!r} lacks")
    edges = [(skeleton.index(p), skeleton.index(c)) for c, p in MUPOTS_OFFICIAL_PARENTS.items()]
  else:
    edges = list(skeleton.bones)
  neighbours = collections.defaultdict(list)
  for a, b in edges:
    if a < n and b < n:
      neighbours[a].append(b)
      neighbours[b].append(a)
  parents = np.full(n, -1, dtype=np.int64)
  seen, order, queue = {skeleton.root}, [], collections.deque([skeleton.root])
  while queue:
    j = queue.popleft()
    for k in neighbours[j]:
      if k not in seen:
        seen.add(k)
        parents[k] = j
        order.append(k)
        queue.append(k)
  if len(seen) != n:
    missing = [skeleton.joint_names[j] for j in range(n) if j not in seen]
    raise ValueError(f"bone_tree: {skeleton.name} bones among the first {n} joints do not reach {missing}")
  return np.array(order, dtype=np.int64), parents


_make_bone_tree = bone_tree  # MuPoTSEvaluator's `bone_tree` argument shadows the function's name


def rescale_to_bone_lengths(pred: Array, gt: Array, order: Sequence[int], parents: Sequence[int]) -> np.ndarray:
  """Keeps pred's bone directions and gives every bone gt's length, walking `order` from the root.

  Args:
    pred, gt: (..., J, 3) root-relative poses (mm); the root of the result is pred's root.
    order, parents: from :func:`bone_tree`.
  Returns:
    (..., J, 3) float64 rescaled prediction.
  """
  pred = np.asarray(pred, dtype=np.float64)
  gt = np.asarray(gt, dtype=np.float64)
  out = pred.copy()
  for j in order:
    p = parents[j]
    vec = pred[..., j, :] - pred[..., p, :]
    length = np.linalg.norm(vec, axis=-1, keepdims=True)
    gt_len = np.linalg.norm(gt[..., j, :] - gt[..., p, :], axis=-1, keepdims=True)
    unit = np.where(length > 0, vec / np.where(length > 0, length, 1.0), 0.0)
    out[..., j, :] = out[..., p, :] + unit * gt_len
  return out


def match_people(gt_2d: Array, pred_2d: Array, threshold: float, method: str = "distance") -> np.ndarray:
  """Matches annotated people to predictions by 2D joints (see the module docstring for the rules).

  Args:
    gt_2d: (G, K, 2) px of the matching joints of the annotated people.
    pred_2d: (P, K, 2) px of the same joints of the predictions.
    threshold: px; mean-distance limit ("distance") or per-axis window ("mpii").
    method: "distance" or "mpii".
  Returns:
    (G,) int64 index of the matched prediction, -1 when unmatched; each prediction is used at most once.
  """
  gt_2d = np.asarray(gt_2d, dtype=np.float64)
  pred_2d = np.asarray(pred_2d, dtype=np.float64)
  g, p = len(gt_2d), len(pred_2d)
  match = np.full(g, -1, dtype=np.int64)
  if g == 0 or p == 0:
    return match
  if method == "distance":
    cost = np.linalg.norm(gt_2d[:, None] - pred_2d[None], axis=-1).mean(axis=-1)  # (G, P)
    cost = np.where(np.isnan(cost), np.inf, cost)  # a NaN prediction never matches
    for _ in range(min(g, p)):
      i, k = np.unravel_index(np.argmin(cost), cost.shape)
      if not cost[i, k] <= threshold:  # also stops on inf (everything used)
        break
      match[i] = k
      cost[i, :] = np.inf
      cost[:, k] = np.inf
  elif method == "mpii":
    present = ~np.all(pred_2d == 0, axis=-1)  # (P, K)
    free = np.ones(p, dtype=bool)
    for i in range(g):
      close = np.all(np.abs(gt_2d[i][None] - pred_2d) < threshold, axis=-1) & present  # (P, K)
      score = np.where(free, close.sum(axis=-1), -1)
      k = int(np.argmax(score))
      if score[k] > 0:
        match[i] = k
        free[k] = False
  else:
    raise ValueError(f"match_people: unknown method {method!r}; use 'distance' or 'mpii'")
  return match


def _check(x: Array, name: str, where: str, people: int | None, joints: int, dim: int) -> np.ndarray:
  x = np.asarray(x, dtype=np.float64)
  if x.ndim != 3 or x.shape[1] < joints or x.shape[2] != dim or (people is not None and x.shape[0] != people):
    want = f"({people if people is not None else 'P'}, J >= {joints}, {dim})"
    raise ValueError(f"{where}: {name} must be {want}, got {x.shape}")
  return x[:, :joints]


class MuPoTSEvaluator:
  """Accumulates MuPoTS-3D frames and computes 3DPCK/AUC per sequence, joint group and mode.

  Usage: ``ev = MuPoTSEvaluator(); ev.add_frame(seq, pred_3d, pred_2d, gt_3d, gt_2d, gt_valid)`` for
  every test frame, then ``ev.results()``. Joints are in the MuCo order of `skeleton` (predictions
  with 21 joints are cut to the first 17).
  """

  def __init__(self, skeleton: Skeleton = MUCO, matching: str = "mpii", match_threshold: float | None = None,
               matching_joints: Sequence[str] = MUPOTS_MATCHING_JOINTS, pck_threshold: float = PCK_THRESHOLD_MM,
               auc_thresholds: Sequence[float] = AUC_THRESHOLDS_MM,
               groups: Mapping[str, Sequence[str]] = MUPOTS_JOINT_GROUPS, bone_tree: str = "official"):
    if matching not in MATCHING_RULES:
      raise ValueError(f"MuPoTSEvaluator: unknown matching {matching!r}; use one of {MATCHING_RULES}")
    if bone_tree not in BONE_TREES:
      raise ValueError(f"MuPoTSEvaluator: unknown bone_tree {bone_tree!r}; use one of {BONE_TREES}")
    self.skeleton = skeleton
    self.num_joints = skeleton.num_eval_joints
    self.matching = matching
    self.bone_tree = bone_tree
    self.match_threshold = _DEFAULT_THRESHOLDS[matching] if match_threshold is None else float(match_threshold)
    self.matching_idx = np.array([skeleton.index(n) for n in matching_joints], dtype=np.int64)
    self.pck_threshold = float(pck_threshold)
    self.auc_thresholds = np.asarray(auc_thresholds, dtype=np.float64)
    self.groups = {g: np.array([skeleton.index(n) for n in names], dtype=np.int64) for g, names in groups.items()}
    self.total_idx = np.unique(np.concatenate(list(self.groups.values())))
    if np.any(self.matching_idx >= self.num_joints) or np.any(self.total_idx >= self.num_joints):
      raise ValueError(f"MuPoTSEvaluator: matching/group joints must be among the first {self.num_joints}")
    self.order, self.parents = _make_bone_tree(skeleton, self.num_joints, bone_tree)
    self._errors: dict[int, list[np.ndarray]] = collections.defaultdict(list)  # matched people's (J,) errors
    self._unmatched: dict[int, int] = collections.defaultdict(int)

  def add_frame(self, sequence: int, pred_3d: Array, pred_2d: Array, gt_3d: Array, gt_2d: Array,
                gt_valid: Array | None = None) -> np.ndarray:
    """Adds one frame.

    Args:
      sequence: 1..20 (TS1..TS20).
      pred_3d: (P_pred, J, 3) predicted camera-frame (or root-relative) mm; P_pred may be 0.
      pred_2d: (P_pred, J, 2) predicted joints in image px.
      gt_3d: (P_gt, J, 3) annotated camera-frame mm.
      gt_2d: (P_gt, J, 2) annotated image px.
      gt_valid: optional (P_gt,) is_valid flags; people with 0 are ignored entirely.
    Returns:
      (P_gt,) int64 index of the prediction matched to each annotated person, -1 when unmatched or invalid.
    """
    where = f"MuPoTSEvaluator.add_frame(sequence={sequence})"
    if int(sequence) != sequence or sequence < 1:
      raise ValueError(f"{where}: sequence must be a positive int (1..20 for TS1..TS20)")
    j = self.num_joints
    pred_3d = _check(pred_3d, "pred_3d", where, None, j, 3)
    pred_2d = _check(pred_2d, "pred_2d", where, len(pred_3d), j, 2)
    gt_3d = _check(gt_3d, "gt_3d", where, None, j, 3)
    gt_2d = _check(gt_2d, "gt_2d", where, len(gt_3d), j, 2)
    valid = np.ones(len(gt_3d), dtype=bool) if gt_valid is None else np.asarray(gt_valid).astype(bool)
    if valid.shape != (len(gt_3d),):
      raise ValueError(f"{where}: gt_valid must be ({len(gt_3d)},), got {valid.shape}")
    idx = np.flatnonzero(valid)
    sub = match_people(gt_2d[idx][:, self.matching_idx], pred_2d[:, self.matching_idx], self.match_threshold,
                       self.matching)
    root = self.skeleton.root
    for i, k in zip(idx, sub):
      if k < 0:
        self._unmatched[int(sequence)] += 1
        continue
      gt_rel = gt_3d[i] - gt_3d[i, root]
      pred_rel = rescale_to_bone_lengths(pred_3d[k] - pred_3d[k, root], gt_rel, self.order, self.parents)
      self._errors[int(sequence)].append(np.linalg.norm(pred_rel - gt_rel, axis=-1))
    match = np.full(len(gt_3d), -1, dtype=np.int64)
    match[idx] = sub
    return match

  def _stats(self, err: np.ndarray) -> dict[str, Any]:
    """3DPCK/AUC (percent) of (people, J) errors; inf marks an unmatched person."""
    hit = err < self.pck_threshold
    curve = (err[..., None] < self.auc_thresholds).mean(axis=-1)  # per joint: share of thresholds passed
    return {
        "pck": float(hit[:, self.total_idx].mean() * 100), "auc": float(curve[:, self.total_idx].mean() * 100),
        "groups": {g: float(hit[:, ix].mean() * 100) for g, ix in self.groups.items()},
        "groups_auc": {g: float(curve[:, ix].mean() * 100) for g, ix in self.groups.items()},
        "pck_all_joints": float(hit.mean() * 100), "people": int(len(err))}

  def results(self) -> dict[str, Any]:
    """All metrics so far.

    Returns:
      {"all_annotated": R, "only_matched": R, "counts": {"TS<n>": {"annotated", "matched"}, "total": ...}}
      with R = {"sequences": {"TS<n>": S}, "mean": S averaged over those sequences (people summed),
      "pooled": S over all people together}, and S = {"pck", "auc", "groups": {group: pck},
      "groups_auc": {group: auc}, "pck_all_joints", "people"} in percent. A sequence without people in
      a mode is absent from that mode's "sequences" and "mean"; a mode without any people has
      "mean" = "pooled" = None.
    """
    out: dict[str, Any] = {}
    seqs = sorted(set(self._errors) | set(self._unmatched))
    for mode in ("all_annotated", "only_matched"):
      per_seq, pooled = {}, []
      for s in seqs:
        rows = list(self._errors.get(s, []))
        if mode == "all_annotated":
          rows += [np.full(self.num_joints, np.inf)] * self._unmatched.get(s, 0)
        if rows:
          per_seq[f"TS{s}"] = self._stats(np.stack(rows))
          pooled += rows
      mean = None
      if per_seq:
        vals = list(per_seq.values())
        mean = {k: float(np.mean([v[k] for v in vals])) for k in ("pck", "auc", "pck_all_joints")}
        for k in ("groups", "groups_auc"):
          mean[k] = {g: float(np.mean([v[k][g] for v in vals])) for g in self.groups}
        mean["people"] = int(sum(v["people"] for v in vals))
      out[mode] = {"sequences": per_seq, "mean": mean, "pooled": self._stats(np.stack(pooled)) if pooled else None}
    counts = {f"TS{s}": {"annotated": len(self._errors.get(s, [])) + self._unmatched.get(s, 0),
                         "matched": len(self._errors.get(s, []))} for s in seqs}
    counts["total"] = {k: sum(c[k] for c in counts.values()) for k in ("annotated", "matched")}
    out["counts"] = counts
    return out


def format_mupots_table(results: Mapping[str, Any], markdown: bool = True, digits: int = 1) -> str:
  """Paper-layout tables from :meth:`MuPoTSEvaluator.results`: 3DPCK per sequence (TS1..TS20 + Avg)
  and per joint group, for both modes."""
  lines = []
  for mode in ("all_annotated", "only_matched"):
    res = results[mode]
    if res["mean"] is None:
      continue
    seqs = list(res["sequences"])
    header = [mode] + seqs + ["Avg"]
    rows = [[m.upper()] + [f"{res['sequences'][s][m]:.{digits}f}" for s in seqs] + [f"{res['mean'][m]:.{digits}f}"]
            for m in ("pck", "auc")]
    groups = list(res["mean"]["groups"])
    g_header = [mode] + groups + ["Total"]
    g_rows = [["PCK (mean of seqs)"] + [f"{res['mean']['groups'][g]:.{digits}f}" for g in groups]
              + [f"{res['mean']['pck']:.{digits}f}"]]
    for h, body in ((header, rows), (g_header, g_rows)):
      if markdown:
        lines += ["| " + " | ".join(h) + " |", "|" + "|".join(["---"] + ["---:"] * (len(h) - 1)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in body] + [""]
      else:
        widths = [max(len(r[i]) for r in [h] + body) for i in range(len(h))]
        lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [h] + body] + [""]
  return "\n".join(lines).rstrip("\n")
