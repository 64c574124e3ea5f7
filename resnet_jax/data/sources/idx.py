"""source='idx': MNIST-format IDX files (gzipped or not), e.g. Debian's dataset-fashion-mnist."""

import gzip
import math
import struct
import zlib
from pathlib import Path

import ml_collections
import numpy as np

from resnet_jax.data.sources.common import IDX_DIRS, DataError, check_labels, check_path, register_source

CLASS_NAMES = {
    "mnist": [str(i) for i in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
}

STEMS = {"train": "train", "test": "t10k"}  # split -> file name prefix


def validate(config: ml_collections.ConfigDict) -> None:
    """The class count must be known (a name of CLASS_NAMES or data.num_classes); path a directory, or a known name."""
    if config.name not in CLASS_NAMES and not config.num_classes:
        raise ValueError(f"IDX files do not say how many classes they have and data.name={config.name!r} is not one "
                         f"of {', '.join(CLASS_NAMES)}: set data.num_classes=N")
    if config.path:
        check_path(config, directory=" of IDX files")
    elif config.name not in IDX_DIRS:
        raise DataError(f"source='idx' needs path=DIR holding train-images-idx3-ubyte[.gz] etc. for {config.name!r}")


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


def _file_name(prefix: str, kind: str) -> str:
    return f"{prefix}-{kind}-idx{1 if kind == 'labels' else 3}-ubyte"


def _find(root: Path, stem: str) -> Path | None:
    return next((p for p in (root / f"{stem}.gz", root / stem) if p.is_file()), None)


def read(config: ml_collections.ConfigDict):
    """train and test (t10k) of the IDX files in data.path (or IDX_DIRS[name]), labels checked against the classes."""
    root = Path(config.path or IDX_DIRS[config.name])
    files = {(split, kind): _find(root, _file_name(prefix, kind))
             for split, prefix in STEMS.items() for kind in ("images", "labels")}
    if None in files.values():
        looked = [str(root / _file_name(p, k)) + "[.gz]" for p in STEMS.values() for k in ("images", "labels")]
        hint = {"fashion_mnist": " (install Debian's dataset-fashion-mnist)",
                "mnist": " (download them from https://storage.googleapis.com/cvdf-datasets/mnist/)"}
        hint = hint.get(config.name, "")
        raise DataError(f"IDX files for {config.name!r} not found: looked for {', '.join(looked)}. "
                        f"Pass path=DIR with these files{hint}.")
    class_names = CLASS_NAMES.get(config.name) or [str(i) for i in range(config.num_classes)]
    if config.name in CLASS_NAMES:
        fix = (f"these are not {config.name} labels: name the dataset they belong to with data.name and "
               "data.num_classes=N")
    else:
        fix = f"if {config.name} has more classes, set data.num_classes to their number"
    splits = {}
    for split in STEMS:
        images, labels = read_idx(files[split, "images"]), read_idx(files[split, "labels"])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{files[split, 'images']} {images.shape} and {files[split, 'labels']} {labels.shape} "
                            "are not N images with N labels")
        check_labels(labels, len(class_names), str(files[split, "labels"]), fix)
        splits[split] = images[..., None], labels.astype(np.int32)
    return splits, class_names, f"IDX files in {root}"


register_source("idx", read, validate=validate, description="IDX files")
