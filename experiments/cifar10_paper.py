"""CIFAR-10 ResNet-20/32/44/56/110 and their plain twins, as in He et al. 2015, Section 4.2.

    python -m resnet_jax.train --config experiments/cifar10_paper.py:resnet56 --workdir runs/resnet56
    python -m resnet_jax.train --config experiments/cifar10_paper.py:plain56  --workdir runs/plain56

Recipe: 45k/5k train/val split, batch 128, SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at
32k and 48k iterations, stop at 64k; 4-pixel zero pad + random 32x32 crop + horizontal flip; per-pixel
mean subtraction; option A shortcuts; ResNet-110 warms up at 0.01 for the first 400 iterations.
Offline: add --config.data.source=cifar --config.data.path=/path/to/cifar-10-batches-py.
"""

from resnet_jax.config import default_config


def get_config(model: str = "resnet20"):
    c = default_config()
    c.model.name = model
    c.data.name = "cifar10"
    c.data.source = "tfds"
    c.data.val_size = 5000
    c.data.augment = ("crop", "flip")
    c.data.normalize = "pixel_mean"
    c.batch_size = 128
    c.num_steps = 64_000
    c.optimizer.name = "sgd"
    c.optimizer.learning_rate = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.schedule.name = "piecewise"
    c.schedule.unit = "steps"
    c.schedule.boundaries = (32_000, 48_000)
    c.schedule.scales = (0.1, 0.1)
    if model.endswith("110"):
        c.schedule.warmup = 400
        c.schedule.warmup_lr = 0.01
    c.log_every_steps = 100
    return c


def depth_grid(depths: tuple[int, ...], seeds: list[int]) -> dict[str, list]:
    """Axes for scripts/ablation.py: get_config's model, plain and residual at each depth (plain first), and seeds."""
    return {"config": [f"{net}{depth}" for depth in depths for net in ("plain", "resnet")], "seed": seeds}
