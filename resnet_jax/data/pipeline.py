"""Global batches on the device mesh: the training loop's one view of the data.

Small datasets live on every device as uint8; each epoch is a permutation drawn on device and each step one jitted
gather + augment + normalise. Large tfds datasets are streamed by tf.data, each process reading its own shard, and
assembled into global arrays before the same on-device transforms. Batches are sharded over the mesh axis 'data'.
Randomness is a function of (seed, epoch, step) only, so a resumed run sees exactly the batches it would have seen.
tensorflow-datasets is imported only when a tfds dataset is streamed.
"""

import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax.data import augment
from resnet_jax.data.sources import (Dataset, TfdsSource, load_dataset, open_tfds, split_ranges, validate_config,
                                     with_defaults)

IN_MEMORY_LIMIT = 2 << 30     # in_memory='auto' keeps a tfds dataset on device below this many bytes of uint8 images
SHUFFLE_STEP = 2**32 - 1      # the epoch's shuffle key is the augmentation key of this step, which no epoch reaches
STATS_SAMPLE = 10_000         # a streamed dataset's normalisation statistics come from its first this many images


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
        self._train_batch = jax.jit(self._train_batch_fn, out_shardings=self._sharding)
        self._eval_batch = jax.jit(self._eval_batch_fn, out_shardings=self._sharding)

    def _train_batch_fn(self, images, labels, perm, epoch, step):
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

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, jax.Array]]:
        images, labels = self._arrays["train"]
        perm = self.train_order(epoch)
        for step in range(start_step, self.steps_per_epoch):
            yield self._train_batch(images, labels, perm, epoch, step)

    def eval_batches(self, split: str) -> Iterator[dict[str, jax.Array]]:
        self._check_split(split)
        images, labels = self._arrays[split]
        for start in range(0, len(labels), self.eval_batch_size):
            yield self._eval_batch(images, labels, start)


class _StreamedPipeline(Pipeline):
    """tf.data reads each process's shard of a tfds dataset; local batches become global arrays on the mesh."""

    def __init__(self, source: TfdsSource, config, batch_size, mesh, seed):
        import tensorflow_datasets as tfds

        ranges = split_ranges(source.num_examples("train"), config.val_size, config.train_subset)
        self._splits = {k: f"train[{a}:{b}]" for k, (a, b) in ranges.items()}
        if source.test_split:
            self._splits["test"] = source.test_split
        processes = jax.process_count()
        self._local_batch = batch_size // processes
        a, b = ranges["train"]
        stats_split = source.read(f"train[{a}:{min(b, a + STATS_SAMPLE)}]", config.image_size)
        stats_images = (images for images, _ in tfds.as_numpy(stats_split.batch(256)))
        sizes = {k: source.num_examples(s) for k, s in self._splits.items()}
        super().__init__(config, batch_size, mesh, seed, class_names=source.class_names,
                         origin=f"{source.origin}, streamed", stored_shape=source.image_shape, split_sizes=sizes,
                         stats_images=stats_images,
                         steps_per_epoch=sizes["train"] // processes // self._local_batch)
        self._source = source
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

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, jax.Array]]:
        import tensorflow as tf
        import tensorflow_datasets as tfds

        shuffle_seed = int(np.random.SeedSequence([self._seed, epoch]).generate_state(1)[0])
        split = tfds.split_for_jax_process(self._splits["train"], drop_remainder=True)
        ds = self._source.read(split, self._config.image_size, shuffle_seed=shuffle_seed)
        ds = ds.batch(self._local_batch, drop_remainder=True).take(self.steps_per_epoch).skip(start_step)
        for step, (images, labels) in enumerate(tfds.as_numpy(ds.prefetch(tf.data.AUTOTUNE)), start_step):
            yield self._train_batch(self._global(images), self._global(labels), epoch, step)

    def eval_batches(self, split: str) -> Iterator[dict[str, jax.Array]]:
        import tensorflow as tf
        import tensorflow_datasets as tfds

        self._check_split(split)
        # Processes' shards differ by at most one example: all pad to the same number of batches.
        steps = math.ceil(math.ceil(self.split_sizes[split] / jax.process_count()) / self._local_eval_batch)
        ds = self._source.read(tfds.split_for_jax_process(self._splits[split]), self._config.image_size)
        ds = ds.map(lambda image, label: (image, label, 1.0))
        padding = tf.data.Dataset.from_tensors((tf.zeros(self._source.image_shape, tf.uint8), 0, 0.0)).repeat()
        ds = ds.concatenate(padding).take(steps * self._local_eval_batch).batch(self._local_eval_batch)
        for images, labels, mask in tfds.as_numpy(ds.prefetch(tf.data.AUTOTUNE)):
            yield self._eval_batch({"image": self._global(images), "label": self._global(labels),
                                    "mask": self._global(mask)})


def make_pipeline(config: ml_collections.ConfigDict, batch_size: int, mesh: jax.sharding.Mesh, seed: int,
                  dataset: Dataset | None = None) -> Pipeline:
    """The input pipeline for `config` with global `batch_size` on `mesh` (axis 'data').

    `dataset` supplies arrays already in memory (tests, benchmarks); by default the data is read as config says:
    kept on device when small, streamed from tfds when large or in_memory=False.
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
    if dataset is None and config.source == "tfds" and config.in_memory is not True:
        source = open_tfds(config)
        n = sum(source.num_examples(s) for s in ("train", source.test_split) if s)
        if config.in_memory is False or n * math.prod(source.image_shape) > IN_MEMORY_LIMIT:
            if config.classes or config.train_per_class:
                raise ValueError(f"classes / train_per_class select examples in memory, but {config.name} is streamed: "
                                 "set in_memory=True if the kept examples fit")
            return _StreamedPipeline(source, config, batch_size, mesh, seed)
    return _InMemoryPipeline(dataset or load_dataset(config), config, batch_size, mesh, seed)
