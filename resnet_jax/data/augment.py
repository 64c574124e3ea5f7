"""Pure JAX image transforms, run on the accelerator inside the pipeline's jitted batch functions.

Batches are NHWC. `augment` takes one key per example, so an example's augmentation does not depend on how the
batch is split over devices.
"""

import jax
import jax.numpy as jnp

AUGMENTATIONS = ("none", "crop", "flip", "crop_flip", "shift", "shift_flip", "inception_crop_flip")
HOST_CROPS = ("inception_crop_flip",)  # the crop is taken on the host from the full image (streamed data), the flip here
NORMALIZATIONS = ("channel", "pixel_mean", "imagenet", "none")  # how the pipeline derives `normalize`'s mean and std


def to_model_geometry(images: jax.Array, pad_to_32: bool, channels: int) -> jax.Array:
    """Zero-pad images to 32x32 (centred) and/or repeat a single channel to `channels`."""
    if pad_to_32:
        h, w = images.shape[1:3]
        images = jnp.pad(images, ((0, 0), ((32 - h) // 2, (33 - h) // 2), ((32 - w) // 2, (33 - w) // 2), (0, 0)))
    if channels and images.shape[-1] != channels:
        images = jnp.repeat(images, channels, axis=-1)
    return images


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


def augment(images: jax.Array, keys: jax.Array, kind: str) -> jax.Array:
    """Augment a batch as `kind` says ('crop_flip' = crop then flip), example i with keys[i].

    For a host crop (inception_crop_flip) the batch is already cropped: only its flip is done here.
    """
    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augment {kind!r}; choose one of {', '.join(AUGMENTATIONS)}")
    if kind in HOST_CROPS:
        kind = "flip"
    if kind == "none":
        return images

    def one(image, key):
        move_key, flip_key = jax.random.split(key)
        if kind.startswith("crop"):
            image = random_crop(image, move_key)
        if kind.startswith("shift"):
            image = random_shift(image, move_key)
        if kind.endswith("flip"):
            image = random_flip(image, flip_key)
        return image

    return jax.vmap(one)(images, keys)


def normalize(images: jax.Array, mean, std) -> jax.Array:
    """(x - mean) / std in float32; mean/std are per channel, per pixel (H, W, C) or scalars."""
    return (images.astype(jnp.float32) - mean) / std
