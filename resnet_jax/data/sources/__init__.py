"""Where images come from: one module per source, registered by name (`register_source`), behind one interface.

Built in: 'tfds' (tensorflow-datasets), 'idx' (MNIST-format files), 'cifar' (CIFAR python archives), 'folder' (image
folders); common.py holds what they share. `load_dataset(config)` reads the one source `config.source` names (never a
fallback to another) into memory, then carves val, selects classes and subsets, resizes and checks the splits the
same way for every source. Local files need neither TensorFlow nor tensorflow-datasets.
"""

import ml_collections
import numpy as np

from resnet_jax.data.sources import tfds, idx, cifar, folder  # noqa: F401 - registers the built-ins, in this order
from resnet_jax.data.sources.common import (SOURCES, DataError, Dataset, Source, Stream, check_num_classes,
                                            parallel_stack, per_class_subset, register_source, resize_image,
                                            select_classes, split_ranges)

__all__ = ["SOURCES", "DataError", "Dataset", "Source", "Stream", "load_dataset", "register_source"]


def load_dataset(config: ml_collections.ConfigDict) -> Dataset:
    """Every split of the dataset a validated data config names, from its source, with val carved from train."""
    splits, class_names, origin = SOURCES[config.source].read(config)
    splits = dict(splits)  # the source's own dict stays as it gave it
    check_num_classes(config, class_names, origin)
    if "val" in splits and config.val_size:
        raise DataError(f"{origin} already has a val split; set val_size=0 or remove it")
    if (config.classes or config.train_per_class) and splits["train"][1].ndim != 1:
        raise DataError(f"data.classes and data.train_per_class select examples by their integer label, but {origin} "
                        "has soft labels: leave them at () and 0")
    if config.classes:
        splits, class_names = select_classes(splits, class_names, config.classes)
    ranges = split_ranges(len(splits["train"][1]), config.val_size, config.train_subset)
    x, y = splits.pop("train")
    splits = {k: (x[a:b], y[a:b]) for k, (a, b) in ranges.items()} | splits
    if config.train_per_class:
        splits["train"] = per_class_subset(*splits["train"], config.train_per_class, config.subset_seed)
    for k, (images, labels) in splits.items():
        if not len(labels):
            raise DataError(f"the {k} split of {origin} holds no images")
        _check_split(k, images, labels, len(class_names), origin)
    size = config.image_size
    if size:  # after the subset: resize only what is used (sources that decode files resize as they decode)
        splits = {k: (x if x.shape[1:3] == (size, size) else parallel_stack(lambda image: resize_image(image, size), x),
                      y) for k, (x, y) in splits.items()}
    shapes = {k: x.shape[1:] for k, (x, _) in splits.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"the splits of {origin} hold images of different shapes ({shapes}); set image_size=N to "
                        "resize them all to NxN")
    print(f"data: {config.name} from {origin}", flush=True)
    return Dataset(config.name, splits, len(class_names), class_names, origin)


def _check_split(split: str, images: np.ndarray, labels: np.ndarray, num_classes: int, origin: str) -> None:
    """What any source's split must be: N uint8 NHWC images, N int labels or N soft labels over the classes."""
    soft = labels.ndim == 2 and labels.shape[1] == num_classes and np.issubdtype(labels.dtype, np.floating)
    hard = labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer)
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels) or not (soft or hard):
        raise DataError(f"the {split} split of {origin} holds images {images.shape} {images.dtype} and labels "
                        f"{labels.shape} {labels.dtype}: a source gives N uint8 NHWC images with N integer labels "
                        f"(or N x {num_classes} float soft labels)")
