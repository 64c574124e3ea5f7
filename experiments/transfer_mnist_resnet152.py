"""The transfer seeds (000/002): MNIST padded to 32x32x3, a frozen ImageNet ResNet-152, the seeds' head.

    python -m resnet_jax.train --config experiments/transfer_mnist_resnet152.py --workdir runs/mnist_resnet152 \
        --config.init_from.path=FILE --config.data.path=DIR      # :keras (the seeds' weights, default) or :torchvision

What the seeds do, here: Keras' ResNet152(weights='imagenet', include_top=False) with every layer trainable=False
(transfer.freeze_stages=-1: no update, BatchNorm on its running statistics), Flatten -> Dense(1000, ReLU) ->
Dense(10) (model.head_pooling='flatten', head_hidden=(1000,)), Adam (Keras' defaults: 1e-3, eps 1e-7) on the
sparse cross-entropy, batch 64, 40 epochs, the last 2,000 training images as validation; MNIST zero-padded to
32x32 and repeated to 3 channels, x / 255 and no ImageNet preprocessing (as the seeds). The seed reports 92.75% test
accuracy. With no augmentation and the whole backbone frozen, the features are computed once
(transfer.cache_features): the same steps as the full forward, without 40 passes of ResNet-152.

Needs two things this machine does not have; the run stops at once and says which:
  * the weights: Keras' resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5 (zoo model keras_resnet152: conv biases,
    stride on the first 1x1, TF padding), or torchvision's resnet152-f82ba261.pth for `:torchvision` (our resnet152);
  * MNIST's four IDX files (train-images-idx3-ubyte.gz, ...) in data.path.
"""

from resnet_jax.config import default_config
from resnet_jax.pretrained import KERAS_URL, PUBLISHED, default_cache_dir

WEIGHTS = {  # zoo model, (URL, file name): the seeds load Keras' include_top=False file
    "keras": ("keras_resnet152", (KERAS_URL + "resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5",
                                  "resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5")),
    "torchvision": ("resnet152", PUBLISHED["torchvision", "resnet152"]),
}


def get_config(weights: str = "keras"):
    if weights not in WEIGHTS:
        raise ValueError(f"config argument {weights!r}: choose one of {', '.join(WEIGHTS)}")
    model, (url, filename) = WEIGHTS[weights]
    c = default_config()
    c.model.update(name=model, head_pooling="flatten", head_hidden=(1000,))
    c.init_from.update(format=weights, path=str(default_cache_dir() / filename), url=url)
    c.transfer.update(freeze_stages=-1, cache_features=True)
    c.data.update(name="mnist", source="idx", path="data/mnist", val_size=2000, pad_to_32=True, channels=3,
                  normalize="none", augment=())
    c.optimizer.update(name="adam", learning_rate=1e-3, eps=1e-7, weight_decay=0.0)
    c.schedule.name = "constant"
    c.batch_size = 64
    c.num_epochs = 40
    c.log_every_steps = 200
    return c
