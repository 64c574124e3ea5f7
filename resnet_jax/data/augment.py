"""Augmentations: a registry of named batch transforms that `data.augment` lists in order, run on the accelerator
inside the pipeline's jitted batch functions; and the model geometry and normalisation around them.

An augmentation is fn(images, labels, key, context) -> (images, labels). A per-example one (the default) is written
for one example (HWC image, its label, its key) and vmapped, one key per example, so an example's augmentation does
not depend on how the batch is split over devices; it runs on each device's part of the batch. A batch one
(per_example=False) sees the whole global batch (N, H, W, C), labels (N,) or (N, C) and one key for the batch, and may
mix examples (mixup). Every augmentation sees pixel values in [0, 255] (uint8, or float32 once mixed), before
normalisation, and receives the same keys: each draws from a stream of its own (`stream`). Labels may come back soft
(float32 (N, C)); resnet_jax.losses.targets turns integer ones into one-hot rows.

    @register_augmentation("invert")
    def invert(image, label, key, context):
        return 255 - image, label
"""

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from resnet_jax.data.imagenet import INCEPTION_CROP
from resnet_jax.losses import targets

HOST_CROPS = (INCEPTION_CROP,)  # done on the host as streamed images are decoded (resnet_jax.data.imagenet)
NORMALIZATIONS = ("channel", "pixel_mean", "imagenet", "none")  # how the pipeline derives `normalize`'s mean and std


@dataclasses.dataclass(frozen=True)
class Context:
    """What an augmentation may need besides the batch: the number of classes and the data config (data.mixup_alpha)."""

    num_classes: int
    config: ml_collections.ConfigDict


Transform = Callable[[jax.Array, jax.Array, jax.Array, Context], tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """A registered transform; per_example: vmapped over the examples with their keys, else given the whole batch."""

    fn: Transform
    per_example: bool = True


AUGMENTATIONS: dict[str, Augmentation] = {}


def register_augmentation(name: str, fn: Transform | None = None, *, per_example: bool = True):
    """Make `name` usable in data.augment; as a decorator when fn is omitted. Re-registering a name replaces it."""

    def register(fn: Transform) -> Transform:
        AUGMENTATIONS[name] = Augmentation(fn, per_example)
        return fn

    return register if fn is None else register(fn)


def check_names(names: Sequence[str]) -> None:
    """Raise ValueError unless `names` is a sequence of registered augmentations, batch ones after per-example ones."""
    if isinstance(names, str):
        raise ValueError(f"data.augment={names!r} is one name; list the augmentations in order, e.g. "
                         "data.augment=('crop', 'flip') (resnet_jax.data.upgrade_data maps an old run's name)")
    unknown = [n for n in names if n not in AUGMENTATIONS and n not in HOST_CROPS]
    if unknown:
        raise ValueError(f"unknown data.augment {unknown[0]!r}; choose among the registered augmentations "
                         f"{', '.join([*AUGMENTATIONS, *HOST_CROPS])} (register_augmentation adds one)")
    on_device = [n for n in names if n in AUGMENTATIONS]
    kinds = [AUGMENTATIONS[n].per_example for n in on_device]
    if kinds != sorted(kinds, reverse=True):
        raise ValueError(f"data.augment={tuple(names)!r}: batch augmentations "
                         f"({', '.join(n for n in on_device if not AUGMENTATIONS[n].per_example)}) mix examples of the "
                         "global batch and come after the per-example ones")


def partition(names: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(per-example, batch) augmentations of `names` in order; host crops are not here (the host did them)."""
    per_example = tuple(n for n in names if n in AUGMENTATIONS and AUGMENTATIONS[n].per_example)
    return per_example, tuple(n for n in names if n in AUGMENTATIONS and not AUGMENTATIONS[n].per_example)


def augment(images: jax.Array, labels: jax.Array, keys: jax.Array | None, batch_key: jax.Array | None,
            names: Sequence[str], context: Context) -> tuple[jax.Array, jax.Array]:
    """The augmentations `names` applied in order to a batch: per-example ones with keys[i] for example i, batch ones
    with batch_key (the pipeline calls this for each kind on its own); host crops are skipped."""
    for name in names:
        if name in HOST_CROPS:
            continue
        augmentation = AUGMENTATIONS[name]
        if augmentation.per_example:
            images, labels = jax.vmap(_one_example(augmentation.fn, context))(images, labels, keys)
        else:
            images, labels = augmentation.fn(images, labels, batch_key, context)
    return images, labels


def _one_example(fn: Transform, context: Context) -> Callable:
    def one(image, label, key):
        return fn(image, label, key, context)

    return one


def stream(key: jax.Array, index: int) -> jax.Array:
    """An augmentation's own key from an example's key: crop and shift draw from stream 0, flip from 1 (the halves
    of split(key)); a new augmentation takes an index of its own >= 2 (fold_in)."""
    return jax.random.split(key)[index] if index < 2 else jax.random.fold_in(key, index)


def random_crop(image: jax.Array, key: jax.Array, pad: int = 4) -> jax.Array:
    """Zero-pad by `pad` on each side and cut a random window of the original size (the ResNet paper's CIFAR crop)."""
    padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    dy, dx = jax.random.randint(key, (2,), 0, 2 * pad + 1)
    return jax.lax.dynamic_slice(padded, (dy, dx, 0), image.shape)


def random_shift(image: jax.Array, key: jax.Array, fraction: float = 0.1) -> jax.Array:
    """Shift by a whole number of pixels up to `fraction` of the size, filling with the nearest edge pixel.

    Keras' width/height_shift_range with fill_mode='nearest', except that Keras also draws fractional shifts.
    """
    h, w, _ = image.shape
    limit = jnp.array([int(fraction * h), int(fraction * w)])
    dy, dx = jax.random.randint(key, (2,), -limit, limit + 1)
    rows = jnp.clip(jnp.arange(h) - dy, 0, h - 1)
    cols = jnp.clip(jnp.arange(w) - dx, 0, w - 1)
    return image[rows][:, cols]


def random_flip(image: jax.Array, key: jax.Array) -> jax.Array:
    """Mirror left-right with probability 1/2."""
    return jnp.where(jax.random.bernoulli(key), image[:, ::-1], image)


@register_augmentation("crop")
def crop(image, label, key, context):
    """The ResNet paper's CIFAR crop: a random window of the image zero-padded by 4."""
    return random_crop(image, stream(key, 0)), label


@register_augmentation("shift")
def shift(image, label, key, context):
    """Keras' shift by up to 10% of the size, edges repeated."""
    return random_shift(image, stream(key, 0)), label


@register_augmentation("flip")
def flip(image, label, key, context):
    """Mirror left-right with probability 1/2."""
    return random_flip(image, stream(key, 1)), label


MIXUP_STREAM = 2


@register_augmentation("mixup", per_example=False)
def mixup(images, labels, key, context):
    """mixup (Zhang et al. 2018): the batch mixed with itself reversed (the batch is in random order, so partners
    are random), images and one-hot labels alike, by one weight per batch drawn from Beta(alpha, alpha)."""
    alpha = context.config.mixup_alpha
    weight = jax.random.beta(stream(key, MIXUP_STREAM), alpha, alpha)
    x, y = images.astype(jnp.float32), targets(labels, context.num_classes)
    return weight * x + (1 - weight) * x[::-1], weight * y + (1 - weight) * y[::-1]


def to_model_geometry(images: jax.Array, pad_to_32: bool, channels: int) -> jax.Array:
    """Zero-pad images to 32x32 (centred) and/or repeat a single channel to `channels`."""
    if pad_to_32:
        h, w = images.shape[1:3]
        images = jnp.pad(images, ((0, 0), ((32 - h) // 2, (33 - h) // 2), ((32 - w) // 2, (33 - w) // 2), (0, 0)))
    if channels and images.shape[-1] != channels:
        images = jnp.repeat(images, channels, axis=-1)
    return images


def normalize(images: jax.Array, mean, std) -> jax.Array:
    """(x - mean) / std in float32; mean/std are per channel, per pixel (H, W, C) or scalars."""
    return (images.astype(jnp.float32) - mean) / std
