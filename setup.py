"""cascaded_lift: JAX/Flax reimplementation of Cascaded Dimension-Lifting (Zhang, Zhan, Chang, AAAI 2021).

The top-level datasets/ folder (one TFDS builder per subfolder) installs as the subpackage
`cascaded_lift.datasets`, so it never shadows the unrelated `datasets` package, and configs/ as
`cascaded_lift.configs`, so that configs import each other and nothing edits sys.path.
"""

import os

from setuptools import find_packages, setup

_dataset_packages = (["cascaded_lift.datasets"] + ["cascaded_lift.datasets." + p for p in find_packages("datasets")]
                     if os.path.isdir("datasets") else [])
_config_packages = ["cascaded_lift.configs"] if os.path.isdir("configs") else []

setup(
    name="cascaded_lift",
    version="0.1.0",
    description="Monocular 3D human pose estimation by cascaded dimension-lifting, in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["cascaded_lift", "cascaded_lift.*"]) + _dataset_packages + _config_packages,
    package_dir={**({"cascaded_lift.datasets": "datasets"} if _dataset_packages else {}),
                 **({"cascaded_lift.configs": "configs"} if _config_packages else {})},
    package_data={"cascaded_lift.datasets": ["*/dummy_data/**/*", "*/README.md", "*/*.txt"],
                  "cascaded_lift.cpu.kernels": ["*.cc"]},  # compiled on first use (cpu/kernels/onednn.py)
    include_package_data=True,
    install_requires=[
        "jax",
        "flax",
        "optax",
        "orbax-checkpoint",
        "tensorflow-datasets",
        "array-record",
        "importlib_resources",  # TFDS imports it without declaring it when TensorFlow is absent.
        "grain",
        "numpy",
        "opencv-python-headless",
        "ml-collections",
        "chex",
        "absl-py",
        "tensorboardX",  # TensorBoard event files without TensorFlow.
        "matplotlib",
        "safetensors",
        "flatbuffers",  # jax.export serialization (cascaded_lift.inference.export)
    ],
    extras_require={
        # The XLA:CPU plug-in's oneDNN 3.x on GNU OpenMP (cascaded_lift/cpu/kernels/onednn.py): the library
        # and its headers, under the environment's prefix. An extra, because GPU and TPU hosts never use it
        # (cascaded_lift.platform picks the standard layers there); CPU training wants it (README).
        "cpu": ["onednn-cpu-gomp; platform_system == 'Linux' and platform_machine == 'x86_64'",
                "onednn-devel-cpu-gomp; platform_system == 'Linux' and platform_machine == 'x86_64'"],
        "test": ["pytest", "pytest-xdist>=3.2", "import-linter"],
        "torch": ["torch"],
    },
    entry_points={
        "console_scripts": [
            "cascaded-lift-build=cascaded_lift.datasets.build:main",
            "cascaded-lift-import-released=cascaded_lift.training.released_cli:main",
            "cascaded-lift-predict=cascaded_lift.inference.cli:main",
            "cascaded-lift-weights=cascaded_lift.weights.cli:main",
        ],
    },
)
