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


def pytest_addoption(parser: pytest.Parser) -> None:
  parser.addoption("--full-size", action="store_true", default=False,
                   help="also run the tests marked full_size (the full ResNet-50 network end to end; minutes)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
  # The slow end-to-end runs first (a stable sort keeps each module's order): with `-n 2` and pytest.ini's
  # --dist worksteal they start early, and the worker that runs out of them takes the quick tests over,
  # instead of one worker finishing a long run alone at the end.
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)
  # The README's test command stays quick on 2 cores: full-size networks run only when asked for.
  if config.getoption("--full-size"):
    return
  skip = pytest.mark.skip(reason="full-size network: run with --full-size")
  for item in items:
    if "full_size" in item.keywords:
      item.add_marker(skip)


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
