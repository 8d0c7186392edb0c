"""Shared test fixtures: the real dataset samples in ../shared/fixtures (tests skip when absent)."""

import os
import pathlib

import pytest

# Tests see one CPU device unless a test asks for more in a subprocess.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

FIXTURES = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


@pytest.fixture
def fixtures_dir() -> pathlib.Path:
  """The shared real-data samples; skips the test when the folder is absent."""
  if not FIXTURES.is_dir():
    pytest.skip(f"real dataset samples not found at {FIXTURES}")
  return FIXTURES
