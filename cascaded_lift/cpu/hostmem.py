"""Host memory: make glibc keep freed memory for reuse instead of mapping fresh pages every step.

Why: XLA:CPU's YNNPACK kernels allocate whole-tensor temporaries with malloc from the worker threads
of its pool, many per step (a 256 MB intermediate was mapped 128 times in one call of a fused matmul;
strace). glibc serves a request that large from a worker thread with a fresh mmap and unmaps it on
free, so every page is faulted in and zeroed again on each use: the full model's training step took
1.27 million minor page faults and 4 s of system time out of 6.7 s (BENCHMARKS.md; docs/design.md section 10.4).
PyTorch's CPU training step does much the same (2.1-2.4 million faults).

`retain_freed_memory()` sets three glibc malloc options (mallopt) for the whole process:
  M_ARENA_MAX = 1        every thread allocates from the main arena, which can grow as large as needed
                         (a worker thread's own arena cannot hold a request over 64 MB, hence the mmaps);
  M_MMAP_MAX = 0         large requests come from that heap, not from mmap;
  M_TRIM_THRESHOLD = -1  freed memory is never returned to the kernel, so the next step reuses pages
                         that are already mapped.
The cost: the process keeps its peak heap until it exits, and its threads share one malloc lock. The
options act on arenas created afterwards, so call it before the JAX backend starts its threads (the
trainer does so first thing; `config.host_malloc = "default"` leaves glibc as it is). The same can be
had without code, before the process starts:
  GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=<large>

Linux with glibc only; elsewhere it does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

from absl import logging

# <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
MODES = ("retain", "default")


@functools.cache
def _libc() -> ctypes.CDLL | None:
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return None
  try:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  except OSError:
    return None


def retain_freed_memory() -> bool:
  """Sets M_ARENA_MAX=1, M_MMAP_MAX=0, M_TRIM_THRESHOLD=-1 (module docstring); True when applied."""
  libc = _libc()
  if libc is None or not hasattr(libc, "mallopt"):
    logging.info("hostmem: not glibc (%s %s); malloc left as it is", platform.system(), platform.libc_ver())
    return False
  ok = all(libc.mallopt(option, value) == 1
           for option, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))
  if not ok:
    logging.warning("hostmem: glibc refused a malloc option; freed memory may still be unmapped")
  return ok


def configure(mode: str) -> bool:
  """Applies config.host_malloc: "retain" (retain_freed_memory) or "default" (nothing)."""
  if mode not in MODES:
    raise ValueError(f"host_malloc must be one of {MODES}, got {mode!r}")
  return retain_freed_memory() if mode == "retain" else False
