"""Evaluation of a trained model on its config's eval set.

  evaluate.evaluate(config, workdir)   the evaluator registered for config.data.eval.name, into workdir/eval/
  single_person                        Human3.6M / synthetic: metrics.json, per-action tables, plots
  h36m                                 Human3.6M in the paper's setting: detected boxes and ground-truth boxes
  mupots                               MuPoTS-3D top-down driver (the Predictor on every person box)
  mupots_score                         MuPoTSEvaluator: matching, bone-length rescaling, 3DPCK/AUC tables

The error metrics themselves are cascaded_lift.metrics. This package imports none of its modules.
"""
