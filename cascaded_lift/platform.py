"""The platform policy: which layer implementations the network is built from, in one place.

    model = platform.build_model(config)                 # what training, evaluation and inference use
    ops = platform.layer_ops(config, platform="gpu")     # LayerOps for a given backend

config.platform_ops:
  "auto"      (default) the CPU forms of cascaded_lift.cpu (oneDNN kernels, 1x1 convolutions as matrix
              products, four-phase or adjoint deconvolutions, the tap-wise max-pool gradient) when the
              backend is CPU; the standard Flax layers (nn.Conv, nn.ConvTranspose, nn.max_pool) on GPU
              and TPU, which their compilers are tuned for.
  "standard"  the standard layers everywhere (e.g. for a portable jax.export).
  "cpu"       the CPU forms whatever the backend (they lower to XLA's own operations off CPU).
config.cpu (used only when the CPU forms are chosen):
  conv         "auto" | "onednn" | "xla"      cpu.conv_ops.KERNELS
  kernel_grad  "auto" | "taps" | "xla"        cpu.conv_ops.KERNEL_GRADS
  deconv       "auto" | "adjoint_conv" | "four_phase" | "depth_to_space" | "conv_transpose"
  host_malloc  "default" | "retain"           process-wide glibc malloc options (cpu/hostmem.py),
                                              applied by `configure_host` on a CPU backend only
  init_compile "fast" | "optimized"           how the one-off parameter initialisation compiles on a CPU
                                              backend (`init_compiler_options`); off CPU always as usual
Both forms hold the same parameters under the same names, so a checkpoint is independent of the
choice (docs/design.md section 9). The choice is made from the config when the model is built, never
from module state read at trace time.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import jax

from cascaded_lift.cpu import hostmem
from cascaded_lift.errors import ConfigError
from cascaded_lift.cpu import layers as cpu_layers
from cascaded_lift.models import build as model_build
from cascaded_lift.models.cascade import CascadedLiftNet
from cascaded_lift.models.ops import STANDARD_OPS, LayerOps

PLATFORM_OPS = ("auto", "standard", "cpu")
INIT_COMPILE = ("fast", "optimized")
# XLA:CPU compiles the initialisation's threefry random bits (one stream per parameter array) through
# LLVM at full optimisation: 13-17 s of a tiny test run's 46 s, for a program that runs once and then
# takes 3 ms. At backend optimisation level 0 it compiles in 4.5 s and runs in 24 ms; its values differ
# from the optimised program's by at most 1 ulp (measured: 54 of 281 arrays, 1.5e-7 relative), because
# the unoptimised code rounds some float steps of the normal / truncated-normal sampling separately.
_FAST_INIT_OPTIONS = {"xla_backend_optimization_level": 0}


def _cpu_config(config: Any) -> dict[str, Any]:
  cpu = config.get("cpu", None)
  return dict(cpu) if cpu is not None else {}


def uses_cpu_forms(config: Any, platform: str | None = None) -> bool:
  """Whether config.platform_ops picks the CPU forms on `platform` (default: JAX's default backend)."""
  choice = config.get("platform_ops", "auto")
  if choice not in PLATFORM_OPS:
    raise ConfigError(f"config.platform_ops must be one of {PLATFORM_OPS}, got {choice!r}")
  platform = (platform or jax.default_backend()).lower()
  return choice == "cpu" or (choice == "auto" and platform == "cpu")


def layer_ops(config: Any, platform: str | None = None) -> LayerOps:
  """The LayerOps of config.platform_ops on `platform` ("cpu", "gpu", "tpu"; default: the backend)."""
  cpu = _cpu_config(config)
  settings = (cpu.get("conv", "auto"), cpu.get("kernel_grad", "auto"), cpu.get("deconv", "auto"))
  cpu_layers.check_settings(*settings)  # on every platform: a typo shows up where it is made
  if not uses_cpu_forms(config, platform):
    return STANDARD_OPS
  return cpu_layers.cpu_ops(*settings)


def build_model(config: Any, platform: str | None = None) -> CascadedLiftNet:
  """models.build.build_model with the LayerOps of the policy (module docstring)."""
  return model_build.build_model(config, layer_ops(config, platform))


def init_compiler_options(config: Any, platform: str | None = None) -> dict[str, Any]:
  """XLA compiler options for the parameter-initialisation program (training.builders.init_variables).

  config.cpu.init_compile "fast" (default) on a CPU backend: backend optimisation level 0 (see
  _FAST_INIT_OPTIONS for the measured cost and effect); "optimized", or any other backend: none.
  """
  mode = _cpu_config(config).get("init_compile", "fast")
  if mode not in INIT_COMPILE:
    raise ConfigError(f"config.cpu.init_compile must be one of {INIT_COMPILE}, got {mode!r}")
  platform = (platform or jax.default_backend()).lower()
  return dict(_FAST_INIT_OPTIONS) if platform == "cpu" and mode == "fast" else {}


def configure_host(config: Any, platform: str | None = None) -> bool:
  """Applies config.cpu.host_malloc on a CPU backend (before the backend starts its threads).

  Returns True when glibc's options were changed. Never touches GPU or TPU hosts.
  """
  mode = _cpu_config(config).get("host_malloc", "default")
  if mode not in hostmem.MODES:
    raise ConfigError(f"config.cpu.host_malloc must be one of {hostmem.MODES}, got {mode!r}")
  platform = (platform or _backend_without_starting_it()).lower()
  if platform != "cpu" or mode == "default":
    return False
  return hostmem.configure(mode)


def _backend_without_starting_it() -> str:
  """The platform JAX will use, from JAX_PLATFORMS or the installed plug-ins, without starting a backend.

  Starting one would start its thread pools (and their malloc arenas) before the options are set.
  """
  requested = jax.config.jax_platforms or ""
  if requested:
    return requested.split(",")[0].strip()
  if importlib.util.find_spec("libtpu") is not None:
    return "tpu"
  if importlib.util.find_spec("jax_plugins") is not None:  # jax's CUDA / ROCm plug-ins live there
    return "gpu"
  return "cpu"
