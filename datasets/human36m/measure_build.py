"""Measures the Human3.6M builder's per-frame cost on the real fixture frames (for README.md's numbers).

  python -m cascaded_lift.datasets.human36m.measure_build shared/fixtures/h36m_3dmppe [--frames 2000]

Writes, in a temporary folder, a subject-1 manual_dir whose _data.json and _joint_3d.json repeat the
fixture's subject-1 frame `frames` times (images/ links to the fixture's images, so every record reads
a real ~70 KB Human3.6M JPEG, from the page cache after the first read), builds it twice with
different frame counts and reports the slope: seconds per frame for JSON parsing, camera handling,
JPEG reads, validation, serialisation and array_record writing, plus stored bytes per frame. Cold
disk reads are NOT included (see README.md for how to account for them).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import tempfile
import time

from cascaded_lift.datasets import build as build_lib
from cascaded_lift.datasets.human36m import human36m_dataset_builder as h36m


def make_manual_dir(fixture: pathlib.Path, out: pathlib.Path, frames: int) -> None:
  """A subject-1 manual_dir with `frames` annotated frames of the fixture's subject-1 frame."""
  ann = out / "annotations"
  ann.mkdir(parents=True)
  (out / "images").symlink_to(fixture.resolve() / "images")
  data = json.loads((fixture / "annotations/Human36M_subject1_data.json").read_text())
  joints = json.loads((fixture / "annotations/Human36M_subject1_joint_3d.json").read_text())
  img, an = data["images"][0], data["annotations"][0]
  pose = joints[str(img["action_idx"])][str(img["subaction_idx"])][str(img["frame_idx"])]
  images, annotations, frame_joints = [], [], {}
  for i in range(frames):
    images.append({**img, "id": i, "frame_idx": i})
    annotations.append({**an, "id": i, "image_id": i})
    frame_joints[str(i)] = pose
  (ann / "Human36M_subject1_data.json").write_text(json.dumps({"images": images, "annotations": annotations}))
  (ann / "Human36M_subject1_joint_3d.json").write_text(
      json.dumps({str(img["action_idx"]): {str(img["subaction_idx"]): frame_joints}}))
  shutil.copy(fixture / "annotations/Human36M_subject1_camera.json", ann)


def time_build(fixture: pathlib.Path, frames: int, threads: int) -> tuple[float, int]:
  """(seconds, bytes written) to build `frames` frames (after a warm-up read of the images)."""
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    make_manual_dir(fixture, tmp / "manual", frames)
    config = h36m.Human36MConfig(name=f"measure{frames}", train_subjects=(1,), test_subjects=(),
                                 train_every=1, num_threads=threads)
    start = time.perf_counter()
    build_lib.build("human36m", config=config, manual_dir=tmp / "manual", data_dir=tmp / "tfds",
                    progress=False)
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in (tmp / "tfds").rglob("*.array_record*"))
    return seconds, size


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("fixture", type=pathlib.Path, help="the h36m_3dmppe fixture folder")
  parser.add_argument("--frames", type=int, default=2000)
  parser.add_argument("--threads", type=int, default=8)
  args = parser.parse_args()
  small = max(args.frames // 10, 1)
  time_build(args.fixture, small, args.threads)  # warm-up: imports, page cache
  t_small, b_small = time_build(args.fixture, small, args.threads)
  t_big, b_big = time_build(args.fixture, args.frames, args.threads)
  per_frame = (t_big - t_small) / (args.frames - small)
  per_bytes = (b_big - b_small) / (args.frames - small)
  print(f"{small} frames: {t_small:.2f} s; {args.frames} frames: {t_big:.2f} s")
  print(f"per frame: {1000 * per_frame:.2f} ms, {per_bytes / 1024:.1f} KiB stored "
        f"(fixed cost {t_small - small * per_frame:.2f} s)")
  for name, n in (("protocol1 train (S1, S5-S8 every 5th, ~312k frames)", 312_000),
                  ("test split (every 64th, ~8.6k frames)", 8_600)):
    print(f"{name}: ~{n * per_frame / 60:.0f} min, ~{n * per_bytes / 2**30:.1f} GiB (warm cache)")


if __name__ == "__main__":
  main()
