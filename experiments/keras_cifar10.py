"""The Keras seed's CIFAR-10 recipes (keras.io "Trains a ResNet on the CIFAR10 dataset"), ResNet v1 (n=3) and v2.

    python -m resnet_jax.train --config experiments/keras_cifar10.py:v1 --workdir runs/keras_v1   # ResNet20v1
    python -m resnet_jax.train --config experiments/keras_cifar10.py:v2 --workdir runs/keras_v2   # ResNet29v2

Networks: the seed's own, layer for layer (tests/test_pretrained.py builds them in Keras from the seed's code and
checks parameter counts and logits against ours):
  * v1 = keras_cifar_resnet20_v1 (273,066 parameters): 3x3 stem conv-BN-ReLU; stages of basic blocks 16/32/64;
    the stride-changing shortcut a bare strided 1x1 conv (no BN).
  * v2 = keras_cifar_resnet29_v2 (843,786 parameters): stem conv-BN-ReLU; pre-activation bottlenecks 16/64/128
    wide with outputs 64/128/256, the stride on the first 1x1; the first block of stage 1 uses the stem's BN-ReLU
    as its pre-activation; every first block's projection (bare 1x1 conv) reads the raw block input.
  Both: a bias on every conv, TF 'same' padding (a stride-2 3x3 on an even size pads bottom/right only),
  he_normal (truncated, fan_in) initialisation of convs and classifier, Keras BN (momentum 0.99, epsilon 1e-3).
Recipe: batch 32, 200 epochs, Adam 1e-3 (x0.1 after epoch 80, x0.01 after 120, x1e-3 after 160, x0.5e-3 after 180),
L2 1e-4 on kernels, random shifts of 10% (nearest fill) + horizontal flips, per-pixel mean subtraction,
best checkpoint by test accuracy (the seed validates on the test set).
The seed also adds ReduceLROnPlateau(sqrt(0.1), patience 5, min_lr 0.5e-6), but its LearningRateScheduler sets the
rate to lr_schedule(epoch) at the start of every epoch, undoing each plateau cut before a single step uses it: the
seed trains on lr_schedule alone, and so does this config. `--config.plateau.enabled=True` turns on a plateau that
does act (its cuts multiply the schedule; the floor min_lr is relative to the base rate).
The seed's lr_schedule receives 0-based epochs, so "epoch > 80" takes effect from the 82nd epoch (index 81).
Difference left: the seed's l2(1e-4) regularises conv kernels only, ours also the classifier's.
"""

from resnet_jax.config import default_config


def get_config(version: str = "v1"):
    c = default_config()
    c.model.name = {"v1": "keras_cifar_resnet20_v1", "v2": "keras_cifar_resnet29_v2"}[version]
    c.data.name = "cifar10"
    c.data.source = "tfds"
    c.data.augment = ("shift", "flip")
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
