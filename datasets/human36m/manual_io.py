"""Reading a manual-download folder: required files, JSON with record-level errors, JPEG bytes in parallel.

Shared by the real 3D builders (human36m, muco_3dhp, mupots_3d); it imports no TFDS. Errors:

- a required file is absent: :func:`require_files` raises FileNotFoundError listing EVERY missing
  path (relative to manual_dir) followed by the builder's download instructions;
- a JSON file cannot be parsed, or a record lacks a field / has the wrong type:
  :class:`pose_builder.RecordError` whose message starts with the file name and the record's index,
  e.g. ``Human36M_subject1_data.json: annotations[3]: missing 'bbox'``;
- an image file is missing, empty, not a JPEG, truncated (no end-of-image marker) or, when asked to
  decode, undecodable: :func:`read_jpeg` returns the reason instead of raising, and the builder
  skips the record with a :class:`pose_builder.SkipCounter` (such frames exist in real copies).

:func:`iter_jpegs` reads images with a thread pool (file reads release the GIL) while keeping the
input order, so a single-threaded TFDS generator is not bound by disk latency.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import pathlib
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import cv2
import numpy as np

from cascaded_lift.datasets import pose_builder

RecordError = pose_builder.RecordError
T = TypeVar("T")

_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"


def require_files(dataset: str, root: os.PathLike | str, relpaths: Iterable[str], instructions: str) -> None:
  """Raises FileNotFoundError listing every path of `relpaths` that does not exist under `root`."""
  root = pathlib.Path(root)
  missing = [p for p in relpaths if not (root / p).exists()]
  if missing:
    listing = "\n".join(f"  {root / p}" for p in missing)
    raise FileNotFoundError(f"{dataset}: {len(missing)} required file(s) missing from manual_dir {root}:\n"
                            f"{listing}\n{instructions.strip()}")


def load_json(path: os.PathLike | str) -> Any:
  """json.load with a RecordError naming the file when it is not valid JSON."""
  path = pathlib.Path(path)
  try:
    with open(path, "rb") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise RecordError(f"{path.name}: not valid JSON ({e}); re-download or re-extract the file") from None


def field(record: Any, key: str, where: str, kind: type | tuple[type, ...] | None = None) -> Any:
  """record[key], with RecordError "<where>: missing 'key'" / wrong type.

  Args:
    record: a JSON object (dict).
    key: the field name.
    where: the record's location, e.g. "Human36M_subject1_data.json: annotations[3]".
    kind: accepted Python type(s) of the value; None = any. Booleans never count as numbers.
  """
  if not isinstance(record, dict):
    raise RecordError(f"{where}: expected a JSON object, got {type(record).__name__}")
  if key not in record:
    raise RecordError(f"{where}: missing {key!r}")
  value = record[key]
  if kind is not None:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is a subclass of int in Python, but true/false is no number in these files.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
      raise RecordError(f"{where}: field {key!r} must be {'/'.join(k.__name__ for k in kinds)}, "
                        f"got {type(value).__name__} {value!r:.60}")
  return value


def int_field(record: Any, key: str, where: str) -> int:
  """An integer field (JSON ints, or floats with an integral value as some converters write)."""
  value = field(record, key, where, (int, float))
  if isinstance(value, float) and (not np.isfinite(value) or value != int(value)):
    raise RecordError(f"{where}: field {key!r} must be an integer, got {value!r}")
  return int(value)


def array_field(record: Any, key: str, where: str, shape: Sequence[int | None]) -> np.ndarray:
  """A numeric array field of the given shape (None = any length), as float64; RecordError otherwise."""
  value = field(record, key, where)
  try:
    arr = np.asarray(value, dtype=np.float64)
  except (TypeError, ValueError):
    raise RecordError(f"{where}: field {key!r} is not a numeric array: {value!r:.80}") from None
  if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
    want = "x".join("*" if s is None else str(s) for s in shape)
    raise RecordError(f"{where}: field {key!r} has shape {'x'.join(map(str, arr.shape)) or 'scalar'}, "
                      f"expected {want}")
  if not np.all(np.isfinite(arr)):
    raise RecordError(f"{where}: field {key!r} holds NaN or inf")
  return arr


def list_field(data: Any, key: str, fname: str) -> list:
  """The top-level list `key` of a COCO-style file (RecordError naming the file if absent)."""
  return field(data, key, fname, list)


class CocoIndex:
  """images[] and annotations[] of a COCO-style file, validated and indexed.

  Attributes:
    fname: file name used in messages.
    images: the images[] list.
    image_index: {image id: position in images[]}.
    anns_by_image: {image id: [(position in annotations[], annotation), ...]} in file order.
  """

  def __init__(self, data: Any, fname: str):
    self.fname = fname
    self.images = list_field(data, "images", fname)
    annotations = list_field(data, "annotations", fname)
    self.image_index: dict[int, int] = {}
    for i, img in enumerate(self.images):
      iid = int_field(img, "id", f"{fname}: images[{i}]")
      if iid in self.image_index:
        raise RecordError(f"{fname}: images[{i}]: duplicate id {iid} (also images[{self.image_index[iid]}])")
      self.image_index[iid] = i
    self.anns_by_image: dict[int, list[tuple[int, dict]]] = collections.defaultdict(list)
    for i, ann in enumerate(annotations):
      iid = int_field(ann, "image_id", f"{fname}: annotations[{i}]")
      if iid not in self.image_index:
        raise RecordError(f"{fname}: annotations[{i}]: image_id {iid} is not in images[]")
      self.anns_by_image[iid].append((i, ann))
    self.num_annotations = len(annotations)


# ------------------------------------------------------------------------------------------------
# Images.


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
  if not data.startswith(_JPEG_SOI):
    return None, "empty file" if not data else "not a JPEG file"
  if not data[-1024:].rstrip(b"\x00").endswith(_JPEG_EOI):
    return None, "truncated JPEG file (no end-of-image marker)"
  if decode:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8)
    if img is None:
      return None, "undecodable JPEG file"
  return data, None


def iter_jpegs(items: Iterable[T], path_of: Callable[[T], os.PathLike | str], num_threads: int = 8,
               decode: bool = False, window: int = 256) -> Iterator[tuple[T, bytes | None, str | None]]:
  """Yields (item, jpeg bytes or None, skip reason or None) for each item, in input order.

  Up to `window` reads are in flight on `num_threads` threads; num_threads <= 1 reads inline.
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
