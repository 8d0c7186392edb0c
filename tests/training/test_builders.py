"""The backbone's start (training.builders: backbone_weights_path, load_pretrained), as training.loop.train
and train.py use it: the paper's configs refuse to train from random weights by accident, "none" starts
on purpose, and a registered name loads its file from the cache ($CASCADED_LIFT_CACHE).
"""

import hashlib
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from cascaded_lift.configs import h36m, tiny
from cascaded_lift.errors import ConfigError
from cascaded_lift.models.build import variables_template
from cascaded_lift.training import builders, loop
from cascaded_lift.weights import convert, imagenet

REPO = pathlib.Path(__file__).resolve().parents[2]


def _random_variables(template, seed: int = 0):
  """Values >= 0.5 in magnitude everywhere (He-normal conv1 kernels stay well below), positive variances."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda s: (np.abs(rng.normal(size=s.shape)) + 0.5).astype(s.dtype), template)


def test_paper_config_refuses_to_start_without_the_imagenet_weights(tmp_path):
  """train.py with configs/h36m.py (backbone_weights "resnet50", not fetched): one line, exit 2, nothing made."""
  env = dict(os.environ, CASCADED_LIFT_CACHE=str(tmp_path / "cache"), JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, "train.py", "--config", "configs/h36m.py:protocol=1",
                         "--workdir", str(tmp_path / "run")], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = [line for line in proc.stderr.splitlines() if line.startswith("train.py: error: ")]
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert "config.init.backbone_weights='resnet50'" in lines[0]
  assert "run `cascaded-lift-weights resnet50` first" in lines[0]
  assert str(tmp_path / "cache" / "weights" / "resnet50-0676ba61.safetensors") in lines[0]
  assert not (tmp_path / "run").exists()  # refused before the workdir, the data or any compilation


@pytest.mark.parametrize("value, match", [
    ("", r"config.init.backbone_weights is empty.*`cascaded-lift-weights resnet50`"),
    ("resnet50_v2", r"'resnet50_v2': the ImageNet weights are not in the cache.*`cascaded-lift-weights resnet50_v2`"),
    ("~/no/such/resnet.safetensors", r"'~/no/such/resnet.safetensors': no such file"),
])
def test_a_forgotten_or_unfetched_setting_is_refused_before_any_work(tmp_path, monkeypatch, value, match):
  monkeypatch.setenv(imagenet.CACHE_ENV, str(tmp_path / "cache"))
  config = h36m.get_config("protocol=2")
  assert config.init.backbone_weights == "resnet50"  # the paper's start, inherited from configs/default.py
  config.init.backbone_weights = value
  with pytest.raises(ConfigError, match=match):
    loop.train(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_a_file_for_another_network_is_one_config_error(tmp_path):
  config = tiny.get_config()
  other = tiny.get_config()
  other.model.resnet_width = 16  # twice as wide: every backbone weight has the wrong shape
  path = tmp_path / "wide.safetensors"
  save_file(convert.export_resnet(_random_variables(variables_template(other))), path)
  config.init.backbone_weights = str(path)
  with pytest.raises(ConfigError, match=r"config.init.backbone_weights: .*wide.safetensors.*mis-shaped keys"):
    builders.load_pretrained(variables_template(config), builders.backbone_weights_path(config))


@pytest.mark.slow  # a training run in-process: 7-9 s each with a warm compilation cache, ~25 s cold
@pytest.mark.parametrize("setting", ["none", "resnet50"])
def test_none_starts_and_a_cached_name_is_loaded(tmp_path, monkeypatch, setting):
  """One stage-1 step of configs/tiny.py; with "resnet50" the cache holds weights that fit the tiny backbone
  (put there by the command's --sha256 path), and the trained backbone is one Adam step (lr 1e-3) from them."""
  monkeypatch.setenv(imagenet.CACHE_ENV, str(tmp_path / "cache"))
  config = tiny.get_config()
  assert config.init.backbone_weights == "none"
  config.data.train_3d.data_dir = config.data.eval.data_dir = str(tmp_path / "data")
  config.stage1.num_steps, config.stage2.enabled = 1, False
  config.trunk_gradients.enabled = False
  loaded = None
  if setting == "resnet50":
    torch = pytest.importorskip("torch")
    loaded = convert.export_resnet(_random_variables(variables_template(config)))
    pth = tmp_path / "tiny_backbone.pth"
    torch.save({k: torch.from_numpy(v.copy()) for k, v in loaded.items()}, pth)
    digest = hashlib.sha256(pth.read_bytes()).hexdigest()
    cached = imagenet.fetch("resnet50", from_file=pth, sha256=digest)  # into $CASCADED_LIFT_CACHE
    assert cached == tmp_path / "cache" / "weights" / "resnet50-0676ba61.safetensors"
  config.init.backbone_weights = setting
  variables = loop.train(config, tmp_path / "run")
  kernel = np.asarray(variables["params"]["backbone"]["conv1"]["kernel"])
  if loaded is None:
    assert np.abs(kernel).max() < 0.5  # He-normal, not the file's values (all >= 0.5 in magnitude)
  else:
    np.testing.assert_allclose(kernel, loaded["conv1.weight"].transpose(2, 3, 1, 0), atol=1.5e-3, rtol=0)
