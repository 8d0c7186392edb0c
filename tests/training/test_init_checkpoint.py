"""The workdir cascaded-lift-import-released writes, and starting training from one (config.init.checkpoint).

The workdir's staging and overwrite rules, training's refusal to run in an imported workdir, and
config.init.checkpoint: a workdir or a released-naming file, its mismatches named; one stage-1 step of
configs/tiny.py from a .pth through train.py, then a resume that ignores it.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from cascaded_lift import platform
from cascaded_lift.configs import tiny
from cascaded_lift.errors import ConfigError, WorkdirError
from cascaded_lift.inference.predictor import random_variables
from cascaded_lift.training import init_checkpoint, loop, released
from cascaded_lift.training import workdir as workdir_lib
from cascaded_lift.training.builders import init_variables
from cascaded_lift.training.checkpoints import Checkpointer, restore_variables
from cascaded_lift.weights import convert

try:
  import torch
except ImportError:  # the test that writes a .pth file skips
  torch = None

REPO = pathlib.Path(__file__).resolve().parents[2]


def _tiny(data_dir=None):
  config = tiny.get_config()
  if data_dir is not None:
    config.data.train_3d.data_dir = config.data.eval.data_dir = str(data_dir)
  return config


def _leaves(tree) -> dict:
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _assert_same(a, b) -> None:
  a, b = _leaves(a), _leaves(b)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_workdir_is_written_aside_and_replaced_only_when_asked(tmp_path):
  config = _tiny()
  first, second = random_variables(config, seed=1), random_variables(config, seed=2)
  workdir = tmp_path / "w"
  assert released.write_workdir(workdir, first, config, {"file": "a.pth"}) == workdir
  _assert_same(restore_variables(workdir), first)  # what eval.py and the Predictor read
  assert workdir_lib.read_run_config(workdir)["model.resnet_depth"] == 18
  meta = Checkpointer(workdir, read_only=True, async_save=False).restore_meta()
  assert meta["imported"] == {"file": "a.pth"} and meta["global_step"] == released.IMPORT_STEP
  with pytest.raises(WorkdirError, match=r"already holds checkpoints at steps 0; pass --overwrite"):
    released.write_workdir(workdir, second, config, {"file": "b.pth"})
  with workdir_lib.WorkdirLock(workdir):  # a trainer runs there: refused once the new one is staged, which goes
    with pytest.raises(WorkdirError, match="in use by a running trainer"):
      released.write_workdir(workdir, second, config, {"file": "b.pth"}, overwrite=True)
  assert json.loads((workdir / released.PROVENANCE_FILE).read_text()) == {"file": "a.pth"}  # untouched
  released.write_workdir(workdir, second, config, {"file": "b.pth"}, overwrite=True)
  _assert_same(restore_variables(workdir), second)
  with pytest.raises(TypeError):  # provenance that is not JSON: nothing appears
    released.write_workdir(tmp_path / "new", second, config, {"file": {"c.pth"}})
  (tmp_path / "empty").mkdir()
  released.write_workdir(tmp_path / "empty", first, config, {"file": "d.pth"})  # an empty folder is fine
  assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "w"]  # no staging or replaced folder left
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "todo.txt").write_text("mine")
  with pytest.raises(WorkdirError, match="non-empty folder that is not a workdir"):
    released.write_workdir(tmp_path / "notes", first, config, {}, overwrite=True)  # never ours to delete
  with pytest.raises(WorkdirError, match="is a file"):
    released.write_workdir(tmp_path / "notes" / "todo.txt", first, config, {})


def test_training_refuses_an_imported_workdir_and_a_missing_init_checkpoint(tmp_path):
  config = _tiny(tmp_path / "data")
  workdir = released.write_workdir(tmp_path / "imported", random_variables(config), config, {"file": "x.pth"})
  saved = (workdir / workdir_lib.CONFIG_FILE).read_text()
  with pytest.raises(WorkdirError, match=r"holds weights imported by cascaded-lift-import-released from x.pth, not a "
                     r"training run to resume; .* --config.init.checkpoint="):
    loop.train(config, workdir)
  assert (workdir / workdir_lib.CONFIG_FILE).read_text() == saved
  config.init.checkpoint = str(tmp_path / "gone.pth")
  with pytest.raises(ConfigError, match=r"config.init.checkpoint='.*gone.pth': no such file or workdir"):
    loop.train(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()  # refused before anything was created


def test_init_checkpoint_from_a_workdir_or_a_file_and_its_mismatches(tmp_path):
  config = _tiny()
  weights = random_variables(config, seed=3)
  workdir = released.write_workdir(tmp_path / "w", weights, config, {"file": "x.pth"})
  config.init.checkpoint = str(workdir)
  _assert_same(init_checkpoint.load(random_variables(config, seed=4), config), weights)
  other = _tiny()
  other.data.depth_bins = 16  # the depth-centric and volumetric heads change shape
  other.init.checkpoint = str(workdir)
  with pytest.raises(ConfigError, match=r"config.init.checkpoint='.*/w': 'params/depth_centric/volume_conv/kernel' "
                     r"has shape \(3, 3, 16, 8\) there but \(3, 3, 16, 16\) in this config's network"):
    init_checkpoint.load(random_variables(other), other)
  path = tmp_path / "posenet.npz"
  np.savez(path, **convert.export_torch_state_dict(weights, include_lifter=False))
  other.init.checkpoint = str(path)
  with pytest.raises(ConfigError, match=r"^config.init.checkpoint: .*posenet.npz: released posenet weights: "
                     r"mis-shaped keys .*posenet.sel.final_layer2.weight: got \(8, 16, 3, 3\), expected \(16, 16, 3, 3\)"):
    init_checkpoint.load(random_variables(other), other)
  (tmp_path / "bare").mkdir()
  other.init.checkpoint = str(tmp_path / "bare")
  with pytest.raises(ConfigError, match="the folder holds no checkpoints"):
    init_checkpoint.load(random_variables(other), other)


@pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
@pytest.mark.slow
def test_train_py_starts_from_init_checkpoint_and_ignores_it_on_resume(tmp_path):
  """One stage-1 step of configs/tiny.py from a released-naming .pth without the ordinal head."""
  config = _tiny(tmp_path / "data")
  weights = random_variables(config, seed=5)
  state = {k: torch.from_numpy(np.array(v)) for k, v in convert.export_torch_state_dict(weights).items()
           if not k.startswith("posenet.ordinal.")}
  path = tmp_path / "snapshot.pth.tar"
  torch.save({"epoch": 1, "network": state}, path)
  workdir = tmp_path / "finetune"
  data = [f"--config.data.{s}.data_dir={tmp_path / 'data'}" for s in ("train_3d", "eval")]
  cmd = [sys.executable, str(REPO / "train.py"), "--config", str(REPO / "configs" / "tiny.py"), "--workdir",
         str(workdir), *data, f"--config.init.checkpoint={path}", "--config.stage1.num_steps=1",
         "--config.stage2.enabled=False", "--config.eval.enabled=False"]
  proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO)),
                        capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "kept as initialised (absent from the file): ordinal_head" in proc.stderr
  trained = _leaves(restore_variables(workdir)["params"])
  loaded = _leaves(weights["params"])
  initial = _leaves(init_variables(platform.build_model(config), config, jax.random.key(config.seed))["params"])
  lr = config.stage1.learning_rate
  for key, value in trained.items():
    if "lifter" in key:  # not trained in stage 1: exactly the file's
      np.testing.assert_array_equal(value, loaded[key], err_msg=key)
    elif "ordinal_head" in key:  # absent from the file: one Adam step (at most lr) from its initial value
      assert np.abs(value - initial[key]).max() <= 1.01 * lr, key
    else:  # one Adam step from the file's values
      assert np.abs(value - loaded[key]).max() <= 1.01 * lr, key
  assert np.abs(loaded["['backbone']['conv1']['kernel']"] - initial["['backbone']['conv1']['kernel']"]).max() > 100 * lr
  # Resuming the finished run restores its own checkpoint: init.checkpoint is not even looked at.
  path.unlink()
  config.init.checkpoint = str(path)
  config.stage1.num_steps, config.stage2.enabled, config.eval.enabled = 1, False, False
  loop.train(config, workdir)
  resumed = _leaves(restore_variables(workdir)["params"])
  assert resumed.keys() == trained.keys() and all(np.array_equal(resumed[k], trained[k]) for k in trained)
