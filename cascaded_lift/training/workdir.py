"""A training workdir's guards: one trainer at a time, and the run's config kept beside its checkpoints.

  with WorkdirLock(workdir):                 # refuses a second trainer; takes over a dead one's lock
    check_resume(config, workdir, allow=...) # compares with <workdir>/config.json, then (re)writes it

<workdir>/config.json is the resolved config of the run that wrote the checkpoints (written aside and
renamed into place). What a difference means (docs/what_happens_when.md):
  MEANING_FIELDS  the checkpoint's meaning: the network's shape, the skeleton, the crop and heatmap
                  geometry. A run, eval.py or the predictor given other values would compute wrong
                  answers with the right-looking weights: always an error that names the field.
  IGNORED_FIELDS  how a run is carried out, not what it computes (logging, checkpointing, evaluation,
                  data loading parallelism, the CPU plug-in's settings): never compared.
  everything else changes the training itself (schedule, batch size, data, losses, seed): on resume an
                  error unless the field is listed in config.resume.allow_changes (comma-separated keys or
                  prefixes, e.g. --config.resume.allow_changes=stage2.num_steps,stage2.learning_rate;
                  then logged).
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import pathlib
import socket
from typing import Any, Iterable, Mapping

from absl import logging

from cascaded_lift.errors import WorkdirError

CONFIG_FILE = "config.json"
LOCK_FILE = ".trainer.lock"
# Prefixes of flattened config keys ("model.", "data.image_size").
MEANING_FIELDS = ("model.", "skeleton", "data.image_size", "data.output_size", "data.depth_bins",
                  "data.depth_range_mm", "data.bbox_scale")
IGNORED_FIELDS = ("eval.", "log_every_steps", "progress_bar", "checkpoint.", "cpu.", "platform_ops",
                  "data.worker_count", "data.read_threads", "data.build_if_missing", "data.eval.", "resume.",
                  "init.", "data.train_3d.data_dir", "data.train_2d.data_dir")


def check_output_dir(path: str | pathlib.Path, what: str) -> pathlib.Path:
  """Creates `path` if needed and checks that files can be written there, before any expensive work.

  Raises WorkdirError naming `what` (e.g. "--workdir") when it is a file, or cannot be created or written.
  """
  path = pathlib.Path(path).expanduser()
  if path.exists() and not path.is_dir():
    raise WorkdirError(f"{what} {str(path)!r} is a file, not a folder")
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write-test-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
  except OSError as e:
    raise WorkdirError(f"{what} {str(path)!r} is not writable ({e.strerror or e})") from None
  return path


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
  """{'a.b.c': value} of a ConfigDict or mapping; tuples become lists (as in JSON)."""
  out: dict[str, Any] = {}
  items = config.items() if hasattr(config, "items") else []
  for key, value in items:
    name = f"{prefix}{key}"
    if hasattr(value, "items"):
      out.update(flatten(value, name + "."))
    else:
      out[name] = list(value) if isinstance(value, tuple) else value
  return out


def _matches(key: str, prefixes: Iterable[str]) -> bool:
  """Whether flattened `key` is one of `prefixes` or lies under one ("model." covers "model.head_width")."""
  return any(key == p.rstrip(".") or key.startswith(p if p.endswith(".") else p + ".") for p in prefixes)


def differences(saved: Mapping[str, Any], given: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
  """[(key, saved value, given value)] of the flattened keys whose values differ, in key order."""
  missing = object()
  keys = sorted(set(saved) | set(given))
  return [(k, saved.get(k, missing), given.get(k, missing)) for k in keys
          if json.dumps(saved.get(k, None), sort_keys=True, default=str) !=
          json.dumps(given.get(k, None), sort_keys=True, default=str) or (k in saved) != (k in given)]


def _fmt(value: Any) -> str:
  return "(absent)" if not isinstance(value, (str, int, float, bool, list, dict, type(None))) else json.dumps(value)


def read_run_config(workdir: str | pathlib.Path) -> dict[str, Any] | None:
  """The flattened config saved by the run in workdir, or None when there is none."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  if not path.is_file():
    return None
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise WorkdirError(f"{path}: cannot read the run's config ({e}); restore it or move it away") from None


def write_run_config(config: Any, workdir: str | pathlib.Path) -> pathlib.Path:
  """Writes the flattened config to workdir/config.json aside, then renames it into place."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  tmp = path.with_name(path.name + f".tmp{os.getpid()}")
  tmp.write_text(json.dumps(flatten(config), indent=1, sort_keys=True, default=str))
  os.replace(tmp, path)
  return path


def check_meaning(config: Any, workdir: str | pathlib.Path, what: str) -> None:
  """WorkdirError naming the first MEANING_FIELDS value that differs from the run saved in workdir.

  Used by eval.py and the predictor: a different crop size, heatmap size or network would run on the
  checkpoint's weights and give wrong answers without a word. Nothing to compare without config.json.
  """
  saved = read_run_config(workdir)
  if saved is None:
    return
  for key, old, new in differences(saved, flatten(config)):
    if _matches(key, MEANING_FIELDS):
      raise WorkdirError(f"{what}: config field {key} is {_fmt(new)} but the checkpoints in {str(workdir)!r} were "
                         f"trained with {_fmt(old)} (see {CONFIG_FILE} there); use the run's value")


def check_resume(config: Any, workdir: str | pathlib.Path, resuming: bool) -> list[str]:
  """Compares config with the saved run config when resuming; then saves config. Returns the allowed changes.

  Raises WorkdirError naming the first field that may not change (module docstring).
  """
  saved = read_run_config(workdir) if resuming else None
  allowed_changes: list[str] = []
  if saved is not None:
    allow = tuple(k.strip() for k in str(config.get("resume", {}).get("allow_changes", "") or "").split(",")
                  if k.strip())
    for key, old, new in differences(saved, flatten(config)):
      if _matches(key, IGNORED_FIELDS) or key.startswith("resume."):
        continue
      if _matches(key, MEANING_FIELDS):
        raise WorkdirError(f"resume {str(workdir)!r}: config field {key} is {_fmt(new)} but the checkpoints were "
                           f"trained with {_fmt(old)}; it changes what the checkpoints mean (use a new workdir)")
      if not _matches(key, allow):
        raise WorkdirError(f"resume {str(workdir)!r}: config field {key} is {_fmt(new)} but the run started with "
                           f"{_fmt(old)}; to change it on resume, pass --config.resume.allow_changes={key!r}")
      logging.warning("resume: config field %s changed from %s to %s (allowed by resume.allow_changes)", key,
                      _fmt(old), _fmt(new))
      allowed_changes.append(key)
  write_run_config(config, workdir)
  return allowed_changes


class WorkdirLock:
  """An exclusive lock on a training workdir, held while one trainer runs (flock on workdir/.trainer.lock).

  The kernel drops the lock when its process dies, so a lock file left by a dead trainer is taken over
  (with a message naming it); a live trainer's lock refuses the second one with a WorkdirError naming its
  process, host and start time.
  """

  def __init__(self, workdir: str | pathlib.Path):
    self.path = pathlib.Path(workdir) / LOCK_FILE
    self._file = None

  def __enter__(self) -> "WorkdirLock":
    self.path.parent.mkdir(parents=True, exist_ok=True)
    f = open(self.path, "a+", encoding="utf-8")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      f.seek(0)
      holder = f.read().strip() or "another process"
      f.close()
      if e.errno in (errno.EAGAIN, errno.EACCES):
        raise WorkdirError(f"workdir {str(self.path.parent)!r} is in use by a running trainer ({holder}); wait for "
                           "it or use another --workdir") from None
      raise
    f.seek(0)
    previous = f.read().strip()
    if previous:
      logging.warning("workdir %s: taking over the lock of a trainer that is no longer running (%s)",
                      self.path.parent, previous)
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on host {socket.gethostname()}, started "
            f"{datetime.datetime.now().isoformat(timespec='seconds')}\n")
    f.flush()
    self._file = f
    return self

  def __exit__(self, *exc: Any) -> None:
    if self._file is not None:
      self._file.seek(0)
      self._file.truncate()  # an empty file: released cleanly, nothing to take over
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None
