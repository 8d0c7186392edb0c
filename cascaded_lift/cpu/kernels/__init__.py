"""Native CPU kernels called from JAX through the XLA FFI (see onednn.py)."""
