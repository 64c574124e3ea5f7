"""source='folder': an image folder path/<split>/<class>/<image>.png|jpg (tfds ImageFolder's layout and order),
decoded by PIL (no TensorFlow) into memory, or streamed with ImageNet-style crops on a thread pool."""

import collections
import math
import os
import random
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import jax
import ml_collections
import numpy as np

from resnet_jax.data import imagenet
from resnet_jax.data.sources.common import (IN_MEMORY_LIMIT, STATS_SAMPLE, DataError, check_num_classes, check_path,
                                            decode_image, epoch_order, local_positions, parallel_stack, reading_image,
                                            register_source, split_ranges)

FOLDER_SPLITS = ("train", "val", "test")
FOLDER_LAYOUT = "path/train/<class>/<image>.png|jpg (and path/test/..., optionally path/val/...)"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # tfds ImageFolder's, any case
PREFETCH = 2  # streamed: batches decoding ahead of the one the loop is given


def validate(config: ml_collections.ConfigDict) -> None:
    """data.path must be a directory; streamed, the folder needs data.image_size, the size its images are cropped to."""
    if not config.path:
        raise DataError(f"source='folder' needs path=DIR laid out as {FOLDER_LAYOUT}")
    check_path(config, directory=f" laid out as {FOLDER_LAYOUT}")
    if config.in_memory is False and not config.image_size:
        raise ValueError("a streamed image folder needs data.image_size, the size its images are cropped to "
                         "(224 for ImageNet)")


def folder_examples(root: Path) -> tuple[dict[str, tuple[list[Path], np.ndarray]], list[str]]:
    """split -> (image paths, int32 labels) of <root>/<split>/<class>/<image>.png|jpg, and the class names.

    Splits are train, val, test (tfds' ImageFolder layout); classes are the sorted class folder names of train;
    examples come in tfds ImageFolder's order. Nothing is decoded: only names are read.
    """
    found = sorted(p.name for p in _visible(root) if p.is_dir())
    if "train" not in found or set(found) - set(FOLDER_SPLITS):
        raise DataError(f"{root} holds split folders {found}; expected {FOLDER_LAYOUT}")
    examples = {split: _split_examples(root / split) for split in found}
    class_names = sorted({label for _, label in examples["train"]})
    index = {name: i for i, name in enumerate(class_names)}
    for split, items in examples.items():
        missing = sorted({label for _, label in items} - set(class_names))
        if missing:
            raise DataError(f"{root / split} has class folder(s) {missing} that {root / 'train'} lacks: the model "
                            "cannot learn a class it never sees; add its train images or remove the folder")
    return {split: ([path for path, _ in items], np.array([index[label] for _, label in items], np.int32))
            for split, items in examples.items()}, class_names


def read(config: ml_collections.ConfigDict):
    """An image folder (folder_examples) decoded into memory. Grayscale images give one channel, colour ones three
    (data.channels=3: all three); all must share one shape."""
    root = Path(config.path)
    examples, class_names = folder_examples(root)
    paths = [path for split_paths, _ in examples.values() for path in split_paths]
    images = parallel_stack(partial(decode_image, rgb=config.channels == 3, size=config.image_size), paths)
    splits, start = {}, 0
    for split, (split_paths, labels) in examples.items():
        splits[split] = images[start:start + len(split_paths)], labels
        start += len(split_paths)
    return splits, class_names, f"image folder {root}"


def _visible(folder: Path) -> list[Path]:
    """The entries of `folder` but hidden ones (.DS_Store, .ipynb_checkpoints, ...)."""
    return [p for p in folder.iterdir() if not p.name.startswith(".")]


def _split_examples(split_dir: Path) -> list[tuple[Path, str]]:
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


def stream(config: ml_collections.ConfigDict, batch_size: int, eval_batch_size: int, seed: int,
           required: bool) -> "FolderStream | None":
    """The folder streamed when required or too large for memory (as image_size x image_size RGB), else None."""
    examples, class_names = folder_examples(Path(config.path))
    n = sum(len(labels) for _, labels in examples.values())
    if not required and n * 3 * config.image_size**2 <= IN_MEMORY_LIMIT:
        return None
    return FolderStream(examples, class_names, config, batch_size, eval_batch_size, seed)


class FolderStream:
    """An image folder decoded and cropped by PIL on a thread pool, each process reading its own positions of each
    global batch (no TensorFlow). A resumed epoch starts at its step: nothing before it is read."""

    def __init__(self, examples, class_names, config, batch_size, eval_batch_size, seed):
        root = Path(config.path)
        check_num_classes(config, class_names, f"image folder {root}")
        if "val" in examples and config.val_size:
            raise DataError(f"image folder {root} already has a val split; set val_size=0 or remove it")
        paths, labels = examples.pop("train")
        ranges = split_ranges(len(labels), config.val_size, config.train_subset)
        self._examples = {k: (paths[a:b], labels[a:b]) for k, (a, b) in ranges.items()} | examples
        for k, (_, y) in self._examples.items():
            if not len(y):
                raise DataError(f"the {k} split of image folder {root} holds no images")
        self._crops = imagenet.Crops(config.image_size, config.eval_crop, imagenet.INCEPTION_CROP in config.augment,
                                     seed)
        self._pool = ThreadPoolExecutor(config.workers or os.cpu_count())
        self._batch_size, self._eval_batch_size = batch_size, eval_batch_size
        self.class_names = class_names
        self.origin = f"image folder {root}"
        self.image_shape = (config.image_size, config.image_size, 3)
        self.split_sizes = {k: len(y) for k, (_, y) in self._examples.items()}
        self.steps_per_epoch = self.split_sizes["train"] // batch_size
        self._seed = seed

    def stats_images(self):
        paths = self._examples["train"][0][:STATS_SAMPLE]
        return (np.stack(list(self._pool.map(self._eval_loader, paths[i:i + 256]))) for i in range(0, len(paths), 256))

    def _load(self, path: Path, box_fn: Callable) -> np.ndarray:
        with reading_image(path):
            return imagenet.load_crop(path, box_fn, self._crops.size)

    def _eval_loader(self, path: Path) -> np.ndarray:
        return self._load(path, self._crops.eval_box)

    def _decoded(self, batches: Iterator[tuple[list[Callable], tuple]]) -> Iterator[tuple]:
        """(stacked images, *rest) for each (loads, rest) of `batches`, PREFETCH batches decoding ahead on the pool."""
        pending = collections.deque()

        def done(futures, rest):
            return np.stack([f.result() for f in futures]), *rest

        try:
            for loads, rest in batches:
                pending.append(([self._pool.submit(load) for load in loads], rest))
                if len(pending) > PREFETCH:
                    yield done(*pending.popleft())
            while pending:
                yield done(*pending.popleft())
        finally:  # an abandoned iterator leaves no work queued
            for futures, _ in pending:
                for future in futures:
                    future.cancel()

    def train_batches(self, epoch: int, start_step: int) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        paths, labels = self._examples["train"]
        order = epoch_order(len(labels), self._seed, epoch)
        process, processes = jax.process_index(), jax.process_count()

        def batches():
            for step in range(start_step, self.steps_per_epoch):
                index = order[local_positions(step, self._batch_size, process, processes)]
                loads = [partial(self._load, paths[i], lambda h, w, i=int(i): self._crops.train_box(h, w, epoch, i))
                         for i in index]
                yield loads, (labels[index], step)

        return self._decoded(batches())

    def eval_batches(self, split: str) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        paths, labels = self._examples[split]
        process, processes = jax.process_index(), jax.process_count()
        blank = np.zeros((self._crops.size, self._crops.size, 3), np.uint8)

        def batches():
            for step in range(math.ceil(len(labels) / self._eval_batch_size)):
                positions = local_positions(step, self._eval_batch_size, process, processes)
                mask = positions < len(labels)
                index = np.minimum(positions, len(labels) - 1)  # padding: a blank image, masked out
                loads = [partial(self._eval_loader, paths[i]) if m else partial(np.copy, blank)
                         for i, m in zip(index, mask, strict=True)]
                yield loads, (labels[index], mask.astype(np.float32))

        return self._decoded(batches())


register_source("folder", read, validate=validate, stream=stream, description="an image folder")
