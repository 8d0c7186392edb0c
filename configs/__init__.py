"""ml_collections training configs; each file has one get_config() and a runnable command in its docstring."""
