"""Reading the user's source files for the 2D builders: JSON, COCO-style tables and JPEG frames.

Shared by datasets/coco and datasets/mpii (MPII's 3DMPPE annotation form is COCO-style). Every error
names the dataset, the file and, for a malformed record, its index, e.g.
``coco: person_keypoints_val2017.json: annotations[3]: 'keypoints' has 50 values, expected 51``.

Coordinates follow the project convention: pixel-index coordinates, pixel (i, j) centred at x = j,
y = i, so a W x H frame spans x in [-0.5, W - 0.5] and y in [-0.5, H - 0.5].
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Any, Iterable, Mapping, Sequence

import cv2
import numpy as np

from cascaded_lift.datasets import pose_builder

RecordError = pose_builder.RecordError

_MAX_LISTED = 20  # missing files listed by name; the rest are counted

# Start-of-frame markers (baseline, progressive, lossless, arithmetic); C4, C8, CC are not SOF.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone (no length field): TEM, RST0..7, SOI.
_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8), 0xD8])


# ------------------------------------------------------------------------------------------------
# Files present / missing.

def missing_files_error(dataset: str, root: os.PathLike | str, missing: Sequence[str],
                        instructions: str = "", label: str = "manual_dir") -> FileNotFoundError:
  """A FileNotFoundError listing the missing paths (relative to `root`), then the instructions.

  The first 20 are named and the rest counted (a folder of 100k frames missing is one line: the
  folder's, from require_paths, before any frame is checked).
  """
  shown = "\n".join(f"  {m}" for m in missing[:_MAX_LISTED])
  more = f"\n  ... and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
  text = (f"{dataset}: {len(missing)} file(s) missing under {label} {os.fspath(root)!r}:\n"
          f"{shown}{more}")
  if instructions:
    text += f"\n\nExpected layout:\n{instructions.strip()}"
  return FileNotFoundError(text)


def manual_root(dataset: str, dl_manager: Any, required: Sequence[str],
                instructions: str = "") -> pathlib.Path:
  """dl_manager.manual_dir as a Path; an absent or empty one raises a FileNotFoundError listing `required`.

  (TFDS itself raises a bare AssertionError there, which says nothing about which files are needed.)
  """
  try:
    return pathlib.Path(dl_manager.manual_dir)
  except AssertionError:
    where = getattr(dl_manager, "_manual_dir", None) or "manual_dir"
    raise missing_files_error(dataset, where, list(required), instructions) from None


def require_paths(dataset: str, root: pathlib.Path, files: Iterable[str] = (), dirs: Iterable[str] = (),
                  instructions: str = "") -> None:
  """Raises one FileNotFoundError naming every absent file and folder (folders end in '/')."""
  missing = [f for f in files if not (root / f).is_file()]
  missing += [d.rstrip("/") + "/" for d in dirs if not (root / d).is_dir()]
  if missing:
    raise missing_files_error(dataset, root, missing, instructions)


def require_images(dataset: str, image_dir: pathlib.Path, names: Iterable[str], source: str) -> None:
  """Raises a FileNotFoundError listing every image of `names` absent from `image_dir`.

  `source` (the annotation file) is named so the user knows which file references them.
  """
  missing = sorted({n for n in names if not (image_dir / n).is_file()})
  if missing:
    err = missing_files_error(dataset, image_dir, missing, label="the image folder")
    raise FileNotFoundError(f"{err} (images referenced by {source})")


# ------------------------------------------------------------------------------------------------
# JSON records.

def load_json(dataset: str, path: pathlib.Path) -> Any:
  """Parses a JSON file; a RecordError names the file and the line of a syntax error."""
  try:
    with open(path, "rb") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise RecordError(f"{dataset}: {path.name}: not valid JSON (line {e.lineno}, column {e.colno}): "
                      f"{e.msg}") from None
  except UnicodeDecodeError as e:
    raise RecordError(f"{dataset}: {path.name}: not valid JSON: {e}") from None


def _is_number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def get_field(dataset: str, where: str, record: Any, key: str) -> Any:
  """record[key]; RecordError "<dataset>: <where>: ..." when record is not an object or lacks key."""
  if not isinstance(record, dict):
    raise RecordError(f"{dataset}: {where}: expected a JSON object, got {type(record).__name__}")
  if key not in record:
    raise RecordError(f"{dataset}: {where}: field {key!r} is missing")
  return record[key]


def get_number(dataset: str, where: str, record: Any, key: str, positive: bool = False) -> float:
  """A finite number field (optionally > 0)."""
  v = get_field(dataset, where, record, key)
  if not _is_number(v):
    raise RecordError(f"{dataset}: {where}: {key!r} = {v!r} is not a finite number")
  if positive and v <= 0:
    raise RecordError(f"{dataset}: {where}: {key!r} = {v!r} must be positive")
  return float(v)


def get_int(dataset: str, where: str, record: Any, key: str, positive: bool = False) -> int:
  """An integer field (JSON 3.0 is accepted as 3; 3.5 is not)."""
  v = get_number(dataset, where, record, key, positive)
  if v != int(v):
    raise RecordError(f"{dataset}: {where}: {key!r} = {v!r} is not an integer")
  return int(v)


def get_str(dataset: str, where: str, record: Any, key: str) -> str:
  v = get_field(dataset, where, record, key)
  if not isinstance(v, str) or not v:
    raise RecordError(f"{dataset}: {where}: {key!r} = {v!r} is not a non-empty string")
  return v


def get_numbers(dataset: str, where: str, record: Any, key: str, shape: tuple[int, ...]) -> np.ndarray:
  """A (possibly nested) list of finite numbers with the given shape, as float64.

  A flat list of the right total length is accepted too (COCO stores keypoints flat), so the message
  counts values: "'keypoints' has 50 values, expected 51".
  """
  v = get_field(dataset, where, record, key)
  try:
    arr = np.asarray(v, dtype=np.float64)
  except (TypeError, ValueError):
    raise RecordError(f"{dataset}: {where}: {key!r} is not a list of numbers") from None
  if arr.dtype == object or (arr.ndim == 0 and len(shape) > 0):
    raise RecordError(f"{dataset}: {where}: {key!r} is not a list of numbers")
  size = int(np.prod(shape))
  if arr.size != size or (arr.ndim > 1 and arr.shape != shape):
    got = f"shape {list(arr.shape)}" if arr.ndim > 1 else f"{arr.size} values"
    want = f"shape {list(shape)}" if arr.ndim > 1 else f"{size}"
    raise RecordError(f"{dataset}: {where}: {key!r} has {got}, expected {want}")
  if not np.all(np.isfinite(arr)):
    raise RecordError(f"{dataset}: {where}: {key!r} holds NaN or inf")
  return arr.reshape(shape)


# ------------------------------------------------------------------------------------------------
# COCO-style tables (images[] + annotations[]).

@dataclasses.dataclass
class CocoImage:
  """One images[] entry with its annotations, in file order.

  Attributes:
    index: position in images[].
    id, file_name, width, height: as in the file.
    annotations: (position in annotations[], the annotation object) pairs.
  """
  index: int
  id: int
  file_name: str
  width: int
  height: int
  annotations: list[tuple[int, dict[str, Any]]] = dataclasses.field(default_factory=list)


def coco_table(dataset: str, file_name: str, data: Any) -> list[CocoImage]:
  """Checks the COCO-style structure and groups annotations under their images (images[] order).

  Checks: the top level is an object with lists 'images' and 'annotations'; each image has an
  integer 'id' (unique), a 'file_name', positive integer 'width'/'height'; each annotation is an object
  whose integer 'image_id' names a listed image. Per-annotation fields are checked by the builder.
  Raises RecordError naming the file and index.
  """
  if not isinstance(data, dict):
    raise RecordError(f"{dataset}: {file_name}: expected a JSON object with 'images' and 'annotations'"
                      f", got {type(data).__name__}")
  for key in ("images", "annotations"):
    if not isinstance(data.get(key), list):
      raise RecordError(f"{dataset}: {file_name}: top-level field {key!r} is missing or not a list")
  images: dict[int, CocoImage] = {}
  for i, rec in enumerate(data["images"]):
    where = f"{file_name}: images[{i}]"
    img = CocoImage(i, get_int(dataset, where, rec, "id"), get_str(dataset, where, rec, "file_name"),
                    get_int(dataset, where, rec, "width", positive=True),
                    get_int(dataset, where, rec, "height", positive=True))
    if img.id in images:
      raise RecordError(f"{dataset}: {where}: duplicate image id {img.id} "
                        f"(also images[{images[img.id].index}])")
    images[img.id] = img
  for i, rec in enumerate(data["annotations"]):
    where = f"{file_name}: annotations[{i}]"
    image_id = get_int(dataset, where, rec, "image_id")
    if image_id not in images:
      raise RecordError(f"{dataset}: {where}: image_id {image_id} is not in images[]")
    images[image_id].annotations.append((i, rec))
  return list(images.values())


# ------------------------------------------------------------------------------------------------
# JPEG frames.

def jpeg_info(data: bytes) -> tuple[int, int, int] | None:
  """(height, width, components) from a JPEG's start-of-frame header without decoding it.

  Returns None when `data` is not a JPEG or its header cannot be parsed (callers then decode).
  """
  if not pose_builder.is_jpeg(data):
    return None
  i, n = 2, len(data)
  while i + 4 <= n:
    if data[i] != 0xFF:
      return None
    marker = data[i + 1]
    if marker == 0xFF:  # fill byte before a marker
      i += 1
      continue
    if marker in _STANDALONE:
      i += 2
      continue
    if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
      return None
    length = int.from_bytes(data[i + 2:i + 4], "big")
    if marker in _SOF_MARKERS:
      if i + 10 > n:
        return None
      height = int.from_bytes(data[i + 5:i + 7], "big")
      width = int.from_bytes(data[i + 7:i + 9], "big")
      return height, width, data[i + 9]
    i += 2 + length
  return None


def strip_exif(data: bytes) -> bytes:
  """`data` without its APP1 "Exif" segments (returned unchanged when it has none or is unparsable).

  Exif may carry an orientation tag that decoders such as cv2.IMREAD_COLOR apply, turning the frame
  away from the pixel grid the annotations (and the files' width/height) refer to. Dropping the
  segment is lossless for the pixels.
  """
  if not pose_builder.is_jpeg(data):
    return data
  kept, i, n, dropped = [data[:2]], 2, len(data), False
  while i + 4 <= n:
    if data[i] != 0xFF:
      return data
    marker = data[i + 1]
    if marker == 0xFF or marker in _STANDALONE:
      step = 1 if marker == 0xFF else 2
      kept.append(data[i:i + step])
      i += step
      continue
    if marker == 0xDA:  # start of scan: the rest is entropy-coded data
      kept.append(data[i:])
      return b"".join(kept) if dropped else data
    end = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
    if marker == 0xE1 and data[i + 4:i + 10] == b"Exif\x00\x00":
      dropped = True
    else:
      kept.append(data[i:end])
    i = end
  return data


def read_frame(dataset: str, path: pathlib.Path, record: str) -> tuple[bytes, int, int]:
  """The frame at `path` as RGB JPEG bytes plus its (height, width) in px.

  A 3-component JPEG is stored byte for byte, less any Exif segment (see strip_exif). Greyscale or
  CMYK JPEGs (COCO has some greyscale ones) and non-JPEG files are decoded and re-encoded as 3-channel
  JPEG, because the stored feature is an (H, W, 3) image. Exif orientation is never applied: the
  annotations refer to the stored pixel grid. Raises RecordError naming the record when the file
  cannot be decoded.
  """
  data = path.read_bytes()
  info = jpeg_info(data)
  if info is not None and info[2] == 3:
    return strip_exif(data), info[0], info[1]
  flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
  bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
  if bgr is None:
    raise RecordError(f"{dataset}: record {record}: image {path.name} cannot be decoded")
  return pose_builder.encode_jpeg(bgr[..., ::-1], quality=95), bgr.shape[0], bgr.shape[1]


class FrameCache:
  """Reads each frame once while consecutive records share it (people of one image)."""

  def __init__(self, dataset: str, image_dir: pathlib.Path):
    self.dataset = dataset
    self.image_dir = image_dir
    self._name: str | None = None
    self._frame: tuple[bytes, int, int] | None = None

  def get(self, name: str, record: str) -> tuple[bytes, int, int]:
    if name != self._name:
      self._frame = read_frame(self.dataset, self.image_dir / name, record)
      self._name = name
    return self._frame


def require_records(dataset: str, split: str, source: str, num_written: int,
                    skipped: Mapping[str, int]) -> None:
  """ValueError when a split ends up empty (TFDS cannot write one), saying what was skipped."""
  if num_written == 0:
    reasons = "; ".join(f"{r}: {n}" for r, n in sorted(skipped.items()))
    raise ValueError(f"{dataset}[{split}]: no usable person in {source} "
                     f"({'skipped ' + reasons if reasons else 'it lists no people'})")


# ------------------------------------------------------------------------------------------------
# Geometry checks on a record.

def inside_image(joints: np.ndarray, width: int, height: int) -> np.ndarray:
  """(J,) bool: joint (x, y) lies on the frame, x in [-0.5, W - 0.5] and y in [-0.5, H - 0.5]."""
  x, y = joints[:, 0], joints[:, 1]
  return (x >= -0.5) & (x <= width - 0.5) & (y >= -0.5) & (y <= height - 0.5)


def box_covers_pixels(bbox: Sequence[float], width: int, height: int) -> bool:
  """True when [x0, y0, w, h] keeps a positive extent once clipped to the frame's pixel range.

  Mirrors geometry.process_bbox, which takes pixel columns x0 .. x0 + w - 1 and rejects a box that is
  empty after clipping; such records (including boxes with w or h <= 1, zero or negative) would stop
  the training pipeline, so builders skip them, as HRNet's and 3DMPPE's loaders do.
  """
  x0, y0, w, h = (float(v) for v in bbox)
  x1 = min(width - 1.0, x0 + max(w - 1.0, 0.0))
  y1 = min(height - 1.0, y0 + max(h - 1.0, 0.0))
  return x1 - max(x0, 0.0) > 0 and y1 - max(y0, 0.0) > 0
