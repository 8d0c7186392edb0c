#!/usr/bin/env bash
# The GPU/TPU benchmark (benchmarks/accelerator.py): the full model, batch 64, 256 px, JAX float32 and
# bfloat16 against PyTorch, MFU, standard vs four-phase deconvolutions; one JSON line on stdout.
# Runs from a checkout with jax, flax, optax (and torch) installed; nothing else of the package needed.
#   bash benchmarks/accelerator.sh [extra accelerator.py flags] > accelerator.json
set -euo pipefail
cd "$(dirname "$0")/.."
# JAX takes half the device memory, so PyTorch fits beside it in the same process.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec python benchmarks/accelerator.py --model full --batch 64 --size 256 "$@"
