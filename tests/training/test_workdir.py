"""What happens when a workdir is misused (docs/what_happens_when.md): real train.py / eval.py /
cascaded-lift-predict runs on one tiny trained workdir, each fault on a copy of it."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from cascaded_lift.errors import WorkdirError
from cascaded_lift.inference import cli as predict_cli
from cascaded_lift.training import workdir as workdir_lib

REPO = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(script: str, workdir, data_dir, *flags: str) -> subprocess.CompletedProcess:
  cmd = [sys.executable, str(REPO / script), "--config", str(REPO / "configs" / "tiny.py"), "--workdir", str(workdir),
         f"--config.data.train_3d.data_dir={data_dir}", f"--config.data.eval.data_dir={data_dir}", *flags]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)


def _error_line(proc: subprocess.CompletedProcess, program: str) -> str:
  """The one `program: error:` line of stderr (absl's and orbax's log lines aside)."""
  lines = [l for l in proc.stderr.splitlines() if l.startswith(f"{program}: error:")]
  assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr[-3000:])
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(workdir, data_dir) of a finished tiny run: checkpoints at steps 2, 4, 6, config.json."""
  root = tmp_path_factory.mktemp("trained")
  proc = _run("train.py", root / "run", root / "data", "--config.eval.enabled=False")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return root / "run", root / "data"


def _copy(trained, tmp_path) -> pathlib.Path:
  workdir = tmp_path / "run"
  shutil.copytree(trained[0], workdir)
  return workdir


def test_run_config_is_saved(trained):
  saved = json.loads((trained[0] / workdir_lib.CONFIG_FILE).read_text())
  assert saved["data.image_size"] == 32 and saved["stage1.batch_size"] == 8 and saved["model.resnet_depth"] == 18


def test_second_trainer_is_refused_and_a_dead_ones_lock_is_taken_over(trained, tmp_path, caplog):
  workdir = _copy(trained, tmp_path)
  with workdir_lib.WorkdirLock(workdir):
    with pytest.raises(WorkdirError, match=r"in use by a running trainer \(pid \d+ on host"):
      workdir_lib.WorkdirLock(workdir).__enter__()
    line = _error_line(_run("train.py", workdir, trained[1]), "train.py")
    assert "is in use by a running trainer" in line and f"pid {os.getpid()}" in line
  # A lock file left by a process that died (the kernel dropped its lock): taken over, with a message.
  (workdir / workdir_lib.LOCK_FILE).write_text("pid 999999 on host elsewhere, started 2026-01-01T00:00:00\n")
  with workdir_lib.WorkdirLock(workdir):
    assert str(os.getpid()) in (workdir / workdir_lib.LOCK_FILE).read_text()
  assert any("taking over the lock" in r.getMessage() and "pid 999999" in r.getMessage() for r in caplog.records)


def test_resume_with_another_batch_size_is_refused_unless_allowed(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  line = _error_line(_run("train.py", workdir, trained[1], "--config.stage1.batch_size=4"), "train.py")
  assert "stage1.batch_size is 4 but the run started with 8" in line and "resume.allow_changes" in line
  line = _error_line(_run("train.py", workdir, trained[1], "--config.data.image_size=64", "--config.data.output_size=16",
                          "--config.resume.allow_changes=data.image_size,data.output_size"), "train.py")
  assert "data.image_size is 64" in line and "changes what the checkpoints mean" in line
  proc = _run("train.py", workdir, trained[1], "--config.eval.enabled=False", "--config.stage2.num_steps=4",
              "--config.resume.allow_changes=stage2.num_steps")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "stage2.num_steps changed from 2 to 4 (allowed by resume.allow_changes)" in proc.stderr
  assert json.loads((workdir / workdir_lib.CONFIG_FILE).read_text())["stage2.num_steps"] == 4
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())[-1] == 8


def test_damaged_latest_checkpoint_is_named_and_the_previous_one_used_on_request(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  for f in (workdir / "checkpoints" / "6").rglob("*"):
    if f.is_file():
      f.write_bytes(b"")
  line = _error_line(_run("eval.py", workdir, trained[1]), "eval.py")
  assert "checkpoint 6 in" in line and "damaged or incomplete" in line and "earlier checkpoints 2, 4" in line
  line = _error_line(_run("train.py", workdir, trained[1], "--config.eval.enabled=False"), "train.py")
  assert "checkpoint 6 in" in line and "on_damaged=previous" in line
  proc = _run("train.py", workdir, trained[1], "--config.eval.enabled=False", "--config.checkpoint.on_damaged=previous")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resuming from" in proc.stderr and "step 4" in proc.stderr
  assert (workdir / "checkpoints" / "damaged-6").is_dir()  # kept aside, not deleted
  proc = _run("eval.py", workdir, trained[1])
  assert proc.returncode == 0, proc.stderr[-3000:]


def test_eval_names_missing_steps_creates_nothing_in_a_mistyped_workdir_and_checks_the_geometry(trained, tmp_path):
  line = _error_line(_run("eval.py", trained[0], trained[1], "--step", "5"), "eval.py")
  assert "no checkpoint at step 5" in line and "the steps there are 2, 4, 6" in line
  typo = tmp_path / "runn"
  line = _error_line(_run("eval.py", typo, trained[1]), "eval.py")
  assert "no checkpoints in" in line and not typo.exists()
  line = _error_line(_run("eval.py", trained[0], trained[1], "--config.data.image_size=64"), "eval.py")
  assert "config field data.image_size is 64" in line and "trained with 32" in line
  assert not (trained[0] / "eval").exists()


def test_unknown_config_key_and_unwritable_workdir_give_one_line(trained, tmp_path):
  line = _error_line(_run("train.py", tmp_path / "w", trained[1], "--config.model.resnet_dept=18"), "train.py")
  assert "--config.model.resnet_dept" in line and "did you mean 'resnet_depth'" in line
  a_file = tmp_path / "file"
  a_file.write_text("")
  line = _error_line(_run("train.py", a_file, trained[1]), "train.py")
  assert "--workdir" in line and "is a file" in line


def test_predict_refuses_a_mismatched_crop_size_and_a_non_positive_focal(trained, fixtures_dir, tmp_path, capsys):
  image = fixtures_dir / "coco" / "val2017" / "000000000785.jpg"
  base = [str(image), "--box", "280,45,220,340", "--config", str(REPO / "configs" / "tiny.py"), "--workdir",
          str(trained[0]), "--out", str(tmp_path / "out")]
  assert predict_cli.main(base + ["--config.data.image_size=64", "--config.data.output_size=16"]) == 2
  assert "config field data.image_size is 64" in capsys.readouterr().err
  for focal in ("-500", "0"):
    assert predict_cli.main(base + ["--focal", focal]) == 2
    assert "focal lengths must be positive" in capsys.readouterr().err
  assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
  assert predict_cli.main(base + ["--focal", "500"]) == 0
