"""source='tfds': a tensorflow-datasets dataset, prepared (downloaded) if needed, read into memory or streamed by
tf.data with ImageNet-style crops. tensorflow and tensorflow-datasets are imported only when this source is used."""

import dataclasses
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from resnet_jax.data import imagenet
from resnet_jax.data.sources.common import (IDX_DIRS, IN_MEMORY_LIMIT, STATS_SAMPLE, DataError, check_num_classes,
                                            register_source, split_ranges)

SHUFFLE_BUFFER = 10_000  # examples in tf.data's shuffle buffer when a tfds dataset is streamed


def validate(config: ml_collections.ConfigDict) -> None:
    """data.manual_dir, when set, must be a directory (tfds' data_dir may be created)."""
    if config.manual_dir and not Path(config.manual_dir).is_dir():
        raise DataError(f"data.manual_dir={config.manual_dir!r} is not a directory")


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(f"source='tfds' needs tensorflow-datasets and TensorFlow ({e}); install them "
                        "(pip install tensorflow-datasets tensorflow-cpu), or read local files without them: "
                        "source='idx' | 'cifar' | 'folder' and path=DIR") from e
    return tfds


@dataclasses.dataclass(frozen=True)
class TfdsSource:
    """A prepared tfds dataset, read lazily: its builder, the tfds split behind 'test', and what it holds."""

    builder: Any
    image_key: str
    label_key: str
    test_split: str | None      # 'test', else 'validation' (ImageNet), else None
    image_shape: tuple[int, int, int]   # as stored after resizing to config.image_size
    class_names: list[str]
    origin: str

    def num_examples(self, split: str) -> int:
        return self.builder.info.splits[split].num_examples

    def records(self, split: str, shuffle_seed: int | None = None):
        """(encoded image, int32 label) examples of a tfds split string such as 'train[0:58000]', not decoded.

        In stored order, unless shuffle_seed is given: then the files, and a buffer of examples (still encoded,
        so that the buffer stays small), are shuffled with that seed.
        """
        import tensorflow as tf
        import tensorflow_datasets as tfds

        ds = self.builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None,
                                     read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed),
                                     decoders={self.image_key: tfds.decode.SkipDecoding()})
        if shuffle_seed is not None:
            ds = ds.shuffle(SHUFFLE_BUFFER, seed=shuffle_seed)
        return ds.map(lambda example: (example[self.image_key], tf.cast(example[self.label_key], tf.int32)))

    def decode(self, encoded, image_size: int):
        """One encoded image as uint8, resized to image_size if set (imagenet.tf_crop decodes a crop instead)."""
        image = self.builder.info.features[self.image_key].decode_example(encoded)
        return resize(image, image_size) if image_size else image

    def read(self, split: str, image_size: int):
        """(uint8 image, int32 label) examples of a tfds split string, in stored order, decoded."""
        import tensorflow as tf

        return self.records(split).map(lambda image, label: (self.decode(image, image_size), label),
                                       num_parallel_calls=tf.data.AUTOTUNE)


def open_tfds(config: ml_collections.ConfigDict) -> TfdsSource:
    """Find, and prepare if needed, the tfds dataset `config.name` in `config.path` (or TFDS_DATA_DIR / the default)."""
    tfds = _import_tfds()
    data_dir = config.path or None
    where = data_dir or os.environ.get("TFDS_DATA_DIR") or "tfds' default data_dir (~/tensorflow_datasets)"
    try:
        builder = tfds.builder(config.name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError as e:
        raise DataError(
            f"unknown dataset {config.name!r}: tfds has no builder of that name and none is prepared in {where}. "
            "See https://www.tensorflow.org/datasets/catalog for tfds names; local files are read with "
            "source='idx' (mnist, fashion_mnist), 'cifar' (cifar10, cifar100) or 'folder' (any name), "
            "and path=DIR.") from e
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=config.manual_dir or None))
    except Exception as e:  # offline, missing manual files, missing extras: tfds raises many kinds
        reason = (str(e).strip().splitlines() or [""])[0]
        raise DataError(
            f"tfds could not download or prepare {config.name!r} into {builder.data_dir} "
            f"({type(e).__name__}: {reason}). Prepare it on a machine with internet (`tfds build {config.name} "
            f"--data_dir DIR`) and pass path=DIR or set TFDS_DATA_DIR; for manual datasets put the files in "
            "manual_dir; or read local files with source='idx' | 'cifar' | 'folder' and path=DIR."
            + _local_hint(config.name)) from e
    info = builder.info
    if info.supervised_keys is None or len(info.supervised_keys) != 2:
        raise DataError(f"tfds {config.name!r} has no (image, label) supervised keys: not an image classification set")
    image_key, label_key = info.supervised_keys
    if "train" not in info.splits:
        raise DataError(f"tfds {config.name!r} has no 'train' split (it has {list(info.splits)})")
    shape = tuple(info.features[image_key].shape)
    if config.image_size:
        shape = (config.image_size, config.image_size, shape[-1])
    if len(shape) != 3 or None in shape:
        raise DataError(f"tfds {config.name!r} images have varying size {shape}; set image_size to resize them")
    test = next((s for s in ("test", "validation") if s in info.splits), None)
    origin = f"tfds {builder.name} {builder.version} in {builder.data_dir}"
    if test == "validation":
        origin += " (its 'validation' split as test)"
    class_names = list(info.features[label_key].names)
    check_num_classes(config, class_names, origin)
    return TfdsSource(builder, image_key, label_key, test, shape, class_names, origin)


def read(config: ml_collections.ConfigDict):
    """train and test (else validation) of a prepared tfds dataset, decoded into memory."""
    source = open_tfds(config)
    splits = {"train": "train"} | ({"test": source.test_split} if source.test_split else {})
    arrays = {k: to_numpy(source.read(s, config.image_size)) for k, s in splits.items()}
    return arrays, source.class_names, source.origin


def _local_hint(name: str) -> str:
    """Points at local files for `name` when this machine has them."""
    if name in IDX_DIRS and Path(IDX_DIRS[name]).is_dir():
        return f" Local IDX files are at {IDX_DIRS[name]}: source='idx'."
    return ""


def resize(image, size: int):
    """Resize the shorter side to `size` and centre-crop a size x size square (one image or a batch), as uint8.

    TensorFlow ops, for streamed tfds data; `resize_image` does the same on the host for local files.
    """
    import tensorflow as tf

    h, w = tf.shape(image)[-3], tf.shape(image)[-2]
    scale = size / tf.cast(tf.minimum(h, w), tf.float32)
    new_hw = tf.cast(tf.math.ceil(tf.cast(tf.stack([h, w]), tf.float32) * scale), tf.int32)
    image = tf.image.resize_with_crop_or_pad(tf.image.resize(image, new_hw, antialias=True), size, size)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def to_numpy(ds) -> tuple[np.ndarray, np.ndarray]:
    """Drain a tf.data.Dataset of (image, label) with a fixed image shape into two arrays."""
    import tensorflow_datasets as tfds

    batches = list(tfds.as_numpy(ds.batch(4096)))
    return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches]).astype(np.int32)


def stream(config: ml_collections.ConfigDict, batch_size: int, eval_batch_size: int, seed: int,
           required: bool) -> "TfdsStream | None":
    """The dataset streamed by tf.data when required or too large for memory, else None (read into memory)."""
    source = open_tfds(config)
    n = sum(source.num_examples(s) for s in ("train", source.test_split) if s)
    if not required and n * math.prod(source.image_shape) <= IN_MEMORY_LIMIT:
        return None
    return TfdsStream(source, config, batch_size, eval_batch_size, seed)


class TfdsStream:
    """tf.data reads each process's shard of a tfds dataset, skipping a resumed epoch's first steps while encoded."""

    def __init__(self, source: TfdsSource, config, batch_size, eval_batch_size, seed):
        ranges = split_ranges(source.num_examples("train"), config.val_size, config.train_subset)
        self._splits = {k: f"train[{a}:{b}]" for k, (a, b) in ranges.items()}
        self._train_range = ranges["train"]
        if source.test_split:
            self._splits["test"] = source.test_split
        processes = jax.process_count()
        self._local_batch, self._local_eval_batch = batch_size // processes, eval_batch_size // processes
        self._source, self._seed, self._image_size = source, seed, config.image_size
        random = imagenet.INCEPTION_CROP in config.augment
        self._crops = imagenet.Crops(config.image_size, config.eval_crop, random, seed) if (
            random or config.eval_crop != 1) else None
        self.class_names, self.origin, self.image_shape = source.class_names, source.origin, source.image_shape
        self.split_sizes = {k: source.num_examples(s) for k, s in self._splits.items()}
        self.steps_per_epoch = self.split_sizes["train"] // processes // self._local_batch

    def stats_images(self):
        import tensorflow_datasets as tfds

        a, b = self._train_range
        stats = self._source.read(f"train[{a}:{min(b, a + STATS_SAMPLE)}]", self._image_size)
        return (images for images, _ in tfds.as_numpy(stats.batch(256)))

    def _decoder(self, box_fn: Callable) -> Callable:
        """(example index, encoded image) -> uint8 image: box_fn's crop if cropping, else the whole image."""
        if self._crops is None:
            return lambda index, image: self._source.decode(image, self._image_size)
        feature = self._source.builder.info.features[self._source.image_key]
        return lambda index, image: imagenet.tf_crop(image, feature, box_fn, index, self._crops.size)

    def train_batches(self, epoch: int, start_step: int) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        import tensorflow as tf
        import tensorflow_datasets as tfds

        shuffle_seed = int(np.random.SeedSequence([self._seed, epoch]).generate_state(1)[0])
        split = tfds.split_for_jax_process(self._splits["train"], drop_remainder=True)
        process = jax.process_index()
        decode = self._decoder(lambda h, w, i: self._crops.train_box(h, w, epoch, process, i))
        # Examples are numbered and skipped while still encoded: a resumed epoch decodes none of the skipped images.
        ds = self._source.records(split, shuffle_seed=shuffle_seed).take(self.steps_per_epoch * self._local_batch)
        ds = ds.enumerate().skip(start_step * self._local_batch)
        ds = ds.map(lambda i, example: (decode(i, example[0]), example[1]), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(self._local_batch, drop_remainder=True)
        for step, (images, labels) in enumerate(tfds.as_numpy(ds.prefetch(tf.data.AUTOTUNE)), start_step):
            yield images, labels, step

    def eval_batches(self, split: str) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        import tensorflow as tf
        import tensorflow_datasets as tfds

        # Processes' shards differ by at most one example: all pad to the same number of batches.
        steps = math.ceil(math.ceil(self.split_sizes[split] / jax.process_count()) / self._local_eval_batch)
        decode = self._decoder(lambda h, w, i: self._crops.eval_box(h, w))
        ds = self._source.records(tfds.split_for_jax_process(self._splits[split])).enumerate()
        ds = ds.map(lambda i, example: (decode(i, example[0]), example[1], 1.0), num_parallel_calls=tf.data.AUTOTUNE)
        padding = tf.data.Dataset.from_tensors((tf.zeros(self.image_shape, tf.uint8), 0, 0.0)).repeat()
        ds = ds.concatenate(padding).take(steps * self._local_eval_batch).batch(self._local_eval_batch)
        yield from tfds.as_numpy(ds.prefetch(tf.data.AUTOTUNE))


register_source("tfds", read, validate=validate, stream=stream, description="tfds")
