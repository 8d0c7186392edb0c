"""grain pipelines for training and evaluation over tfds data sources.

  it = create_train_iterator(config.data, batch_size=32, shard_index=jax.process_index(),
                             shard_count=jax.process_count())
  batch = next(it)                    # dict of NumPy arrays, docs/design.md section 4's batch format
  state = it.get_state(); ...; it.set_state(state)  # resume mid-epoch on the same samples

Training: each process reads its own shard of the records (record i goes to process i % count),
shuffles it (a new permutation every epoch), augments every example with a generator derived from
(seed, shard, position in the stream), and batches inside the worker that made the examples. With a
2D source, every batch is [half 3D | half 2D]: two independent streams of batch/2 zipped and
concatenated (the 2D set repeats on its own epochs). An epoch is one pass over this process's share
of the 3D set. Order and content are a function of the config (seed) and the shard only: the same
seed gives the same batches, and worker_count does not change them (workers make whole batches,
taken round-robin), so in-process runs (worker_count = 0) reproduce multi-worker ones. A saved
state must be restored into an iterator built with the same config and worker_count.

Evaluation: no augmentation, full-resolution decoding whatever data.jpeg_reduce says (the crop is the
bilinear warp of the full image, as in the authors' code), the boxes of data.eval.boxes
(:func:`choose_eval_boxes`), every record exactly once across all shards; the last batch is padded
with copies marked valid = 0, and every shard yields the same number of batches (multi-host steps
stay in lock-step). Multi-person records (MuPoTS-3D) are flattened to one example per person, with
extra fields 'is_valid' and 'person' (index within its image).

The iterators are grain DatasetIterators: get_state() / set_state() and orbax's grain checkpoint
handlers work on them; close() stops worker processes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Sequence

import grain
import numpy as np
from absl import flags

from cascaded_lift import skeleton as skeleton_lib
from cascaded_lift.data import augment
from cascaded_lift.data import config as data_config
from cascaded_lift.data import sources
from cascaded_lift.data import transforms


log = logging.getLogger(__name__)


def _get(cfg: Any, key: str, default: Any = None) -> Any:
  value = sources.get_field(cfg, key, default)
  return default if value is None else value


def crop_config(cfg: Any) -> transforms.CropConfig:
  """CropConfig from a data config section."""
  d = transforms.CropConfig()
  return transforms.CropConfig(
      image_size=int(_get(cfg, "image_size", d.image_size)), output_size=int(_get(cfg, "output_size", d.output_size)),
      depth_bins=int(_get(cfg, "depth_bins", d.depth_bins)),
      depth_range_mm=float(_get(cfg, "depth_range_mm", d.depth_range_mm)),
      bbox_scale=float(_get(cfg, "bbox_scale", d.bbox_scale)), jpeg_reduce=bool(_get(cfg, "jpeg_reduce", True)))


def _seed(*parts: int) -> int:
  return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _mark_flags_parsed(*_: Any) -> None:
  """grain reads absl flags; outside an absl app (pytest, notebooks, spawned workers) mark them parsed."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


@dataclasses.dataclass(frozen=True)
class _TrainExample:
  """grain random map: record -> augmented training example."""
  src: skeleton_lib.Skeleton
  dst: skeleton_lib.Skeleton
  crop: transforms.CropConfig
  aug: augment.AugmentConfig

  def __call__(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    params = augment.sample_params(rng, self.aug, self.crop.image_size)
    return transforms.prepare(record, self.src, self.dst, self.crop, params, rng)


@dataclasses.dataclass(frozen=True)
class _EvalExample:
  """grain map: record -> unaugmented evaluation example (valid = 0 for padding)."""
  src: skeleton_lib.Skeleton
  dst: skeleton_lib.Skeleton
  crop: transforms.CropConfig
  use_det_bbox: bool = False

  def __call__(self, record: dict[str, Any]) -> dict[str, np.ndarray]:
    ex = transforms.prepare(record, self.src, self.dst, self.crop, eval_fields=True,
                            use_det_bbox=self.use_det_bbox)
    if "person" in record:
      ex["is_valid"] = np.float32(record["is_valid"])
      ex["person"] = np.int32(record["person"])
    if record.get("_pad", False):
      ex["valid"] = np.float32(0.0)
    return ex


def _concat_halves(pair: tuple[dict[str, np.ndarray], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  a, b = pair
  return {k: np.concatenate([a[k], b[k]], axis=0) for k in a}


def _train_stream(source: sources.PoseSource, fn: _TrainExample, batch: int, seed: int, stream: int,
                  shard_index: int, shard_count: int) -> grain.MapDataset:
  if len(source) < shard_count:
    raise ValueError(f"{source.label}: {len(source)} records cannot feed {shard_count} shards")
  ds = grain.MapDataset.source(source)[shard_index::shard_count]
  ds = ds.shuffle(seed=_seed(seed, stream, 1)).repeat(None)
  ds = ds.random_map(fn, seed=_seed(seed, stream, 2, shard_index))
  return ds.batch(batch, drop_remainder=True)


def _iterate(ds: grain.MapDataset, cfg: Any) -> grain.DatasetIterator:
  threads = int(_get(cfg, "read_threads", 0))
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(1, 2 * threads)))
  workers = int(_get(cfg, "worker_count", 0))
  if workers > 0:
    _mark_flags_parsed()
    it_ds = it_ds.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=workers,
                                     per_worker_buffer_size=int(_get(cfg, "worker_buffer_size", 2))),
        worker_init_fn=_mark_flags_parsed)
  return iter(it_ds)


def _check_single_person(source: sources.PoseSource, what: str) -> None:
  if source.multi_person:
    raise ValueError(f"{source.label}: multi-person records cannot be used for {what}")


def create_train_iterator(cfg: Any, batch_size: int, shard_index: int = 0,
                          shard_count: int = 1) -> grain.DatasetIterator:
  """Infinite iterator of augmented training batches for this process.

  Args:
    cfg: the `data` config section (cascaded_lift.data.config).
    batch_size: examples per batch on this process (even when train_2d is set).
    shard_index, shard_count: this process's index and the number of processes.
  Returns:
    A grain DatasetIterator of batch dicts (image, bbox, joints_vox, joints_vis, has_depth, pose_3d,
    valid) with get_state/set_state.
  """
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} outside [0, {shard_count})")
  dst = skeleton_lib.get_skeleton(_get(cfg, "skeleton", "h36m"))
  crop = crop_config(cfg)
  aug = augment.AugmentConfig.from_config(_get(cfg, "augment", None))
  seed = int(_get(cfg, "seed", 0))
  build = bool(_get(cfg, "build_if_missing", True))
  src3 = sources.load_source(_get(cfg, "train_3d"), build)
  _check_single_person(src3, "training")
  spec2 = _get(cfg, "train_2d", None)
  if spec2 is None:
    ds = _train_stream(src3, _TrainExample(src3.skeleton, dst, crop, aug), batch_size, seed, 0,
                       shard_index, shard_count)
  else:
    if batch_size % 2:
      raise ValueError(f"batch_size {batch_size} must be even to mix 3D and 2D data half and half")
    src2 = sources.load_source(spec2, build)
    _check_single_person(src2, "training")
    ds3 = _train_stream(src3, _TrainExample(src3.skeleton, dst, crop, aug), batch_size // 2, seed, 0,
                        shard_index, shard_count)
    ds2 = _train_stream(src2, _TrainExample(src2.skeleton, dst, crop, aug), batch_size // 2, seed, 1,
                        shard_index, shard_count)
    ds = grain.experimental.ZipMapDataset([ds3, ds2]).map(_concat_halves)
  return _iterate(ds, cfg)


def steps_per_epoch(cfg: Any, batch_size: int, shard_count: int = 1) -> int:
  """Training steps in one pass over a process's share of the 3D set (batch/2 of it with train_2d)."""
  src3 = sources.load_source(_get(cfg, "train_3d"), bool(_get(cfg, "build_if_missing", True)))
  per_batch = batch_size // 2 if _get(cfg, "train_2d", None) is not None else batch_size
  return max(1, (len(src3) // shard_count) // per_batch)


class _EvalRecords:
  """The records of one evaluation shard, people flattened, padded to a whole number of batches.

  Every shard has the same length: ceil(ceil(N / shard_count) / batch) * batch.
  """

  def __init__(self, source: sources.PoseSource, batch: int, shard_index: int, shard_count: int):
    self.source = source
    if source.multi_person:
      # One entry per (record, person); reading the records once is the only way to count people.
      people = [len(source[i]["bbox"]) for i in range(len(source))]
      self.entries = [(i, p) for i, n in enumerate(people) for p in range(n)]
    else:
      self.entries = [(i, -1) for i in range(len(source))]
    total = len(self.entries)
    if total == 0:
      raise ValueError(f"{source.label}: no examples to evaluate")
    self.local = self.entries[shard_index::shard_count]
    per_shard = math.ceil(total / shard_count)
    self.length = math.ceil(per_shard / batch) * batch

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, index: int) -> dict[str, Any]:
    pad = index >= len(self.local)
    i, person = self.local[index] if not pad else (self.local or self.entries)[0]
    record = self.source[i]
    if person >= 0:
      record = _select_person(record, person)
    record["_pad"] = pad
    return record


_PER_PERSON = ("bbox", "joints_img", "joints_cam", "joints_vis", "is_valid")


def _select_person(record: dict[str, Any], person: int) -> dict[str, Any]:
  out = {k: v for k, v in record.items() if k not in _PER_PERSON and not k.startswith("det_")}
  for k in _PER_PERSON:
    if k in record:
      out[k] = np.asarray(record[k])[person]
  out["person"] = person
  out.setdefault("is_valid", 1.0)
  return out


def choose_eval_boxes(spec: Any, src: sources.PoseSource) -> str:
  """The boxes an evaluation of `src` crops: "detected" or "gt", from the spec's request (data.config.eval_boxes).

  "detected" needs records with detections (single-person sets; MuPoTS-3D's per-image detections are
  the MuPoTS driver's). "auto" takes them when the dataset stores any, else falls back to the
  annotated boxes with a warning. Raises ValueError naming the dataset when "detected" cannot be met.
  """
  requested = data_config.eval_boxes(spec)
  if requested == "gt":
    return "gt"
  if src.multi_person:
    if requested == "detected":
      raise ValueError(f"{src.label}: detections are stored per image, not per person; evaluate with the "
                       "MuPoTS-3D driver (evaluation.mupots) or set data.eval.boxes = 'gt'")
    return "gt"
  if src.stores_detections():
    return "detected"
  if requested == "detected":
    raise ValueError(f"{src.label}: data.eval.boxes = 'detected' (or use_det_bbox) but the dataset stores no "
                     "detections; rebuild it with its bbox_root file (datasets/<name>/README.md) or set "
                     "data.eval.boxes = 'gt'")
  log.warning("%s: data.eval.boxes = 'auto' and the dataset was built without detections: evaluating with "
              "the annotated (ground-truth) boxes, not the paper's detected boxes", src.label)
  return "gt"


def create_eval_iterator(cfg: Any, batch_size: int, shard_index: int = 0,
                         shard_count: int = 1) -> grain.DatasetIterator:
  """Finite iterator over the evaluation set in batches; padding examples have valid = 0.

  Batches carry the training fields plus joints_cam, joints_img, focal, principal, image_id,
  subject, action, frame (and is_valid, person for multi-person sets). Crops are warped from the
  full-resolution image (data.jpeg_reduce is a training option); boxes follow data.eval.boxes.
  """
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} outside [0, {shard_count})")
  spec = _get(cfg, "eval")
  src = sources.load_source(spec, bool(_get(cfg, "build_if_missing", True)))
  dst = skeleton_lib.get_skeleton(_get(cfg, "skeleton", "h36m"))
  use_det = choose_eval_boxes(spec, src) == "detected"
  records = _EvalRecords(src, batch_size, shard_index, shard_count)
  # The authors' test crop is the bilinear warp of the full-resolution image: no reduced decoding.
  crop = dataclasses.replace(crop_config(cfg), jpeg_reduce=False)
  fn = _EvalExample(src.skeleton, dst, crop, use_det)
  ds = grain.MapDataset.source(records).map(fn).batch(batch_size, drop_remainder=False)
  return _iterate(ds, cfg)


def eval_num_examples(cfg: Any) -> int:
  """Number of real (unpadded) evaluation examples over all shards."""
  src = sources.load_source(_get(cfg, "eval"), bool(_get(cfg, "build_if_missing", True)))
  return len(_EvalRecords(src, 1, 0, 1).entries)


def mean_pose(cfg: Any, max_examples: int = 20000) -> np.ndarray:
  """(J, 3) float32 mean root-relative training pose (mm, camera frame, model joint order).

  Averages over up to `max_examples` evenly spaced records of the 3D training set that have depth;
  joints the dataset lacks stay zero. This is the "always predict the mean pose" baseline.
  """
  src = sources.load_source(_get(cfg, "train_3d"), bool(_get(cfg, "build_if_missing", True)))
  dst = skeleton_lib.get_skeleton(_get(cfg, "skeleton", "h36m"))
  idx = np.unique(np.linspace(0, len(src) - 1, min(len(src), max_examples)).astype(int))
  total = np.zeros((dst.num_joints, 3))
  count = 0
  for i in idx:
    rec = src[int(i)]
    if not float(rec.get("has_depth", 0.0)):
      continue
    cam, _ = skeleton_lib.map_joints(np.asarray(rec["joints_cam"], np.float64),
                                     np.ones(src.skeleton.num_joints), src.skeleton, dst)
    total += cam - cam[dst.root]
    count += 1
  if count == 0:
    raise ValueError(f"{src.label}: no records with depth to average")
  present = skeleton_lib.mapping_indices(src.skeleton, dst) >= 0
  return np.where(present[:, None], total / count, 0.0).astype(np.float32)


__all__: Sequence[str] = ("create_train_iterator", "create_eval_iterator", "choose_eval_boxes", "steps_per_epoch",
                          "eval_num_examples", "mean_pose", "crop_config")
