"""Kinematic body model on the Human3.6M skeleton: bodies, joint angles and forward kinematics.

Body frame (mm): origin at the Pelvis joint, +x the person's left, +y up, +z the direction the person
faces (right-handed). Joint angles are sampled within anatomical limits (degrees below); a few pose
families (free, standing, walking, sitting, arms raised) shape the distribution so it covers both
everyday and unusual poses. Thorax (H36M index 17) is the shoulder midpoint; Torso, Neck, Nose and
Head lie on the spine/head chain.

Everything is deterministic given the numpy Generator passed in.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cascaded_lift import skeleton

SKEL = skeleton.H36M
J = {name: i for i, name in enumerate(SKEL.joint_names)}

# Mean adult bone lengths in mm (roughly the Human3.6M subjects' averages).
MEAN_BONES = {
    "hip": 132.0,        # Pelvis -> L/R_Hip (lateral)
    "thigh": 445.0,      # Hip -> Knee
    "shin": 440.0,       # Knee -> Ankle
    "spine": 235.0,      # Pelvis -> Torso
    "chest": 250.0,      # Torso -> Neck
    "nose": 115.0,       # Neck -> Nose
    "head": 115.0,       # Nose -> Head (top)
    "shoulder": 150.0,   # Neck -> L/R_Shoulder
    "upper_arm": 280.0,  # Shoulder -> Elbow
    "forearm": 250.0,    # Elbow -> Wrist
}

POSE_FAMILIES = ("free", "stand", "walk", "sit", "arms_up")
_FAMILY_P = np.array([0.4, 0.15, 0.15, 0.15, 0.15])


@dataclasses.dataclass(frozen=True)
class Body:
  """One person's proportions: bone lengths (mm) and a body-width factor for rendering."""
  bones: dict[str, float]
  girth: float  # multiplies limb radii when rendering


def sample_body(rng: np.random.Generator) -> Body:
  """Bone lengths around the mean adult: overall scale ~N(1, 0.06), each bone ~N(1, 0.04)."""
  scale = float(np.clip(rng.normal(1.0, 0.06), 0.85, 1.15))
  bones = {k: v * scale * float(np.clip(rng.normal(1.0, 0.04), 0.9, 1.1)) for k, v in MEAN_BONES.items()}
  return Body(bones=bones, girth=float(np.clip(rng.normal(1.0, 0.12), 0.75, 1.3)))


def rot(axis: str, deg: float) -> np.ndarray:
  """3x3 right-handed rotation by `deg` degrees about the body-frame axis 'x', 'y' or 'z'."""
  a = np.deg2rad(deg)
  c, s = np.cos(a), np.sin(a)
  if axis == "x":
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
  if axis == "y":
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
  return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def rot_about(axis: np.ndarray, deg: float) -> np.ndarray:
  """Rodrigues rotation by `deg` degrees about the unit vector `axis`."""
  a = np.deg2rad(deg)
  k = axis / np.linalg.norm(axis)
  kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
  return np.eye(3) + np.sin(a) * kx + (1 - np.cos(a)) * kx @ kx


def _unit(v: np.ndarray) -> np.ndarray:
  return v / np.linalg.norm(v)


def _perp(d: np.ndarray, ref: np.ndarray, fallback: np.ndarray) -> np.ndarray:
  """Unit vector of `ref` orthogonal to unit `d` (`fallback` when ref is nearly parallel)."""
  p = ref - np.dot(ref, d) * d
  if np.linalg.norm(p) < 1e-3:
    p = fallback - np.dot(fallback, d) * d
  return _unit(p)


def sample_angles(rng: np.random.Generator, family: int | None = None) -> tuple[int, dict[str, float]]:
  """Joint angles (degrees) within anatomical limits for one pose family.

  Returns (family index into POSE_FAMILIES, angles). Limits: spine flexion -15..50 (split over two
  segments), lateral bend +-20, twist +-35; head flexion -35..45, yaw +-70, roll +-25; shoulder
  elevation 0..170 in a plane -45 (behind) .. 135 (across the chest), humeral rotation -60..90,
  elbow 0..150; hip flexion -25..120, abduction -15..45, rotation +-35, knee 0..145.
  """
  u = rng.uniform
  if family is None:
    family = int(rng.choice(len(POSE_FAMILIES), p=_FAMILY_P))
  name = POSE_FAMILIES[family]
  a: dict[str, float] = {
      "pelvis_pitch": u(-10, 10), "pelvis_roll": u(-8, 8),
      "spine_flex": u(-15, 50), "spine_lat": u(-20, 20), "spine_twist": u(-35, 35),
      "head_flex": u(-35, 45), "head_yaw": u(-70, 70), "head_roll": u(-25, 25),
  }
  for side in ("L", "R"):
    a |= {f"{side}_sh_elev": u(0, 170), f"{side}_sh_plane": u(-45, 135), f"{side}_sh_rot": u(-60, 90),
          f"{side}_elbow": u(0, 150), f"{side}_hip_flex": u(-25, 120), f"{side}_hip_abd": u(-15, 45),
          f"{side}_hip_rot": u(-35, 35), f"{side}_knee": u(0, 145)}
  if name == "stand":
    a |= {"spine_flex": u(-5, 15), "pelvis_pitch": u(-5, 5)}
    for side in ("L", "R"):
      a |= {f"{side}_sh_elev": u(0, 60), f"{side}_elbow": u(0, 100), f"{side}_hip_flex": u(-10, 20),
            f"{side}_hip_abd": u(-5, 20), f"{side}_knee": u(0, 25)}
  elif name == "walk":
    swing = u(10, 35) * rng.choice([-1, 1])
    a |= {"spine_flex": u(-5, 15), "L_hip_flex": swing, "R_hip_flex": -swing,
          "L_knee": u(0, 60), "R_knee": u(0, 60), "L_hip_abd": u(-5, 10), "R_hip_abd": u(-5, 10),
          "L_sh_elev": abs(swing) * u(0.3, 1.0), "L_sh_plane": 90 if swing < 0 else -40,
          "R_sh_elev": abs(swing) * u(0.3, 1.0), "R_sh_plane": -40 if swing < 0 else 90,
          "L_elbow": u(5, 60), "R_elbow": u(5, 60)}
  elif name == "sit":
    a |= {"spine_flex": u(-5, 35), "L_hip_flex": u(70, 110), "R_hip_flex": u(70, 110),
          "L_knee": u(60, 120), "R_knee": u(60, 120), "L_hip_abd": u(-5, 30), "R_hip_abd": u(-5, 30)}
  elif name == "arms_up":
    a |= {"L_sh_elev": u(90, 170), "R_sh_elev": u(90, 170), "L_hip_flex": u(-10, 30),
          "R_hip_flex": u(-10, 30), "L_knee": u(0, 40), "R_knee": u(0, 40)}
  return family, a


def forward_kinematics(body: Body, angles: dict[str, float]) -> np.ndarray:
  """(18, 3) joint positions in the body frame (mm, Pelvis at the origin), Human3.6M order."""
  b = body.bones
  x, y, z = np.eye(3)
  out = np.zeros((SKEL.num_joints, 3))
  r_pelvis = rot("x", angles["pelvis_pitch"]) @ rot("z", angles["pelvis_roll"])
  # Spine flexion bends forward (+z) about the left axis; split over the two spine segments.
  flex = angles["spine_flex"] / 2
  seg = rot("y", angles["spine_twist"] / 2) @ rot("z", -angles["spine_lat"] / 2) @ rot("x", flex)
  r_low = r_pelvis @ seg
  r_up = r_low @ seg
  out[J["Torso"]] = r_low @ (b["spine"] * y)
  out[J["Neck"]] = out[J["Torso"]] + r_up @ (b["chest"] * y)
  r_head = r_up @ rot("y", angles["head_yaw"]) @ rot("x", angles["head_flex"]) @ rot("z", angles["head_roll"])
  out[J["Nose"]] = out[J["Neck"]] + r_head @ (b["nose"] * _unit(np.array([0.0, 0.6, 0.8])))
  out[J["Head"]] = out[J["Nose"]] + r_head @ (b["head"] * _unit(np.array([0.0, 0.92, -0.4])))
  for side, sgn in (("L", 1.0), ("R", -1.0)):
    lateral = sgn * x
    # Arm, in the upper-torso frame.
    sh = out[J["Neck"]] + r_up @ (b["shoulder"] * _unit(np.array([sgn * 0.93, -0.35, 0.0])))
    th, ph = np.deg2rad(angles[f"{side}_sh_elev"]), np.deg2rad(angles[f"{side}_sh_plane"])
    d1 = np.cos(th) * -y + np.sin(th) * (np.cos(ph) * lateral + np.sin(ph) * z)
    bend = rot_about(d1, sgn * angles[f"{side}_sh_rot"]) @ _perp(d1, z, y)  # elbows bend forward
    k = np.deg2rad(angles[f"{side}_elbow"])
    d2 = np.cos(k) * d1 + np.sin(k) * bend
    out[J[f"{side}_Shoulder"]] = sh
    out[J[f"{side}_Elbow"]] = sh + r_up @ (b["upper_arm"] * d1)
    out[J[f"{side}_Wrist"]] = out[J[f"{side}_Elbow"]] + r_up @ (b["forearm"] * d2)
    # Leg, in the pelvis frame: flexion swings the thigh forward, abduction outwards.
    hip = r_pelvis @ (b["hip"] * _unit(np.array([sgn, -0.08, 0.0])))
    # The knee bends backwards in the thigh's own frame, which flexion and abduction carry along.
    r_flex = rot("x", -angles[f"{side}_hip_flex"])
    r_abd = rot("z", sgn * angles[f"{side}_hip_abd"])  # about the forward axis, foot outwards
    r_thigh = r_flex @ r_abd
    d = r_thigh @ -y
    knee_bend = rot_about(d, sgn * angles[f"{side}_hip_rot"]) @ (r_thigh @ -z)
    k = np.deg2rad(angles[f"{side}_knee"])
    d_shin = np.cos(k) * d + np.sin(k) * knee_bend
    out[J[f"{side}_Hip"]] = hip
    out[J[f"{side}_Knee"]] = hip + r_pelvis @ (b["thigh"] * d)
    out[J[f"{side}_Ankle"]] = out[J[f"{side}_Knee"]] + r_pelvis @ (b["shin"] * d_shin)
  out[J["Thorax"]] = (out[J["L_Shoulder"]] + out[J["R_Shoulder"]]) / 2
  return out
