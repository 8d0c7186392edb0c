"""hostmem.retain_freed_memory: a large block freed by a worker thread is reused, not faulted in anew.

Each case runs in a fresh process (malloc options are process-wide and act on arenas created later):
a worker thread allocates 256 MB with libc's malloc, writes every page, frees it, and does it again;
the second round's minor page faults (getrusage) tell whether the pages were kept.
"""

import platform
import subprocess
import sys

import pytest

from cascaded_lift.cpu import hostmem

_SCRIPT = """
import ctypes, resource, sys, threading
from cascaded_lift.cpu import hostmem
applied = hostmem.configure(sys.argv[1])
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 256 << 20
faults = []
def work():
  for _ in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(p)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
t = threading.Thread(target=work)
t.start(); t.join()
print(applied, faults[0], faults[1])
"""

_PAGES = (256 << 20) // 4096


def _run(mode: str) -> tuple[str, int, int]:
  out = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, timeout=120, check=True)
  applied, first, second = out.stdout.split()
  return applied, int(first), int(second)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_retained_memory_is_reused_without_page_faults():
  applied, _, second_default = _run("default")
  assert applied == "False"
  # glibc as it is: the worker thread's 256 MB is a fresh mapping each time, every page faulted in.
  assert second_default > 0.9 * _PAGES
  applied, first, second = _run("retain")
  assert applied == "True"
  assert first > 0.9 * _PAGES          # the heap grows once...
  assert second < 0.01 * _PAGES        # ...and its pages are reused


def test_unknown_mode_is_refused():
  with pytest.raises(ValueError, match="host_malloc must be one of"):
    hostmem.configure("jemalloc")
