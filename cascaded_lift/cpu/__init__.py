"""Everything that exists only to make XLA:CPU fast; the model code never imports it.

  layers      cpu_ops(): models.LayerOps with the CPU forms of convolution, deconvolution, max-pool
  conv_ops    conv2d / conv2d_transpose on oneDNN's kernels or with per-tap kernel gradients
  kernels     the oneDNN convolutions as XLA FFI custom calls, compiled on first use
  hostmem     glibc malloc options that stop XLA:CPU's per-step page faults

cascaded_lift.platform chooses these from the config (config.platform_ops, config.cpu).
"""
