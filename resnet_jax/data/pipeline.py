"""Global batches on the device mesh: the training loop's one view of the data.

Small datasets live on every device as uint8; each epoch is a permutation drawn on device and each step one jitted
gather + augment + normalise. Large datasets are streamed, each process decoding its own shard on the host: tfds
TFRecords by tf.data, image folders by PIL on a thread pool (no TensorFlow). Local batches are assembled into global
arrays before the same on-device transforms; batches are sharded over the mesh axis 'data'. Streamed data can be
cropped ImageNet-style on the host (resnet_jax.data.imagenet). Randomness is a function of (seed, epoch, step or
example) only, so a resumed run sees exactly the batches it would have seen, and a resumed epoch decodes none of the
images it skips. tensorflow-datasets is imported only when a tfds dataset is streamed.
"""

import collections
import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax.data import augment, imagenet
from resnet_jax.data.sources import (DataError, Dataset, TfdsSource, check_num_classes, folder_examples, load_dataset,
                                     open_tfds, reading_image, split_ranges, validate_config, with_defaults)

IN_MEMORY_LIMIT = 2 << 30     # in_memory='auto' keeps a tfds dataset on device below this many bytes of uint8 images
SHUFFLE_STEP = 2**32 - 1      # the epoch's shuffle key is the augmentation key of this step, which no epoch reaches
STATS_SAMPLE = 10_000         # a streamed dataset's normalisation statistics come from its first this many images
PREFETCH = 2                  # streamed folders: batches decoding ahead of the one the loop is given


def model_image_shape(shape: tuple[int, int, int], config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """The (H, W, C) the model sees after pad_to_32 and channels, checked against the stored shape."""
    h, w, c = shape
    if config.pad_to_32:
        if h > 32 or w > 32:
            raise ValueError(f"pad_to_32 zero-pads images up to 32x32, but these are {h}x{w}")
        h = w = 32
    if config.channels and config.channels != c:
        if c != 1:
            raise ValueError(f"channels={config.channels} repeats a single channel, but these images have {c}")
        c = config.channels
    return h, w, c


def normalization(kind: str, train_images, pad_to_32: bool = False, channels: int = 0):
    """(mean, std) such that (x - mean) / std normalises as `kind` says, from the train images as the model sees them.

    train_images: a uint8 NHWC array, or an iterable of such batches. Per-pixel moments of the stored images are
    mapped exactly through the zero padding and channel repeat.
    """
    if kind == "none":
        return np.float32(0), np.float32(255)
    if kind == "imagenet":
        return imagenet.MEAN_RGB, imagenet.STD_RGB
    batches = train_images
    if isinstance(train_images, np.ndarray):  # float64 sums over chunks of at most 2**24 values: bounded memory
        rows = max(1, 2**24 // math.prod(train_images.shape[1:]))
        batches = (train_images[i:i + rows] for i in range(0, len(train_images), rows))
    n, m1, m2 = 0, 0.0, 0.0
    for chunk in batches:
        x = chunk.astype(np.float64)
        n, m1, m2 = n + len(x), m1 + x.sum(0), m2 + (x * x).sum(0)
    m1, m2 = (np.asarray(augment.to_model_geometry(m[None] / n, pad_to_32, channels))[0] for m in (m1, m2))
    if kind == "pixel_mean":
        return m1.astype(np.float32), np.float32(255)
    mean = m1.mean((0, 1))
    return mean.astype(np.float32), np.sqrt(m2.mean((0, 1)) - mean**2).astype(np.float32)


class Pipeline:
    """Batches of one dataset for data-parallel training on a mesh with axis 'data'; built by make_pipeline.

    train_batches(epoch, start_step) and eval_batches(split) yield global batches sharded as P('data').
    """

    def __init__(self, config, batch_size, mesh, seed, *, class_names, stored_shape, split_sizes, origin,
                 steps_per_epoch, stats_images):
        self.num_classes = len(class_names)
        self.class_names = class_names
        self.image_shape = model_image_shape(stored_shape, config)
        self.split_sizes = split_sizes
        self.origin = origin
        self.batch_size = batch_size
        self.eval_batch_size = config.eval_batch_size or batch_size
        self.steps_per_epoch = steps_per_epoch
        if steps_per_epoch < 1:
            raise ValueError(f"the train split has {split_sizes['train']} images, fewer than one batch of {batch_size}")
        self._config = config
        self._seed = seed
        self._mesh = mesh
        self._sharding = NamedSharding(mesh, P("data"))
        if config.normalize == "imagenet" and self.image_shape[-1] != 3:
            raise ValueError(f"normalize='imagenet' is for RGB images; these have {self.image_shape[-1]} channel(s): "
                             "set data.channels=3 or another normalize")
        self._mean, self._std = normalization(config.normalize, stats_images, config.pad_to_32, config.channels)

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, jax.Array]]:
        """{'image': float32 (B, H, W, C), 'label': int32 (B,)} for steps start_step.. of `epoch`, augmented."""
        raise NotImplementedError

    def eval_batches(self, split: str) -> Iterator[dict[str, jax.Array]]:
        """{'image', 'label', 'mask'} covering `split` exactly once; the last batch is padded, with mask 0 there."""
        raise NotImplementedError

    def _augment_keys(self, epoch, step):
        """One key per example of the batch, from fold_in(fold_in(key(seed), epoch), step); sharded over 'data'."""
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self._seed), epoch), step)
        return self._shard(jax.random.split(key, self.batch_size))

    def _shard(self, x):
        """Shard x over 'data' inside jit: Explicit mesh axes (jax.make_mesh's default) and Auto ones differ here."""
        if dict(zip(self._mesh.axis_names, self._mesh.axis_types))["data"] == jax.sharding.AxisType.Explicit:
            return jax.reshard(x, self._sharding)
        return jax.lax.with_sharding_constraint(x, self._sharding)

    def _per_device(self, fn, *in_specs):
        """fn run on each device on its part of the batch (P('data') inputs) and whole replicated (P()) inputs."""
        return jax.shard_map(fn, mesh=self._mesh, in_specs=in_specs, out_specs=P("data"))

    def _prepare(self, images, keys=None):
        """uint8 images as stored -> float32 images as the model sees them; augmented when keys are given."""
        x = augment.to_model_geometry(images, self._config.pad_to_32, self._config.channels)
        if keys is not None:
            x = augment.augment(x, keys, self._config.augment)
        return augment.normalize(x, self._mean, self._std)

    def _check_split(self, split):
        if split not in self.split_sizes:
            raise ValueError(f"no split {split!r}; this dataset has {', '.join(self.split_sizes)}")


class _InMemoryPipeline(Pipeline):
    """Every split on every device as uint8 (replicated); each batch one jit: gather, augment, normalise."""

    def __init__(self, data: Dataset, config, batch_size, mesh, seed):
        train_images = data.splits["train"][0]
        sizes = {k: len(y) for k, (_, y) in data.splits.items()}
        super().__init__(config, batch_size, mesh, seed, class_names=data.class_names, origin=data.origin,
                         stored_shape=train_images.shape[1:], split_sizes=sizes,
                         steps_per_epoch=len(train_images) // batch_size, stats_images=train_images)
        replicated = NamedSharding(mesh, P())

        def put(a):  # each process supplies its own devices' copies, so this works multi-host
            return jax.make_array_from_callback(a.shape, replicated, lambda index: a[index])

        self._arrays = {k: (put(x), put(y)) for k, (x, y) in data.splits.items()}
        shuffle_key = lambda epoch: jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch), SHUFFLE_STEP)
        self._permutation = jax.jit(lambda epoch: jax.random.permutation(shuffle_key(epoch), len(train_images)),
                                    out_shardings=replicated)
        self._train_batch = jax.jit(self.train_batch_fn, out_shardings=self._sharding)
        self._eval_batch = jax.jit(self._eval_batch_fn, out_shardings=self._sharding)

    def train_batch_fn(self, images, labels, perm, epoch, step):
        """Batch `step` of the epoch whose train_inputs are (images, labels, perm, epoch); traceable, so that a jitted
        loop can gather its batches itself (resnet_jax.multistep)."""
        idx = self._shard(jax.lax.dynamic_slice_in_dim(perm, step * self.batch_size, self.batch_size))

        def local(images, labels, idx, keys):
            return {"image": self._prepare(images[idx], keys), "label": labels[idx]}

        return self._per_device(local, P(), P(), P("data"), P("data"))(images, labels, idx,
                                                                       self._augment_keys(epoch, step))

    def _eval_batch_fn(self, images, labels, start):
        def local(images, labels, idx):
            mask = idx < len(labels)
            idx = jnp.minimum(idx, len(labels) - 1)  # padding repeats the last example, masked out
            return {"image": self._prepare(images[idx]), "label": labels[idx], "mask": mask.astype(jnp.float32)}

        idx = self._shard(start + jnp.arange(self.eval_batch_size))
        return self._per_device(local, P(), P(), P("data"))(images, labels, idx)

    def train_order(self, epoch: int) -> jax.Array:
        """The order in which `epoch` visits the training examples: step s takes entries s*B to (s+1)*B."""
        return self._permutation(epoch)

    def train_inputs(self, epoch: int) -> tuple:
        """The device arrays (and epoch) from which train_batch_fn(*train_inputs(epoch), step) gathers a batch."""
        images, labels = self._arrays["train"]
        return images, labels, self.train_order(epoch), epoch

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, jax.Array]]:
        inputs = self.train_inputs(epoch)
        for step in range(start_step, self.steps_per_epoch):
            yield self._train_batch(*inputs, step)

    def eval_batches(self, split: str) -> Iterator[dict[str, jax.Array]]:
        self._check_split(split)
        images, labels = self._arrays[split]
        for start in range(0, len(labels), self.eval_batch_size):
            yield self._eval_batch(images, labels, start)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which a streamed folder's n train examples are seen in `epoch`: the same on every process."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def local_positions(step: int, batch_size: int, process_index: int, process_count: int) -> np.ndarray:
    """Positions (in the epoch's order, or in an eval split) of one process's part of global batch `step`.

    The global batch is positions step * batch_size ... + batch_size, process p taking the p-th equal slice: the
    processes' parts are disjoint, cover the batch, and the global batch does not depend on the process count.
    """
    local = batch_size // process_count
    return step * batch_size + process_index * local + np.arange(local)


def crops(config: ml_collections.ConfigDict, seed: int) -> imagenet.Crops | None:
    """The host crops of a streamed dataset, or None when it is decoded whole (and resized to image_size if set)."""
    if config.augment in augment.HOST_CROPS or config.eval_crop != 1 or config.source == "folder":
        return imagenet.Crops(config.image_size, config.eval_crop, config.augment in augment.HOST_CROPS, seed)
    return None


class _HostPipeline(Pipeline):
    """Batches decoded on each process's host: local numpy batches become global arrays on the mesh."""

    def _set_local_batches(self):
        processes = jax.process_count()
        self._local_batch = self.batch_size // processes
        self._local_eval_batch = self.eval_batch_size // processes
        self._train_batch = jax.jit(self._train_batch_fn, out_shardings=self._sharding)
        self._eval_batch = jax.jit(self._eval_batch_fn, out_shardings=self._sharding)

    def _train_batch_fn(self, images, labels, epoch, step):
        prepare = self._per_device(self._prepare, P("data"), P("data"))
        return {"image": prepare(images, self._augment_keys(epoch, step)), "label": labels}

    def _eval_batch_fn(self, batch):
        return batch | {"image": self._per_device(self._prepare, P("data"))(batch["image"])}

    def _global(self, local: np.ndarray) -> jax.Array:
        return jax.make_array_from_process_local_data(self._sharding, local)

    def _global_train(self, images, labels, epoch, step):
        return self._train_batch(self._global(images), self._global(labels), epoch, step)

    def _global_eval(self, images, labels, mask):
        return self._eval_batch({"image": self._global(images), "label": self._global(labels),
                                 "mask": self._global(mask)})


class _StreamedPipeline(_HostPipeline):
    """tf.data reads each process's shard of a tfds dataset; local batches become global arrays on the mesh."""

    def __init__(self, source: TfdsSource, config, batch_size, mesh, seed):
        import tensorflow_datasets as tfds

        ranges = split_ranges(source.num_examples("train"), config.val_size, config.train_subset)
        self._splits = {k: f"train[{a}:{b}]" for k, (a, b) in ranges.items()}
        if source.test_split:
            self._splits["test"] = source.test_split
        processes = jax.process_count()
        a, b = ranges["train"]
        stats_split = source.read(f"train[{a}:{min(b, a + STATS_SAMPLE)}]", config.image_size)
        stats_images = (images for images, _ in tfds.as_numpy(stats_split.batch(256)))
        sizes = {k: source.num_examples(s) for k, s in self._splits.items()}
        super().__init__(config, batch_size, mesh, seed, class_names=source.class_names,
                         origin=f"{source.origin}, streamed", stored_shape=source.image_shape, split_sizes=sizes,
                         stats_images=stats_images,
                         steps_per_epoch=sizes["train"] // processes // (batch_size // processes))
        self._source = source
        self._crops = crops(config, seed)
        self._set_local_batches()

    def _decoder(self, box_fn: Callable) -> Callable:
        """(example index, encoded image) -> uint8 image: box_fn's crop if cropping, else the whole image."""
        if self._crops is None:
            return lambda index, image: self._source.decode(image, self._config.image_size)
        feature = self._source.builder.info.features[self._source.image_key]
        return lambda index, image: imagenet.tf_crop(image, feature, box_fn, index, self._crops.size)

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, jax.Array]]:
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
            yield self._global_train(images, labels, epoch, step)

    def eval_batches(self, split: str) -> Iterator[dict[str, jax.Array]]:
        import tensorflow as tf
        import tensorflow_datasets as tfds

        self._check_split(split)
        # Processes' shards differ by at most one example: all pad to the same number of batches.
        steps = math.ceil(math.ceil(self.split_sizes[split] / jax.process_count()) / self._local_eval_batch)
        decode = self._decoder(lambda h, w, i: self._crops.eval_box(h, w))
        ds = self._source.records(tfds.split_for_jax_process(self._splits[split])).enumerate()
        ds = ds.map(lambda i, example: (decode(i, example[0]), example[1], 1.0), num_parallel_calls=tf.data.AUTOTUNE)
        padding = tf.data.Dataset.from_tensors((tf.zeros(self._source.image_shape, tf.uint8), 0, 0.0)).repeat()
        ds = ds.concatenate(padding).take(steps * self._local_eval_batch).batch(self._local_eval_batch)
        for images, labels, mask in tfds.as_numpy(ds.prefetch(tf.data.AUTOTUNE)):
            yield self._global_eval(images, labels, mask)


class _StreamedFolderPipeline(_HostPipeline):
    """An image folder decoded and cropped by PIL on a thread pool, each process reading its own positions of each
    global batch (no TensorFlow). A resumed epoch starts at its step: nothing before it is read."""

    def __init__(self, examples, class_names, config, batch_size, mesh, seed):
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
        self._crops = crops(config, seed)
        self._pool = ThreadPoolExecutor(config.workers or os.cpu_count())
        size = config.image_size
        stats_paths = self._examples["train"][0][:STATS_SAMPLE]
        stats_images = (np.stack(list(self._pool.map(self._eval_loader, stats_paths[i:i + 256])))
                        for i in range(0, len(stats_paths), 256))
        sizes = {k: len(y) for k, (_, y) in self._examples.items()}
        super().__init__(config, batch_size, mesh, seed, class_names=class_names, stored_shape=(size, size, 3),
                         origin=f"image folder {root}, streamed", split_sizes=sizes, stats_images=stats_images,
                         steps_per_epoch=sizes["train"] // batch_size)
        self._set_local_batches()

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

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, jax.Array]]:
        paths, labels = self._examples["train"]
        order = epoch_order(len(labels), self._seed, epoch)
        process, processes = jax.process_index(), jax.process_count()

        def batches():
            for step in range(start_step, self.steps_per_epoch):
                index = order[local_positions(step, self.batch_size, process, processes)]
                loads = [partial(self._load, paths[i], lambda h, w, i=int(i): self._crops.train_box(h, w, epoch, i))
                         for i in index]
                yield loads, (labels[index], step)

        for images, labels_, step in self._decoded(batches()):
            yield self._global_train(images, labels_, epoch, step)

    def eval_batches(self, split: str) -> Iterator[dict[str, jax.Array]]:
        self._check_split(split)
        paths, labels = self._examples[split]
        process, processes = jax.process_index(), jax.process_count()
        blank = np.zeros((self._crops.size, self._crops.size, 3), np.uint8)

        def batches():
            for step in range(math.ceil(len(labels) / self.eval_batch_size)):
                positions = local_positions(step, self.eval_batch_size, process, processes)
                mask = positions < len(labels)
                index = np.minimum(positions, len(labels) - 1)  # padding: a blank image, masked out
                loads = [partial(self._eval_loader, paths[i]) if m else (lambda: blank) for i, m in zip(index, mask)]
                yield loads, (labels[index], mask.astype(np.float32))

        for images, labels_, mask in self._decoded(batches()):
            yield self._global_eval(images, labels_, mask)


def _refuse_subsets(config: ml_collections.ConfigDict) -> None:
    if config.classes or config.train_per_class:
        raise ValueError(f"data.classes / data.train_per_class select examples in memory, but {config.name} is "
                         "streamed here: set data.in_memory=True if the kept examples fit")


def make_pipeline(config: ml_collections.ConfigDict, batch_size: int, mesh: jax.sharding.Mesh, seed: int,
                  dataset: Dataset | None = None) -> Pipeline:
    """The input pipeline for `config` with global `batch_size` on `mesh` (axis 'data').

    `dataset` supplies arrays already in memory (tests, benchmarks); by default the data is read as config says:
    kept on device when small, streamed (tfds or an image folder) when large, in_memory=False or cropped on the host.
    """
    validate_config(config)
    config = with_defaults(config)
    if "data" not in mesh.shape:
        raise ValueError(f"the mesh needs an axis named 'data' (it has {tuple(mesh.shape)})")
    devices = mesh.shape["data"]
    for what, size in (("batch_size", batch_size), ("eval_batch_size", config.eval_batch_size or batch_size)):
        if size <= 0 or size % devices:
            raise ValueError(f"{what}={size} is not a multiple of the {devices} devices on mesh axis 'data'; "
                             f"use a multiple of {devices}")
    stream = config.in_memory is False or config.augment in augment.HOST_CROPS or config.eval_crop != 1
    if dataset is None and config.source == "tfds" and config.in_memory is not True:
        source = open_tfds(config)
        n = sum(source.num_examples(s) for s in ("train", source.test_split) if s)
        if stream or n * math.prod(source.image_shape) > IN_MEMORY_LIMIT:
            _refuse_subsets(config)
            return _StreamedPipeline(source, config, batch_size, mesh, seed)
    if dataset is None and config.source == "folder" and config.in_memory is not True:
        examples, class_names = folder_examples(Path(config.path))
        n = sum(len(labels) for _, labels in examples.values())
        if stream or n * 3 * config.image_size**2 > IN_MEMORY_LIMIT:
            _refuse_subsets(config)
            return _StreamedFolderPipeline(examples, class_names, config, batch_size, mesh, seed)
    return _InMemoryPipeline(dataset or load_dataset(config), config, batch_size, mesh, seed)
