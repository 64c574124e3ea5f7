"""The 003 seed: ResNet-50 on a small image folder (6 hand-sign classes, 64x64), from scratch vs ImageNet-initialised.

    python -m resnet_jax.train --config experiments/transfer_folder_resnet50.py:scratch --workdir runs/signs_scratch \
        --config.data.path=DIR
    python -m resnet_jax.train --config experiments/transfer_folder_resnet50.py:imagenet --workdir runs/signs_imagenet \
        --config.data.path=DIR --config.init_from.path=FILE

DIR holds DIR/train/<class>/*.png|jpg and DIR/test/<class>/... (the seed's set: 1,080 train / 120 test images of
6 classes; any small folder works). The seed's head on ResNet-50: global average pooling, Dropout(0.7), Dense
(model.head_dropout=0.7); Adam 1e-3, batch 32; 25 epochs from scratch (the seed: 86% test), 100 with ImageNet weights.
`imagenet` fine-tunes everything from torchvision's resnet50-11ad3fa6.pth with the backbone at 0.1x the head's
rate (transfer.backbone_lr_scale); `imagenet_frozen` trains the head alone on cached features. Without the weights
file the run stops at once and names it; without the folder, the data error says what layout is expected.
"""

from resnet_jax.config import default_config
from resnet_jax.pretrained import PUBLISHED, default_cache_dir

VARIANTS = ("scratch", "imagenet", "imagenet_frozen")


def get_config(variant: str = "scratch"):
    if variant not in VARIANTS:
        raise ValueError(f"config argument {variant!r}: choose one of {', '.join(VARIANTS)}")
    c = default_config()
    c.model.update(name="resnet50", head_dropout=0.7)
    c.data.update(name="signs", source="folder", path="data/signs", image_size=64, normalize="channel",
                  augment=())
    c.optimizer.update(name="adam", learning_rate=1e-3, eps=1e-7, weight_decay=0.0)
    c.schedule.name = "constant"
    c.batch_size = 32
    c.num_epochs = 25
    c.log_every_steps = 10
    if variant != "scratch":
        url, filename = PUBLISHED["torchvision", "resnet50"]
        c.init_from.update(format="torchvision", path=str(default_cache_dir() / filename), url=url)
        c.num_epochs = 100
        c.transfer.backbone_lr_scale = 0.1
    if variant == "imagenet_frozen":
        c.transfer.update(freeze_stages=-1, backbone_lr_scale=1.0, cache_features=True)
    return c
