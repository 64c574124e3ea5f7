"""Plain vs residual depth ablation at CPU size: the paper's recipe, shrunk to real Fashion-MNIST and a 2-core CPU.

    python scripts/ablation.py run --config experiments/ablation_cpu.py --root runs/ablation_cpu
    python scripts/ablation.py report --root runs/ablation_cpu --out experiments/results/ablation_cpu --copy-metrics

The grid (get_grid: plain and residual x DEPTHS x 2 seeds, 12 runs) took 11 minutes on a 2-core CPU, one run after
another. From experiments/cifar10_paper.py it keeps SGD with momentum 0.9, lr 0.1 divided by 10 at 1/2 and 3/4 of
the run, weight decay 1e-4, batch 128 and option A shortcuts; it changes the data (the first 10k Fashion-MNIST
training images, downsampled 2x to 14x14, no augmentation; 1k validation images from the end of train; the 10k test
images), the widths (8, 16, 32) and the length (468 iterations: 6 epochs). Gradient diagnostics every 50 iterations.
One cell is an ordinary run: python -m resnet_jax.train --config experiments/ablation_cpu.py:plain56 --workdir ...
"""

from experiments.cifar10_paper import depth_grid
from experiments.cifar10_paper import get_config as paper_config

DEPTHS = (8, 20, 56)


def get_grid() -> dict[str, list]:
    """The ablation's axes (scripts/ablation.py): plain and residual nets at each depth, and seeds."""
    return depth_grid(DEPTHS, seeds=[0, 1])


def get_config(model: str = "resnet20"):
    c = paper_config(model)
    c.model.widths = (8, 16, 32)
    c.data.update(name="fashion_mnist", source="idx", path="/usr/share/datasets/fashion-mnist", train_subset=10_000,
                  val_size=1000, image_size=14, augment=(), normalize="channel")
    c.num_steps = 468  # 6 epochs of 78 iterations
    c.schedule.boundaries = (234, 351)
    c.log_every_steps = 10
    c.diagnostics_every_steps = 50
    c.checkpoint_keep = 1
    return c
