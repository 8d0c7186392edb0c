"""Training: targets and losses, the train state and pure train step, the mesh, optimizers, checkpoints,
logging and the two-stage loop.

Modules import on their own (this package imports none of them), so that e.g. `training.targets`
or `training.losses` can be used without the loop:

    from cascaded_lift.training import targets, losses
    from cascaded_lift.training.loop import train              # both stages; no evaluation
    from cascaded_lift.experiment import train_and_evaluate    # training, then evaluation
"""
