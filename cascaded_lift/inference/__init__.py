"""Inference on users' images.

  host        crops (the pipeline's crop), 2D joints in image px, camera space, BasePredictor (no Flax)
  predictor   Predictor: a config's network with restored or given variables
  export      export_predictor: the network as a jax.export artifact (standard layers)
  exported    load_exported: runs an artifact without Flax or model code
  cli         cascaded-lift-predict (takes --config like train.py)
  plots       skeleton drawings, 3D plots, bar charts

This package imports none of its modules.
"""
