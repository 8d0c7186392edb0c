"""`cascaded-lift-predict`: 3D poses for the people in an image or a folder of images.

  cascaded-lift-predict photo.jpg --box 120,40,200,380 --config configs/h36m.py --workdir ~/runs/h36m_p1 \
      --focal 1500 --out results/
  cascaded-lift-predict frames/ --boxes detections.json --score-threshold 0.5 \
      --config configs/muco_mupots.py --workdir ~/runs/muco --out results/
  cascaded-lift-predict photo.jpg --box 120,40,200,380 --config configs/default.py --random-init \
      --config.model.resnet_depth=18 --config.data.image_size=64 --out /tmp/smoke   # smoke test, no checkpoint
  cascaded-lift-predict photo.jpg --box 120,40,200,380 --exported exported_model/ --out results/

Person boxes ([x0, y0, w, h] px) come from --box (repeatable; a single image only) or a JSON file:
  - COCO-style detections: a list of {"image_id" or "file_name", "bbox", "score", "category_id"}; an
    image_id matches an image whose file stem is that number (COCO's 000000000785.jpg is 785);
  - a COCO annotation file ({"images", "annotations"}): its person boxes, iscrowd ones left out;
  - a mapping {file_name: [[x0, y0, w, h], ...] or [{"bbox", "score"}, ...]}.
Entries with a score below --score-threshold and non-person categories (category_id != 1) are dropped.

Per image, into --out: <stem>.json (boxes, 2D joints in px, root-relative 3D in mm and, with --focal,
camera-space 3D with the root depth and where it came from), <stem>_overlay.png (the 2D skeletons on
the image, left joints blue, right red) and <stem>_3d.png (the 3D poses, equal axes: camera space
when --focal is given, else root-relative side by side). Images are read ignoring EXIF orientation
(boxes refer to the stored pixel grid, as in COCO). Exit status 1 when any image failed.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
from typing import Any, Sequence

import cv2
import matplotlib
import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

from cascaded_lift.errors import EXIT_USER_ERROR, USER_ERRORS, one_line
from cascaded_lift.inference import exported as exported_lib
from cascaded_lift.inference import host, plots
from cascaded_lift.training.workdir import check_output_dir

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
PERSON_CATEGORY = 1


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """The config of "path/to/config.py[:arg]" with "--config.key=value" overrides, parsed by ml_collections'
  config_flags exactly as train.py and eval.py parse theirs (an unknown key is an error).

  Raises ValueError with absl's one-line message for a missing file or a bad override.
  """
  bad = [o for o in overrides if not o.startswith("--config.")]
  if bad:
    raise ValueError(f"config override {bad[0]!r}: expected --config.key=value")
  argv = ["cascaded-lift-predict", f"--config={spec}", *overrides]
  flag_values = flags.FlagValues()
  # sys_argv: config_flags finds the override flags in the command line it is given.
  holder = config_flags.DEFINE_config_file("config", None, "config file", flag_values=flag_values,
                                           lock_config=True, sys_argv=argv)
  try:
    flag_values(argv)
    return holder.value
  except (KeyError, AttributeError) as e:  # an override names a field the config does not have
    if overrides:
      base = load_config(spec)
      for item in overrides:
        key = item[len("--config."):].partition("=")[0]
        node = base
        for part in key.split("."):
          if not hasattr(node, "keys") or part not in node:
            raise ValueError(f"{item}: the config {spec} has no field {key!r}") from None
          node = node[part]
    raise ValueError(f"--config {spec}: {e}") from None
  except (flags.Error, OSError) as e:
    raise ValueError(f"--config {spec}: {e}") from None


def _parse_floats(text: str, n: tuple[int, ...], name: str) -> list[float]:
  try:
    values = [float(v) for v in text.split(",")]
  except ValueError:
    raise ValueError(f"{name} {text!r}: expected {' or '.join(map(str, n))} comma-separated numbers") from None
  if len(values) not in n:
    raise ValueError(f"{name} {text!r}: expected {' or '.join(map(str, n))} comma-separated numbers")
  return values


def list_images(path: pathlib.Path) -> list[pathlib.Path]:
  """The image itself, or the images directly inside a folder (sorted)."""
  if path.is_dir():
    images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
      raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {str(path)!r}")
    return images
  if not path.is_file():
    raise FileNotFoundError(f"input {str(path)!r} does not exist")
  return [path]


def load_boxes(path: pathlib.Path, score_threshold: float) -> dict[Any, list[tuple[list[float], float | None]]]:
  """{key: [(bbox, score or None), ...]}; keys are file names (str) and image ids (int)."""
  try:
    data = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"--boxes {str(path)!r}: cannot read JSON ({e})") from None
  out: dict[Any, list] = {}
  names: dict[int, str] = {}
  if isinstance(data, dict) and "annotations" in data:  # a COCO annotation file
    names = {int(im["id"]): im["file_name"] for im in data.get("images", []) if "id" in im and "file_name" in im}
    entries = [a for a in data["annotations"] if not a.get("iscrowd", 0)]
  elif isinstance(data, dict):  # {file_name: [boxes or entries]}
    entries = []
    for name, items in data.items():
      if not isinstance(items, list):
        raise ValueError(f"--boxes {str(path)!r}: entry {name!r} must be a list of boxes")
      entries += [dict(item, file_name=name) if isinstance(item, dict) else {"file_name": name, "bbox": item}
                  for item in items]
  elif isinstance(data, list):
    entries = data
  else:
    raise ValueError(f"--boxes {str(path)!r}: expected a list of detections or a COCO annotation file")
  for i, e in enumerate(entries):
    where = f"--boxes {str(path)!r}: entry {i}"
    if not isinstance(e, dict) or "bbox" not in e or not ("image_id" in e or "file_name" in e):
      raise ValueError(f"{where}: needs 'bbox' and 'image_id' or 'file_name', got {e!r:.200}")
    box = e["bbox"]
    if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
      raise ValueError(f"{where}: 'bbox' must be [x0, y0, w, h], got {box!r}")
    if int(e.get("category_id", PERSON_CATEGORY)) != PERSON_CATEGORY:
      continue
    score = e.get("score")
    if score is not None and float(score) < score_threshold:
      continue
    key = e["file_name"] if "file_name" in e else names.get(int(e["image_id"]), int(e["image_id"]))
    out.setdefault(key, []).append(([float(v) for v in box], None if score is None else float(score)))
  return out


def boxes_for(image: pathlib.Path, table: dict[Any, list],
              root: pathlib.Path) -> list[tuple[list[float], float | None]]:
  """The entries of `table` for an image: by relative path, file name, or numeric file stem."""
  keys: list[Any] = [image.name]
  if root.is_dir():
    keys.insert(0, image.relative_to(root).as_posix())
  if image.stem.isdigit():
    keys.append(int(image.stem))
  for k in keys:
    if k in table:
      return table[k]
  return []


def save_overlay(path: pathlib.Path, image_rgb: np.ndarray, people: Sequence[Any], skeleton: Any) -> None:
  """The image with each person's box (grey) and 2D skeleton."""
  out = np.ascontiguousarray(image_rgb[..., ::-1])
  thickness = max(1, round(max(image_rgb.shape[:2]) / 400))
  for i, p in enumerate(people):
    x0, y0, w, h = p.box
    cv2.rectangle(out, (int(round(x0)), int(round(y0))), (int(round(x0 + w - 1)), int(round(y0 + h - 1))),
                  (160, 160, 160), 1)
    cv2.putText(out, str(i), (int(round(x0)) + 2, int(round(y0)) + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                (160, 160, 160), 1, cv2.LINE_AA)
    out = plots.draw_skeleton(out, p.joints_2d, skeleton, thickness=thickness)
  if not cv2.imwrite(str(path), out):
    raise OSError(f"cannot write {str(path)!r}")


def save_plot_3d(path: pathlib.Path, people: Sequence[Any], skeleton: Any, max_people: int = 6) -> None:
  """3D poses: all people in one camera-space plot when available, else root-relative side by side."""
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top  (after choosing the backend)
  camera = all(p.pose_3d_cam is not None for p in people)
  if camera:
    fig = plt.figure(figsize=(5, 5))
    ax = fig.add_subplot(1, 1, 1, projection="3d")
    for p in people:
      plots.plot_pose_3d(ax, p.pose_3d_cam, skeleton)
    plots.set_equal_3d(ax, [p.pose_3d_cam for p in people])
    ax.set_title(f"{len(people)} people, camera frame (mm)")
  else:
    shown = people[:max_people]
    fig = plt.figure(figsize=(4 * len(shown), 4))
    for i, p in enumerate(shown):
      ax = fig.add_subplot(1, len(shown), i + 1, projection="3d")
      plots.plot_pose_3d(ax, p.pose_3d, skeleton)
      plots.set_equal_3d(ax, [p.pose_3d])
      ax.set_title(f"person {i}, root-relative (mm)")
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="cascaded-lift-predict", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("input", help="an image file or a folder of images")
  p.add_argument("--out", required=True, help="output folder (created)")
  p.add_argument("--config", help="training config file[:arg], e.g. configs/h36m.py:protocol=1; fields are "
                 "overridden as with train.py: --config.model.resnet_depth=18 (repeatable)")
  model = p.add_mutually_exclusive_group(required=True)
  model.add_argument("--workdir", help="training workdir with checkpoints/ (latest checkpoint unless --step)")
  model.add_argument("--random-init", action="store_true", help="random weights: a smoke test of the pipeline")
  model.add_argument("--exported", help="a folder written by cascaded_lift.inference.export.export_predictor")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  p.add_argument("--seed", type=int, default=0, help="seed of --random-init")
  p.add_argument("--boxes", help="JSON file of person boxes (see above)")
  p.add_argument("--box", action="append", default=[], metavar="X,Y,W,H", help="a person box (repeatable)")
  p.add_argument("--score-threshold", type=float, default=0.5, help="drop detections scoring below (0.5)")
  p.add_argument("--focal", help="fx[,fy] px: enables camera-space 3D")
  p.add_argument("--principal", help="cx,cy px (default: the image centre)")
  p.add_argument("--root-depth", type=float, default=None,
                 help="root depth Z in mm for every person (default: the distance prior from the box size)")
  p.add_argument("--camera-pose", choices=("lifted", "backprojected"), default="lifted",
                 help="lifted: root + lifted 3D pose; backprojected: each 2D joint at its depth")
  p.add_argument("--no-flip-test", action="store_true", help="skip the flip test (twice as fast)")
  p.add_argument("--max-batch", type=int, default=32, help="people per network call (default 32)")
  return p


def _make_predictor(args: argparse.Namespace, overrides: Sequence[str]) -> tuple[Any, dict[str, Any]]:
  if args.exported:
    if overrides:
      raise ValueError(f"{overrides[0]}: an exported model takes no config overrides")
    return exported_lib.load_exported(args.exported, args.max_batch), {"exported": str(args.exported)}
  if not args.config:
    raise ValueError("--config is required with --workdir / --random-init")
  config = load_config(args.config, overrides)
  # The live model needs Flax and the model code; an exported one runs without them, so they are
  # imported only on this path (tests check that --exported never loads them).
  from cascaded_lift.inference import predictor as inference  # pylint: disable=g-import-not-at-top
  info = {"config": args.config, "overrides": list(overrides)}
  if args.random_init:
    return (inference.Predictor.random_init(config, args.seed, max_batch=args.max_batch),
            dict(info, random_init=True, seed=args.seed))
  return (inference.Predictor.from_checkpoint(config, args.workdir, args.step, max_batch=args.max_batch),
          dict(info, workdir=args.workdir, step=args.step))


def main(argv: Sequence[str] | None = None) -> int:
  args, unknown = _parser().parse_known_args(argv)
  prog = "cascaded-lift-predict"
  overrides = [a for a in unknown if a.startswith("--config.")]
  if len(overrides) != len(unknown):
    _parser().error(f"unrecognized arguments: {' '.join(a for a in unknown if a not in overrides)}")
  try:
    source = pathlib.Path(args.input).expanduser()
    images = list_images(source)
    if args.box and args.boxes:
      raise ValueError("give person boxes either with --box or with --boxes, not both")
    if args.box and len(images) > 1:
      raise ValueError("--box applies to a single image; use --boxes with a JSON file for a folder")
    if not args.box and not args.boxes:
      raise ValueError("no person boxes: give --box x,y,w,h or --boxes file.json")
    table = load_boxes(pathlib.Path(args.boxes), args.score_threshold) if args.boxes else None
    cli_boxes = [(_parse_floats(b, (4,), "--box"), None) for b in args.box]
    focal = _parse_floats(args.focal, (1, 2), "--focal") if args.focal else None
    if focal is not None and not all(math.isfinite(v) and v > 0 for v in focal):
      raise ValueError(f"--focal {args.focal!r}: focal lengths must be positive pixels")
    principal = _parse_floats(args.principal, (2,), "--principal") if args.principal else None
    if focal is None and (principal is not None or args.root_depth is not None):
      raise ValueError("--principal / --root-depth need --focal")
    out_dir = check_output_dir(args.out, "--out")  # before the model loads
    predictor, model_info = _make_predictor(args, overrides)
  except (*USER_ERRORS, ValueError, KeyError, ImportError) as e:
    print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
    return EXIT_USER_ERROR
  stems = [p.stem for p in images]
  failed = 0
  for path in images:
    entries = cli_boxes if table is None else boxes_for(path, table, source)
    if not entries:
      if len(images) == 1:
        print(f"{prog}: error: no person boxes for {str(path)!r} in {args.boxes}", file=sys.stderr)
        return 1
      print(f"{path}: no person boxes, skipped")
      continue
    stem = path.stem if stems.count(path.stem) == 1 else path.name.replace(".", "_")
    try:
      image = host.read_image(path)
      people = predictor.predict(image, [b for b, _ in entries], focal=focal, principal=principal,
                                 root_depth=args.root_depth, flip_test=not args.no_flip_test,
                                 camera_pose=args.camera_pose)
    except (FileNotFoundError, ValueError) as e:
      print(f"{prog}: error: {e}", file=sys.stderr)
      failed += 1
      continue
    h, w = image.shape[:2]
    skel = predictor.skeleton
    record = {
        "image": str(path), "width": w, "height": h, "skeleton": skel.name, "joint_names": list(skel.joint_names),
        "bones": [list(b) for b in skel.bones], "root": skel.root, "model": model_info,
        "flip_test": not args.no_flip_test, "focal": None if focal is None else [float(v) for v in np.resize(focal, 2)],
        "principal": principal if principal is not None else (None if focal is None else [(w - 1) / 2, (h - 1) / 2]),
        "principal_source": None if focal is None else ("given" if principal is not None else "image_centre"),
        "people": [dict(p.to_json(), score=s) for p, (_, s) in zip(people, entries)],
    }
    (out_dir / f"{stem}.json").write_text(json.dumps(record, indent=1))
    save_overlay(out_dir / f"{stem}_overlay.png", image, people, skel)
    save_plot_3d(out_dir / f"{stem}_3d.png", people, skel)
    print(f"{path}: {len(people)} people -> {out_dir / stem}.json, {stem}_overlay.png, {stem}_3d.png")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
