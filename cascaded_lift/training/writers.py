"""Metric logging: TensorBoard event files (tensorboardX, no TensorFlow), metrics.jsonl and the console.

Only process 0 writes; other processes get a writer whose methods do nothing.
"""

from __future__ import annotations

import json
import logging as logging_std
import math
import pathlib
import sys
import time
from typing import Any, Mapping

from absl import logging
from tensorboardX import SummaryWriter


class MetricWriter:
  """Writes scalars to <workdir>/tensorboard and appends JSON lines to <workdir>/metrics.jsonl."""

  def __init__(self, workdir: str | pathlib.Path, enabled: bool = True):
    self.enabled = enabled
    self.workdir = pathlib.Path(workdir)
    self._tb = None
    if enabled:
      self.workdir.mkdir(parents=True, exist_ok=True)
      self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
      self._jsonl = open(self.workdir / "metrics.jsonl", "a", encoding="utf-8")

  def write_scalars(self, step: int, scalars: Mapping[str, float], prefix: str = "train") -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in scalars.items()}
    for k, v in clean.items():
      self._tb.add_scalar(f"{prefix}/{k}", v, step)
    record = {"step": int(step), "split": prefix, "time": time.time(),
              **{k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()

  def flush(self) -> None:
    if self.enabled:
      self._tb.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()


class ProgressBar:
  """A one-line progress bar with loss and images/s on stderr (redrawn in place on a terminal)."""

  def __init__(self, total: int, desc: str, enabled: bool = True, width: int = 24):
    self.total, self.desc, self.enabled, self.width = max(total, 1), desc, enabled, width
    self._tty = sys.stderr.isatty()

  def update(self, done: int, loss: float, images_per_s: float) -> None:
    if not self.enabled:
      return
    frac = min(done / self.total, 1.0)
    bar = "#" * int(frac * self.width) + "." * (self.width - int(frac * self.width))
    line = f"{self.desc} [{bar}] {done}/{self.total} loss {loss:.4f} {images_per_s:.1f} img/s"
    if self._tty:  # off a terminal the loop's console lines say the same
      sys.stderr.write("\r" + line)
      sys.stderr.flush()

  def close(self) -> None:
    if self.enabled and self._tty:
      sys.stderr.write("\n")


class _DropLibraryInfo(logging_std.Filter):
  """Drops INFO-level records logged from inside orbax/TFDS/grain (they log every file they touch)."""

  _NOISY = ("/orbax/", "/tensorflow_datasets/", "/grain/", "/etils/")

  def filter(self, record: logging_std.LogRecord) -> bool:
    return record.levelno > logging_std.INFO or not any(p in record.pathname for p in self._NOISY)


def quiet_library_logs() -> None:
  """Keeps absl's INFO output to our own messages (installed by train.py / eval.py)."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _DropLibraryInfo) for f in handler.filters):
    handler.addFilter(_DropLibraryInfo())
