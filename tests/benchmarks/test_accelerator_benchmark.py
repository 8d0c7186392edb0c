"""benchmarks/accelerator.py on CPU with the tiny model: its JSON fields, and that it runs on nothing of
the package but the network (a GPU machine may have only jax, flax, optax and torch)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
# Modules a machine with only jax, flax, optax and torch would lack, and package layers the script must
# not need.
NOT_NEEDED = ("ml_collections", "tensorflow_datasets", "grain", "cv2", "orbax", "array_record",
              "cascaded_lift.data", "cascaded_lift.training", "cascaded_lift.platform", "cascaded_lift.inference",
              "cascaded_lift.evaluation", "cascaded_lift.weights")


@pytest.mark.slow
def test_tiny_run_on_cpu():
  pytest.importorskip("torch")
  script = f"""
import json, runpy, sys
sys.argv = ["accelerator.py", "--model", "tiny", "--batch", "2", "--size", "32", "--steps", "1", "--warmup", "0"]
runpy.run_path({str(REPO / "benchmarks" / "accelerator.py")!r}, run_name="__main__")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {NOT_NEEDED!r} or m.startswith({NOT_NEEDED!r}))
print("LOADED " + json.dumps(loaded))
"""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900, env=env,
                       check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.strip().splitlines()
  result = json.loads(lines[-2])
  assert json.loads(lines[-1][len("LOADED "):]) == []
  assert result["benchmark"] == "accelerator" and result["platform"] == "cpu" and result["skipped"] == []
  assert result["peak_tflops"] == {"float32": None, "bfloat16": None}  # no peak known for a CPU
  for dtype in ("float32", "bfloat16"):
    for mode in ("train", "infer"):
      r = result["jax_results"][dtype][mode]
      assert r["images_per_s"] > 0 and r["step_s"] > 0 and r["mfu"] is None
      assert r["flops_per_step"] > 0
    # A training step costs more than a forward pass: about three times its FLOPs.
    assert 2.0 < result["jax_results"][dtype]["train"]["flops_per_step"] / result["jax_results"][dtype]["infer"][
        "flops_per_step"] < 5.0
  for name in ("float32", "bf16_autocast"):
    assert set(result["torch_results"][name]) == {"train", "infer"}
  assert set(result["jax_over_torch"]) == {"float32.train", "float32.infer", "bfloat16.train", "bfloat16.infer"}
  assert set(result["deconv"]) == {"standard", "four_phase"}


def test_peak_lookup():
  sys.path.insert(0, str(REPO / "benchmarks"))
  try:
    import accelerator  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(str(REPO / "benchmarks"))
  assert accelerator.peak_tflops("NVIDIA H200", "bfloat16") == 989.0
  assert accelerator.peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.0  # not the SXM part's figure
  assert accelerator.peak_tflops("NVIDIA A100-SXM4-80GB", "float32") == 156.0
  assert accelerator.peak_tflops("TPU v5 lite", "bfloat16") == 197.0
  assert accelerator.peak_tflops("cpu", "float32") is None
