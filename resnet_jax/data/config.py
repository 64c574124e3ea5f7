"""The data section of a run config: its keys (`default_config`), its one validation (`validate_config`, called by
resnet_jax.config.validate) and the upgrade of a section saved by an older version (`upgrade_data`)."""

import difflib
from typing import Any

import ml_collections
from ml_collections import config_dict

from resnet_jax.data import augment
from resnet_jax.data.sources import SOURCES

# data.augment was one name until the list replaced it: the old names and the lists that do the same.
OLD_AUGMENT = {"none": (), "crop": ("crop",), "flip": ("flip",), "crop_flip": ("crop", "flip"), "shift": ("shift",),
               "shift_flip": ("shift", "flip"), "inception_crop_flip": (augment.INCEPTION_CROP, "flip")}


def default_config() -> ml_collections.ConfigDict:
    """The data section of an experiment config; the comment on each field says what it does."""
    return ml_collections.ConfigDict({
        "name": "fashion_mnist",    # tfds name, or mnist / fashion_mnist / cifar10 / cifar100 / any name for a folder
        "source": "tfds",           # a registered source: 'tfds' | 'idx' | 'cifar' | 'folder' (or register_source's)
        "path": "",                 # tfds data_dir ('' = TFDS_DATA_DIR or ~/tensorflow_datasets); else the files' dir
        "manual_dir": "",           # tfds manual download dir (imagenet2012 ...)
        "num_classes": 0,           # 0 = as the data says; required for IDX files of a name not in CLASS_NAMES
        "val_size": 0,              # validation images carved from the end of train; 0 = no val split
        "pad_to_32": False,         # zero-pad (28x28) images to 32x32, centred
        "channels": 0,              # 0 = keep; 3 = repeat a single channel to RGB (folders: read every image as RGB)
        "image_size": 0,            # 0 = keep; else resize the shorter side to this and centre-crop a square
        "eval_crop": 1.0,           # streamed: evaluate on the centred eval_crop x shorter side (ImageNet: 224/256)
        "augment": (),              # registered augmentations, in order: ('crop', 'flip'), ('shift', 'flip', 'mixup'),
                                    # ...; 'inception_crop': streamed, a random-resized crop on the host, done first
        "mixup_alpha": 0.2,         # 'mixup': the mixing weight is drawn from Beta(alpha, alpha) (Zhang et al. 2018)
        "normalize": "channel",     # 'channel' (mean/std per channel) | 'pixel_mean' (Keras seed) | 'imagenet'
                                    # (torchvision's RGB mean/std) | 'none' (x/255)
        # 'auto' | True | False (streamed: the sources that stream, tfds and folder)
        "in_memory": config_dict.FieldReference("auto", field_type=object),
        "workers": 0,               # streamed folders: decoding threads per process; 0 = one per CPU core
        "eval_batch_size": 0,       # 0 = the train batch size
        "train_subset": 0,          # 0 = all; else the first N training images
        "classes": (),              # () = all; else keep these labels only, relabelled 0..k-1 in this order
        "train_per_class": 0,       # 0 = all; else at most N training images per class (few-shot), drawn by subset_seed
        "subset_seed": 0,           # the draw of train_per_class; a larger N with the same seed keeps the smaller draw
    })


def upgrade_data(section: dict[str, Any]) -> dict[str, Any]:
    """A data section saved by an older version, as this version reads it: keys it lacks at their defaults, and
    data.augment's old single name ('crop_flip') as the list that does the same (('crop', 'flip'))."""
    upgraded = default_config().to_dict() | dict(section)
    value = upgraded["augment"]
    upgraded["augment"] = OLD_AUGMENT.get(value, value) if isinstance(value, str) else tuple(value)
    return upgraded


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Check a data config before anything is read or compiled: a ValueError names the key, the value and the fix.

    Paths that cannot be read raise DataError (a ValueError too). resnet_jax.config.validate calls this once per run;
    load_dataset and make_pipeline trust a config that passed it.
    """
    known = list(default_config().keys())
    unknown = sorted(set(config.keys()) - set(known))
    if unknown:
        hints = [repr(k) + "".join(f" (did you mean {m!r}?)" for m in difflib.get_close_matches(k, known, 1))
                 for k in unknown]
        raise ValueError(f"unknown data key(s) {', '.join(hints)}; the data keys are {', '.join(known)}")
    missing = [k for k in known if k not in config]
    if missing:
        raise ValueError(f"data key(s) {', '.join(missing)} missing: a section saved by an older version is read "
                         "through resnet_jax.data.upgrade_data")
    for key in ("name", "path", "manual_dir"):
        if not isinstance(config[key], str):
            raise ValueError(f"data.{key}={config[key]!r} must be a string")
    if not config.name:
        raise ValueError("data.name is empty: name the dataset (fashion_mnist, cifar10, any name for a folder, ...)")
    if config.source not in SOURCES:
        raise ValueError(f"unknown data.source {config.source!r}; choose one of {', '.join(SOURCES)} "
                         "(resnet_jax.data.register_source adds one)")
    if config.normalize not in augment.NORMALIZATIONS:
        raise ValueError(f"unknown data.normalize {config.normalize!r}; choose one of "
                         f"{', '.join(augment.NORMALIZATIONS)}")
    augment.check_names(config.augment)
    if isinstance(config.mixup_alpha, bool) or not isinstance(config.mixup_alpha, int | float) or \
            not config.mixup_alpha > 0:
        raise ValueError(f"data.mixup_alpha={config.mixup_alpha!r} must be > 0 (mixup's Beta(alpha, alpha); "
                         "Zhang et al. use 0.1-0.4 on ImageNet, 1 on CIFAR-10)")
    if not (config.in_memory == "auto" or isinstance(config.in_memory, bool)):
        raise ValueError(f"unknown data.in_memory {config.in_memory!r}; choose one of 'auto', True, False")
    for key in ("num_classes", "val_size", "train_subset", "image_size", "eval_batch_size", "workers",
                "train_per_class", "subset_seed"):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"data.{key}={value!r} must be a whole number >= 0 (0 keeps the default: see "
                             "resnet_jax.data.default_config)")
    classes = config.classes
    if not isinstance(classes, tuple | list) or len(set(classes)) != len(classes) or any(
            isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in classes):
        raise ValueError(f"data.classes={classes!r} must be distinct labels >= 0 (e.g. (5, 6, 7)), or () for all")
    if config.channels not in (0, 1, 3) or isinstance(config.channels, bool):
        raise ValueError(f"data.channels={config.channels!r} must be 0 (keep), 1 or 3 (RGB)")
    if not isinstance(config.pad_to_32, bool):
        raise ValueError(f"data.pad_to_32={config.pad_to_32!r} must be True or False")
    if config.pad_to_32 and config.image_size > 32:
        raise ValueError(f"data.pad_to_32 zero-pads images up to 32x32, but data.image_size={config.image_size} "
                         "makes them larger: use one of the two")
    if not isinstance(config.eval_crop, int | float) or not 0 < config.eval_crop <= 1:
        raise ValueError(f"data.eval_crop={config.eval_crop!r} must be a fraction in (0, 1]: the share of the shorter "
                         "side kept by the centred evaluation crop (ImageNet: 0.875 = 224/256; 1 = all of it)")
    _check_streaming(config)
    SOURCES[config.source].validate(config)


def _check_streaming(config: ml_collections.ConfigDict) -> None:
    """in_memory=False and the host crops need a source that streams (and crops need their size)."""
    streamed = [name for name, source in SOURCES.items() if source.stream]
    streams = config.source in streamed
    if config.in_memory is False and not streams:
        described = " or ".join(SOURCES[name].description for name in streamed)
        raise ValueError(f"in_memory=False streams from {described}; source={config.source!r} is read into "
                         "memory (use in_memory='auto')")
    host_crops = [name for name in config.augment if name in augment.HOST_CROPS]
    crops = [f"augment={config.augment!r}"] * bool(host_crops) + [f"eval_crop={config.eval_crop}"] * (
        config.eval_crop != 1)
    if crops and (not streams or config.in_memory is True):
        raise ValueError(f"data.{' and '.join(crops)} crops the full-size images as they are streamed: use "
                         f"source={' or '.join(map(repr, streamed))} with in_memory='auto' or False (not "
                         f"source={config.source!r}, in_memory={config.in_memory!r})")
    if crops and not config.image_size:
        raise ValueError(f"data.{' and '.join(crops)} needs data.image_size, the size of the crops (224 for ImageNet)")
