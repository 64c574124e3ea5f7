"""Global batches on the device mesh: the training loop's one view of the data.

Small datasets live on every device as uint8; each epoch is a permutation drawn on device and each step one jitted
gather + augment + normalise. Large datasets are streamed by their source (resnet_jax.data.sources: tfds by tf.data,
image folders by PIL), each process reading its own part of each batch on the host; the local batches become global
arrays before the same on-device transforms. Batches are sharded over the mesh axis 'data'. Per-example
augmentations run on each device's part of the batch, batch ones (mixup) on the global batch. Randomness is a function
of (seed, epoch, step or example) only, so a resumed run sees exactly the batches it would have seen, and a resumed
epoch decodes none of the images it skips.
"""

import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax.data import augment, imagenet
from resnet_jax.data.sources import SOURCES, Dataset, Stream, load_dataset

SHUFFLE_STEP = 2**32 - 1      # the epoch's shuffle key is the augmentation key of this step, which no epoch reaches
BATCH_KEY = 0                 # the batch augmentations' key is the step's key folded with this


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
        self._per_example_augment, self._batch_augment = augment.partition(config.augment)
        self._context = augment.Context(self.num_classes, config)
        if config.normalize == "imagenet" and self.image_shape[-1] != 3:
            raise ValueError(f"normalize='imagenet' is for RGB images; these have {self.image_shape[-1]} channel(s): "
                             "set data.channels=3 or another normalize")
        self._mean, self._std = normalization(config.normalize, stats_images, config.pad_to_32, config.channels)

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, jax.Array]]:
        """{'image': float32 (B, H, W, C), 'label': int32 (B,) or float32 soft (B, C)} for steps start_step.. of
        `epoch`, augmented."""
        raise NotImplementedError

    def eval_batches(self, split: str) -> Iterator[dict[str, jax.Array]]:
        """{'image', 'label', 'mask'} covering `split` exactly once; the last batch is padded, with mask 0 there."""
        raise NotImplementedError

    def _augment_keys(self, epoch, step):
        """(one key per example, sharded over 'data'; one key for the batch), from the step's key
        fold_in(fold_in(key(seed), epoch), step)."""
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self._seed), epoch), step)
        return self._shard(jax.random.split(key, self.batch_size)), jax.random.fold_in(key, BATCH_KEY)

    def _shard(self, x):
        """Shard x over 'data' inside jit: Explicit mesh axes (jax.make_mesh's default) and Auto ones differ here."""
        axis_types = dict(zip(self._mesh.axis_names, self._mesh.axis_types, strict=True))
        if axis_types["data"] == jax.sharding.AxisType.Explicit:
            return jax.reshard(x, self._sharding)
        return jax.lax.with_sharding_constraint(x, self._sharding)

    def _per_device(self, fn, *in_specs):
        """fn run on each device on its part of the batch (P('data') inputs) and whole replicated (P()) inputs."""
        return jax.shard_map(fn, mesh=self._mesh, in_specs=in_specs, out_specs=P("data"))

    def _geometry(self, images):
        """uint8 images as stored -> as the model sees them (padding, channels), still uint8."""
        return augment.to_model_geometry(images, self._config.pad_to_32, self._config.channels)

    def _augment_per_example(self, images, labels, keys):
        """On one device's part of the batch: model geometry, then the per-example augmentations."""
        return augment.augment(self._geometry(images), labels, keys, None, self._per_example_augment, self._context)

    def _finish_train_batch(self, images, labels, key):
        """The global batch after the per-example ones: the batch augmentations (with the batch's key), then
        normalisation."""
        images, labels = augment.augment(images, labels, None, key, self._batch_augment, self._context)
        return {"image": augment.normalize(images, self._mean, self._std), "label": labels}

    def _check_split(self, split):
        if split not in self.split_sizes:
            raise ValueError(f"no split {split!r}; this dataset has {', '.join(self.split_sizes)}")


class _InMemoryPipeline(Pipeline):
    """Every split on every device (replicated); each batch one jit: gather, augment, normalise."""

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

        def permutation(epoch):
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch), SHUFFLE_STEP)
            return jax.random.permutation(key, len(train_images))

        self._permutation = jax.jit(permutation, out_shardings=replicated)
        self._train_batch = jax.jit(self.train_batch_fn, out_shardings=self._sharding)
        self._eval_batch = jax.jit(self._eval_batch_fn, out_shardings=self._sharding)

    def train_batch_fn(self, images, labels, perm, epoch, step):
        """Batch `step` of the epoch whose train_inputs are (images, labels, perm, epoch); traceable, so that a jitted
        loop can gather its batches itself (resnet_jax.multistep)."""
        idx = self._shard(jax.lax.dynamic_slice_in_dim(perm, step * self.batch_size, self.batch_size))
        keys, batch_key = self._augment_keys(epoch, step)

        def local(images, labels, idx, keys):
            return self._augment_per_example(images[idx], labels[idx], keys)

        images, labels = self._per_device(local, P(), P(), P("data"), P("data"))(images, labels, idx, keys)
        return self._finish_train_batch(images, labels, batch_key)

    def _eval_batch_fn(self, images, labels, start):
        def local(images, labels, idx):
            mask = idx < len(labels)
            idx = jnp.minimum(idx, len(labels) - 1)  # padding repeats the last example, masked out
            return self._geometry(images[idx]), labels[idx], mask.astype(jnp.float32)

        idx = self._shard(start + jnp.arange(self.eval_batch_size))
        images, labels, mask = self._per_device(local, P(), P(), P("data"))(images, labels, idx)
        return {"image": augment.normalize(images, self._mean, self._std), "label": labels, "mask": mask}

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


class _StreamedPipeline(Pipeline):
    """A source's Stream: each process's local numpy batches become global arrays on the mesh, then the same
    on-device transforms as in memory."""

    def __init__(self, stream: Stream, config, batch_size, mesh, seed):
        super().__init__(config, batch_size, mesh, seed, class_names=stream.class_names,
                         origin=f"{stream.origin}, streamed", stored_shape=stream.image_shape,
                         split_sizes=stream.split_sizes, steps_per_epoch=stream.steps_per_epoch,
                         stats_images=stream.stats_images())
        self._stream = stream
        self._train_batch = jax.jit(self._train_batch_fn, out_shardings=self._sharding)
        self._eval_batch = jax.jit(self._eval_batch_fn, out_shardings=self._sharding)

    def _train_batch_fn(self, images, labels, epoch, step):
        keys, batch_key = self._augment_keys(epoch, step)
        images, labels = self._per_device(self._augment_per_example, P("data"), P("data"), P("data"))(
            images, labels, keys)
        return self._finish_train_batch(images, labels, batch_key)

    def _eval_batch_fn(self, batch):
        images = self._per_device(self._geometry, P("data"))(batch["image"])
        return batch | {"image": augment.normalize(images, self._mean, self._std)}

    def _global(self, local: np.ndarray) -> jax.Array:
        return jax.make_array_from_process_local_data(self._sharding, local)

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, jax.Array]]:
        for images, labels, step in self._stream.train_batches(epoch, start_step):
            yield self._train_batch(self._global(images), self._global(labels), epoch, step)

    def eval_batches(self, split: str) -> Iterator[dict[str, jax.Array]]:
        self._check_split(split)
        for images, labels, mask in self._stream.eval_batches(split):
            yield self._eval_batch({"image": self._global(images), "label": self._global(labels),
                                    "mask": self._global(mask)})


def make_pipeline(config: ml_collections.ConfigDict, batch_size: int, mesh: jax.sharding.Mesh, seed: int,
                  dataset: Dataset | None = None) -> Pipeline:
    """The input pipeline for a validated data `config` with global `batch_size` on `mesh` (axis 'data').

    `dataset` supplies arrays already in memory (tests, benchmarks); by default the data is read as config says:
    kept on device when small, streamed by its source (if it streams) when large, in_memory=False or cropped on the
    host.
    """
    if "data" not in mesh.shape:
        raise ValueError(f"the mesh needs an axis named 'data' (it has {tuple(mesh.shape)})")
    devices = mesh.shape["data"]
    eval_batch_size = config.eval_batch_size or batch_size
    for what, size in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if size <= 0 or size % devices:
            raise ValueError(f"{what}={size} is not a multiple of the {devices} devices on mesh axis 'data'; "
                             f"use a multiple of {devices}")
    source = SOURCES[config.source]
    if dataset is None and source.stream and config.in_memory is not True:
        required = config.in_memory is False or imagenet.INCEPTION_CROP in config.augment or config.eval_crop != 1
        stream = source.stream(config, batch_size, eval_batch_size, seed, required)
        if stream is not None:
            if config.classes or config.train_per_class:
                raise ValueError(f"data.classes / data.train_per_class select examples in memory, but {config.name} "
                                 "is streamed here: set data.in_memory=True if the kept examples fit")
            return _StreamedPipeline(stream, config, batch_size, mesh, seed)
    return _InMemoryPipeline(dataset or load_dataset(config), config, batch_size, mesh, seed)
