"""ResNet-50 on ImageNet with a modern cosine recipe: NVIDIA DeepLearningExamples' ResNet-50 v1.5 (PyTorch) at 90
epochs, label smoothing 0.1: 77.1% top-1 reported (DGX A100, mixed precision: 77.12 +/- 0.11).

    python -m resnet_jax.train --config experiments/imagenet_cosine.py --workdir runs/r50_cosine \\
        --config.data.path=/data/imagenet             # or experiments/imagenet_cosine.py:tfds (see imagenet_goyal.py)

As in experiments/imagenet_goyal.py, only --config.batch_size=N changes between 1 GPU, 8 GPUs and several hosts:
the learning rate is 0.256 x N / 256.

Recipe (DeepLearningExamples PyTorch/Classification/ConvNets: README "Default configuration" and configs.yml):
90 epochs; SGD, momentum 0.875; lr 0.256 x N/256 with a linear warm-up from 0 over 8 epochs, then cosine to 0;
weight decay 1/32768 on conv and dense kernels only (not on BatchNorm parameters); label smoothing 0.1; the data of
imagenet_goyal.py (random-resized crop 224 + flip; centred 224/256 evaluation crop). Their 250-epoch variant adds
mixup, which we do not have. Differences: zoo's fan-out He initialisation (theirs: fan-in), bfloat16 compute.
Published anchors, not our measurements: 77.12% (90 epochs, 8x A100 AMP), 78.4% at 250 epochs; throughput 2,470
images/s on one A100 (~14 h for 90 epochs), 16,621 on eight (~3 h).
"""

from experiments.imagenet_goyal import get_config as goyal_config
from experiments.imagenet_goyal import scaled_rate


def get_config(source: str = "folder"):
    c = goyal_config(source)
    c.model.zero_init_residual = False
    c.optimizer.momentum = 0.875
    c.optimizer.weight_decay = 1 / 32768
    c.optimizer.learning_rate = scaled_rate(c, 0.256)
    c.label_smoothing = 0.1
    c.schedule.name = "cosine"
    c.schedule.boundaries = ()
    c.schedule.scales = ()
    c.schedule.warmup = 8
    c.schedule.warmup_lr = 0.0
    c.schedule.warmup_linear = False
    return c
