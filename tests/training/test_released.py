"""The authors' released checkpoint in one command (training/released.py, released_cli.py), end to end.

A random-weight CoordinateNet (tests/torch_spec_model.py, without our ordinal head, with the two layers the
release never calls) is saved as the authors' test.py loads it ({'epoch', 'network'} with DataParallel's
'module.'), imported by `cascaded-lift-import-released`, evaluated by eval.py on the real Human3.6M fixture
frames and predicted by cascaded-lift-predict; both are compared with the PyTorch model fed the authors'
crop of the same frames (reference_3dmppe.py) normalised as their transforms do, with their flip test.

Two sizes of the same test (ARCHITECTURES): "small" (a ResNet-18 of width 8, 64 px crops, 8 depth bins,
imported with --any_architecture; seconds) runs always; "full" (the released size, 60 M parameters: the
2048-channel C5, 64-bin volumes and 1024-wide lifter of the real file; about 90 s on 2 cores) runs with
`pytest --full-size`. Their random weights are scaled into a working regime (spec_net says how and why).

Tolerance: 0.05 mm on root-relative joints of poses spanning about 900-1100 mm. Measured: 0.024 mm small,
0.014 mm full, while moving the crop window by 1 px moves the poses by 34 mm small, 1.5 mm full (checked,
so the comparison has teeth). What differs is float32 summation order (XLA vs PyTorch, ~1e-6 relative
through the network), the crop (ours builds the warp matrix in float64, the reference in float32, so a
few bilinear samples are 1 grey level apart; tests/data/test_eval_boxes.py) and predictions.json's
rounding to 0.01 mm.

The rest: the command's refusals. The workdir it writes and config.init.checkpoint: test_init_checkpoint.py.
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import cv2
import jax
import numpy as np
import pytest

import h36m_fixture
import reference_3dmppe as ref
from cascaded_lift.configs import h36m, muco_mupots, tiny
from cascaded_lift.errors import CheckpointError, ConfigError
from cascaded_lift.models.build import variables_template
from cascaded_lift.training import released
from cascaded_lift.weights import convert

try:
  import torch
  from torch_spec_model import MEAN, STD, SpecNet, randomize_
except ImportError:  # the tests that write .pth files or run the PyTorch model skip
  torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")

REPO = pathlib.Path(__file__).resolve().parents[2]
H36M_P2 = f"{REPO / 'configs' / 'h36m.py'}:protocol=2"


@dataclasses.dataclass(frozen=True)
class Architecture:
  """A CoordinateNet size: the spec model's arguments, the crop size and the command-line overrides that
  give configs/h36m.py that network (the import command also gets --any_architecture when they are not
  empty)."""
  spec: dict
  size: int
  overrides: tuple[str, ...]


# The released network's spec: the library's RELEASED_MODEL (the spec model has no dilated backbone).
RELEASED_SPEC = {k: v for k, v in released.RELEASED_MODEL.items() if k != "resnet_output_stride"}


def _small() -> Architecture:
  # configs/tiny.py's network; the fields it leaves at their defaults are the released ones.
  model = {k: v for k, v in tiny.get_config().model.items() if k != "lifter_dropout"}
  data = dict(image_size=64, output_size=16, depth_bins=8)
  overrides = tuple(f"--config.model.{k}={v}" for k, v in model.items()) + tuple(
      f"--config.data.{k}={v}" for k, v in data.items())
  spec = dict(RELEASED_SPEC, **model, num_joints=18, num_bones=16, depth_bins=data["depth_bins"])
  return Architecture(spec, data["image_size"], overrides)


ARCHITECTURES = {
    "small": _small(),
    "full": Architecture(dict(RELEASED_SPEC, num_joints=18, num_bones=16,
                              depth_bins=int(released.RELEASED_DATA["depth_bins"])),
                         int(released.RELEASED_DATA["image_size"]), ()),
}
FLIP_PAIRS = ((1, 4), (2, 5), (3, 6), (14, 11), (15, 12), (16, 13))  # the authors' Human36M.flip_pairs
ATOL_MM = 0.05


def _env() -> dict[str, str]:
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))


def _run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, *args], cwd=REPO, env=_env(), capture_output=True, text=True,
                        timeout=timeout, check=False)


def _import_cmd(path, workdir, *extra: str, arch: Architecture = ARCHITECTURES["full"]) -> list[str]:
  size = ("--any_architecture", *arch.overrides) if arch.overrides else ()
  return ["-m", "cascaded_lift.training.released_cli", str(path), "--config", H36M_P2, "--workdir", str(workdir),
          *size, *extra]


def _error_line(proc: subprocess.CompletedProcess) -> str:
  lines = [line for line in proc.stderr.splitlines() if line.startswith(f"{released.COMMAND}: error: ")]
  assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  return lines[0]


@pytest.fixture(scope="module")
def frames():
  if not h36m_fixture.FIXTURES.is_dir():
    pytest.skip(f"real dataset samples not found at {h36m_fixture.FIXTURES}")
  return _fixture_frames()


@pytest.fixture(scope="module", params=["small", pytest.param("full", marks=pytest.mark.full_size)])
def arch(request) -> Architecture:
  return ARCHITECTURES[request.param]


@pytest.fixture(scope="module")
def spec_net(frames, arch):
  """The released architecture with random weights, scaled to a regime a trained network works in.

  randomize_ alone gives the full-size network volume logits of +-5e4, where the soft-argmax is a hard
  argmax (integer coordinates, blind to everything but the winning voxel), and poses of +-1e4 mm. So the
  volumetric head's last conv is scaled to logits of standard deviation 4 on the fixture crops
  (coordinates spread over the volume, the softmax smooth) and the lifter's last layer to root-relative
  poses within 1000 mm: each is linear in its weight and bias, so scaling both scales its output.
  """
  net = SpecNet(**arch.spec)
  randomize_(net, seed=0)
  net.eval()
  x, boxes = _authors_input(frames, arch.size)
  with torch.no_grad():
    scale = 4.0 / net(x, boxes, normalized=True)["joint_volumes"].std()
    net.posenet.final.final_conv.weight.mul_(scale)
    net.posenet.final.final_conv.bias.mul_(scale)
    pose = net(x, boxes, normalized=True)["pose_3d"]
    scale = 1000.0 / (pose - pose[:, :1]).abs().max()
    net.fc2.weight.mul_(scale)
    net.fc2.bias.mul_(scale)
  return net


@pytest.fixture(scope="module")
def released_file(spec_net, tmp_path_factory):
  """The released snapshot's form: no ordinal head (ours only), 'module.' prefixes, under 'network'."""
  state = {"module." + k: v for k, v in spec_net.state_dict().items() if not k.startswith("posenet.ordinal.")}
  assert "module.posenet.limb.final_layer1.weight" in state  # unused by the released forward pass, but there
  path = tmp_path_factory.mktemp("released") / "snapshot_20.pth.tar"
  torch.save({"epoch": 20, "network": state}, path)
  return path


@pytest.fixture(scope="module")
def h36m_data(tmp_path_factory):
  return h36m_fixture.build(tmp_path_factory.mktemp("h36m_det"), with_detections=True)


def _fixture_frames():
  """[(image_id, full-resolution BGR image as cv2 reads it, annotated person box)] of the fixture frames."""
  out = []
  fixture = h36m_fixture.FIXTURES / "h36m_3dmppe"
  for s in h36m_fixture.SUBJECTS:
    data = json.loads((fixture / "annotations" / f"Human36M_subject{s}_data.json").read_text())
    for ann in data["annotations"]:
      img = next(im for im in data["images"] if im["id"] == ann["image_id"])
      image = cv2.imread(str(fixture / "images" / img["file_name"]), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
      out.append((img["id"], image, ann["bbox"]))
  return out


def _authors_input(frames, size: int, shift_px: float = 0.0) -> tuple[Any, Any]:
  """(crops (B, 3, size, size) normalised, boxes (B, 4) px) as the authors' Human36M test loader makes them.

  shift_px moves every box right by that many image pixels (to show what a slightly wrong crop costs).
  """
  crops, boxes = [], []
  for _, image, bbox in frames:
    box = ref.process_bbox(bbox, image.shape[1], image.shape[0])  # what their bbox_root file / process_bbox holds
    box[0] += shift_px
    patch = ref.crop(image, box, size)[:, :, ::-1].astype(np.float32)  # generate_patch_image: BGR -> RGB float
    # transforms.ToTensor() (a float array: no scaling) then Normalize(pixel_mean, pixel_std) on 0..255
    tensor = torch.from_numpy(patch.transpose(2, 0, 1).copy())
    crops.append((tensor - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1))
    boxes.append(box)
  return torch.stack(crops), torch.tensor(np.array(boxes), dtype=torch.float32)


def _authors_poses(net, frames, size: int, shift_px: float = 0.0) -> dict[int, np.ndarray]:
  """{image_id: (18, 3) root-relative mm}: the spec model as the authors' test.py runs theirs."""
  x, b = _authors_input(frames, size, shift_px)
  with torch.no_grad():
    pose = net(x, b, normalized=True)["pose_3d"]
    flipped = net(torch.flip(x, dims=[3]), b, normalized=True)["pose_3d"]  # their flip test, same boxes
  flipped[:, :, 0] = -flipped[:, :, 0]
  for i, j in FLIP_PAIRS:
    flipped[:, [i, j]] = flipped[:, [j, i]]
  pose = ((pose + flipped) / 2).numpy().astype(np.float64)
  return {image_id: p - p[0] for (image_id, _, _), p in zip(frames, pose)}


def _assert_poses_close(got: np.ndarray, want: np.ndarray, what: str) -> float:
  np.testing.assert_allclose(got, want, rtol=0.0, atol=ATOL_MM, err_msg=what)
  return float(np.abs(got - want).max())


@needs_torch
@pytest.mark.slow
def test_released_pth_imports_to_a_workdir_that_eval_and_predict_run_as_pytorch_does(
    released_file, spec_net, arch, frames, h36m_data, tmp_path):
  workdir = tmp_path / "released_p2"
  proc = _run(*_import_cmd(released_file, workdir, arch=arch))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "kept as initialised (absent from the file): ordinal_head" in proc.stdout, proc.stdout
  assert "skipped (unused by the released forward pass): 5 keys of posenet.limb.bn1, posenet.limb.final_layer1" \
      in proc.stdout, proc.stdout
  assert f"evaluate: python eval.py --config {REPO / 'configs' / 'h36m.py'}" in proc.stdout, proc.stdout
  assert sorted(p.name for p in tmp_path.iterdir()) == ["released_p2"]  # no staging folder left behind
  assert (workdir / "checkpoints" / "0").is_dir() and (workdir / "config.json").is_file()
  provenance = json.loads((workdir / released.PROVENANCE_FILE).read_text())
  assert provenance["kept"] == ["ordinal_head"] and provenance["posenet_prefix"] == "posenet."
  assert provenance["file"] == str(released_file) and len(provenance["sha256"]) == 64
  assert provenance["released_architecture"] == (not arch.overrides)

  # eval.py exactly as a user runs it, on the fixture frames built with a bbox_root file.
  data = [f"--config.data.{s}.{k}={v}" for s in ("eval", "train_3d")
          for k, v in (("config", h36m_fixture.CONFIG_NAME), ("data_dir", h36m_data))]
  proc = _run(str(REPO / "eval.py"), "--config", H36M_P2, "--workdir", str(workdir), *data,
              "--config.data.worker_count=0", "--config.data.read_threads=0", "--config.eval.batch_size=4",
              "--config.eval.num_plot_examples=1", *arch.overrides)
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
  assert metrics["boxes"]["used"] == "detected" and metrics["num_samples"] == 4
  want = _authors_poses(spec_net, frames, arch.size)
  spread = np.ptp(np.stack(list(want.values())), axis=1).max()
  assert spread > 100.0, spread  # the random network's poses are not degenerate
  # The comparison has teeth: a crop window moved by 1 px (of a ~1000 px box) already misses by far more.
  shifted = _authors_poses(spec_net, frames, arch.size, shift_px=1.0)
  miss = max(np.abs(shifted[i] - want[i]).max() for i in want)
  assert miss > 10 * ATOL_MM, miss
  gaps = {}
  # eval/ holds the detected-box result (the paper's setting), eval/gt_boxes/ the annotated boxes'; the
  # fixture's detections are the annotated boxes processed once, so both crops are the authors'.
  for folder in ("eval", "eval/gt_boxes"):
    records = json.loads((workdir / folder / "predictions.json").read_text())
    assert sorted(r["image_id"] for r in records) == sorted(want)
    for r in records:
      gaps[(folder, r["image_id"])] = _assert_poses_close(np.array(r["pose_3d_mm"]), want[r["image_id"]],
                                                          f"{folder} image {r['image_id']}")

  # cascaded-lift-predict on one frame's image file and annotated (person) box.
  image_id, _, bbox = frames[0]
  fixture = h36m_fixture.FIXTURES / "h36m_3dmppe"
  data_json = json.loads((fixture / "annotations" / "Human36M_subject1_data.json").read_text())
  file_name = next(im["file_name"] for im in data_json["images"] if im["id"] == image_id)
  out = tmp_path / "predict"
  proc = _run("-m", "cascaded_lift.inference.cli", str(fixture / "images" / file_name), "--box",
              ",".join(map(str, bbox)), "--config", H36M_P2, *arch.overrides, "--workdir", str(workdir),
              "--out", str(out))
  assert proc.returncode == 0, proc.stderr[-3000:]
  person, = json.loads((out / f"{pathlib.Path(file_name).stem}.json").read_text())["people"]
  gaps[("predict", image_id)] = _assert_poses_close(np.array(person["pose_3d_mm"]), want[image_id], "predict")
  print(f"largest gap to the PyTorch model: {max(gaps.values()):.4f} mm; poses span {spread:.0f} mm; a 1 px "
        f"crop shift moves them by {miss:.3f} mm")


# ----------------------------------------------------------------------------- refusals

@needs_torch
@pytest.mark.slow
def test_command_refuses_bad_files_with_one_line_naming_the_file_and_key(tmp_path):
  zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), variables_template(h36m.get_config()))
  lifter = {k: torch.from_numpy(v) for k, v in convert.export_torch_state_dict(zeros).items()
            if not k.startswith("posenet.")}  # a lifter-only file loads, so one missing key is what fails
  del lifter["fc2.bias"]
  path = tmp_path / "lifter_only.pth"
  torch.save(lifter, path)
  line = _error_line(_run(*_import_cmd(path, tmp_path / "w")))
  assert f"{path}: released lifter weights: missing keys (1): fc2.bias" in line
  garbage = tmp_path / "notes.pth"
  garbage.write_text("not a checkpoint\n")
  line = _error_line(_run(*_import_cmd(garbage, tmp_path / "w")))
  assert f"{garbage}: not a readable state dict" in line
  assert sorted(p.name for p in tmp_path.iterdir()) == ["lifter_only.pth", "notes.pth"]  # nothing was created


def test_the_command_is_installed_as_a_console_script():
  assert '"cascaded-lift-import-released=cascaded_lift.training.released_cli:main"' in (REPO / "setup.py").read_text()


def test_only_a_config_of_the_released_architecture_is_accepted():
  released.check_released_config(h36m.get_config("protocol=2"))
  released.check_released_config(muco_mupots.get_config())  # a MuCo-trained release: 21 joints, same network
  with pytest.raises(ConfigError, match=r"config.model.resnet_depth is 18 but the released network has 50: .* or "
                     r"--any_architecture for a CoordinateNet of another size"):
    released.check_released_config(tiny.get_config())
  config = h36m.get_config("protocol=2")
  config.model.resnet_output_stride = 16  # loads without a shape error, computes something else
  with pytest.raises(ConfigError, match=r"config.model.resnet_output_stride is 16 .* has 32"):
    released.check_released_config(config)
  config = h36m.get_config("protocol=2")
  config.data.image_size, config.data.output_size = 320, 80
  with pytest.raises(ConfigError, match=r"config.data.image_size is 320 but .* trained with 256"):
    released.check_released_config(config)


def test_mis_shaped_keys_name_the_file_the_keys_and_the_config_s_network():
  """The Human3.6M release (18 joints, 16 bones) offered to the MuCo config (21, 20)."""
  zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), variables_template(h36m.get_config()))
  state = convert.export_torch_state_dict(zeros)
  config = muco_mupots.get_config()
  with pytest.raises(CheckpointError, match=r"^h36m\.pth: released posenet weights: mis-shaped keys \(\d+\): "
                     r"posenet.limb.hm_layer.weight: got \(16, 128, 3, 3\), expected \(20, 128, 3, 3\);.* \(the "
                     r"config's network: skeleton 'muco' with 21 joints and 20 bones, 64 depth bins\)"):
    released.import_state_dict(state, variables_template(config), "h36m.pth", config)
