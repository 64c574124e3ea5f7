"""Plain vs residual depth ablation at paper size: CIFAR-10 with the recipe of He et al. 2015, Section 4.2, 3 seeds.

    bash scripts/ablation_paper.sh   # every GPU of the machine, then experiments/results/ablation_paper/report.md
    python scripts/ablation.py run --config experiments/ablation_paper.py --root runs/ablation_paper \
        [--workers N --worker-index I]

Each cell is experiments/cifar10_paper.py's run (64k iterations of batch 128 on 45k/5k train/val, lr 0.1 divided by
10 at 32k and 48k, ResNet-110's 400-iteration warm-up at 0.01), with gradient diagnostics every 1000 iterations.
Data from tensorflow-datasets (downloaded once). Offline, from the CIFAR-10 python archive instead, add to either
command:
    --set data.source=cifar data.path=/path/to/cifar-10-batches-py
"""

from experiments.cifar10_paper import depth_grid
from experiments.cifar10_paper import get_config as paper_config

DEPTHS = (20, 32, 44, 56, 110)


def get_grid() -> dict[str, list]:
    """The ablation's axes (scripts/ablation.py): plain and residual nets at each depth, and seeds."""
    return depth_grid(DEPTHS, seeds=[0, 1, 2])


def get_config(model: str = "resnet20"):
    c = paper_config(model)
    c.diagnostics_every_steps = 1000
    return c
