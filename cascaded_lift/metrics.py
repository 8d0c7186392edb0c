"""3D pose evaluation metrics (docs/design.md section 7) and Human3.6M per-action aggregation.

Every metric takes `(pred, gt, mask=None)` with pred and gt (N, J, 3) in millimetres and returns the
mean over valid joints as a Python float, or with `per_sample=True` an (N,) float64 array of per-sample
means (NaN for a sample without valid joints). `mask` is (N, J) (valid joints) or (N,) (valid samples);
nonzero means valid. Inputs may be NumPy or JAX arrays; everything is computed in float64 NumPy on the
host, after predictions are gathered.

Root alignment: the inputs are assumed to be root-relative already (the model outputs root-relative
poses, and the data pipeline ships root-relative ground truth); use :func:`root_relative` first when
they are not. The Procrustes metrics align translation themselves, so for them it makes no difference.

- :func:`mpjpe`: mean Euclidean joint error.
- :func:`pa_mpjpe`: after a per-sample similarity Procrustes alignment (scale, rotation, translation)
  of pred onto gt; reflections are excluded (the SVD sign fix), so a mirrored pose is not "undone".
- :func:`rigid_pa_mpjpe`: the same without scale (rotation + translation only).
- :func:`n_mpjpe`: after the per-sample least-squares scale s = <pred, gt> / <pred, pred> (no
  rotation, no translation).
- :func:`pck3d`: percentage of joints with error strictly below `threshold` (150 mm).
- :func:`auc3d`: mean of :func:`pck3d` over the 31 thresholds 0, 5, ..., 150 mm. With the strict '<'
  the 0 mm threshold never counts, so a perfect prediction scores 30/31 * 100 = 96.77 %.

The alignments fit on the valid joints only, and the metric then averages over the valid joints.

Human3.6M: :func:`per_action` groups per-sample errors by action id (2..16) and reports the per-action
means, the sample-weighted total and the mean of the action means; :func:`format_action_table` lays
them out as in the paper's tables.

The MuPoTS-3D evaluator (MuPoTSEvaluator, MUPOTS_JOINT_GROUPS, format_mupots_table) lives in
:mod:`cascaded_lift.evaluation.mupots_score`, which builds on these functions.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

Array = Any  # np.ndarray or jax.Array

PCK_THRESHOLD_MM = 150.0
# 0, 5, ..., 150 mm: the 31 thresholds of the 3DPCK area under the curve.
AUC_THRESHOLDS_MM = np.arange(0.0, 151.0, 5.0)


# ----------------------------------------------------------------------------------------------------
# Input handling.


def _as_poses(pred: Array, gt: Array, name: str) -> tuple[np.ndarray, np.ndarray]:
  pred = np.asarray(pred, dtype=np.float64)
  gt = np.asarray(gt, dtype=np.float64)
  if pred.ndim != 3 or gt.ndim != 3 or pred.shape != gt.shape:
    raise ValueError(f"{name}: pred and gt must both be (N, J, C) arrays of the same shape, got pred "
                     f"{pred.shape} and gt {gt.shape}")
  return pred, gt


def _as_mask(mask: Array | None, n: int, j: int, name: str) -> np.ndarray:
  """(N, J) bool mask from None, an (N, J) joint mask or an (N,) sample mask."""
  if mask is None:
    return np.ones((n, j), dtype=bool)
  mask = np.asarray(mask)
  if mask.dtype != bool and not np.all(np.isin(mask, (0, 1))):
    raise ValueError(f"{name}: mask must hold only 0/1 or booleans (valid joints/samples), got values "
                     f"{np.unique(mask)[:5].tolist()}")
  if mask.shape == (n,):
    return np.repeat(mask.astype(bool)[:, None], j, axis=1)
  if mask.shape == (n, j):
    return mask.astype(bool)
  raise ValueError(f"{name}: mask must be (N, J) = {(n, j)} or (N,) = {(n,)}, got {mask.shape}")


def _reduce(values: np.ndarray, mask: np.ndarray, per_sample: bool, name: str) -> float | np.ndarray:
  """Mean of per-joint `values` (N, J) over valid joints: one float, or (N,) per sample (NaN if none)."""
  if per_sample:
    count = mask.sum(axis=1)
    total = np.where(mask, values, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
      return np.where(count > 0, total / np.maximum(count, 1), np.nan)
  if not mask.any():
    raise ValueError(f"{name}: no valid joints to average (mask selects nothing out of {mask.shape})")
  return float(values[mask].mean())


def root_relative(pose: Array, root: int) -> Array:
  """pose minus its root joint: (..., J, C) -> (..., J, C); works on NumPy and JAX arrays."""
  return pose - pose[..., root:root + 1, :]


def joint_errors(pred: Array, gt: Array) -> np.ndarray:
  """(N, J) Euclidean distances between (N, J, C) poses, float64."""
  pred, gt = _as_poses(pred, gt, "joint_errors")
  return np.linalg.norm(pred - gt, axis=-1)


# ----------------------------------------------------------------------------------------------------
# Alignments.


def procrustes_align(pred: Array, gt: Array, mask: Array | None = None, scale: bool = True) -> np.ndarray:
  """Aligns each pred onto its gt by a similarity (or, scale=False, rigid) transform; no reflections.

  Minimises sum_j m_j |s R p_j + t - g_j|^2 over rotations R (det +1), s > 0 (or s = 1) and t, using
  only the valid joints m_j. With centred points P0, G0 and H = P0^T M G0 = U S V^T, the optimum is
  R = U D V^T (row-vector convention p -> p R), D = diag(1, .., 1, sign det(U V^T)), which forbids
  the reflection a plain orthogonal Procrustes would use; s = tr(D S) / sum_j m_j |p0_j|^2.

  Args:
    pred, gt: (N, J, C) poses (mm).
    mask: optional (N, J) or (N,) valid joints/samples.
    scale: fit the scale too (similarity) or keep s = 1 (rigid).
  Returns:
    (N, J, C) float64 aligned predictions (all joints transformed, valid or not).
  """
  pred, gt = _as_poses(pred, gt, "procrustes_align")
  n, j, c = pred.shape
  w = _as_mask(mask, n, j, "procrustes_align").astype(np.float64)[..., None]  # (N, J, 1)
  count = np.maximum(w.sum(axis=1, keepdims=True), 1.0)
  # The fit sees only valid joints: an excluded joint's value (even NaN) must not reach the sums.
  fit_p, fit_g = np.where(w > 0, pred, 0.0), np.where(w > 0, gt, 0.0)
  mu_p = (w * fit_p).sum(axis=1, keepdims=True) / count
  mu_g = (w * fit_g).sum(axis=1, keepdims=True) / count
  p0, g0 = fit_p - mu_p, fit_g - mu_g
  h = np.einsum("nji,njk->nik", w * p0, g0)  # (N, C, C)
  u, s, vt = np.linalg.svd(h)
  d = np.ones((n, c))
  d[:, -1] = np.where(np.linalg.det(u) * np.linalg.det(vt) < 0, -1.0, 1.0)
  rot = np.einsum("nik,nk,nkj->nij", u, d, vt)
  if scale:
    var_p = (w * p0 ** 2).sum(axis=(1, 2))
    # A degenerate prediction (all valid joints at one point) gets scale 0: it collapses onto gt's mean.
    sc = np.where(var_p > 0, (d * s).sum(axis=1) / np.where(var_p > 0, var_p, 1.0), 0.0)
  else:
    sc = np.ones(n)
  return sc[:, None, None] * np.einsum("nji,nik->njk", pred - mu_p, rot) + mu_g


def scale_align(pred: Array, gt: Array, mask: Array | None = None) -> np.ndarray:
  """pred times its per-sample least-squares scale s = sum m <p, g> / sum m |p|^2 (valid joints m)."""
  pred, gt = _as_poses(pred, gt, "scale_align")
  w = _as_mask(mask, *pred.shape[:2], "scale_align").astype(np.float64)[..., None]
  fit_p, fit_g = np.where(w > 0, pred, 0.0), np.where(w > 0, gt, 0.0)  # excluded joints (even NaN) stay out
  num = (w * fit_p * fit_g).sum(axis=(1, 2))
  den = (w * fit_p * fit_p).sum(axis=(1, 2))
  s = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
  return s[:, None, None] * pred


# ----------------------------------------------------------------------------------------------------
# Metrics.


def mpjpe(pred: Array, gt: Array, mask: Array | None = None, *, per_sample: bool = False) -> float | np.ndarray:
  """Mean per-joint position error (mm) of root-relative (N, J, 3) poses; see the module docstring."""
  pred, gt = _as_poses(pred, gt, "mpjpe")
  m = _as_mask(mask, *pred.shape[:2], "mpjpe")
  return _reduce(np.linalg.norm(pred - gt, axis=-1), m, per_sample, "mpjpe")


def pa_mpjpe(pred: Array, gt: Array, mask: Array | None = None, *, per_sample: bool = False) -> float | np.ndarray:
  """MPJPE (mm) after per-sample similarity Procrustes alignment (scale + rotation + translation)."""
  pred, gt = _as_poses(pred, gt, "pa_mpjpe")
  m = _as_mask(mask, *pred.shape[:2], "pa_mpjpe")
  aligned = procrustes_align(pred, gt, m, scale=True)
  return _reduce(np.linalg.norm(aligned - gt, axis=-1), m, per_sample, "pa_mpjpe")


def rigid_pa_mpjpe(pred: Array, gt: Array, mask: Array | None = None, *,
                   per_sample: bool = False) -> float | np.ndarray:
  """MPJPE (mm) after per-sample rigid Procrustes alignment (rotation + translation, no scale)."""
  pred, gt = _as_poses(pred, gt, "rigid_pa_mpjpe")
  m = _as_mask(mask, *pred.shape[:2], "rigid_pa_mpjpe")
  aligned = procrustes_align(pred, gt, m, scale=False)
  return _reduce(np.linalg.norm(aligned - gt, axis=-1), m, per_sample, "rigid_pa_mpjpe")


def n_mpjpe(pred: Array, gt: Array, mask: Array | None = None, *, per_sample: bool = False) -> float | np.ndarray:
  """MPJPE (mm) after the per-sample least-squares scale of pred (root-relative poses)."""
  pred, gt = _as_poses(pred, gt, "n_mpjpe")
  m = _as_mask(mask, *pred.shape[:2], "n_mpjpe")
  return _reduce(np.linalg.norm(scale_align(pred, gt, m) - gt, axis=-1), m, per_sample, "n_mpjpe")


def pck3d(pred: Array, gt: Array, mask: Array | None = None, threshold: float = PCK_THRESHOLD_MM, *,
          per_sample: bool = False) -> float | np.ndarray:
  """3DPCK: percentage (0..100) of valid joints whose error is strictly below `threshold` mm."""
  pred, gt = _as_poses(pred, gt, "pck3d")
  m = _as_mask(mask, *pred.shape[:2], "pck3d")
  hit = (np.linalg.norm(pred - gt, axis=-1) < threshold).astype(np.float64) * 100.0
  return _reduce(hit, m, per_sample, "pck3d")


def auc3d(pred: Array, gt: Array, mask: Array | None = None, *, per_sample: bool = False,
          thresholds: Sequence[float] = AUC_THRESHOLDS_MM) -> float | np.ndarray:
  """Area under the 3DPCK curve (percent): mean 3DPCK over `thresholds` (0, 5, ..., 150 mm)."""
  pred, gt = _as_poses(pred, gt, "auc3d")
  m = _as_mask(mask, *pred.shape[:2], "auc3d")
  err = np.linalg.norm(pred - gt, axis=-1)
  # Fraction of thresholds each joint is below = that joint's share of the curve; averaging it over
  # joints equals averaging the per-threshold PCK over thresholds.
  hit = (err[..., None] < np.asarray(thresholds, dtype=np.float64)).mean(axis=-1) * 100.0
  return _reduce(hit, m, per_sample, "auc3d")


# ----------------------------------------------------------------------------------------------------
# Human3.6M per-action aggregation.

# action_idx (2..16) -> name, as in the 3DMPPE annotation files (DATASETS.md).
H36M_ACTIONS: dict[int, str] = {
    2: "Directions", 3: "Discussion", 4: "Eating", 5: "Greeting", 6: "Phoning", 7: "Posing",
    8: "Purchases", 9: "Sitting", 10: "SittingDown", 11: "Smoking", 12: "Photo", 13: "Waiting",
    14: "Walking", 15: "WalkDog", 16: "WalkTogether"}
# Column order of the paper's tables (and of most Human3.6M tables): alphabetical by the short names
# Dir, Disc, Eat, Greet, Phone, Photo, Pose, Purch, Sit, SitD, Smoke, Wait, WalkD, Walk, WalkT.
H36M_TABLE_ORDER: tuple[str, ...] = (
    "Directions", "Discussion", "Eating", "Greeting", "Phoning", "Photo", "Posing", "Purchases",
    "Sitting", "SittingDown", "Smoking", "Waiting", "WalkDog", "Walking", "WalkTogether")
H36M_SHORT_NAMES: dict[str, str] = {
    "Directions": "Dir.", "Discussion": "Disc.", "Eating": "Eat", "Greeting": "Greet",
    "Phoning": "Phone", "Photo": "Photo", "Posing": "Pose", "Purchases": "Purch.", "Sitting": "Sit",
    "SittingDown": "SitD.", "Smoking": "Smoke", "Waiting": "Wait", "WalkDog": "WalkD.",
    "Walking": "Walk", "WalkTogether": "WalkT."}


def per_action(errors: Array, actions: Array, valid: Array | None = None) -> dict[str, Any]:
  """Groups per-sample values (e.g. ``mpjpe(..., per_sample=True)``) by Human3.6M action.

  Args:
    errors: (N,) per-sample values (mm or %). NaN entries (samples without valid joints) are skipped.
    actions: (N,) action ids in 2..16.
    valid: optional (N,) mask of samples to use (e.g. the batch 'valid' field, 0 for padding).
  Returns:
    {"per_action": {name: mean}, "counts": {name: n}, "total": sample-weighted mean over all used
    samples, "mean_of_actions": unweighted mean of the per-action means}. Only actions with samples
    appear in per_action/counts and enter mean_of_actions.
  """
  errors = np.asarray(errors, dtype=np.float64)
  actions = np.asarray(actions)
  if errors.ndim != 1 or actions.shape != errors.shape:
    raise ValueError(f"per_action: errors and actions must be (N,) arrays, got {errors.shape} and {actions.shape}")
  use = ~np.isnan(errors)
  if valid is not None:
    valid = np.asarray(valid)
    if valid.shape != errors.shape:
      raise ValueError(f"per_action: valid must be (N,) = {errors.shape}, got {valid.shape}")
    use &= valid.astype(bool)
  unknown = sorted(set(actions[use].astype(int).tolist()) - set(H36M_ACTIONS))
  if unknown:
    raise ValueError(f"per_action: action ids {unknown} are not Human3.6M actions (2..16)")
  if not use.any():
    raise ValueError("per_action: no samples to aggregate")
  means, counts = {}, {}
  for idx, name in H36M_ACTIONS.items():
    sel = use & (actions == idx)
    if sel.any():
      means[name] = float(errors[sel].mean())
      counts[name] = int(sel.sum())
  return {"per_action": means, "counts": counts, "total": float(errors[use].mean()),
          "mean_of_actions": float(np.mean(list(means.values())))}


def format_action_table(rows: Mapping[str, Mapping[str, Any]], markdown: bool = True, digits: int = 1,
                        short_names: bool = True) -> str:
  """Paper-layout table: one row per metric, the 15 actions as columns, then both averages.

  Args:
    rows: {row label (e.g. "MPJPE (P1)"): a :func:`per_action` result}.
    markdown: a markdown table, or plain whitespace-aligned text.
    digits: decimals shown.
    short_names: column headers "Dir.", "Disc.", ... instead of the full action names.
  Returns:
    The table as a string. "Avg" is the mean of the action means (what papers report), "All" the
    sample-weighted mean; an action without samples shows "-".
  """
  header = ["Metric"] + [H36M_SHORT_NAMES[a] if short_names else a for a in H36M_TABLE_ORDER] + ["Avg", "All"]
  body = []
  for label, res in rows.items():
    cells = [f"{res['per_action'][a]:.{digits}f}" if a in res["per_action"] else "-" for a in H36M_TABLE_ORDER]
    body.append([label] + cells + [f"{res['mean_of_actions']:.{digits}f}", f"{res['total']:.{digits}f}"])
  if markdown:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)
  widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
  return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                   for r in [header] + body)
