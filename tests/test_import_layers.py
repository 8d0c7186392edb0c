"""The package's import layers (docs/design.md section 9): import-linter's contracts in .importlinter,
and the same rule for configs/ and datasets/, which install from folders the linter cannot see."""

import ast
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LINT_IMPORTS = shutil.which("lint-imports", path=os.pathsep.join([str(pathlib.Path(sys.executable).parent),
                                                                  os.environ.get("PATH", "")]))
pytestmark = pytest.mark.skipif(LINT_IMPORTS is None, reason="import-linter is not installed (the test extra)")


def _lint(root: pathlib.Path) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(root))
  return subprocess.run([LINT_IMPORTS, "--config", str(root / ".importlinter"), "--no-cache"], cwd=root, env=env,
                        capture_output=True, text=True, timeout=300, check=False)


def test_contracts_hold():
  out = _lint(REPO)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
  assert "0 broken" in out.stdout and "Layers, highest first KEPT" in out.stdout


@pytest.mark.parametrize("module, upward", [
    ("models/ops.py", "from cascaded_lift import platform"),              # the network learning about CPUs
    ("training/losses.py", "from cascaded_lift.evaluation import evaluate"),  # training calling evaluation
    ("data/augment.py", "from cascaded_lift.models import ops"),          # the pipeline importing the network
])
def test_an_upward_import_breaks_a_contract(tmp_path, module, upward):
  root = tmp_path / "repo"
  shutil.copytree(REPO / "cascaded_lift", root / "cascaded_lift", ignore=shutil.ignore_patterns("__pycache__"))
  shutil.copy(REPO / ".importlinter", root / ".importlinter")
  path = root / "cascaded_lift" / module
  path.write_text(path.read_text() + f"\n{upward}  # noqa\n")
  out = _lint(root)
  assert out.returncode != 0, out.stdout[-2000:]
  assert "BROKEN" in out.stdout


def _imports(path: pathlib.Path) -> set[str]:
  names = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names.update(f"{node.module}.{a.name}" for a in node.names)
  return {n for n in names if n.startswith("cascaded_lift")}


# What the installed-from-outside subpackages may import from the library.
ALLOWED = {
    "datasets": ("cascaded_lift.datasets", "cascaded_lift.skeleton", "cascaded_lift.geometry",
                 "cascaded_lift.data.schema", "cascaded_lift.errors"),
    "configs": ("cascaded_lift.configs", "cascaded_lift.data.config"),
}


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_configs_and_datasets_import_only_the_layers_below(folder):
  bad = {}
  for path in sorted((REPO / folder).rglob("*.py")):
    wrong = sorted(n for n in _imports(path) if not n.startswith(ALLOWED[folder]))
    if wrong:
      bad[str(path.relative_to(REPO))] = wrong
  assert not bad
