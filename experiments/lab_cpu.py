"""The residual lab's trained nets at CPU size: plain and residual twins on real Fashion-MNIST for the instruments.

    python -m resnet_jax.train --config experiments/lab_cpu.py:resnet20 --workdir runs/lab_cpu/resnet20_s0
    python -m resnet_jax.train --config experiments/lab_cpu.py:plain20 --workdir runs/lab_cpu/plain20_s0 \
        --config.seed=0
    python -m resnet_jax.lab lesion --workdir runs/lab_cpu/resnet20_s0 --out experiments/results/lab_lesion/resnet20

The ablation_cpu recipe (He et al.'s CIFAR recipe shrunk: widths (8, 16, 32), 14x14 inputs, option A shortcuts, SGD
0.1 divided by 10 at 1/2 and 3/4) on the first 20k Fashion-MNIST training images for 6 epochs (936 iterations).
"""

from experiments.ablation_cpu import get_config as ablation_config


def get_config(model: str = "resnet20"):
    c = ablation_config(model)
    c.data.train_subset = 20_000
    c.num_steps = 936  # 6 epochs of 156 iterations
    c.schedule.boundaries = (468, 702)
    c.log_every_steps = 52
    c.diagnostics_every_steps = 0
    return c
