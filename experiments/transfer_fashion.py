"""Transfer to classes the backbone never saw: pretrain on Fashion-MNIST classes 0-4, transfer to classes 5-9.

    python -m resnet_jax.train --config experiments/transfer_fashion.py:pretrain \
        --workdir runs/transfer_fashion/pretrain-seed0
    python -m resnet_jax.train --config experiments/transfer_fashion.py:frozen_cached,10 --workdir runs/... \
        --config.init_from.path=runs/transfer_fashion/pretrain-seed0
    python scripts/transfer_demo.py --root runs/transfer_fashion --out experiments/results/transfer   # the whole study

Real Fashion-MNIST (Debian's IDX files), downsampled to 14x14, no augmentation, inputs x/255. The backbone is a
resnet8 with widths (16, 32, 64), trained on classes 0-4 (T-shirt/top, Trouser, Pullover, Dress, Coat: 29k train,
the last 1k as validation) for 4 epochs (SGD + Nesterov, cosine). Transfer runs see classes 5-9 (Sandal, Shirt,
Sneaker, Bag, Ankle boot) with `shots` labelled training images per class (0 = all 6,000), drawn by the run's seed,
and are tested on the 5,000 test images of those classes (no validation split: few-shot has no labels to spare).

methods (`get_config('<method>,<shots>[,<epochs>]')`), all with Adam and a cosine decay, batch 10 / 25 / 128 for
10 / 100 / all images per class, 10 / 10 / 2 epochs (50 / 200 / 468 steps):
  scratch        random init, everything trains at 1e-3
  frozen         the pretrained backbone frozen (BatchNorm on its running statistics), a new linear head at 0.1
  frozen_cached  the same, with the backbone's features computed once (the same steps, far cheaper)
  finetune       everything trains from the pretrained backbone: a new head at 1e-2, the backbone at 0.1x that (1e-3)
The new heads get higher rates than scratch's 1e-3 because a head on pretrained features learned too slowly at
1e-2 / 1e-3 in a pilot run (10 per class: 82% training accuracy at the end); nothing was tuned on test data.
"""

from resnet_jax.config import default_config

METHODS = ("scratch", "frozen", "frozen_cached", "finetune")
SHOTS = (10, 100, 0)  # labelled training images per class; 0 = all
SEEDS = (0, 1, 2)
CACHING_EPOCHS = 10  # frozen vs frozen_cached again on all labels for this many epochs: caching pays per epoch
# shots -> (batch size, epochs): 50, 200 and 468 steps (the loop evaluates and saves after every epoch).
LENGTH = {10: (10, 10), 100: (25, 10), 0: (128, 2)}


def base_config():
    c = default_config()
    c.model.update(name="resnet8", widths=(16, 32, 64))
    c.data.update(name="fashion_mnist", source="idx", path="/usr/share/datasets/fashion-mnist", image_size=14,
                  augment=(), normalize="none")
    c.optimizer.update(name="adam", learning_rate=1e-3, weight_decay=0.0)
    c.schedule.update(name="cosine", warmup=0.0)
    c.checkpoint_keep = 1
    return c


def get_config(arg: str = "pretrain"):
    c = base_config()
    if arg == "pretrain":
        c.data.update(classes=(0, 1, 2, 3, 4), val_size=1000)
        c.optimizer.update(name="sgd", learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        c.batch_size, c.num_epochs, c.log_every_steps = 128, 4, 50
        return c
    method, shots, *epochs = arg.split(",")
    if method not in METHODS or int(shots or -1) not in SHOTS or len(epochs) > 1:
        raise ValueError(f"config argument {arg!r}: use 'pretrain' or '<method>,<shots>[,<epochs>]' with method in "
                         f"{METHODS} and shots in {SHOTS} (0 = all)")
    shots = int(shots)
    c.data.update(classes=(5, 6, 7, 8, 9), train_per_class=shots)
    c.batch_size, c.num_epochs = LENGTH[shots]
    if epochs:  # a longer run than the table's (the feature-caching measurement)
        c.num_epochs = int(epochs[0])
    c.log_every_steps = 25
    if method != "scratch":
        c.init_from.update(format="checkpoint", path="runs/transfer_fashion/pretrain-seed0", checkpoint="best")
    if method.startswith("frozen"):
        c.transfer.freeze_stages = -1
        c.transfer.cache_features = method == "frozen_cached"
        c.optimizer.learning_rate = 0.1
    if method == "finetune":
        c.optimizer.learning_rate = 1e-2
        c.transfer.backbone_lr_scale = 0.1
    return c
