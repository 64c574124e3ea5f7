"""Plain vs residual depth ablation at paper width, sized for a few minutes of one lent GPU (the campaign's part 5).

    bash benchmarks/campaign/gpu_campaign.sh OUT --parts ablation   # 3 workers on one GPU, then the report, in budget
    python scripts/ablation.py run --config experiments/ablation_gpu.py --root runs/ablation_gpu
    python scripts/ablation.py report --root runs/ablation_gpu --out experiments/results/ablation_gpu --copy-metrics

The CIFAR nets of He et al. 2015 at their widths (16/32/64, option A shortcuts) and their plain twins, depths 20, 56
and 110, one seed, on real Fashion-MNIST zero-padded to 32x32 and repeated to 3 channels (55k train / 5k validation
/ 10k test), with the paper's recipe (experiments/cifar10_paper.py: batch 128, SGD 0.1 / 0.9, weight decay 1e-4,
pad-4 crop + flip, lr / 10 at 1/2 and 3/4 of the run, ResNet-110's warm-up at 0.01 for 400 iterations) shortened to
2000 iterations (4.7 epochs) so that the six runs fit the part's budget. No gradient diagnostics: each would add a
compilation per run.
"""

from experiments.cifar10_paper import depth_grid
from experiments.cifar10_paper import get_config as paper_config

DEPTHS = (20, 56, 110)


def get_grid() -> dict[str, list]:
    """The ablation's axes (scripts/ablation.py): plain and residual nets at each depth, and seeds."""
    return depth_grid(DEPTHS, seeds=[0])


def get_config(model: str = "resnet20"):
    c = paper_config(model)
    c.data.update(name="fashion_mnist", source="idx", path="/usr/share/datasets/fashion-mnist", val_size=5000,
                  pad_to_32=True, channels=3, augment=("crop", "flip"), normalize="channel")
    c.num_steps = 2000
    c.schedule.boundaries = (1000, 1500)
    c.log_every_steps = 20
    c.checkpoint_keep = 1
    return c
