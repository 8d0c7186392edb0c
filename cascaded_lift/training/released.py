"""The authors' released checkpoint as a workdir that eval.py, the Predictor and cascaded-lift-predict load.

  report = import_to_workdir("snapshot_20.pth.tar", config, "~/runs/released_p2")   # what the command does
  variables, report = read_released(path, config)      # the file into the config's variables (host arrays)
  write_workdir(workdir, variables, config, provenance)  # an orbax checkpoint + config.json, renamed into place

The command is `cascaded-lift-import-released` (training/released_cli.py). The file is the CoordinateNet
state dict of github.com/fnzhan/Pose-Estimation (posenet.* and the lifter's fc1 / bn1 / block* / fc2, as
its test.py loads it: a snapshot {'network': ...} with DataParallel 'module.' prefixes, or the bare dict;
.safetensors / .npz copies of it load without PyTorch). weights/convert.py maps the names. Parts the file
lacks keep the initial values training would give them (config.seed) and are reported: always our ordinal
-depth head, which the released model does not have and which the evaluation forward pass never reads.

The config must describe the released network (RELEASED_MODEL, RELEASED_DATA): ResNet-50 with C5 at
stride 32, the released head and lifter sizes, 256 px crops, 64 x 64 heatmaps, 64 depth bins over 2000 mm,
boxes enlarged 1.25x. Shapes alone would not catch a dilated backbone, other ASPP dilations or another crop
size, which load fine and compute something else. The joint and bone counts come from config.skeleton
(H36M: 18 joints, 16 bones for the Human3.6M release; MUCO: 21 and 20 for a MuCo-trained one) and the
file's shapes must agree.

The workdir: <workdir>/checkpoints/0/{state, data, meta} in training's orbax layout (training/checkpoints.py;
the state holds step, params and batch_stats but no optimizer state, the meta says "imported"),
<workdir>/config.json (training/workdir.py; eval.py and the Predictor check their config against it) and
<workdir>/imported.json (the file's path, SHA-256 and what was loaded, kept and skipped). It is written
into a hidden sibling folder and renamed into place only when complete; an existing checkpoint is
replaced only with overwrite=True. Training refuses to run in such a workdir (it is not a run that can be
resumed); fine-tuning starts from it with config.init.checkpoint (training/init_checkpoint.py).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from cascaded_lift import platform
from cascaded_lift import skeleton as skeleton_lib
from cascaded_lift.errors import CheckpointError, ConfigError, UserError, WorkdirError
from cascaded_lift.models.build import build_model, variables_template
from cascaded_lift.training import workdir as workdir_lib
from cascaded_lift.training.builders import init_variables
from cascaded_lift.training.checkpoints import Checkpointer
from cascaded_lift.weights import convert

COMMAND = "cascaded-lift-import-released"
IMPORT_STEP = 0  # the checkpoint's step: no training happened in this workdir
PROVENANCE_FILE = "imported.json"
# The released network (main/model.py and main/config.py of the authors' code): CascadedLiftNet fields.
RELEASED_MODEL: dict[str, Any] = dict(
    resnet_depth=50, resnet_width=64, resnet_output_stride=32, head_width=256, bone_width=128, lifter_width=1024,
    lifter_blocks=5, lifter_layers_per_block=3, num_deconvs=3, context_bottlenecks=2, joint_bottlenecks=2,
    depth_bottlenecks=1, volumetric_bottlenecks=3, aspp_dilations=(4, 8, 12))
# Its input and output geometry (input_shape 256, output_shape 64, depth_dim 64, bbox_3d_shape 2000 mm,
# process_bbox's 1.25x): config.data fields.
RELEASED_DATA: dict[str, float] = dict(image_size=256, output_size=64, depth_bins=64, depth_range_mm=2000.0,
                                       bbox_scale=1.25)


def check_released_config(config: Any) -> None:
  """ConfigError naming the first model or data field where config differs from the released network.

  The model's values are read from the network the config builds (so a field a config leaves out counts
  with CascadedLiftNet's default); lifter_dropout is not compared (training only).
  """
  model = build_model(config)
  for field, want in RELEASED_MODEL.items():
    got = getattr(model, field)
    if tuple(np.atleast_1d(got)) != tuple(np.atleast_1d(want)):
      raise ConfigError(f"config.model.{field} is {got!r} but the released network has {want!r}: {COMMAND} "
                        "needs a config of the released architecture (configs/h36m.py or configs/muco_mupots.py), or "
                        "--any_architecture for a CoordinateNet of another size")
  for field, want in RELEASED_DATA.items():
    got = config.data[field]
    if float(got) != float(want):
      raise ConfigError(f"config.data.{field} is {got!r} but the released network was trained with {want!r} "
                        "(--any_architecture for a CoordinateNet of another size)")


def load_released_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The state dict in `path` (.pth / .pth.tar / .pt, or .safetensors / .npz); one-line errors naming the file.

  Raises FileNotFoundError for a missing file, CheckpointError for one that is not a readable state dict
  (or holds NaN / inf), UserError when a .pth needs PyTorch and it is not installed.
  """
  path = pathlib.Path(path).expanduser()
  if path.is_dir():
    raise CheckpointError(f"{path}: is a folder, not a checkpoint file (for a workdir, use eval.py --workdir)")
  try:
    return convert.load_state_dict(path)
  except FileNotFoundError:
    raise FileNotFoundError(f"checkpoint file {str(path)!r} does not exist") from None
  except ImportError as e:
    raise UserError(str(e)) from None
  except ValueError as e:  # unknown suffix, not a dict, non-finite weights: the message names the file
    raise CheckpointError(str(e)) from None
  except Exception as e:  # pylint: disable=broad-except
    # torch.load's (weights-only) unpickler fails on a file that is not a PyTorch pickle with whatever its
    # parser meets (UnpicklingError, EOFError, RuntimeError, even KeyError), safetensors with its own error:
    # all mean "not a state dict".
    cause = " ".join(str(e).split())[:200]
    raise CheckpointError(f"{path}: not a readable state dict ({type(e).__name__}: {cause})") from None


def _shape_hint(config: Any) -> str:
  skeleton = skeleton_lib.get_skeleton(config.skeleton)
  return (f" (the config's network: skeleton {config.skeleton!r} with {skeleton.num_joints} joints and "
          f"{skeleton.num_bones} bones, {config.data.depth_bins} depth bins)")


def import_state_dict(state_dict: Mapping[str, np.ndarray], variables: Mapping[str, Any], path: str | os.PathLike,
                      config: Any) -> tuple[dict[str, Any], dict[str, Any]]:
  """convert.import_torch_state_dict with its errors as one CheckpointError naming the file and the keys.

  `variables` may be ShapeDtypeStructs (a dry run that checks names and shapes without computing anything).
  """
  try:
    return convert.import_torch_state_dict(state_dict, variables)
  except (ValueError, KeyError) as e:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    hint = _shape_hint(config) if "mis-shaped" in text else ""
    raise CheckpointError(f"{os.fspath(path)}: {text}{hint}") from None


def read_released(path: str | os.PathLike, config: Any) -> tuple[dict[str, Any], dict[str, Any]]:
  """The released file in the variables of config's network, and the convert report.

  The names and shapes are checked against the network's shape template first (no compilation, so a
  wrong file fails in seconds); then the network is initialised as training would (config.seed) and
  the file's weights replace the initial ones. Returns ({'params', 'batch_stats'} as host NumPy arrays,
  report {'loaded', 'kept', 'skipped', 'posenet_prefix'}).
  """
  state_dict = load_released_state_dict(path)
  template = variables_template(config)
  _, report = import_state_dict(state_dict, template, path, config)
  if report["kept"]:
    initial = jax.device_get(init_variables(platform.build_model(config), config, jax.random.key(config.seed)))
  else:  # every variable comes from the file: nothing to initialise
    initial = template
  variables, report = import_state_dict(state_dict, initial, path, config)
  return {c: jax.tree_util.tree_map(np.asarray, variables[c]) for c in ("params", "batch_stats")}, report


def sha256_of(path: str | os.PathLike) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _looks_like_workdir(path: pathlib.Path) -> bool:
  return (path / "checkpoints").exists() or (path / workdir_lib.CONFIG_FILE).exists()


def check_target(workdir: str | os.PathLike, overwrite: bool) -> pathlib.Path:
  """The absolute target path, after refusing what must not be replaced (WorkdirError, before any work).

  Accepted: a new path, an empty folder, or (with overwrite) an existing workdir. Refused: a file, a
  workdir without overwrite, and any other non-empty folder whatever overwrite says (it is not ours to
  delete).
  """
  target = pathlib.Path(workdir).expanduser().absolute()
  if not target.exists():
    return target
  if not target.is_dir():
    raise WorkdirError(f"--workdir {str(target)!r} is a file, not a folder")
  if not any(target.iterdir()):
    return target
  if not _looks_like_workdir(target):
    raise WorkdirError(f"--workdir {str(target)!r} is a non-empty folder that is not a workdir (no checkpoints/ or "
                       f"{workdir_lib.CONFIG_FILE}); refusing to replace it: give a new or empty folder")
  if not overwrite:
    steps = sorted(p.name for p in (target / "checkpoints").glob("*") if p.name.isdigit()) \
        if (target / "checkpoints").is_dir() else []
    held = f"checkpoints at steps {', '.join(steps)}" if steps else "a run's files"
    raise WorkdirError(f"--workdir {str(target)!r} already holds {held}; pass --overwrite to replace that workdir "
                       "(its evaluation output too), or give another folder")
  return target


def _swap_into_place(staged: pathlib.Path, target: pathlib.Path) -> None:
  """Renames the complete staged folder to `target`; an existing target (empty, or a workdir being
  overwritten) is renamed aside first, under its trainer's lock, and deleted once the new one is there."""
  if not target.exists():
    try:
      os.rename(staged, target)
    except OSError as e:  # created by someone else meanwhile
      raise WorkdirError(f"--workdir {str(target)!r}: cannot rename the imported workdir into place "
                         f"({e.strerror or e})") from None
    return
  aside = target.with_name(f".{target.name}.replaced-{os.getpid()}")
  with workdir_lib.WorkdirLock(target):  # refuses while a trainer runs there
    os.rename(target, aside)
    os.rename(staged, target)
  shutil.rmtree(aside, ignore_errors=True)


def write_workdir(workdir: str | os.PathLike, variables: Mapping[str, Any], config: Any,
                  provenance: Mapping[str, Any], *, overwrite: bool = False) -> pathlib.Path:
  """Writes variables as checkpoint IMPORT_STEP of a workdir, with config.json and imported.json.

  Everything goes into a hidden sibling folder first (.<name>.importing-*), which is renamed to the
  workdir only when complete and deleted on any failure, so no half-written workdir ever looks complete.
  Returns the workdir's absolute path.
  """
  target = check_target(workdir, overwrite)
  workdir_lib.check_output_dir(target.parent, "--workdir's parent folder")
  # Serialised first: orbax writes the checkpoint's items in parallel, and one failing (the meta) would
  # leave the others writing into a folder being deleted.
  provenance_text = json.dumps(dict(provenance), indent=1)
  meta = {"stage": 0, "stage_step": 0, "global_step": IMPORT_STEP, "imported": json.loads(provenance_text)}
  state = {"step": jnp.asarray(IMPORT_STEP, jnp.int32), "params": jax.device_put(dict(variables["params"])),
           "batch_stats": jax.device_put(dict(variables.get("batch_stats", {})))}
  staged = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.importing-", dir=target.parent))
  try:
    checkpointer = Checkpointer(staged, max_to_keep=1, async_save=False)
    try:
      checkpointer.save(IMPORT_STEP, state, None, meta)
    finally:
      checkpointer.close()
    workdir_lib.write_run_config(config, staged)
    (staged / PROVENANCE_FILE).write_text(provenance_text)
    _swap_into_place(staged, target)
  except BaseException:
    shutil.rmtree(staged, ignore_errors=True)
    raise
  return target


def import_to_workdir(path: str | os.PathLike, config: Any, workdir: str | os.PathLike, *,
                      overwrite: bool = False, any_architecture: bool = False) -> dict[str, Any]:
  """What `cascaded-lift-import-released` does: checks, reads, writes; returns the provenance record.

  Order: the config's architecture and the target folder first (instant), then the file's names and
  shapes (seconds), then the initialisation of the missing parts and the write (a compilation: tens of
  seconds on a CPU). Every refusal is a UserError kind, one line naming the file, key or field.
  any_architecture=True skips check_released_config: for a CoordinateNet of another size trained with the
  authors' code (and the tests' small networks); the file's names and shapes are still checked against the
  config's network, and the provenance records the choice.
  """
  if not any_architecture:
    check_released_config(config)
  target = check_target(workdir, overwrite)
  source = pathlib.Path(path).expanduser().absolute()
  variables, report = read_released(source, config)
  provenance = {
      "source": "released", "command": COMMAND, "file": str(source), "bytes": source.stat().st_size,
      "sha256": sha256_of(source), "created": datetime.datetime.now().isoformat(timespec="seconds"),
      "skeleton": config.skeleton, "seed": int(config.seed), "released_architecture": not any_architecture,
      "posenet_prefix": report["posenet_prefix"],
      "loaded": report["loaded"], "kept": report["kept"], "skipped": report["skipped"]}
  write_workdir(target, variables, config, provenance, overwrite=overwrite)
  logging.info("%s: %s -> %s (kept as initialised: %s)", COMMAND, source, target, report["kept"] or "nothing")
  return dict(provenance, workdir=str(target))


def check_not_imported(meta: Mapping[str, Any] | None, workdir: str | os.PathLike) -> None:
  """WorkdirError when a workdir's latest checkpoint was imported (there is no run in it to resume)."""
  if meta and meta.get("imported"):
    source = meta["imported"].get("file", "a released checkpoint")
    raise WorkdirError(f"workdir {str(workdir)!r} holds weights imported by {COMMAND} from {source}, not a training "
                       f"run to resume; to fine-tune from them, train in a new workdir with "
                       f"--config.init.checkpoint={os.fspath(workdir)}")
