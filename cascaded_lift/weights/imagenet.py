"""ImageNet ResNet weights by name: torchvision's published checkpoints, downloaded, verified, cached, converted.

  path = imagenet.fetch("resnet50")        # <cache>/weights/resnet50-0676ba61.safetensors
  path = imagenet.fetch("resnet50", from_file="resnet50-0676ba61.pth")   # offline: a copy fetched elsewhere
  imagenet.resolve_backbone_weights("resnet50")  # what config.init.backbone_weights means (None = random)

The command `cascaded-lift-weights` (weights/cli.py) does the same from a shell.

Names (CHECKPOINTS): "resnet50" is torchvision's ResNet50_Weights.IMAGENET1K_V1 (the weights the paper's
era started from, 76.13 % top-1), "resnet50_v2" its IMAGENET1K_V2 (80.86 %, a newer training recipe). Both
are in torchvision naming (conv1.weight, layer1.0.downsample.0.weight, ..., fc.*), which
`convert.load_resnet_into` reads.

Checksums. torchvision names each file `<arch>-<first 8 hex digits of its SHA-256>.pth` and checks only
that prefix (torch.hub's check_hash); the full SHA-256 of these files is not published next to them, and
no public source for it was found. So the registered expectation is the published 8-hex prefix, checked
as torchvision checks it, and the full SHA-256 of the file that passed is recorded in the converted
file's safetensors metadata (`source_sha256`, beside `expected_sha256`, `source` and `name`) so that a
later run can compare against it. `sha256=` (`--sha256`) replaces the expectation with a full digest or
a prefix of at least 8 hex digits: for a file the user checked some other way (a mirror's copy, a
re-published file, a test file); the cache entry then records that the expectation was overridden.
There is no switch that skips the check: a file of one's own needs no cache entry, its path goes
straight into config.init.backbone_weights.

Cache: $CASCADED_LIFT_CACHE, else $XDG_CACHE_HOME/cascaded_lift, else ~/.cache/cascaded_lift; files under
its weights/ folder. A download streams into a hidden `.<file>.<random>.part` file in that folder and is
renamed to `<file>.pth` only once complete and verified; the converted file is written the same way, so
an interrupted run never leaves a file that looks complete. The verified .pth is deleted after a
successful conversion (the .safetensors holds the same numbers) and kept when the conversion failed
(e.g. PyTorch missing), so the next run converts it without downloading again.

Converting a .pth reads it with PyTorch (`convert.load_state_dict`); the result loads without PyTorch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import pathlib
import re
import socket
import tempfile
import urllib.error
import urllib.request
from typing import Callable

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from cascaded_lift.errors import ConfigError, UserError
from cascaded_lift.weights import convert

CACHE_ENV = "CASCADED_LIFT_CACHE"
RANDOM = "none"  # config.init.backbone_weights value for a random start on purpose
COMMAND = "cascaded-lift-weights"
_CHUNK = 1 << 20  # bytes per read while downloading and hashing
_FILE_MODE = 0o644  # mkstemp makes 0600 files; a cache may be shared by the users of a machine
# torchvision ResNet names (after 'module.' prefixes are dropped); fc.* is the ImageNet classifier.
_RESNET_KEY = re.compile(r"^(conv1|bn1|fc|layer[1-4]\.\d+\.(conv\d|bn\d|downsample\.[01]))\."
                         r"(weight|bias|running_mean|running_var|num_batches_tracked)$")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """One published ImageNet checkpoint: url's last component is `<arch>-<sha256 prefix>.pth`."""
  name: str
  url: str
  sha256: str  # the expected digest or its published prefix (lower-case hex, >= 8 digits)
  description: str

  @property
  def file_name(self) -> str:
    return self.url.rsplit("/", 1)[-1]

  @property
  def stem(self) -> str:
    return self.file_name.rsplit(".", 1)[0]


CHECKPOINTS: dict[str, Checkpoint] = {c.name: c for c in (
    Checkpoint("resnet50", "https://download.pytorch.org/models/resnet50-0676ba61.pth", "0676ba61",
               "torchvision ResNet50_Weights.IMAGENET1K_V1 (ImageNet top-1 76.13 %)"),
    Checkpoint("resnet50_v2", "https://download.pytorch.org/models/resnet50-11ad3fa6.pth", "11ad3fa6",
               "torchvision ResNet50_Weights.IMAGENET1K_V2 (ImageNet top-1 80.86 %)"),
)}


class ChecksumError(UserError, ValueError):
  """A file whose SHA-256 is not the expected one (the message names both digests and the file)."""


class DownloadError(UserError, OSError):
  """A download that failed: the server answered with an error status."""


class NoNetworkError(DownloadError):
  """The server could not be reached (no network, DNS, refused, timed out)."""


class TruncatedDownloadError(DownloadError):
  """The connection ended before the announced Content-Length was received."""


# ----------------------------------------------------------------------------- names and the cache

def checkpoint(name: str) -> Checkpoint:
  """The registered Checkpoint called `name`; UserError listing the known names otherwise."""
  if name not in CHECKPOINTS:
    raise UserError(f"unknown ImageNet weights {name!r}; known: {', '.join(CHECKPOINTS)}")
  return CHECKPOINTS[name]


def cache_dir() -> pathlib.Path:
  """$CASCADED_LIFT_CACHE, else $XDG_CACHE_HOME/cascaded_lift, else ~/.cache/cascaded_lift (not created)."""
  if os.environ.get(CACHE_ENV):
    return pathlib.Path(os.environ[CACHE_ENV]).expanduser()
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
  return pathlib.Path(base).expanduser() / "cascaded_lift"


def cached_path(name: str, cache: str | os.PathLike | None = None) -> pathlib.Path:
  """Where the converted weights of `name` live: <cache>/weights/<arch>-<hash prefix>.safetensors."""
  root = pathlib.Path(cache).expanduser() if cache is not None else cache_dir()
  return root / "weights" / f"{checkpoint(name).stem}.safetensors"


def source_metadata(path: str | os.PathLike) -> dict[str, str]:
  """The safetensors metadata of a converted file: name, source, source_sha256, expected_sha256, ..."""
  with safe_open(os.fspath(path), framework="numpy") as f:
    return dict(f.metadata() or {})


def fetch_command(name: str) -> str:
  """The shell command that puts `name` into the cache."""
  return f"{COMMAND} {name}"


# ----------------------------------------------------------------------------- config semantics

def resolve_backbone_weights(value: str | None, *, field: str = "config.init.backbone_weights",
                             cache: str | os.PathLike | None = None) -> pathlib.Path | None:
  """What config.init.backbone_weights means: the file to load, or None for a random start.

  "none" (any case) = random on purpose; a registered name ("resnet50") = its converted file in the cache;
  anything else = a path (.safetensors / .npz / .pth; '~' expanded). An empty value is refused, so a
  forgotten setting never silently becomes a random start. Raises ConfigError (one line, giving the
  `cascaded-lift-weights` command to run) for "", a name not yet in the cache, or a missing file.
  """
  value = (value or "").strip()
  choices = (f"set it to 'resnet50' (ImageNet, as in the paper; fetch it once with `{fetch_command('resnet50')}`; "
             f"registered: {', '.join(CHECKPOINTS)}), to a weights file, or to {RANDOM!r} for random weights "
             "on purpose")
  if not value:
    raise ConfigError(f"{field} is empty: the paper starts the backbone from ImageNet; {choices}")
  if value.lower() == RANDOM:
    return None
  if value in CHECKPOINTS:
    path = cached_path(value, cache)
    if not path.is_file():
      raise ConfigError(
          f"{field}={value!r}: the ImageNet weights are not in the cache ({path}); run "
          f"`{fetch_command(value)}` first (without internet: download {CHECKPOINTS[value].url} elsewhere, then "
          f"`{fetch_command(value)} --from_file {CHECKPOINTS[value].file_name}`), or set it to 'none' for a "
          "random start")
    return path
  path = pathlib.Path(value).expanduser()
  if not path.is_file():
    raise ConfigError(f"{field}={value!r}: no such file, and not a registered name; {choices}")
  return path


# ----------------------------------------------------------------------------- fetching

def fetch(name: str, *, from_file: str | os.PathLike | None = None, url: str | None = None,
          sha256: str | None = None, cache: str | os.PathLike | None = None, force: bool = False,
          timeout_s: float = 60.0, progress: Callable[[int, int | None], None] | None = None) -> pathlib.Path:
  """Puts the ImageNet weights `name` into the cache as .safetensors and returns that file's path.

  Args:
    name: a registered name (CHECKPOINTS).
    from_file: a local copy of the checkpoint (.pth) to use instead of downloading.
    url: download from here instead of the registered URL (a mirror; tests use a local server).
    sha256: the expected SHA-256 (64 hex, or a prefix of >= 8) instead of the registered one.
    cache: the cache folder (default cache_dir()).
    force: convert again even when the converted file is already cached.
    timeout_s: socket timeout of the download, seconds per blocking operation.
    progress: called as progress(bytes_received, content_length_or_None) while downloading.
  Raises:
    ChecksumError, NoNetworkError, TruncatedDownloadError, DownloadError, or UserError for a file that is
    not a torchvision-named ResNet state dict or cannot be read; each names the file or URL.
  """
  ckpt = checkpoint(name)  # an entry already in the cache is returned as it is (force=True redoes it)
  expected = _expected_digest(sha256) if sha256 is not None else ckpt.sha256
  target = cached_path(name, cache)
  if target.is_file() and not force:
    return target
  folder = target.parent
  try:
    folder.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(f"cache folder {folder} (${CACHE_ENV}): cannot create it: {e.strerror or e}") from None
  if from_file is not None:
    source = pathlib.Path(from_file).expanduser()
    if not source.is_file():
      raise UserError(f"--from_file {source}: no such file")
    digest = _check_digest(_sha256_of(source), expected, str(source), ckpt, sha256 is not None)
    origin, downloaded = str(source.resolve()), None
  else:
    source = folder / ckpt.file_name  # a verified download that a failed conversion left behind
    digest = _sha256_of(source) if source.is_file() else None
    if digest is None or not digest.startswith(expected):
      source.unlink(missing_ok=True)
      source, digest = _download(url or ckpt.url, folder, ckpt, expected, sha256 is not None, timeout_s, progress)
    origin, downloaded = url or ckpt.url, source
  metadata = {"name": name, "source": origin, "source_file": ckpt.file_name, "source_sha256": digest,
              "expected_sha256": expected, "expectation": "override" if sha256 is not None else "registered",
              "naming": "torchvision"}
  _convert(source, target, metadata)
  if downloaded is not None:
    downloaded.unlink(missing_ok=True)
  return target


def _expected_digest(sha256: str) -> str:
  digest = sha256.strip().lower()
  if not re.fullmatch(r"[0-9a-f]{8,64}", digest):
    raise UserError(f"--sha256 {sha256!r}: expected 8 to 64 hexadecimal digits (a SHA-256 or its prefix)")
  return digest


def _sha256_of(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      h.update(chunk)
  return h.hexdigest()


def _check_digest(got: str, expected: str, what: str, ckpt: Checkpoint, overridden: bool) -> str:
  """Returns `got` when it starts with `expected`; ChecksumError naming both and the file otherwise."""
  if not got.startswith(expected):
    # Registered expectations are the published 8-hex prefixes; an override may be a full digest.
    shown = f"{expected} (--sha256)" if overridden else f"{expected}... (the published prefix)"
    raise ChecksumError(f"{what}: SHA-256 {got} does not match the expected {shown} for {ckpt.file_name}; the "
                        f"file is damaged, incomplete or a different checkpoint: download {ckpt.url} again")
  return got


def _download(url: str, folder: pathlib.Path, ckpt: Checkpoint, expected: str, overridden: bool, timeout_s: float,
              progress: Callable[[int, int | None], None] | None) -> tuple[pathlib.Path, str]:
  """Streams url into folder/<file>.pth via a hidden .part file; returns (path, full SHA-256 hex)."""
  offline_hint = (f"on a machine without internet, download {ckpt.url} elsewhere and pass it with "
                  f"`{fetch_command(ckpt.name)} --from_file {ckpt.file_name}`")
  try:
    response = urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "cascaded_lift"}),
                                      timeout=timeout_s)
  except ValueError as e:  # not a URL urllib can open
    raise UserError(f"--url {url!r}: {e}") from None
  except urllib.error.HTTPError as e:
    raise DownloadError(f"{url}: the server answered HTTP {e.code} {e.reason}; {offline_hint}") from None
  except (urllib.error.URLError, OSError) as e:  # DNS, refused, unreachable, timed out
    reason = getattr(e, "reason", None) or e
    raise NoNetworkError(f"cannot download {url}: {reason}; {offline_hint}") from None
  announced = response.headers.get("Content-Length")
  announced = int(announced) if announced and announced.isdigit() else None
  fd, part = tempfile.mkstemp(dir=folder, prefix=f".{ckpt.file_name}.", suffix=".part")
  part = pathlib.Path(part)
  try:
    h, received = hashlib.sha256(), 0
    with response, os.fdopen(fd, "wb") as out:
      while True:
        try:
          chunk = response.read(_CHUNK)
        except (http.client.IncompleteRead, ConnectionError, socket.timeout) as e:
          if announced is None:
            raise NoNetworkError(f"download of {url} broke off after {received} bytes: {e}; {offline_hint}") from None
          break  # reported below as a truncation, with the counts
        if not chunk:
          break
        out.write(chunk)
        h.update(chunk)
        received += len(chunk)
        if progress is not None:
          progress(received, announced)
    if announced is not None and received != announced:
      raise TruncatedDownloadError(
          f"download of {url} truncated: received {received} of the {announced} bytes announced "
          f"(Content-Length); nothing was kept; run the command again, or {offline_hint}")
    digest = _check_digest(h.hexdigest(), expected, f"{url} (downloaded, {received} bytes)", ckpt, overridden)
    done = folder / ckpt.file_name
    os.chmod(part, _FILE_MODE)
    os.replace(part, done)
    return done, digest
  finally:
    part.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- conversion

def _convert(source: pathlib.Path, target: pathlib.Path, metadata: dict[str, str]) -> None:
  """Reads a torchvision-named ResNet state dict and writes it as .safetensors (float32; counters dropped)."""
  try:
    state_dict = convert.load_state_dict(source)
  except ImportError:
    raise UserError(f"{source}: converting a PyTorch .pth needs PyTorch (pip install torch, or the [torch] "
                    "extra); a verified download stays in the cache for the next run") from None
  except Exception as e:  # pylint: disable=broad-except  # torch.load's many ways of refusing a bad file
    raise UserError(f"{source}: cannot read it as a PyTorch state dict: {' '.join(str(e).split())}") from None
  arrays = {}
  for key, value in state_dict.items():
    key = ".".join(p for p in key.split(".") if p != "module")  # DataParallel prefixes
    if not _RESNET_KEY.match(key):
      raise UserError(f"{source}: {key!r} is not a torchvision ResNet weight name (expected conv1.*, bn1.*, "
                      "layer<1-4>.<i>.*, fc.*)")
    if not key.endswith("num_batches_tracked"):
      arrays[key] = np.ascontiguousarray(np.asarray(value, np.float32))
  for needed in ("conv1.weight", "bn1.weight", "layer4.0.conv1.weight"):
    if needed not in arrays:
      raise UserError(f"{source}: {needed!r} is missing; not a torchvision ResNet state dict")
  fd, part = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
  os.close(fd)
  try:
    save_file(arrays, part, metadata=metadata)
    os.chmod(part, _FILE_MODE)
    os.replace(part, target)
  finally:
    pathlib.Path(part).unlink(missing_ok=True)
