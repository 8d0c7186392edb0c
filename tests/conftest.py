"""Shared test fixtures: the real dataset samples in ../shared/fixtures (tests skip when absent)."""

import os
import pathlib
import tempfile

import pytest

# Tests see one CPU device unless a test asks for more in a subprocess.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the test processes and the train.py / eval.py runs they start:
# the many subprocess runs of the tiny config compile the same programs (entries are keyed by the
# program and the JAX version, so a stale entry is never used).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"cascaded_lift_test_jax_cache_{os.getuid()}"))

FIXTURES = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


@pytest.fixture
def fixtures_dir() -> pathlib.Path:
  """The shared real-data samples; skips the test when the folder is absent."""
  if not FIXTURES.is_dir():
    pytest.skip(f"real dataset samples not found at {FIXTURES}")
  return FIXTURES


@pytest.fixture
def onednn_kernels() -> None:
  """Skips unless the oneDNN kernels build here (cascaded_lift/cpu/kernels); CI installs oneDNN, so there a
  missing kernel is a failure, not a skip."""
  from cascaded_lift.cpu.kernels import onednn  # pylint: disable=g-import-not-at-top
  reason = onednn.unavailable_reason()
  if reason is not None:
    if os.environ.get("CI"):
      pytest.fail(f"CI must have the oneDNN kernels: {reason}")
    pytest.skip(f"oneDNN kernels unavailable: {reason}")
