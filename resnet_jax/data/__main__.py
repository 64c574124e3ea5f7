"""`python -m resnet_jax.data NAME [options]`: where a dataset comes from, its splits, shapes, classes and pixel
statistics, and with --grid a picture of sample images per class, raw and augmented: what the model will see."""

import argparse

import jax
import numpy as np

from resnet_jax.data import augment
from resnet_jax.data.config import default_config, validate_config
from resnet_jax.data.pipeline import model_image_shape, normalization
from resnet_jax.data.sources import SOURCES, DataError, Dataset, load_dataset

GRID_CLASSES = 10  # rows of the grid at most


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m resnet_jax.data", description=__doc__)
    parser.add_argument("name", help="tfds name, or mnist / fashion_mnist / cifar10 / cifar100 / a folder's name")
    parser.add_argument("--source", default="tfds", choices=SOURCES)
    parser.add_argument("--path", default="", help="tfds data_dir, or the directory of the local files")
    parser.add_argument("--manual-dir", default="", help="tfds manual download directory (imagenet2012 ...)")
    parser.add_argument("--num-classes", type=int, default=0,
                        help="classes of IDX files of a name resnet_jax does not know (0 = as the data says)")
    parser.add_argument("--val-size", type=int, default=0, help="validation images carved from the end of train")
    parser.add_argument("--train-subset", type=int, default=0, help="keep the first N training images")
    parser.add_argument("--pad-to-32", action="store_true", help="zero-pad 28x28 images to 32x32")
    parser.add_argument("--channels", type=int, default=0, help="3 = repeat a single channel to RGB")
    parser.add_argument("--image-size", type=int, default=0, help="resize to a square of this size")
    parser.add_argument("--augment", default="crop,flip", type=lambda names: tuple(filter(None, names.split(","))),
                        help="augmentations shown in the grid, comma-separated, on device only (default crop,flip; "
                             f"registered: {', '.join(augment.AUGMENTATIONS)})")
    parser.add_argument("--grid", default="", help="save a PNG of samples per class, raw and augmented")
    parser.add_argument("--per-class", type=int, default=4, help="samples per class in the grid")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def describe(data: Dataset, config) -> None:
    """Print origin, split sizes, image shapes, classes and per-channel pixel statistics of train."""
    train = data.splits["train"][0]
    shape = model_image_shape(train.shape[1:], config)
    print(f"origin:  {data.origin}")
    print("splits:  " + ", ".join(f"{k} {len(y):,}" for k, (_, y) in data.splits.items()))
    print(f"image:   stored {'x'.join(map(str, train.shape[1:]))} {train.dtype}, "
          f"model input {'x'.join(map(str, shape))}")
    print(f"classes: {data.num_classes}: {', '.join(data.class_names)}")
    mean, std = normalization("channel", train)
    print(f"train pixels (0-255) per channel: mean {np.round(mean, 2)}, std {np.round(std, 2)}")
    if shape != train.shape[1:]:
        mean, std = normalization("channel", train, config.pad_to_32, config.channels)
        print(f"  as model input {'x'.join(map(str, shape))}: mean {np.round(mean, 2)}, std {np.round(std, 2)}")


def save_grid(data: Dataset, config, path: str, per_class: int, seed: int) -> None:
    """Rows of classes, each with `per_class` train samples: raw (as the model sees them) next to augmented."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images, labels = data.splits["train"]
    classes = range(min(data.num_classes, GRID_CLASSES))
    picks = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in classes])
    raw = augment.to_model_geometry(images[picks], config.pad_to_32, config.channels)
    key = jax.random.key(seed)
    augmented, _ = augment.augment(raw, labels[picks], jax.random.split(key, len(picks)), key, config.augment,
                                   augment.Context(data.num_classes, config))
    name = "+".join(config.augment) or "none"
    shown = {"raw": np.asarray(raw), name: np.asarray(augmented)}
    fig, axes = plt.subplots(len(classes), 2 * per_class, figsize=(2 * per_class * 0.9, len(classes) * 0.95),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row, c in enumerate(classes):
        for j, i in enumerate(np.flatnonzero(labels[picks] == c)):
            for k, (kind, batch) in enumerate(shown.items()):
                ax = axes[row, 2 * j + k]
                image = batch[i]
                ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255)
                if row == 0:
                    ax.set_title(kind, fontsize=7)
        axes[row, 0].text(-0.1, 0.5, data.class_names[c], transform=axes[row, 0].transAxes, ha="right",
                          va="center", fontsize=7)
    shown_classes = f" (first {len(classes)} of {data.num_classes} classes)" if data.num_classes > len(classes) else ""
    fig.suptitle(f"{data.name}: train samples, raw and {name}{shown_classes}", fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"grid:    {path}")


def main(argv=None) -> None:
    args = parse_args(argv)
    config = default_config()
    config.update(name=args.name, source=args.source, path=args.path, manual_dir=args.manual_dir,
                  num_classes=args.num_classes, val_size=args.val_size, train_subset=args.train_subset,
                  pad_to_32=args.pad_to_32, channels=args.channels, image_size=args.image_size, augment=args.augment)
    try:
        if any(name in augment.HOST_CROPS for name in args.augment):
            raise ValueError(f"--augment shows augmentations done on the device; {args.augment!r} names a host crop")
        validate_config(config)
        data = load_dataset(config)
        describe(data, config)
    except (DataError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    if args.grid:
        save_grid(data, config, args.grid, args.per_class, args.seed)


if __name__ == "__main__":
    main()
