"""Quickstart: a small ResNet (resnet8: 3x3 stem + three stages of one basic block) on real Fashion-MNIST, on a CPU.

    bash scripts/quickstart.sh          # sets up .venv and the data, then runs:
    python -m resnet_jax.train --config experiments/quickstart.py --workdir runs/quickstart

Reads the IDX files of Debian's dataset-fashion-mnist (no network needed). 55k train / 5k validation (the
last 5,000 training images) / 10k test, 28x28x1 images with per-channel normalisation and horizontal flips;
SGD with Nesterov momentum, linear warm-up then cosine decay, weight decay 5e-4 on kernels.
"""

from resnet_jax.config import default_config


def get_config():
    c = default_config()
    c.model.name = "resnet8"
    c.data.name = "fashion_mnist"
    c.data.source = "idx"
    c.data.path = "/usr/share/datasets/fashion-mnist"
    c.data.val_size = 5000
    c.data.augment = ("flip",)
    c.data.normalize = "channel"
    c.batch_size = 128
    c.num_epochs = 4
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = True
    c.optimizer.weight_decay = 5e-4
    c.schedule.name = "cosine"
    c.schedule.warmup = 0.3
    c.log_every_steps = 50
    return c
