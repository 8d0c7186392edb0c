"""jax.export of the inference network: the loaded artifact matches the live model, runs at several
batch sizes (symbolic batch), and needs neither Flax nor the model code."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("flatbuffers", reason="jax.export serialization needs the flatbuffers package")

from cascaded_lift.inference import export, exported, host  # noqa: E402
from cascaded_lift.inference import predictor as inference  # noqa: E402
from cascaded_lift.inference.cli import load_config  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY = [f"--config.{s}" for s in ["model.resnet_depth=18", "model.resnet_width=8", "model.head_width=16", "model.bone_width=8",
        "model.lifter_width=32", "model.lifter_blocks=1", "model.lifter_layers_per_block=2",
        "data.image_size=64", "data.depth_bins=8"]]
TINY_BLOCKS = dict(context_bottlenecks=1, joint_bottlenecks=1, depth_bottlenecks=1, volumetric_bottlenecks=1)


@pytest.fixture(scope="module")
def live():
  config = load_config(str(REPO / "configs" / "default.py"), TINY)
  config.model.update(TINY_BLOCKS)
  return inference.Predictor.random_init(config, seed=1)


@pytest.fixture(scope="module")
def exported_dir(live, tmp_path_factory):
  return export.export_predictor(live, tmp_path_factory.mktemp("exported"))


def _people(fixtures_dir, image_id):
  ann = json.loads((fixtures_dir / "coco" / "annotations" / "person_keypoints_val2017.json").read_text())
  name = next(im["file_name"] for im in ann["images"] if im["id"] == image_id)
  boxes = [a["bbox"] for a in ann["annotations"] if a["image_id"] == image_id]
  return fixtures_dir / "coco" / "val2017" / name, np.array(boxes)


def test_exported_matches_live_model(fixtures_dir, live, exported_dir):
  loaded = exported.load_exported(exported_dir)
  assert loaded.skeleton == live.skeleton and loaded.flip_test and loaded.image_size == 64
  assert not isinstance(loaded.exported.in_avals[-1].shape[0], int)  # boxes (b, 4): b is a symbol
  path, boxes = _people(fixtures_dir, 40083)  # 3 people: a padded batch of 4
  image = host.read_image(path)
  want = live.predict(image, boxes, focal=(500.0, 500.0))
  got = loaded.predict(image, boxes, focal=(500.0, 500.0))
  for a, b in zip(got, want):
    np.testing.assert_allclose(a.joints_2d, b.joints_2d, atol=1e-3)
    np.testing.assert_allclose(a.pose_3d, b.pose_3d, atol=1e-2, rtol=1e-5)
    np.testing.assert_allclose(a.pose_3d_cam, b.pose_3d_cam, atol=1e-1, rtol=1e-5)
  with pytest.raises(ValueError, match="exported with flip_test=True"):
    loaded.predict(image, boxes, flip_test=False)


def test_exported_runs_without_model_code(fixtures_dir, live, exported_dir, tmp_path):
  # The command with --exported, in a fresh process: no Flax, no cascaded_lift.models. One person:
  # batch 1 from the artifact that ran a batch of 4 above (the batch axis is symbolic).
  path, boxes = _people(fixtures_dir, 785)
  args = [str(path), "--box", ",".join(map(str, boxes[0])), "--exported", str(exported_dir), "--focal", "500",
          "--out", str(tmp_path)]
  script = f"""
import sys
from cascaded_lift.inference import cli as predict_cli
rc = predict_cli.main({args!r})
assert "flax" not in sys.modules and "cascaded_lift.models" not in sys.modules and "cascaded_lift.platform" not in sys.modules, sorted(sys.modules)
sys.exit(rc)
"""
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  person, = json.loads((tmp_path / f"{path.stem}.json").read_text())["people"]
  assert (tmp_path / f"{path.stem}_overlay.png").is_file() and (tmp_path / f"{path.stem}_3d.png").is_file()
  want, = live.predict(host.read_image(path), boxes, focal=500.0)
  np.testing.assert_allclose(person["joints_2d_px"], want.joints_2d, atol=2e-3)
  np.testing.assert_allclose(person["pose_3d_cam_mm"], want.pose_3d_cam, atol=0.1, rtol=1e-5)


def test_load_errors(exported_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="predict.jax_export is missing"):
    exported.load_exported(tmp_path)
  broken = tmp_path / "broken"
  broken.mkdir()
  for name in (exported.EXPORT_FILE, exported.META_FILE):
    (broken / name).write_bytes((exported_dir / name).read_bytes())
  np.savez(broken / exported.VARIABLES_FILE, leaf_00000=np.zeros(3))
  meta = json.loads((broken / exported.META_FILE).read_text())
  meta["leaf_dtypes"] = ["float64"]
  (broken / exported.META_FILE).write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="holds 1 arrays"):
    exported.load_exported(broken)
