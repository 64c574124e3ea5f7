"""Where images come from: tensorflow-datasets, MNIST-format IDX files, CIFAR python archives, image folders.

`load_dataset(config)` returns every split as uint8 NHWC arrays with int32 labels, read from the one source
`config.source` names: never a fallback to another. When the data cannot be had, `DataError` says what was tried
and how to provide it. `open_tfds` is the lazy view of a tfds dataset that the streaming pipeline reads.
"""

import dataclasses
import gzip
import math
import os
import pickle
import struct
import tarfile
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from ml_collections import config_dict

SOURCES = ("tfds", "idx", "cifar", "folder")

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

FOLDER_SPLITS = ("train", "val", "test")
SHUFFLE_BUFFER = 10_000  # examples in tf.data's shuffle buffer when a tfds dataset is streamed


class DataError(Exception):
    """The data could not be had or is not what was expected; the message says what was tried and how to fix it."""


def default_config() -> ml_collections.ConfigDict:
    """The data section of an experiment config; the comment on each field says what it does."""
    return ml_collections.ConfigDict({
        "name": "fashion_mnist",    # tfds name, or mnist / fashion_mnist / cifar10 / cifar100 / any name for a folder
        "source": "tfds",           # 'tfds' | 'idx' | 'cifar' | 'folder'
        "path": "",                 # tfds data_dir ('' = TFDS_DATA_DIR or ~/tensorflow_datasets); else the files' dir
        "manual_dir": "",           # tfds manual download dir (imagenet2012 ...)
        "val_size": 0,              # validation images carved from the end of train; 0 = no val split
        "pad_to_32": False,         # zero-pad (28x28) images to 32x32, centred
        "channels": 0,              # 0 = keep; 3 = repeat a single channel to RGB
        "image_size": 0,            # 0 = keep; else resize the shorter side to this and centre-crop a square
        "augment": "none",          # 'none' | 'crop' | 'flip' | 'crop_flip' | 'shift' | 'shift_flip'
        "normalize": "channel",     # 'channel' (mean/std per channel) | 'pixel_mean' (Keras seed) | 'none' (x/255)
        "in_memory": config_dict.FieldReference("auto", field_type=object),  # 'auto' | True | False
        "eval_batch_size": 0,       # 0 = the train batch size
        "train_subset": 0,          # 0 = all; else the first N training images
        "classes": (),              # () = all; else keep these labels only, relabelled 0..k-1 in this order
        "train_per_class": 0,       # 0 = all; else at most N training images per class (few-shot), drawn by subset_seed
        "subset_seed": 0,           # the draw of train_per_class; a larger N with the same seed keeps the smaller draw
    })


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
    readers = {"tfds": _read_tfds, "idx": _read_idx_dir, "cifar": _read_cifar, "folder": _read_folder}
    if config.source not in readers:
        raise DataError(f"unknown source {config.source!r}; choose one of {', '.join(SOURCES)}")
    splits, class_names, origin = readers[config.source](config)
    if "val" in splits and config.val_size:
        raise DataError(f"{origin} already has a val split; set val_size=0 or remove it")
    if config.classes:
        splits, class_names = select_classes(splits, class_names, config.classes)
    ranges = split_ranges(len(splits["train"][1]), config.val_size, config.train_subset)
    x, y = splits.pop("train")
    splits = {k: (x[a:b], y[a:b]) for k, (a, b) in ranges.items()} | splits
    if config.train_per_class:
        splits["train"] = per_class_subset(*splits["train"], config.train_per_class, config.subset_seed)
    if config.image_size and config.source in ("idx", "cifar"):  # after the subset: resize only what is used
        splits = {k: _resize_arrays(x, y, config.image_size) for k, (x, y) in splits.items()}
    print(f"data: {config.name} from {origin}", flush=True)
    return Dataset(config.name, splits, len(class_names), class_names, origin)


def split_ranges(n: int, val_size: int, train_subset: int) -> dict[str, tuple[int, int]]:
    """Index ranges of 'train' (and 'val') within a source's train split of `n` images.

    val is the last `val_size` images (deterministic, as the Keras seed); train_subset then keeps the first N of
    the rest, so that val stays the same whatever the subset.
    """
    if not 0 <= val_size < n:
        raise DataError(f"val_size={val_size} must be in [0, {n}) for a train split of {n} images")
    ranges = {"train": (0, min(n - val_size, train_subset or n))}
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


# --- tensorflow-datasets ---------------------------------------------------------------------------------


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

    def read(self, split: str, image_size: int, shuffle_seed: int | None = None):
        """(uint8 image, int32 label) examples of a tfds split string such as 'train[0:58000]'.

        In stored order, unless shuffle_seed is given: then the files, and a buffer of examples (still encoded,
        so that the buffer stays small), are shuffled with that seed.
        """
        import tensorflow as tf

        ds = self.builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None,
                                     read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed),
                                     decoders={self.image_key: tfds.decode.SkipDecoding()})
        if shuffle_seed is not None:
            ds = ds.shuffle(SHUFFLE_BUFFER, seed=shuffle_seed)
        image_feature = self.builder.info.features[self.image_key]

        def convert(example):
            image = image_feature.decode_example(example[self.image_key])
            if image_size:
                image = resize(image, image_size)
            return image, tf.cast(example[self.label_key], tf.int32)

        return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


def open_tfds(config: ml_collections.ConfigDict) -> TfdsSource:
    """Find, and prepare if needed, the tfds dataset `config.name` in `config.path` (or TFDS_DATA_DIR / the default)."""
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
    return TfdsSource(builder, image_key, label_key, test, shape, list(info.features[label_key].names), origin)


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


# --- TF helpers (TF is imported lazily: it is slow to import and only these paths need it) ---------------------


def resize(image, size: int):
    """Resize the shorter side to `size` and centre-crop a size x size square (one image or a batch), as uint8."""
    import tensorflow as tf

    h, w = tf.shape(image)[-3], tf.shape(image)[-2]
    scale = size / tf.cast(tf.minimum(h, w), tf.float32)
    new_hw = tf.cast(tf.math.ceil(tf.cast(tf.stack([h, w]), tf.float32) * scale), tf.int32)
    image = tf.image.resize_with_crop_or_pad(tf.image.resize(image, new_hw, antialias=True), size, size)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def to_numpy(ds) -> tuple[np.ndarray, np.ndarray]:
    """Drain a tf.data.Dataset of (image, label) with a fixed image shape into two arrays."""
    batches = list(tfds.as_numpy(ds.batch(4096)))
    return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches]).astype(np.int32)


def _resize_arrays(images: np.ndarray, labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(1024)
    return to_numpy(ds.map(lambda x, y: (resize(x, size), y)).unbatch())


# --- IDX files (MNIST format) ----------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """One unsigned-byte IDX file, gzipped or not; checks the magic number and that the length matches the header."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
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
    if not (config.path or config.name in IDX_DIRS):
        raise DataError(f"source='idx' needs path=DIR holding train-images-idx3-ubyte[.gz] etc. for {config.name!r}")
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
    splits = {}
    for split in stems:
        images, labels = read_idx(files[split, "images"]), read_idx(files[split, "labels"])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{files[split, 'images']} {images.shape} and {files[split, 'labels']} {labels.shape} "
                            "are not N images with N labels")
        splits[split] = images[..., None], labels.astype(np.int32)
    return splits, _class_names(config.name, splits), f"IDX files in {root}"


def _class_names(name: str, splits) -> list[str]:
    """The known names for `name`, else the label numbers."""
    return CLASS_NAMES.get(name) or [str(i) for i in range(1 + max(int(y.max()) for _, y in splits.values()))]


# --- CIFAR python archives (Python pickles, as distributed: read only archives you trust) -------------------


def _read_cifar(config):
    if config.name not in CIFAR:
        raise DataError(f"source='cifar' reads {' or '.join(CIFAR)}, not {config.name!r}")
    folder, archive, train, test, meta, label_key, names_key = CIFAR[config.name]
    if not config.path:
        raise DataError(f"source='cifar' needs path=DIR holding {folder}/ or {archive} "
                        f"(from https://www.cs.toronto.edu/~kriz/{archive})")
    found, load = _cifar_reader(Path(config.path), folder, archive, meta)
    try:
        splits = {}
        for split, members in (("train", train), ("test", test)):
            batches = [load(m) for m in members]
            images = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            labels = np.concatenate([b[label_key] for b in batches]).astype(np.int32)
            splits[split] = np.ascontiguousarray(images, np.uint8), labels
        names = [n.decode() for n in load(meta)[names_key]]
    except (OSError, KeyError, ValueError, pickle.UnpicklingError, EOFError) as e:
        raise DataError(f"{found} is not a complete {config.name} python archive ({type(e).__name__}: {e})") from e
    return splits, names, f"CIFAR python archive {found}"


def _cifar_reader(root: Path, folder: str, archive: str, meta: str):
    """(what was found, member name -> unpickled dict) for the extracted folder or the .tar.gz, whichever is there."""
    for candidate in (root / folder, root, root / archive):
        if candidate.is_dir() and (candidate / meta).is_file():
            return candidate, lambda member: pickle.loads((candidate / member).read_bytes(), encoding="bytes")
        if candidate.is_file() and tarfile.is_tarfile(candidate):
            tar = tarfile.open(candidate)
            return candidate, lambda member: pickle.loads(tar.extractfile(f"{folder}/{member}").read(),
                                                          encoding="bytes")
    raise DataError(f"CIFAR files not found: looked for {root / folder / meta}, {root / meta} and {root / archive}. "
                    f"Download https://www.cs.toronto.edu/~kriz/{archive} and pass path=DIR holding it "
                    "(or its extracted folder).")


# --- image folders ---------------------------------------------------------------------------------------


def _read_folder(config):
    """<path>/<split>/<class>/<image>.png|jpg with split in train, val, test (tfds' ImageFolder layout)."""
    root = Path(config.path)
    layout = "path/train/<class>/<image>.png|jpg (and path/test/..., optionally path/val/...)"
    if not config.path or not root.is_dir():
        raise DataError(f"source='folder' needs path=DIR laid out as {layout}; {str(root)!r} is not a directory")
    builder = tfds.folder_dataset.ImageFolder(str(root))
    found = list(builder.info.splits)
    if "train" not in found or set(found) - set(FOLDER_SPLITS):
        raise DataError(f"{root} holds split folders {found}; expected {layout}")
    splits = {split: _read_folder_split(builder, split, config.image_size) for split in found}
    return splits, list(builder.info.features["label"].names), f"image folder {root}"


def _read_folder_split(builder, split: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    ds = builder.as_dataset(split=split, shuffle_files=False)
    if image_size:
        ds = ds.map(lambda ex: ex | {"image": resize(ex["image"], image_size)})
    images, labels, first = [], [], None
    for ex in tfds.as_numpy(ds):
        name = ex["image/filename"].decode()
        if images and ex["image"].shape != images[0].shape:
            raise DataError(f"{name} is {ex['image'].shape} but {first} is {images[0].shape}: the images of a folder "
                            "dataset must share one shape; set image_size=N to resize them all")
        first = first or name
        images.append(ex["image"])
        labels.append(ex["label"])
    if not images:
        raise DataError(f"{builder.data_dir}/{split} holds no .png/.jpg images in class folders")
    return np.stack(images), np.array(labels, np.int32)
