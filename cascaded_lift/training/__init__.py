"""Training: the train state and pure train step, the mesh, optimizers, checkpoints, logging and the loop.

    from cascaded_lift.training import train_and_evaluate
    train_and_evaluate(config, workdir)
"""

from cascaded_lift.training.loop import train_and_evaluate  # noqa: F401
