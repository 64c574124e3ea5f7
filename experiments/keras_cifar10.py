"""The Keras seed's CIFAR-10 recipes (keras.io "Trains a ResNet on the CIFAR10 dataset"), ResNet v1 (n=3) and v2.

    python -m resnet_jax.train --config experiments/keras_cifar10.py:v1 --workdir runs/keras_v1   # resnet20
    python -m resnet_jax.train --config experiments/keras_cifar10.py:v2 --workdir runs/keras_v2   # preact_resnet29

Recipe: batch 32, 200 epochs, Adam 1e-3 (x0.1 after epoch 80, x0.01 after 120, x1e-3 after 160, x0.5e-3 after 180),
L2 1e-4 on kernels, random shifts of 10% (nearest fill) + horizontal flips, per-pixel mean subtraction,
best checkpoint by test accuracy (the seed validates on the test set). BatchNorm as Keras: momentum 0.99, epsilon 1e-3.
The seed also adds ReduceLROnPlateau(sqrt(0.1), patience 5, min_lr 0.5e-6), but its LearningRateScheduler sets the
rate to lr_schedule(epoch) at the start of every epoch, undoing each plateau cut before a single step uses it: the
seed trains on lr_schedule alone, and so does this config. `--config.plateau.enabled=True` turns on a plateau that
does act (its cuts multiply the schedule; the floor min_lr is relative to the base rate).
Differences: our v1 projection shortcut has a BN after the 1x1 conv (option B); the seed's has none.
The seed's lr_schedule receives 0-based epochs, so "epoch > 80" takes effect from the 82nd epoch (index 81).
"""

from resnet_jax.config import default_config


def get_config(version: str = "v1"):
    c = default_config()
    c.model.name = {"v1": "resnet20", "v2": "preact_resnet29"}[version]
    if version == "v1":
        c.model.shortcut = "B"
    c.model.bn_momentum = 0.99
    c.model.bn_epsilon = 1e-3
    c.data.name = "cifar10"
    c.data.source = "tfds"
    c.data.augment = "shift_flip"
    c.data.normalize = "pixel_mean"
    c.batch_size = 32
    c.num_epochs = 200
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.eps = 1e-7
    c.optimizer.weight_decay = 2e-4  # Keras l2(1e-4) adds 1e-4 * sum(w^2) to the loss: 2e-4 * w in the gradient
    c.schedule.name = "piecewise"
    c.schedule.unit = "epochs"
    c.schedule.boundaries = (81, 121, 161, 181)
    c.schedule.scales = (0.1, 0.1, 0.1, 0.5)
    c.plateau.monitor = "test/loss"  # used only if plateau.enabled is set
    c.best_metric = "test/accuracy"
    c.log_every_steps = 200
    return c
