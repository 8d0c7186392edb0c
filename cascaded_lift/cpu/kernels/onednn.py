"""oneDNN convolution kernels for XLA:CPU, compiled on first use and called through the XLA FFI.

XLA:CPU's own convolutions are level with PyTorch's in the forward pass but 2-5x slower in the
backward pass (kernel gradients as whole-map "window" convolutions, plus the transposes XLA inserts
around them; BENCHMARKS.md). PyTorch's CPU convolutions are oneDNN's. `onednn_conv.cc` (beside this
file) exposes oneDNN's float32 convolution forward, backward-data and backward-weights primitives to
XLA as three FFI custom calls on NHWC activations and HWIO kernels, so that no layout change happens
outside them.

The shared library is built the first time it is needed, with the C++ compiler ($CXX, else g++),
JAX's FFI headers (jax.ffi.include_dir()) and oneDNN 2.x or 3.x, found in this order:
1. $CASCADED_LIFT_DNNL_ROOT: an install prefix (include/ and lib/), or `system` for the compiler's
   own search paths;
2. the Python environment's prefix, where PyPI's `onednn-cpu-gomp` and `onednn-devel-cpu-gomp` put
   lib/libdnnl.so.3 and include/ (setup.py installs them on Linux x86_64: oneDNN 3.2 on GNU OpenMP);
3. the compiler's search paths (Debian/Ubuntu: `apt-get install libdnnl-dev`, oneDNN 2.6).
oneDNN 3.x is preferred: its backward-data convolutions are about 25 % faster than 2.6's on
AVX-512 (BENCHMARKS.md). The library goes into a cache folder keyed by the source, jaxlib version,
compiler, flags and oneDNN version header ($CASCADED_LIFT_KERNEL_CACHE, default
~/.cache/cascaded_lift/kernels). The build writes to a temporary name and renames, so
concurrent processes (test workers, data-parallel hosts) never load a half-written library.

  from cascaded_lift.cpu.kernels import onednn
  onednn.available()        # True once built and registered; never raises
  onednn.unavailable_reason()   # why not (compiler output, missing library), or None
  onednn.register()         # builds + registers, raises KernelUnavailable with the reason
  onednn.version()          # the oneDNN version the kernels run on, e.g. "3.2.0"

The custom-call names are in TARGETS; conv_ops.conv2d uses them (CPU only, float32 only).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import jax
import jaxlib

SOURCE = pathlib.Path(__file__).with_name("onednn_conv.cc")
# FFI target name -> exported handler symbol in the library.
TARGETS = {
    "cascaded_lift_onednn_conv_forward": "CascadedLiftConvForward",
    "cascaded_lift_onednn_conv_backward_data": "CascadedLiftConvBackwardData",
    "cascaded_lift_onednn_conv_backward_weights": "CascadedLiftConvBackwardWeights",
}
_CXX_FLAGS = ("-O2", "-std=c++17", "-shared", "-fPIC", "-w")


class KernelUnavailable(RuntimeError):
  """The oneDNN kernels could not be built or loaded; the message says why."""


def cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("CASCADED_LIFT_KERNEL_CACHE",
                                     pathlib.Path.home() / ".cache" / "cascaded_lift" / "kernels"))


def _compiler() -> str:
  return os.environ.get("CXX", "g++")


def dnnl_root() -> pathlib.Path | None:
  """The oneDNN install prefix the kernels build against, or None for the compiler's search paths."""
  root = os.environ.get("CASCADED_LIFT_DNNL_ROOT")
  if root:
    return None if root == "system" else pathlib.Path(root)
  prefix = pathlib.Path(sys.prefix)
  if (prefix / "include" / "oneapi" / "dnnl" / "dnnl.hpp").is_file() and any(
      (prefix / d / "libdnnl.so").exists() for d in ("lib", "lib64")):
    return prefix
  return None


def _dnnl_flags() -> list[str]:
  root = dnnl_root()
  if root is None:
    return []
  lib = next((d for d in ("lib", "lib64") if (root / d).is_dir()), "lib")
  return [f"-I{root}/include", f"-L{root}/{lib}", f"-Wl,-rpath,{root}/{lib}"]


def _dnnl_version_header() -> bytes:
  """The text of the dnnl_version.h the build will include (b"" when not found), for the cache key."""
  root = dnnl_root()
  for include in ([root / "include"] if root else []) + [pathlib.Path("/usr/local/include"),
                                                          pathlib.Path("/usr/include")]:
    header = include / "oneapi" / "dnnl" / "dnnl_version.h"
    if header.is_file():
      return header.read_bytes()
  return b""


def _library_path() -> pathlib.Path:
  key = hashlib.sha256()
  for part in (SOURCE.read_bytes(), jaxlib.__version__.encode(), _compiler().encode(),
               " ".join(_CXX_FLAGS + tuple(_dnnl_flags())).encode(), _dnnl_version_header()):
    key.update(part)
  return cache_dir() / f"libcascaded_lift_onednn-{key.hexdigest()[:16]}.so"


def build(path: pathlib.Path) -> None:
  """Compiles onednn_conv.cc into the shared library `path` (atomically); raises KernelUnavailable."""
  cxx = _compiler()
  if shutil.which(cxx) is None:
    raise KernelUnavailable(f"no C++ compiler {cxx!r} on PATH (set $CXX) to build {SOURCE.name}")
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
  os.close(fd)
  cmd = [cxx, *_CXX_FLAGS, f"-I{jax.ffi.include_dir()}", *_dnnl_flags(), str(SOURCE), "-o", tmp, "-ldnnl"]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
      lines = (proc.stderr or proc.stdout).strip().splitlines()
      first = next((line for line in lines if "error" in line), None)  # the cause; later lines often follow from it
      tail = "\n".join(([first, "..."] if first is not None and first not in lines[-12:] else []) + lines[-12:])
      raise KernelUnavailable(f"building {SOURCE} failed ({' '.join(cmd)}):\n{tail}\n"
                              "oneDNN 2.x or 3.x headers and library are needed (pip install "
                              "onednn-devel-cpu-gomp; or Debian/Ubuntu: apt-get install libdnnl-dev; or set "
                              "CASCADED_LIFT_DNNL_ROOT to an install prefix), and jaxlib's XLA FFI headers "
                              "(jax.ffi.include_dir(); errors in xla/ffi/ mean a jaxlib this source does not "
                              "match: install jax and jaxlib of one release)")
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


class _DnnlVersion(ctypes.Structure):  # dnnl_version_t (dnnl_types.h), the fields read here
  _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
              ("hash", ctypes.c_char_p)]


@functools.cache
def _load() -> ctypes.CDLL | str:
  """Builds (if needed), loads and registers the FFI targets; returns the library or the failure reason."""
  if not sys.platform.startswith("linux"):
    return f"the oneDNN kernels are built for Linux only (this is {sys.platform})"
  try:
    path = _library_path()
    if not path.exists():
      try:
        build(path)
      except OSError as e:  # a read-only or full cache folder, a vanished temporary file
        raise KernelUnavailable(f"cannot write the kernels' library under {str(path.parent)!r} ({e.strerror or e}); "
                                "set CASCADED_LIFT_KERNEL_CACHE to a writable folder") from e
    try:
      lib = ctypes.CDLL(str(path))
    except OSError as e:
      raise KernelUnavailable(f"loading {path} failed: {e}") from e
    for target, symbol in TARGETS.items():
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  except KernelUnavailable as e:
    return str(e)
  return lib


def _register_once() -> str | None:
  loaded = _load()
  return loaded if isinstance(loaded, str) else None


def max_concurrent_calls() -> int:
  """The most kernel calls this process has seen executing at once (the kernels serialise: 1, or 0
  before the first call); raises KernelUnavailable when the kernels are unavailable."""
  register()
  lib = _load()
  return int(lib.CascadedLiftOnednnMaxConcurrency())


def version() -> str | None:
  """The version of the oneDNN library the kernels run on (e.g. "3.2.0"), None when unavailable."""
  lib = _load()
  if isinstance(lib, str):
    return None
  get = lib.dnnl_version  # found through the kernels' library, which links libdnnl
  get.restype = ctypes.POINTER(_DnnlVersion)
  v = get().contents
  return f"{v.major}.{v.minor}.{v.patch}"


def unavailable_reason() -> str | None:
  """None when the kernels are registered (building them if needed), else why they cannot be."""
  return _register_once()


def available() -> bool:
  return _register_once() is None


def register() -> None:
  """Makes the FFI targets in TARGETS callable on CPU; raises KernelUnavailable with the reason."""
  reason = _register_once()
  if reason is not None:
    raise KernelUnavailable(reason)
