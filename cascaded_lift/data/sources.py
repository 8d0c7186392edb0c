"""Random-access sources over built pose datasets (tfds data sources, array_record, no TensorFlow).

:func:`load_source` finds a builder by dataset name (the datasets/<name>/ folder), prepares it when
it needs no manual download (the synthetic set) and returns a :class:`PoseSource`: a picklable
sequence whose items are records of the shared schema (cascaded_lift/data/schema.py) with the
image left as encoded JPEG bytes (the pipeline decodes with OpenCV), plus `_index` (the record's
index in the split) and `_source` (a label "name/config[split]") for error messages.
"""

from __future__ import annotations

import dataclasses
import fcntl
import importlib
import logging
import pathlib
from typing import Any, Mapping

import tensorflow_datasets as tfds
from etils import epath

from cascaded_lift import skeleton as skeleton_lib
from cascaded_lift.data import schema

log = logging.getLogger(__name__)


def get_field(spec: Any, key: str, default: Any = None) -> Any:
  """spec[key] for ConfigDicts, dicts and attribute objects alike."""
  if isinstance(spec, Mapping) or hasattr(spec, "get"):
    try:
      return spec.get(key, default)
    except (AttributeError, KeyError):
      return default
  return getattr(spec, key, default)


@dataclasses.dataclass
class PoseSource:
  """A split of a built pose dataset.

  Attributes:
    label: "name/config[split]", used in every error message.
    data_source: the tfds ArrayRecordDataSource (image feature not decoded).
    skeleton: the dataset's own joint set (from its metadata).
    multi_person: records hold a leading person axis.
    has_detections: records hold the fields det_bbox / det_root_cam / has_det (the builder can store
      detections; whether any record has one is :meth:`stores_detections`).
  """

  label: str
  data_source: Any
  skeleton: skeleton_lib.Skeleton
  multi_person: bool = False
  has_detections: bool = False
  _any_detection: bool | None = dataclasses.field(default=None, repr=False, compare=False)

  def stores_detections(self) -> bool:
    """Whether any record has a detection (has_det = 1): a builder with detection fields stores
    has_det = 0 everywhere when it was built without the detection file.

    Reads records until the first detection (the first record when the file was there; every record
    when it was not), once per source object.
    """
    if self._any_detection is None:
      self._any_detection = self.has_detections and any(
          float(self[i].get("has_det", 0.0)) > 0 for i in range(len(self)))
    return self._any_detection

  def __len__(self) -> int:
    return len(self.data_source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    try:
      record = dict(self.data_source[index])
    except Exception as e:  # array_record / TFDS errors carry no record context
      raise RuntimeError(f"{self.label}: cannot read record {index}: {type(e).__name__}: {e}") from e
    record["_index"] = index
    record["_source"] = self.label
    return record


def _built_dir(name: str, config: str | None, data_dir: str | None) -> str | None:
  """The newest prepared version folder data_dir/name/config/<version>, if there is one."""
  root = epath.Path(data_dir or tfds.core.constants.DATA_DIR) / name
  if config:
    root = root / config
  if not root.is_dir():
    return None
  versions = [p for p in root.iterdir() if (p / "dataset_info.json").exists()]
  if not versions:
    return None
  best = max(versions, key=lambda p: tuple(int(x) if x.isdigit() else -1 for x in p.name.split(".")))
  return str(best)


def _builder(name: str, config: str | None, data_dir: str | None):
  """The dataset's builder; for a config the builder does not list (e.g. a custom SyntheticConfig
  built from Python), the prepared files in data_dir, read without the builder class."""
  datasets = importlib.import_module("cascaded_lift.datasets")  # plug-in lookup, not a layer import
  try:
    return datasets.get_builder(name, config=config, data_dir=data_dir)
  except ValueError:
    built = _built_dir(name, config, data_dir)
    if built is None:
      raise
    return tfds.builder_from_directory(built)


def _build_once(name: str, config: str | None, data_dir: str | None, label: str) -> None:
  """Prepares the dataset while holding a lock file beside its folder, so that several processes
  starting at once (data-parallel hosts, test workers) build it once; the others wait, then reuse it."""
  builder = _builder(name, config, data_dir)
  target = pathlib.Path(builder.data_dir)
  target.parent.mkdir(parents=True, exist_ok=True)
  with open(target.parent / f".{target.name}.build.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      builder = _builder(name, config, data_dir)  # re-reads the folder: another process may have built it
      if not builder.is_prepared():
        log.info("%s not found in %s: building it", label, builder.data_dir)
        tfds.disable_progress_bar()
        builder.download_and_prepare()
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def load_source(spec: Any, build_if_missing: bool = True) -> PoseSource:
  """Opens split `spec.split` of dataset `spec.name` (config `spec.config`) under `spec.data_dir`.

  Args:
    spec: a ConfigDict/mapping with name, split, config (None = default), data_dir (None = TFDS's).
    build_if_missing: prepare datasets that need no manual download when absent.
  Raises:
    FileNotFoundError: the dataset is not built and needs a manual download (the message says how
      to build it); KeyError: unknown dataset name or split.
  """
  name, split = get_field(spec, "name"), get_field(spec, "split")
  config, data_dir = get_field(spec, "config"), get_field(spec, "data_dir")
  if not name or not split:
    raise KeyError(f"dataset spec {dict(spec) if isinstance(spec, Mapping) else spec} needs 'name' and 'split'")
  builder = _builder(name, config, data_dir)
  cfg_name = builder.builder_config.name if builder.builder_config else ""
  label = f"{name}/{cfg_name}[{split}]" if cfg_name else f"{name}[{split}]"
  if not builder.is_prepared():
    if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None) or not build_if_missing:
      raise FileNotFoundError(
          f"{label} is not built in {builder.data_dir}; build it with: cascaded-lift-build {name}"
          f"{f' --config {cfg_name}' if cfg_name else ''} --manual_dir <where you unpacked it> "
          f"--data_dir {data_dir or '<data_dir>'}")
    _build_once(name, config, data_dir, label)
    builder = _builder(name, config, data_dir)
  if split not in builder.info.splits:
    raise KeyError(f"{label}: no split {split!r}; available: {sorted(builder.info.splits)}")
  meta = builder.info.metadata or {}
  skeleton = skeleton_lib.get_skeleton(meta[schema.META_SKELETON]) if schema.META_SKELETON in meta \
      else getattr(builder, "SKELETON", None)
  if skeleton is None:
    raise KeyError(f"{label}: the dataset records no skeleton in its metadata")
  features = builder.info.features
  ds = builder.as_data_source(split=split, decoders={schema.IMAGE: tfds.decode.SkipDecoding()})
  return PoseSource(label=label, data_source=ds, skeleton=skeleton,
                    multi_person=bool(meta.get(schema.META_MULTI_PERSON, False)),
                    has_detections="det_bbox" in features)
