"""The residual lab's trainability study at CPU size: which nets still train as depth grows, and why.

    python scripts/ablation.py run --config experiments/trainability_cpu.py --root runs/trainability_cpu
    python scripts/ablation.py report --root runs/trainability_cpu --out experiments/results/trainability_cpu

Five variants of the same layers (docs/lab.md): plain (BatchNorm, no shortcut), residual (BatchNorm), SkipInit and
Fixup (residual, no normalisation; Fixup's scalars at 1/10 of the rate, as in its reference code), and residual +
BatchNorm with stochastic depth (p_L = 0.5, per mini-batch as Huang et al.); depths 8, 20, 56 and 110; 2 seeds: 40
runs of the ablation_cpu recipe (real Fashion-MNIST at 14x14, widths (8, 16, 32), 468 iterations).
One cell is an ordinary run:
    python -m resnet_jax.train --config experiments/trainability_cpu.py:fixup56 --workdir runs/fixup56
"""

import re

from experiments.ablation_cpu import get_config as ablation_config

DEPTHS = (8, 20, 56, 110)
VARIANTS = {  # config sections' changes from the recipe
    "plain": {},
    "resnet": {},
    "skipinit": {"model": {"block": "skipinit_basic"}},
    # Fixup's reference code trains the scalar biases and multipliers at 1/10 of the rate; at the full rate every
    # Fixup net here died within 60 iterations (loss at ln 10 from then on: docs/lab.md).
    "fixup": {"model": {"block": "fixup_basic"}, "optimizer": {"scalar_lr_scale": 0.1}},
    "stochdepth": {"model": {"stochastic_depth": 0.5, "stochastic_depth_mode": "batch"}},
}


def get_grid() -> dict[str, list]:
    """The study's axes (scripts/ablation.py): every variant at every depth, and seeds."""
    return {"config": [f"{variant}{depth}" for depth in DEPTHS for variant in VARIANTS], "seed": [0, 1]}


def get_config(cell: str = "resnet20"):
    match = re.fullmatch(r"([a-z]+)(\d+)", cell)
    if not match or match[1] not in VARIANTS:
        raise ValueError(f"unknown cell {cell!r}: <variant><depth> with variant one of {', '.join(VARIANTS)}")
    variant, depth = match.groups()
    c = ablation_config(("plain" if variant == "plain" else "resnet") + depth)
    for section, changes in VARIANTS[variant].items():
        c[section].update(changes)
    return c
