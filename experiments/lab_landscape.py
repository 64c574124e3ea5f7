"""Trained nets for the loss-landscape study (Li et al. 2018): ResNet-20/56 and their plain twins at CPU size.

    python -m resnet_jax.train --config experiments/lab_landscape.py:resnet20 --workdir runs/lab_landscape/resnet20
    python -m resnet_jax.lab landscape --workdir runs/lab_landscape/resnet20 --out experiments/results/lab_landscape

The recipe is experiments/ablation_cpu.py's (real Fashion-MNIST, first 10k training images at 14x14, widths
(8, 16, 32), SGD 0.1 with momentum, 468 iterations = 6 epochs, option A shortcuts) without gradient diagnostics.
"""

from experiments.ablation_cpu import get_config as ablation_config


def get_config(model: str = "resnet20"):
    c = ablation_config(model)
    c.diagnostics_every_steps = 0
    return c
