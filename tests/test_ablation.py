"""experiments/ablation.py as a user runs it: one supervision variant of the tiny config, a few steps.

jh_bh (three of the five terms on, two off) keeps the test to one training run; the runner treats every
variant alike (--config.supervision), and the table of which terms each variant keeps is tested term by
term in tests/training/test_losses.py.
"""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SUPERVISED = {"jh_bh": {"bone", "joint", "coord"}}
TERMS = ("bone", "joint", "volume_3d", "depth", "coord")


def run_ablation(out_dir):
  cmd = [sys.executable, "experiments/ablation.py", f"--out_dir={out_dir}", "--config=configs/tiny.py",
         "--seeds=0", "--stage1_steps=2", "--stage2_steps=1",
         f"--variants={','.join(SUPERVISED)}"]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)


@pytest.mark.slow
def test_ablation_runner_switches_terms_off_and_writes_the_table(tmp_path):
  proc = run_ablation(tmp_path)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  for variant, kept in SUPERVISED.items():
    workdir = tmp_path / f"{variant}_seed0"
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "trunk_grad_norm/coord" in r]
    assert logged, variant
    for record in logged:
      for term in TERMS:
        # A switched-off term contributes exactly no gradient to the trunk (and no loss); the others do.
        assert (record[f"trunk_grad_norm/{term}"] > 0) == (term in kept), (variant, term, record)
        assert (record[f"loss/{term}"] > 0) == (term in kept), (variant, term)
      assert sum(record[f"trunk_grad_share/{t}"] for t in TERMS) == pytest.approx(1.0, rel=1e-5)
    metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert metrics["voxel_error"] > 0 and metrics["mpjpe"] > 0
  summary = json.loads((tmp_path / "ablation.json").read_text())
  assert [r["variant"] for r in summary["runs"]] == list(SUPERVISED)
  table = (tmp_path / "ablation.md").read_text()
  for variant in SUPERVISED:
    assert f"| {variant} |" in table
  assert (tmp_path / "ablation.png").stat().st_size > 1000
  # Finished runs are kept: a second call only rebuilds the table.
  again = run_ablation(tmp_path)
  assert again.returncode == 0 and "training" not in again.stdout
  assert all(r["seconds"] is None for r in json.loads((tmp_path / "ablation.json").read_text())["runs"])
