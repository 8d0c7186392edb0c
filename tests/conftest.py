"""Shared test fixtures: the real dataset samples in ../shared/fixtures (tests skip when absent)."""

import os
import pathlib
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # configs/ is imported as a package from the repository root
  sys.path.insert(0, str(REPO_ROOT))

# Tests see one CPU device unless a test asks for more in a subprocess.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

FIXTURES = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


@pytest.fixture
def fixtures_dir() -> pathlib.Path:
  """The shared real-data samples; skips the test when the folder is absent."""
  if not FIXTURES.is_dir():
    pytest.skip(f"real dataset samples not found at {FIXTURES}")
  return FIXTURES
