"""Where images come from: tensorflow-datasets, MNIST-format IDX files, CIFAR python archives, image folders.

`load_dataset(config)` returns every split as uint8 NHWC arrays with int32 labels, read from the one source
`config.source` names: never a fallback to another. When the data cannot be had, or is not what it should be,
`DataError` says what was found and how to fix it; `validate_config` checks a data config before anything is read.
`open_tfds` is the lazy view of a tfds dataset that the streaming pipeline reads.

Local files need neither TensorFlow nor tensorflow-datasets: those are imported only for source='tfds'. Nothing
read from a file is executed: CIFAR pickles are unpickled with only numpy's array constructors allowed.
"""

import contextlib
import dataclasses
import difflib
import gzip
import io
import math
import os
import pickle
import random
import struct
import tarfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from ml_collections import config_dict
from PIL import Image

from resnet_jax.data import augment

SOURCES = ("tfds", "idx", "cifar", "folder")
STREAMED_SOURCES = ("tfds", "folder")  # the sources that in_memory=False (or a host crop) streams from

CLASS_NAMES = {
    "mnist": [str(i) for i in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
}

# Where Debian's dataset-fashion-mnist package installs the IDX files; looked in when path is ''.
IDX_DIRS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}

# name -> (folder in the archive, archive file, train members, test members, meta member, label key, names key)
CIFAR = {
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz", [f"data_batch_{i}" for i in range(1, 6)],
                ["test_batch"], "batches.meta", b"labels", b"label_names"),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz", ["train"], ["test"], "meta",
                 b"fine_labels", b"fine_label_names"),
}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"

# The only globals a CIFAR pickle may name: numpy's array and dtype constructors (numpy 1 and 2 module paths; the
# protocol-5 form too). Dicts, lists, bytes, strings and numbers need no global.
CIFAR_PICKLE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
})

FOLDER_SPLITS = ("train", "val", "test")
FOLDER_LAYOUT = "path/train/<class>/<image>.png|jpg (and path/test/..., optionally path/val/...)"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # tfds ImageFolder's, any case
GRAY_MODES = ("1", "L", "LA", "La")  # PIL modes read as one channel; 8-bit colour modes are read as RGB
COLOUR_MODES = ("RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")
SHUFFLE_BUFFER = 10_000  # examples in tf.data's shuffle buffer when a tfds dataset is streamed


class DataError(ValueError):
    """The data could not be had or is not what was expected; the message says what was tried and how to fix it."""


def default_config() -> ml_collections.ConfigDict:
    """The data section of an experiment config; the comment on each field says what it does."""
    return ml_collections.ConfigDict({
        "name": "fashion_mnist",    # tfds name, or mnist / fashion_mnist / cifar10 / cifar100 / any name for a folder
        "source": "tfds",           # 'tfds' | 'idx' | 'cifar' | 'folder'
        "path": "",                 # tfds data_dir ('' = TFDS_DATA_DIR or ~/tensorflow_datasets); else the files' dir
        "manual_dir": "",           # tfds manual download dir (imagenet2012 ...)
        "num_classes": 0,           # 0 = as the data says; required for IDX files of a name not in CLASS_NAMES
        "val_size": 0,              # validation images carved from the end of train; 0 = no val split
        "pad_to_32": False,         # zero-pad (28x28) images to 32x32, centred
        "channels": 0,              # 0 = keep; 3 = repeat a single channel to RGB (folders: read every image as RGB)
        "image_size": 0,            # 0 = keep; else resize the shorter side to this and centre-crop a square
        "eval_crop": 1.0,           # streamed: evaluate on the centred eval_crop x shorter side (ImageNet 0.875 = 224/256)
        "augment": "none",          # 'none' | 'crop' | 'flip' | 'crop_flip' | 'shift' | 'shift_flip' (on device) |
                                    # 'inception_crop_flip' (streamed: random-resized crop on the host, flip on device)
        "normalize": "channel",     # 'channel' (mean/std per channel) | 'pixel_mean' (Keras seed) | 'imagenet'
                                    # (torchvision's RGB mean/std) | 'none' (x/255)
        "in_memory": config_dict.FieldReference("auto", field_type=object),  # 'auto' | True | False (stream: tfds, folder)
        "workers": 0,               # streamed folders: decoding threads per process; 0 = one per CPU core
        "eval_batch_size": 0,       # 0 = the train batch size
        "train_subset": 0,          # 0 = all; else the first N training images
        "classes": (),              # () = all; else keep these labels only, relabelled 0..k-1 in this order
        "train_per_class": 0,       # 0 = all; else at most N training images per class (few-shot), drawn by subset_seed
        "subset_seed": 0,           # the draw of train_per_class; a larger N with the same seed keeps the smaller draw
    })


def with_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with the keys it lacks at their defaults: a run's config.json may predate a key (num_classes)."""
    full = default_config()
    full.update({key: config[key] for key in config.keys()})
    return full


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Check a data config before anything is read or compiled: a ValueError names the key, the value and the fix.

    Paths that cannot be read raise DataError (a ValueError too). `load_dataset` and `make_pipeline` call this
    first; a run's whole-config validation calls it as well.
    """
    known = list(default_config().keys())
    unknown = sorted(set(config.keys()) - set(known))
    config = with_defaults(config)
    if unknown:
        hints = [repr(k) + "".join(f" (did you mean {m!r}?)" for m in difflib.get_close_matches(k, known, 1))
                 for k in unknown]
        raise ValueError(f"unknown data key(s) {', '.join(hints)}; the data keys are {', '.join(known)}")
    for key in ("name", "path", "manual_dir"):
        if not isinstance(config[key], str):
            raise ValueError(f"data.{key}={config[key]!r} must be a string")
    if not config.name:
        raise ValueError("data.name is empty: name the dataset (fashion_mnist, cifar10, any name for a folder, ...)")
    for key, allowed in (("source", SOURCES), ("augment", augment.AUGMENTATIONS),
                         ("normalize", augment.NORMALIZATIONS)):
        if config[key] not in allowed:
            raise ValueError(f"unknown data.{key} {config[key]!r}; choose one of {', '.join(allowed)}")
    if not (config.in_memory == "auto" or isinstance(config.in_memory, bool)):
        raise ValueError(f"unknown data.in_memory {config.in_memory!r}; choose one of 'auto', True, False")
    for key in ("num_classes", "val_size", "train_subset", "image_size", "eval_batch_size", "workers",
                "train_per_class", "subset_seed"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"data.{key}={value!r} must be a whole number >= 0 (0 keeps the default: see "
                             "resnet_jax.data.default_config)")
    classes = config.classes
    if not isinstance(classes, (tuple, list)) or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in classes) \
            or len(set(classes)) != len(classes):
        raise ValueError(f"data.classes={classes!r} must be distinct labels >= 0 (e.g. (5, 6, 7)), or () for all")
    if config.channels not in (0, 1, 3) or isinstance(config.channels, bool):
        raise ValueError(f"data.channels={config.channels!r} must be 0 (keep), 1 or 3 (RGB)")
    if not isinstance(config.pad_to_32, bool):
        raise ValueError(f"data.pad_to_32={config.pad_to_32!r} must be True or False")
    if config.pad_to_32 and config.image_size > 32:
        raise ValueError(f"data.pad_to_32 zero-pads images up to 32x32, but data.image_size={config.image_size} "
                         "makes them larger: use one of the two")
    if not isinstance(config.eval_crop, (int, float)) or not 0 < config.eval_crop <= 1:
        raise ValueError(f"data.eval_crop={config.eval_crop!r} must be a fraction in (0, 1]: the share of the shorter "
                         "side kept by the centred evaluation crop (ImageNet: 0.875 = 224/256; 1 = all of it)")
    if config.in_memory is False and config.source not in STREAMED_SOURCES:
        raise ValueError(f"in_memory=False streams from tfds or an image folder; source={config.source!r} is read into "
                         "memory (use in_memory='auto')")
    crops = [f"augment={config.augment!r}"] * (config.augment in augment.HOST_CROPS) + [
        f"eval_crop={config.eval_crop}"] * (config.eval_crop != 1)
    if crops and (config.source not in STREAMED_SOURCES or config.in_memory is True):
        raise ValueError(f"data.{' and '.join(crops)} crops the full-size images as they are streamed: use "
                         f"source='tfds' or 'folder' with in_memory='auto' or False (not source={config.source!r}, "
                         f"in_memory={config.in_memory!r})")
    if crops and not config.image_size:
        raise ValueError(f"data.{' and '.join(crops)} needs data.image_size, the size of the crops (224 for ImageNet)")
    if config.source == "folder" and config.in_memory is False and not config.image_size:
        raise ValueError("a streamed image folder needs data.image_size, the size its images are cropped to "
                         "(224 for ImageNet)")
    _validate_source(config)


def _validate_source(config) -> None:
    """What each source needs from name, num_classes and path; paths must exist (tfds' data_dir may be created)."""
    source, name, path = config.source, config.name, config.path
    if source == "tfds":
        if config.manual_dir and not Path(config.manual_dir).is_dir():
            raise DataError(f"data.manual_dir={config.manual_dir!r} is not a directory")
        return
    if source == "cifar" and name not in CIFAR:
        raise DataError(f"source='cifar' reads {' or '.join(CIFAR)}, not {name!r}")
    if source == "idx" and name not in CLASS_NAMES and not config.num_classes:
        raise ValueError(f"IDX files do not say how many classes they have and data.name={name!r} is not one of "
                         f"{', '.join(CLASS_NAMES)}: set data.num_classes=N")
    if not path:
        if source == "cifar":
            folder, archive = CIFAR[name][:2]
            raise DataError(f"source='cifar' needs path=DIR holding {folder}/ or {archive} (from {CIFAR_URL}{archive})")
        if source == "folder":
            raise DataError(f"source='folder' needs path=DIR laid out as {FOLDER_LAYOUT}")
        if name not in IDX_DIRS:
            raise DataError(f"source='idx' needs path=DIR holding train-images-idx3-ubyte[.gz] etc. for {name!r}")
    elif not Path(path).exists():
        raise DataError(f"data.path={path!r} does not exist; pass the {source} data's location")
    elif source in ("idx", "folder") and not Path(path).is_dir():
        raise DataError(f"data.path={path!r} is a file; source={source!r} reads a directory"
                        + (f" laid out as {FOLDER_LAYOUT}" if source == "folder" else " of IDX files"))


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset held in host memory: split -> (uint8 NHWC images, int32 labels)."""

    name: str
    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    num_classes: int
    class_names: list[str]
    origin: str


def load_dataset(config: ml_collections.ConfigDict) -> Dataset:
    """Every split of the dataset `config` names, from the source it names, with the val split carved from train."""
    validate_config(config)
    config = with_defaults(config)
    readers = {"tfds": _read_tfds, "idx": _read_idx_dir, "cifar": _read_cifar, "folder": _read_folder}
    splits, class_names, origin = readers[config.source](config)
    check_num_classes(config, class_names, origin)
    if "val" in splits and config.val_size:
        raise DataError(f"{origin} already has a val split; set val_size=0 or remove it")
    if config.classes:
        splits, class_names = select_classes(splits, class_names, config.classes)
    ranges = split_ranges(len(splits["train"][1]), config.val_size, config.train_subset)
    x, y = splits.pop("train")
    splits = {k: (x[a:b], y[a:b]) for k, (a, b) in ranges.items()} | splits
    if config.train_per_class:
        splits["train"] = per_class_subset(*splits["train"], config.train_per_class, config.subset_seed)
    for k, (_, y) in splits.items():
        if not len(y):
            raise DataError(f"the {k} split of {origin} holds no images")
    if config.image_size and config.source in ("idx", "cifar"):  # after the subset: resize only what is used
        splits = {k: (_resize_arrays(x, config.image_size), y) for k, (x, y) in splits.items()}
    shapes = {k: x.shape[1:] for k, (x, _) in splits.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"the splits of {origin} hold images of different shapes ({shapes}); set image_size=N to "
                        "resize them all to NxN")
    print(f"data: {config.name} from {origin}", flush=True)
    return Dataset(config.name, splits, len(class_names), class_names, origin)


def check_num_classes(config: ml_collections.ConfigDict, class_names: list[str], origin: str) -> None:
    """data.num_classes, when set, must be the number of classes the data has."""
    if config.num_classes and config.num_classes != len(class_names):
        raise DataError(f"data.num_classes={config.num_classes} but the data ({origin}) has {len(class_names)} classes; "
                        "set data.num_classes=0 to take it from the data")


def split_ranges(n: int, val_size: int, train_subset: int) -> dict[str, tuple[int, int]]:
    """Index ranges of 'train' (and 'val') within a source's train split of `n` images.

    val is the last `val_size` images (deterministic, as the Keras seed); train_subset then keeps the first N of
    the rest, so that val stays the same whatever the subset.
    """
    if n < 1:
        raise DataError("the train split holds no images: nothing to train on")
    if not 0 <= val_size < n:
        raise DataError(f"val_size={val_size} must be in [0, {n}) for a train split of {n} images; "
                        "leave some images to train on")
    if train_subset > n - val_size:
        raise DataError(f"train_subset={train_subset} but the train split has {n - val_size} images "
                        f"(after val_size={val_size}); use train_subset <= {n - val_size}, or 0 for all")
    ranges = {"train": (0, train_subset or n - val_size)}
    if val_size:
        ranges["val"] = (n - val_size, n)
    return ranges


def select_classes(splits: dict, class_names: list[str], classes) -> tuple[dict, list[str]]:
    """Only the examples of `classes` (label values), relabelled 0..k-1 in the order given; their names kept."""
    classes = list(classes)
    bad = [c for c in classes if not (isinstance(c, int) and 0 <= c < len(class_names))]
    if bad or len(set(classes)) != len(classes):
        raise DataError(f"classes={tuple(classes)} must be distinct labels in [0, {len(class_names)}) "
                        f"({', '.join(f'{i}: {n}' for i, n in enumerate(class_names))})")
    relabel = np.full(len(class_names), -1, np.int32)
    relabel[classes] = np.arange(len(classes))
    kept = {k: (x[relabel[y] >= 0], relabel[y[relabel[y] >= 0]]) for k, (x, y) in splits.items()}
    empty = [c for c, count in zip(classes, np.bincount(kept["train"][1], minlength=len(classes))) if not count]
    if empty:
        raise DataError(f"classes {empty} have no training images here; choose among "
                        f"{sorted(set(np.unique(splits['train'][1]).tolist()))}")
    return kept, [class_names[c] for c in classes]


def per_class_subset(images: np.ndarray, labels: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """At most `n` images of each class, drawn at random by `seed` and kept in their stored order.

    Each class's draw is a prefix of one permutation per class, so with the same seed the 10-shot subset is inside
    the 100-shot one.
    """
    if n < 0:
        raise DataError(f"train_per_class={n} must be >= 0 (0 = all)")
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:n] for c in range(int(labels.max()) + 1)]
    keep = np.sort(np.concatenate(chosen))
    return images[keep], labels[keep]


# --- tensorflow-datasets (imported here only: local files need neither tfds nor TensorFlow) ------------------


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


def _read_tfds(config):
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


# --- host-side image helpers (PIL; no TensorFlow) -----------------------------------------------------------


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 HWC image's shorter side to `size` and centre-crop a size x size square, as `resize` does.

    Bilinear with antialiasing (PIL, computed in float32 per channel): within one grey level of tf.image.resize.
    """
    h, w, _ = image.shape
    new_h, new_w = -(-h * size // min(h, w)), -(-w * size // min(h, w))
    planes = [np.asarray(Image.fromarray(image[..., c].astype(np.float32)).resize(
        (new_w, new_h), Image.Resampling.BILINEAR)) for c in range(image.shape[-1])]
    top, left = (new_h - size) // 2, (new_w - size) // 2
    resized = np.stack(planes, -1)[top:top + size, left:left + size]
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def _parallel_stack(fn, items, name=str) -> np.ndarray:
    """np.stack([fn(item) for item in items]) on a thread pool (PIL releases the GIL), items in order.

    Every result must have the first one's shape; else a DataError names both items and the fix.
    """
    pool = ThreadPoolExecutor()
    try:
        results = pool.map(fn, items)
        first = next(results)
        out = np.empty((len(items), *first.shape), np.uint8)
        out[0] = first
        for i, result in enumerate(results, 1):
            if result.shape != first.shape:
                fix = ("set data.channels=3 to read every image as RGB" if result.shape[-1] != first.shape[-1]
                       else "set data.image_size=N to resize them all to NxN")
                raise DataError(f"{name(items[i])} is {result.shape} (HWC) but {name(items[0])} is {first.shape}: "
                                f"the images of a dataset must share one shape; {fix}")
            out[i] = result
        return out
    finally:
        pool.shutdown(cancel_futures=True)


def _resize_arrays(images: np.ndarray, size: int) -> np.ndarray:
    return _parallel_stack(lambda image: resize_image(image, size), images)


# --- IDX files (MNIST format) ----------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """One unsigned-byte IDX file, gzipped or not; checks the magic number and that the length matches the header."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path} is a corrupt or truncated gzip file ({e}); download it again") from e
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or not 1 <= raw[3] <= 4:
        raise DataError(f"{path} is not an unsigned-byte IDX file (magic number {raw[:4].hex() or 'missing'}, "
                        "expected 0000080N)")
    header = 4 + 4 * raw[3]
    dims = struct.unpack(f">{raw[3]}I", raw[4:header]) if len(raw) >= header else ()
    if len(raw) != header + math.prod(dims) or not dims:
        raise DataError(f"{path} holds {len(raw)} bytes but its header (dims {dims}) says {header + math.prod(dims)}: "
                        "the file is truncated or corrupt; download it again")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _find_idx(root: Path, stem: str) -> Path | None:
    return next((p for p in (root / f"{stem}.gz", root / stem) if p.is_file()), None)


def _read_idx_dir(config):
    root = Path(config.path or IDX_DIRS[config.name])
    stems = {"train": "train", "test": "t10k"}
    files = {(split, kind): _find_idx(root, f"{prefix}-{kind}-idx{1 if kind == 'labels' else 3}-ubyte")
             for split, prefix in stems.items() for kind in ("images", "labels")}
    if None in files.values():
        looked = [str(root / f"{p}-{k}-idx{1 if k == 'labels' else 3}-ubyte[.gz]") for p in stems.values()
                  for k in ("images", "labels")]
        hint = {"fashion_mnist": " (install Debian's dataset-fashion-mnist)",
                "mnist": " (download them from https://storage.googleapis.com/cvdf-datasets/mnist/)"}.get(config.name, "")
        raise DataError(f"IDX files for {config.name!r} not found: looked for {', '.join(looked)}. "
                        f"Pass path=DIR with these files{hint}.")
    class_names = CLASS_NAMES.get(config.name) or [str(i) for i in range(config.num_classes)]
    if config.name in CLASS_NAMES:
        fix = (f"these are not {config.name} labels: name the dataset they belong to with data.name and "
               "data.num_classes=N")
    else:
        fix = f"if {config.name} has more classes, set data.num_classes to their number"
    splits = {}
    for split in stems:
        images, labels = read_idx(files[split, "images"]), read_idx(files[split, "labels"])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{files[split, 'images']} {images.shape} and {files[split, 'labels']} {labels.shape} "
                            "are not N images with N labels")
        check_labels(labels, len(class_names), str(files[split, "labels"]), fix)
        splits[split] = images[..., None], labels.astype(np.int32)
    return splits, class_names, f"IDX files in {root}"


def check_labels(labels: np.ndarray, num_classes: int, where: str, fix: str) -> None:
    """Every label must be a class index in [0, num_classes); else a DataError names the first bad one."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(f"{where}: label {labels[bad[0]]} of example {bad[0]}{more} is outside the {num_classes} "
                        f"classes 0..{num_classes - 1}; {fix}")


# --- CIFAR python archives (pickles, read with numpy's array constructors as the only callables allowed) -------


class _CifarUnpickler(pickle.Unpickler):
    """Builds dicts, lists, bytes, strings, numbers and numpy arrays; refuses every other global before looking it
    up, so a crafted pickle cannot call anything (os.system, eval, ...)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in CIFAR_PICKLE_GLOBALS:
            raise _RefusedGlobal(f"{module}.{name}")
        return super().find_class(module, name)


class _RefusedGlobal(pickle.UnpicklingError):
    """A global that CIFAR pickles never name; the message is its dotted name."""


def _unpickle(raw: bytes, where: str, archive: str) -> Any:
    try:
        return _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _RefusedGlobal as e:
        raise DataError(f"{where} is not a CIFAR batch: its pickle names {e}, which CIFAR archives never hold, and "
                        "was refused without running anything (only dicts, lists, bytes, numbers and numpy arrays are "
                        f"read). Use the archive from {CIFAR_URL}{archive}") from None
    except Exception as e:  # a truncated or garbled pickle fails in many ways
        raise DataError(f"{where} is not a complete CIFAR pickle ({type(e).__name__}: {e}); "
                        f"download {CIFAR_URL}{archive} again") from e


def _read_cifar(config):
    folder, archive, train, test, meta, label_key, names_key = CIFAR[config.name]
    with _cifar_files(Path(config.path), folder, archive, meta) as (found, read):
        def load(member):
            where = f"{found}{'/' if found.is_dir() else ':'}{member}"
            return where, _unpickle(read(member), where, archive)

        where, meta_dict = load(meta)
        names = meta_dict.get(names_key) if isinstance(meta_dict, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, bytes) for n in names):
            raise DataError(f"{where} holds no list of class names under {names_key!r}: not a {config.name} archive")
        splits = {}
        for split, members in (("train", train), ("test", test)):
            batches = [_cifar_batch(*load(m), label_key, len(names)) for m in members]
            splits[split] = (np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches]))
    return splits, [n.decode() for n in names], f"CIFAR python archive {found}"


def _cifar_batch(where: str, batch: Any, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 images and int32 labels of one unpickled batch, checked for what CIFAR batches hold."""
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = list(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{where} is not a CIFAR batch: expected a dict with b'data' and {label_key!r}, got {keys}")
    data, labels = batch[b"data"], np.asarray(batch[label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        described = f"{data.shape} {data.dtype}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{where}: b'data' is {described}, expected (N, 3072) uint8 rows of 32x32x3 pixels")
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: {label_key!r} holds {labels.shape} {labels.dtype} labels for {len(data)} images")
    check_labels(labels, num_classes, where, "the archive is corrupt or of another dataset: download it again")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # rows are channel-major: 1024 R, 1024 G, 1024 B
    return np.ascontiguousarray(images), labels.astype(np.int32)


@contextlib.contextmanager
def _cifar_files(root: Path, folder: str, archive: str, meta: str):
    """(what was found, member name -> bytes) for the extracted folder or the .tar.gz, whichever is there."""
    for candidate in (root / folder, root, root / archive):
        if candidate.is_dir() and (candidate / meta).is_file():
            def read(member, candidate=candidate):
                if not (candidate / member).is_file():
                    raise DataError(f"{candidate} has no {member}: the archive is incomplete; extract "
                                    f"{CIFAR_URL}{archive} again")
                return (candidate / member).read_bytes()

            yield candidate, read
            return
        if candidate.is_file():
            try:
                tar = tarfile.open(candidate)
            except (OSError, EOFError, tarfile.TarError, zlib.error) as e:
                raise DataError(f"{candidate} is not a readable tar archive ({type(e).__name__}: {e}; a truncated "
                                f"or wrong download?): download {CIFAR_URL}{archive} again") from e
            with tar:
                def read(member, tar=tar, candidate=candidate):
                    try:
                        return tar.extractfile(f"{folder}/{member}").read()
                    except KeyError:
                        raise DataError(f"{candidate} has no {folder}/{member}: not a complete "
                                        f"{archive}; download it again") from None
                    except (OSError, EOFError, tarfile.TarError, zlib.error) as e:
                        raise DataError(f"{candidate} could not be read at {folder}/{member} ({type(e).__name__}: "
                                        f"{e}): truncated or corrupt; download {CIFAR_URL}{archive} again") from e

                yield candidate, read
            return
    raise DataError(f"CIFAR files not found: looked for {root / folder / meta}, {root / meta} and {root / archive}. "
                    f"Download {CIFAR_URL}{archive} and pass path=DIR holding it (or its extracted folder).")


# --- image folders ---------------------------------------------------------------------------------------


def folder_examples(root: Path) -> tuple[dict[str, tuple[list[Path], np.ndarray]], list[str]]:
    """split -> (image paths, int32 labels) of <root>/<split>/<class>/<image>.png|jpg, and the class names.

    Splits are train, val, test (tfds' ImageFolder layout); classes are the sorted class folder names of train;
    examples come in tfds ImageFolder's order. Nothing is decoded: only names are read.
    """
    found = sorted(p.name for p in _visible(root) if p.is_dir())
    if "train" not in found or set(found) - set(FOLDER_SPLITS):
        raise DataError(f"{root} holds split folders {found}; expected {FOLDER_LAYOUT}")
    examples = {split: _folder_examples(root / split) for split in found}
    class_names = sorted({label for _, label in examples["train"]})
    index = {name: i for i, name in enumerate(class_names)}
    for split, items in examples.items():
        missing = sorted({label for _, label in items} - set(class_names))
        if missing:
            raise DataError(f"{root / split} has class folder(s) {missing} that {root / 'train'} lacks: the model "
                            "cannot learn a class it never sees; add its train images or remove the folder")
    return {split: ([path for path, _ in items], np.array([index[label] for _, label in items], np.int32))
            for split, items in examples.items()}, class_names


def _read_folder(config):
    """An image folder (folder_examples) decoded into memory. Grayscale images give one channel, colour ones three
    (data.channels=3: all three); all must share one shape."""
    root = Path(config.path)
    examples, class_names = folder_examples(root)
    paths = [path for split_paths, _ in examples.values() for path in split_paths]
    images = _parallel_stack(lambda path: _decode_image(path, config.channels == 3, config.image_size), paths)
    splits, start = {}, 0
    for split, (split_paths, labels) in examples.items():
        splits[split] = images[start:start + len(split_paths)], labels
        start += len(split_paths)
    return splits, class_names, f"image folder {root}"


def _visible(folder: Path) -> list[Path]:
    """The entries of `folder` but hidden ones (.DS_Store, .ipynb_checkpoints, ...)."""
    return [p for p in folder.iterdir() if not p.name.startswith(".")]


def _folder_examples(split_dir: Path) -> list[tuple[Path, str]]:
    """(image path, class name) of split_dir/<class>/<image>: sorted by class and file, then shuffled with the
    split's name as seed, exactly as tfds' ImageFolder orders them (so that val, carved from the end, mixes classes)."""
    examples = []
    for entry in sorted(_visible(split_dir)):
        if not entry.is_dir():
            raise DataError(f"{entry} is not in a class folder: {split_dir} may hold only <class>/ folders "
                            f"({FOLDER_LAYOUT})")
        images = sorted(_visible(entry))
        for path in images:
            if not (path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES):
                raise DataError(f"{path} is not a {'/'.join(IMAGE_SUFFIXES)} image file; a class folder may hold "
                                "only those (hidden files are ignored): move it elsewhere or convert it")
        if not images:
            raise DataError(f"class folder {entry} holds no images: add some or remove the folder")
        examples += [(path, entry.name) for path in images]
    if not examples:
        raise DataError(f"{split_dir} holds no class folders; expected {FOLDER_LAYOUT}")
    random.Random(split_dir.name).shuffle(examples)
    return examples


@contextlib.contextmanager
def reading_image(path: Path):
    """PIL's errors for a file that is not a readable image, raised as a DataError naming the file and the fix."""
    try:
        yield
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{path} could not be read as an image ({type(e).__name__}: {e}); replace or remove it") from e


def _decode_image(path: Path, rgb: bool, size: int) -> np.ndarray:
    """One image file as uint8 HWC: grayscale as one channel (unless rgb), colour as RGB; resized if size."""
    with reading_image(path), Image.open(path) as image:
        mode = image.mode
        array = np.asarray(image.convert("RGB" if rgb or mode in COLOUR_MODES else "L")) if (
            mode in GRAY_MODES + COLOUR_MODES) else None
    if array is None:
        raise DataError(f"{path} has PIL mode {mode!r} (16-bit or float pixels); only 8-bit images are read: "
                        "convert it to 8-bit")
    array = array.reshape(*array.shape[:2], -1)
    return resize_image(array, size) if size else array
