"""Reading a builder's manual_dir: required files, JSON records, COCO-style tables and JPEG frames.

Shared by every real builder (coco, mpii, human36m, muco_3dhp, mupots_3d); it imports no TFDS. Errors:

- required files absent: :func:`require_paths` / :func:`manual_root` raise one FileNotFoundError that
  lists EVERY missing path (relative to manual_dir; folders end in '/') and then the download
  instructions; images referenced by an annotation file: :func:`require_images` (first 20 named);
- a JSON file cannot be parsed: :func:`load_json` raises :class:`pose_builder.RecordError` naming the
  file and the line;
- a record lacks a field or has a malformed one: the :class:`Fields` accessors raise RecordError
  naming the file, the record's index and the field, e.g.
  ``coco: person_keypoints_val2017.json: annotations[3]: 'keypoints' has 50 values, expected 51``;
- a frame: :func:`read_jpeg` returns a skip reason for a missing, empty, non-JPEG or truncated file
  (3D builders skip such records with a SkipCounter; real copies hold a few), :func:`read_frame`
  normalises a frame to 3-channel JPEG and raises RecordError when it cannot be decoded.

Coordinates follow the project convention: pixel (i, j) centred at x = j, y = i, so a W x H frame
spans x in [-0.5, W - 0.5] and y in [-0.5, H - 0.5].
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
import pathlib
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import cv2
import numpy as np

from cascaded_lift.datasets import pose_builder

RecordError = pose_builder.RecordError
T = TypeVar("T")

_MAX_LISTED_IMAGES = 20  # missing images named one by one; the rest are counted
_JPEG_EOI = b"\xff\xd9"
# Start-of-frame markers (baseline, progressive, lossless, arithmetic); C4, C8, CC are not SOF.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone (no length field): TEM, RST0..7, SOI.
_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8), 0xD8])


def _prefix(dataset: str) -> str:
  return f"{dataset}: " if dataset else ""


# ------------------------------------------------------------------------------------------------
# Files present / missing.

def missing_files_error(dataset: str, root: os.PathLike | str, missing: Sequence[str],
                        instructions: str = "", label: str = "manual_dir",
                        max_listed: int | None = None) -> FileNotFoundError:
  """A FileNotFoundError listing the missing paths (relative to `root`), then the instructions.

  All are named unless `max_listed` is given (the rest are then counted).
  """
  shown = missing if max_listed is None else missing[:max_listed]
  text = "\n".join(f"  {m}" for m in shown)
  if len(shown) < len(missing):
    text += f"\n  ... and {len(missing) - len(shown)} more"
  text = f"{_prefix(dataset)}{len(missing)} required file(s) missing under {label} {os.fspath(root)!r}:\n{text}"
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


def require_paths(dataset: str, root: pathlib.Path, paths: Iterable[str], instructions: str = "") -> None:
  """Raises one FileNotFoundError naming every absent path: 'a/b.json' must be a file, 'images/' a folder."""
  missing = [p for p in paths
             if not ((root / p).is_dir() if p.endswith("/") else (root / p).is_file())]
  if missing:
    raise missing_files_error(dataset, root, missing, instructions)


def require_images(dataset: str, image_dir: pathlib.Path, names: Iterable[str], source: str) -> None:
  """Raises a FileNotFoundError naming the images of `names` absent from `image_dir` (first 20).

  `source` (the annotation file) is named so the user knows which file references them.
  """
  missing = sorted({n for n in names if not (image_dir / n).is_file()})
  if missing:
    err = missing_files_error(dataset, image_dir, missing, label="the image folder",
                              max_listed=_MAX_LISTED_IMAGES)
    raise FileNotFoundError(f"{err} (images referenced by {source})")


def require_records(dataset: str, split: str, source: str, num_written: int,
                    skipped: Mapping[str, int]) -> None:
  """ValueError when a split ends up empty (TFDS cannot write one), saying what was skipped."""
  if num_written == 0:
    reasons = "; ".join(f"{r}: {n}" for r, n in sorted(skipped.items()))
    raise ValueError(f"{dataset}[{split}]: no usable person in {source} "
                     f"({'skipped ' + reasons if reasons else 'it lists no people'})")


# ------------------------------------------------------------------------------------------------
# JSON records.

def load_json(dataset: str, path: os.PathLike | str) -> Any:
  """Parses a JSON file; a RecordError names the file and the line of a syntax error."""
  path = pathlib.Path(path)
  try:
    with open(path, "rb") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise RecordError(f"{_prefix(dataset)}{path.name}: not valid JSON (line {e.lineno}, column {e.colno}): "
                      f"{e.msg}; re-download or re-extract the file") from None
  except UnicodeDecodeError as e:
    raise RecordError(f"{_prefix(dataset)}{path.name}: not valid JSON: {e}") from None


@dataclasses.dataclass(frozen=True)
class Fields:
  """Typed access to the fields of JSON records; a bad field raises RecordError naming it.

  Every accessor takes `where`, the record's location ("train.json: annotations[3]"); messages read
  "<dataset>: <where>: ...". Two wordings are in use (the builders' tests pin them):
  compact=False: "field 'k' is missing", "'k' has shape [15, 2], expected shape [16, 2]" or, for
  flat values, "'k' has 50 values, expected 51"; compact=True: "missing 'k'",
  "field 'k' has shape 20x3, expected 21x3".
  """
  dataset: str = ""
  compact: bool = False

  def error(self, where: str, text: str) -> RecordError:
    """A RecordError "<dataset>: <where>: <text>" (for checks the accessors do not cover)."""
    return RecordError(f"{_prefix(self.dataset)}{where}: {text}")

  def get(self, where: str, record: Any, key: str, kind: type | tuple[type, ...] | None = None) -> Any:
    """record[key]; `kind`: accepted Python type(s) (None = any; booleans never count as numbers)."""
    if not isinstance(record, dict):
      raise self.error(where, f"expected a JSON object, got {type(record).__name__}")
    if key not in record:
      raise self.error(where, f"missing {key!r}" if self.compact else f"field {key!r} is missing")
    value = record[key]
    if kind is not None:
      kinds = kind if isinstance(kind, tuple) else (kind,)
      # bool is a subclass of int in Python, but true/false is no number in these files.
      if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise self.error(where, f"field {key!r} must be {'/'.join(k.__name__ for k in kinds)}, "
                                 f"got {type(value).__name__} {value!r:.60}")
    return value

  def number(self, where: str, record: Any, key: str, positive: bool = False) -> float:
    """A finite number field (optionally > 0)."""
    value = float(self.get(where, record, key, (int, float)))
    if not np.isfinite(value):
      raise self.error(where, f"field {key!r} = {value!r} is not a finite number")
    if positive and value <= 0:
      raise self.error(where, f"field {key!r} = {value!r} must be positive")
    return value

  def integer(self, where: str, record: Any, key: str, positive: bool = False) -> int:
    """An integer field (JSON ints, or floats with an integral value as some converters write)."""
    value = self.get(where, record, key, (int, float))
    if isinstance(value, float) and (not np.isfinite(value) or value != int(value)):
      raise self.error(where, f"field {key!r} = {value!r} is not an integer")
    if positive and value <= 0:
      raise self.error(where, f"field {key!r} = {value!r} must be positive")
    return int(value)

  def string(self, where: str, record: Any, key: str) -> str:
    """A non-empty string field."""
    value = self.get(where, record, key, str)
    if not value:
      raise self.error(where, f"field {key!r} is an empty string")
    return value

  def array(self, where: str, record: Any, key: str, shape: Sequence[int | None]) -> np.ndarray:
    """A (nested) list of finite numbers of the given shape (None = any length), as float64."""
    value = self.get(where, record, key)
    try:
      arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
      raise self.error(where, f"field {key!r} is not a numeric array: {value!r:.80}") from None
    if arr.ndim == 0 and shape:
      raise self.error(where, f"field {key!r} is not a list of numbers: {value!r:.80}")
    shape = tuple(shape)
    if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
      raise self.error(where, self._shape_text(key, arr.shape, shape))
    if not np.all(np.isfinite(arr)):
      raise self.error(where, f"field {key!r} holds NaN or inf")
    return arr

  def _shape_text(self, key: str, got: tuple[int, ...], want: tuple[int | None, ...]) -> str:
    if self.compact:
      return (f"field {key!r} has shape {'x'.join(map(str, got)) or 'scalar'}, "
              f"expected {'x'.join('*' if s is None else str(s) for s in want)}")
    if len(got) > 1 or None in want:
      return (f"{key!r} has shape {list(got)}, "
              f"expected shape {['*' if s is None else s for s in want]}")
    return f"{key!r} has {int(np.prod(got))} values, expected {int(np.prod(want))}"


# ------------------------------------------------------------------------------------------------
# COCO-style tables (images[] + annotations[]).

@dataclasses.dataclass
class CocoImage:
  """One images[] entry with its annotations, in file order.

  Attributes:
    index: position in images[].
    id, file_name: as in the file. width, height: px, as in the file (0 when not read: sizes=False).
    record: the images[] object itself (dataset-specific fields such as frame_idx or intrinsic).
    annotations: (position in annotations[], the annotation object) pairs.
  """
  index: int
  id: int
  file_name: str
  width: int
  height: int
  record: dict[str, Any]
  annotations: list[tuple[int, dict[str, Any]]] = dataclasses.field(default_factory=list)


def coco_table(fields: Fields, file_name: str, data: Any, sizes: bool = True) -> list[CocoImage]:
  """Checks the COCO-style structure and groups annotations under their images (images[] order).

  Checks: the top level is an object with lists 'images' and 'annotations'; each image has a unique
  integer 'id', a 'file_name' and (with `sizes`) positive integer 'width'/'height'; each annotation's
  integer 'image_id' names a listed image. Per-annotation fields are the builder's to check.
  Raises RecordError naming the file and index.
  """
  if not isinstance(data, dict):
    raise fields.error(file_name, "expected a JSON object with 'images' and 'annotations', "
                                   f"got {type(data).__name__}")
  for key in ("images", "annotations"):
    if not isinstance(data.get(key), list):
      raise fields.error(file_name, f"top-level field {key!r} is missing or not a list")
  images: dict[int, CocoImage] = {}
  for i, rec in enumerate(data["images"]):
    where = f"{file_name}: images[{i}]"
    image_id = fields.integer(where, rec, "id")
    width, height = ((fields.integer(where, rec, "width", positive=True),
                      fields.integer(where, rec, "height", positive=True)) if sizes else (0, 0))
    img = CocoImage(i, image_id, fields.string(where, rec, "file_name"), width, height, rec)
    if img.id in images:
      raise fields.error(where, f"duplicate image id {img.id} (also images[{images[img.id].index}])")
    images[img.id] = img
  for i, rec in enumerate(data["annotations"]):
    where = f"{file_name}: annotations[{i}]"
    image_id = fields.integer(where, rec, "image_id")
    if image_id not in images:
      raise fields.error(where, f"image_id {image_id} is not in images[]")
    images[image_id].annotations.append((i, rec))
  return list(images.values())


# ------------------------------------------------------------------------------------------------
# Geometry checks on a 2D record.

def inside_image(joints: np.ndarray, width: int, height: int) -> np.ndarray:
  """(J,) bool: joint (x, y) lies on the frame, x in [-0.5, W - 0.5] and y in [-0.5, H - 0.5]."""
  x, y = joints[:, 0], joints[:, 1]
  return (x >= -0.5) & (x <= width - 0.5) & (y >= -0.5) & (y <= height - 0.5)


def hide_off_frame(joints: np.ndarray, vis: np.ndarray, width: int, height: int) -> tuple[np.ndarray, int]:
  """(vis with labelled joints outside the frame set to 0, how many were hidden)."""
  hidden = (vis > 0) & ~inside_image(joints, width, height)
  if not hidden.any():
    return vis, 0
  return np.where(hidden, 0.0, vis).astype(np.float32), int(hidden.sum())


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


# ------------------------------------------------------------------------------------------------
# JPEG frames.

def read_jpeg(path: os.PathLike | str, decode: bool = False) -> tuple[bytes | None, str | None]:
  """Reads a JPEG file's bytes; returns (bytes, None) or (None, reason) for a file to skip.

  Checks: the file exists and is readable, starts with the JPEG SOI marker and ends with the EOI
  marker (trailing NUL padding allowed; a truncated download lacks it). With `decode`, the file is
  also decoded at 1/8 scale (libjpeg's DCT scaling, about a millisecond for a 1000x1000 frame).
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    return None, "missing image file"
  except OSError as e:
    return None, f"unreadable image file ({e.__class__.__name__})"
  if not pose_builder.is_jpeg(data):
    return None, "empty file" if not data else "not a JPEG file"
  if not data[-1024:].rstrip(b"\x00").endswith(_JPEG_EOI):
    return None, "truncated JPEG file (no end-of-image marker)"
  if decode and cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8) is None:
    return None, "undecodable JPEG file"
  return data, None


def iter_jpegs(items: Iterable[T], path_of: Callable[[T], os.PathLike | str], num_threads: int = 8,
               decode: bool = False, window: int = 256) -> Iterator[tuple[T, bytes | None, str | None]]:
  """Yields (item, read_jpeg's bytes or None, skip reason or None) for each item, in input order.

  Up to `window` reads are in flight on `num_threads` threads (file reads release the GIL, so a
  single-threaded TFDS generator is not bound by disk latency); num_threads <= 1 reads inline.
  """
  if num_threads <= 1:
    for item in items:
      yield (item, *read_jpeg(path_of(item), decode))
    return
  pending: collections.deque = collections.deque()
  pool = concurrent.futures.ThreadPoolExecutor(num_threads, thread_name_prefix="read_jpeg")
  try:
    for item in items:
      pending.append((item, pool.submit(read_jpeg, path_of(item), decode)))
      if len(pending) >= window:
        done, fut = pending.popleft()
        yield (done, *fut.result())
    while pending:
      done, fut = pending.popleft()
      yield (done, *fut.result())
  finally:
    # Also reached when the consumer stops early (an error in a later record): drop queued reads.
    pool.shutdown(wait=True, cancel_futures=True)


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
    if marker in _SOF_MARKERS:
      if i + 10 > n:
        return None
      return int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big"), data[i + 9]
    i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
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
  bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
  if bgr is None:
    raise RecordError(f"{_prefix(dataset)}record {record}: image {path.name} cannot be decoded")
  return pose_builder.encode_jpeg(bgr[..., ::-1], quality=95), bgr.shape[0], bgr.shape[1]


class FrameCache:
  """read_frame, reading each frame once while consecutive records share it (people of one image)."""

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
