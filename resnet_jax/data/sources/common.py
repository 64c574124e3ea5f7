"""What every data source shares: the source registry and its small interface, the in-memory Dataset, and helpers
for splits, class selection, subsets, label checks, resizing and image decoding (PIL; no TensorFlow).

A source is registered by name (`register_source`) with a `read` that returns its splits in host memory, a `validate`
that checks the config keys it uses before anything is read, and optionally a `stream` that reads it batch by batch.
"""

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import ml_collections
import numpy as np
from PIL import Image

IN_MEMORY_LIMIT = 2 << 30  # in_memory='auto' keeps a streamable dataset in memory below this many bytes of images
STATS_SAMPLE = 10_000      # a streamed dataset's normalisation statistics come from its first this many images
GRAY_MODES = ("1", "L", "LA", "La")  # PIL modes read as one channel; 8-bit colour modes are read as RGB
COLOUR_MODES = ("RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")

# Where Debian's dataset-fashion-mnist package installs the IDX files: source='idx' reads them when data.path is '',
# and a tfds dataset that cannot be prepared offline points at them.
IDX_DIRS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist"}

Splits = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (uint8 NHWC images, labels)


class DataError(ValueError):
    """The data could not be had or is not what was expected; the message says what was tried and how to fix it."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset held in host memory: split -> (uint8 NHWC images, labels: int32 (N,) or float32 soft (N, C))."""

    name: str
    splits: Splits
    num_classes: int
    class_names: list[str]
    origin: str


class Stream(Protocol):
    """A dataset read batch by batch on each process's host: what a source's `stream` returns to the pipeline."""

    class_names: list[str]
    origin: str
    image_shape: tuple[int, int, int]  # the uint8 images it yields (H, W, C)
    split_sizes: dict[str, int]
    steps_per_epoch: int

    def stats_images(self) -> Iterable[np.ndarray]:
        """uint8 NHWC batches of (the first STATS_SAMPLE) train images, for the normalisation statistics."""

    def train_batches(self, epoch: int, start_step: int) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        """(this process's images, labels, step) for steps start_step.. of `epoch`: a function of seed, epoch, step."""

    def eval_batches(self, split: str) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(this process's images, labels, mask) covering `split` once; padding has mask 0."""


def _nothing_to_check(config: ml_collections.ConfigDict) -> None:
    del config


@dataclasses.dataclass(frozen=True)
class Source:
    """A registered data source.

    read(config) -> (splits with at least 'train', class names, origin): the data in host memory.
    validate(config): raise ValueError (DataError for paths) for keys this source cannot use; reads no data.
    stream(config, batch_size, eval_batch_size, seed, required) -> Stream, or None to be read into memory instead
    (only when not `required`: in_memory='auto' and no host crop). None: the source is always read into memory.
    description: what it reads, for messages ('an image folder').
    """

    read: Callable[[ml_collections.ConfigDict], tuple[Splits, list[str], str]]
    validate: Callable[[ml_collections.ConfigDict], None] = _nothing_to_check
    stream: Callable[..., Stream | None] | None = None
    description: str = ""


SOURCES: dict[str, Source] = {}


def register_source(name: str, read: Callable, *, validate: Callable | None = None, stream: Callable | None = None,
                    description: str = "") -> Source:
    """Make `data.source=name` read with `read` (see Source); a later registration of the same name replaces it."""
    source = Source(read, validate or _nothing_to_check, stream, description or f"source {name!r}")
    SOURCES[name] = source
    return source


def check_path(config: ml_collections.ConfigDict, directory: str | None = None) -> None:
    """data.path must exist; unless `directory` is None, be a directory (`directory` says of what, for the message)."""
    path = Path(config.path)
    if not path.exists():
        raise DataError(f"data.path={config.path!r} does not exist; pass the {config.source} data's location")
    if directory is not None and not path.is_dir():
        raise DataError(f"data.path={config.path!r} is a file; source={config.source!r} reads a directory{directory}")


def check_num_classes(config: ml_collections.ConfigDict, class_names: list[str], origin: str) -> None:
    """data.num_classes, when set, must be the number of classes the data has."""
    if config.num_classes and config.num_classes != len(class_names):
        raise DataError(f"data.num_classes={config.num_classes} but the data ({origin}) has {len(class_names)} "
                        "classes; set data.num_classes=0 to take it from the data")


def check_labels(labels: np.ndarray, num_classes: int, where: str, fix: str) -> None:
    """Every label must be a class index in [0, num_classes); else a DataError names the first bad one."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(f"{where}: label {labels[bad[0]]} of example {bad[0]}{more} is outside the {num_classes} "
                        f"classes 0..{num_classes - 1}; {fix}")


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


def select_classes(splits: Splits, class_names: list[str], classes) -> tuple[Splits, list[str]]:
    """Only the examples of `classes` (label values), relabelled 0..k-1 in the order given; their names kept."""
    classes = list(classes)
    bad = [c for c in classes if not (isinstance(c, int) and 0 <= c < len(class_names))]
    if bad or len(set(classes)) != len(classes):
        raise DataError(f"classes={tuple(classes)} must be distinct labels in [0, {len(class_names)}) "
                        f"({', '.join(f'{i}: {n}' for i, n in enumerate(class_names))})")
    relabel = np.full(len(class_names), -1, np.int32)
    relabel[classes] = np.arange(len(classes))
    kept = {k: (x[relabel[y] >= 0], relabel[y[relabel[y] >= 0]]) for k, (x, y) in splits.items()}
    counts = np.bincount(kept["train"][1], minlength=len(classes))
    empty = [c for c, count in zip(classes, counts, strict=True) if not count]
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


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which a streamed dataset's n train examples are seen in `epoch`: the same on every process."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def local_positions(step: int, batch_size: int, process_index: int, process_count: int) -> np.ndarray:
    """Positions (in the epoch's order, or in an eval split) of one process's part of global batch `step`.

    The global batch is positions step * batch_size ... + batch_size, process p taking the p-th equal slice: the
    processes' parts are disjoint, cover the batch, and the global batch does not depend on the process count.
    """
    local = batch_size // process_count
    return step * batch_size + process_index * local + np.arange(local)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 HWC image's shorter side to `size` and centre-crop a size x size square (tfds.resize's twin).

    Bilinear with antialiasing (PIL, computed in float32 per channel): within one grey level of tf.image.resize.
    """
    h, w, _ = image.shape
    new_h, new_w = -(-h * size // min(h, w)), -(-w * size // min(h, w))
    planes = [np.asarray(Image.fromarray(image[..., c].astype(np.float32)).resize(
        (new_w, new_h), Image.Resampling.BILINEAR)) for c in range(image.shape[-1])]
    top, left = (new_h - size) // 2, (new_w - size) // 2
    resized = np.stack(planes, -1)[top:top + size, left:left + size]
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def parallel_stack(fn: Callable[[Any], np.ndarray], items, name: Callable[[Any], str] = str) -> np.ndarray:
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


@contextlib.contextmanager
def reading_image(path: Path):
    """PIL's errors for a file that is not a readable image, raised as a DataError naming the file and the fix."""
    try:
        yield
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{path} could not be read as an image ({type(e).__name__}: {e}); replace or remove it") from e


def decode_image(path: Path, rgb: bool, size: int) -> np.ndarray:
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
