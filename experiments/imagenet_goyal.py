"""ResNet-50 on ImageNet with the recipe of Goyal et al. 2017, "Accurate, Large Minibatch SGD: Training ImageNet
in 1 Hour" (arXiv:1706.02677): 76.3% top-1 reported, the same from batch 256 to 8k.

    python -m resnet_jax.train --config experiments/imagenet_goyal.py --workdir runs/r50_goyal \\
        --config.data.path=/data/imagenet             # train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (no TensorFlow)
    python -m resnet_jax.train --config experiments/imagenet_goyal.py:tfds --workdir runs/r50_goyal \\
        --config.data.manual_dir=/data/imagenet-tars  # tfds imagenet2012 (TensorFlow); its validation split is 'test'

1 GPU, 8 GPUs or several hosts (--distributed) differ only in --config.batch_size=N (global): the learning rate
follows it, 0.1 x N / 256 (the linear scaling rule), the warm-up starts from 0.1 whatever N, and checkpoints come
every quarter epoch (320k images) whatever N.

Recipe (Goyal et al. Sections 2-5): 90 epochs; SGD, momentum 0.9 (not Nesterov); lr 0.1 x N/256, reached by a
linear warm-up from 0.1 over the first 5 epochs, divided by 10 at epochs 30, 60 and 80; weight decay 1e-4 on conv
and dense kernels, not on BatchNorm scales/biases or biases; the last BatchNorm scale of each residual block
initialised to zero; ResNet-50 with the stride on the 3x3 convolution (v1.5, the zoo's default). Data: random-resized
crop to 224 (8-100% of the area, aspect 3/4-4/3) + horizontal flip; evaluation on the centred 224/256 of the shorter
side resized to 224; torchvision's RGB mean/std.

Differences from the paper: BatchNorm statistics are over the global batch (Goyal et al.: per 32-image worker
batch); compute in bfloat16 with float32 parameters and statistics (the paper: float32; --config.model.dtype=float32
for that); PIL's bilinear resize (the paper: Caffe2's). Published anchors, not our measurements: Goyal et al.
76.3% (batch 256 to 8k); torchvision's V1 ResNet-50 weights 76.13%; NVIDIA DeepLearningExamples (cosine recipe,
experiments/imagenet_cosine.py) 77.1%. Time per epoch (1.28M images, 5,004 steps of 256), from published throughput:
about 9 min on one A100 with PyTorch AMP (2,470 images/s, DeepLearningExamples), 1.3 min on eight (16,621 images/s),
2.7 min per H200 at MLPerf v4.0's 7.9k images/s.
"""

import ml_collections

from resnet_jax.config import default_config

TRAIN_IMAGES = 1_281_167  # ImageNet-1k train; 50,000 validation images


def imagenet_data(source: str) -> ml_collections.ConfigDict:
    """The ImageNet data section, streamed from an image folder ('folder') or from tfds imagenet2012 ('tfds')."""
    data = default_config().data
    data.name = "imagenet2012"
    data.source = source
    data.image_size = 224
    data.augment = ("inception_crop", "flip")
    data.eval_crop = 224 / 256
    data.normalize = "imagenet"
    data.in_memory = False
    return data


def scaled_rate(config: ml_collections.ConfigDict, per_256: float) -> ml_collections.FieldReference:
    """per_256 x batch_size / 256, following --config.batch_size (an ml_collections reference)."""
    return config.get_ref("batch_size").to_float() * (per_256 / 256)


def get_config(source: str = "folder") -> ml_collections.ConfigDict:
    c = default_config()
    c.data = imagenet_data(source)
    c.model.name = "resnet50"
    c.model.zero_init_residual = True
    c.model.dtype = "bfloat16"
    c.batch_size = 256
    c.num_epochs = 90
    c.optimizer = ml_collections.ConfigDict(dict(c.optimizer, name="sgd", momentum=0.9, nesterov=False,
                                                 weight_decay=1e-4, learning_rate=scaled_rate(c, 0.1)))
    c.schedule.name = "piecewise"
    c.schedule.unit = "epochs"
    c.schedule.boundaries = (30, 60, 80)
    c.schedule.scales = (0.1, 0.1, 0.1)
    c.schedule.warmup = 5
    c.schedule.warmup_lr = 0.1
    c.schedule.warmup_linear = True
    c.log_every_steps = 100
    # Checkpoints every quarter epoch of images whatever the batch (1,251 steps of 256): a preemption loses at most
    # that; evaluation stays at epoch ends.
    c.checkpoint_every_steps = ml_collections.FieldReference(TRAIN_IMAGES // 4) // c.get_ref("batch_size")
    return c
