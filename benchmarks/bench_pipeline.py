"""Input-pipeline throughput on 1000x1000 JPEG frames (the Human3.6M frame size), full augmentation.

  python benchmarks/bench_pipeline.py [--images 300] [--batch 32] [--batches 20] [--workers 0]
                                      [--data_dir DIR] [--no_reduce]

Builds a synthetic dataset at 1000x1000 (random poses and cameras, so box sizes vary like real
frames) into --data_dir (a temporary folder by default), then runs the training pipeline exactly as
training does (decode, box, one warpAffine, scale/rotation/flip/colour/occlusion, voxel joints,
batching) and reports images per second. "Per core" is images per CPU-second of this process and
its worker processes during the timed batches (OpenCV limited to one thread, read_threads = 0), so
it does not depend on how many cores the machine has; with workers it slightly understates, since
workers also prefetch batches past the last one timed. Also times the stages on their own. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time

import cv2
import numpy as np


def _proc_cpu(pid: int) -> tuple[float, int] | None:
  """(CPU seconds, parent pid) of a live process from /proc (Linux), None if unreadable."""
  try:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
      fields = f.read().rsplit(")", 1)[1].split()
  except OSError:
    return None
  tick = os.sysconf("SC_CLK_TCK")
  return (int(fields[11]) + int(fields[12])) / tick, int(fields[1])


def _cpu_seconds() -> float:
  """CPU time (user + system) of this process plus its live descendants (grain workers).

  Live workers are read from /proc so that their start-up before the timed window is subtracted
  out; without /proc, falls back to getrusage (which counts children only after they exit).
  """
  if not os.path.isdir("/proc/self"):
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
  procs = {}
  for name in os.listdir("/proc"):
    if name.isdigit():
      info = _proc_cpu(int(name))
      if info is not None:
        procs[int(name)] = info
  tree, total, grew = {os.getpid()}, 0.0, True
  while grew:
    grew = False
    for pid, (_, ppid) in procs.items():
      if ppid in tree and pid not in tree:
        tree.add(pid)
        grew = True
  for pid in tree:
    total += procs.get(pid, (0.0, 0))[0]
  return total


def _machine() -> dict:
  cpu = platform.processor() or "unknown"
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  import grain  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
          "numpy": np.__version__, "opencv": cv2.__version__, "grain": grain.__version__,
          "tfds": tfds.__version__, "platform": platform.platform()}


def build_frames(data_dir: str, n: int):
  """Builds n synthetic 1000x1000 frames (JPEG quality 90) into data_dir; returns the builder and
  whether it was built now (False: reused from an earlier run)."""
  from cascaded_lift.datasets.synthetic import synthetic_dataset_builder as synth  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()
  cfg = synth.SyntheticConfig(name="bench1000", width=1000, height=1000, num_train=n, num_test=1,
                              description="benchmark frames")
  builder = synth.Builder(config=cfg, data_dir=data_dir, file_format="array_record")
  fresh = not builder.is_prepared()
  builder.download_and_prepare()
  return builder, fresh


def time_stages(builder, reduce: bool, repeats: int = 60) -> dict:
  """Mean milliseconds of decode (full / reduced) and of the whole per-example transform."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from cascaded_lift import skeleton  # pylint: disable=g-import-not-at-top
  from cascaded_lift.data import augment, transforms  # pylint: disable=g-import-not-at-top
  ds = builder.as_data_source("train", decoders={"image": tfds.decode.SkipDecoding()})
  recs = [dict(ds[i], _source="bench", _index=i) for i in range(min(repeats, len(ds)))]
  crop = transforms.CropConfig(jpeg_reduce=reduce)
  aug = augment.AugmentConfig()
  out = {}
  t = time.perf_counter()
  for r in recs:
    transforms.decode_image(r["image"], "bench", 1)
  out["decode_full_ms"] = (time.perf_counter() - t) / len(recs) * 1e3
  t = time.perf_counter()
  for r in recs:
    transforms.decode_image(r["image"], "bench", 2)
  out["decode_half_ms"] = (time.perf_counter() - t) / len(recs) * 1e3
  rng = np.random.default_rng(0)
  t = time.perf_counter()
  for r in recs:
    params = augment.sample_params(rng, aug, crop.image_size)
    transforms.prepare(r, skeleton.H36M, skeleton.H36M, crop, params, rng)
  out["example_ms"] = (time.perf_counter() - t) / len(recs) * 1e3
  out["mean_jpeg_kb"] = float(np.mean([len(r["image"]) for r in recs]) / 1024)
  return out


def run_pipeline(data_dir: str, config_name: str, batch: int, batches: int, workers: int,
                 reduce: bool) -> dict:
  """Images/s of create_train_iterator (wall clock and per CPU-second) after one warm-up batch."""
  from cascaded_lift.data import config as data_config, pipeline  # pylint: disable=g-import-not-at-top
  cfg = data_config.default_data_config()
  cfg.train_3d = data_config.source_config("synthetic", "train", config_name, data_dir)
  cfg.worker_count, cfg.read_threads, cfg.jpeg_reduce = workers, 0, reduce
  it = pipeline.create_train_iterator(cfg, batch_size=batch)
  next(it)  # warm-up: imports, worker start, file open
  cpu0, t0 = _cpu_seconds(), time.perf_counter()
  for _ in range(batches):
    b = next(it)
  wall = time.perf_counter() - t0
  cpu = _cpu_seconds() - cpu0  # includes the batches workers prefetched beyond the last one taken
  if workers:
    it.close()
  assert b["image"].shape == (batch, 256, 256, 3)
  n = batch * batches
  return {"images": n, "wall_s": wall, "cpu_s": cpu, "images_per_s": n / wall,
          "images_per_cpu_s": n / max(cpu, 1e-9)}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--images", type=int, default=300, help="1000x1000 frames to build")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--batches", type=int, default=20, help="timed batches")
  p.add_argument("--workers", type=int, default=0, help="grain worker processes (0 = in-process)")
  p.add_argument("--data_dir", default=None, help="keep the built frames here (reused when present)")
  p.add_argument("--no_reduce", action="store_true", help="decode JPEGs at full resolution")
  args = p.parse_args(argv)
  cv2.setNumThreads(1)  # one core per process: the per-core figure means what it says
  os.environ.setdefault("OMP_NUM_THREADS", "1")

  data_dir = args.data_dir or tempfile.mkdtemp(prefix="bench_pipeline_")
  t = time.perf_counter()
  builder, fresh = build_frames(data_dir, args.images)
  build_s = time.perf_counter() - t
  reduce = not args.no_reduce
  stages = time_stages(builder, reduce)
  res = run_pipeline(data_dir, builder.builder_config.name, args.batch, args.batches, args.workers, reduce)
  machine = _machine()

  rows = [
      ("frames", f"{args.images} x 1000x1000 JPEG, {stages['mean_jpeg_kb']:.0f} KiB mean"),
      ("build (synthetic, 1 core)", f"{build_s:.1f} s ({args.images / build_s:.0f} frames/s)" if fresh
       else "reused from --data_dir"),
      ("decode full res", f"{stages['decode_full_ms']:.2f} ms"),
      ("decode 1/2 res (DCT scaling)", f"{stages['decode_half_ms']:.2f} ms"),
      ("whole example (decode..voxels)", f"{stages['example_ms']:.2f} ms"),
      ("pipeline workers", str(args.workers)),
      ("jpeg_reduce", str(reduce)),
      ("pipeline images/s (wall)", f"{res['images_per_s']:.1f}"),
      ("pipeline images/s per core", f"{res['images_per_cpu_s']:.1f}"),
  ]
  width = max(len(r[0]) for r in rows)
  print(f"Input pipeline benchmark - {machine['cpu']}, {machine['cores']} cores; python {machine['python']},"
        f" numpy {machine['numpy']}, opencv {machine['opencv']}, grain {machine['grain']}, tfds {machine['tfds']}")
  for k, v in rows:
    print(f"  {k:<{width}}  {v}")
  print(json.dumps({"benchmark": "pipeline", "image_size": [1000, 1000], "crop": 256, "batch": args.batch,
                    "workers": args.workers, "jpeg_reduce": reduce, **res, **stages,
                    "build_frames_per_s": args.images / build_s if fresh else None, "machine": machine}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
