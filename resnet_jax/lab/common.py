"""What every instrument of the lab needs: a net (a zoo name at initialisation, or a trained run's best checkpoint,
read-only) and a batch of real images normalised as that net was trained to see them."""

import argparse
import ast
import functools
import json
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resnet_jax import data as data_lib
from resnet_jax.checkpoints import Checkpoints
from resnet_jax.config import from_saved
from resnet_jax.data.augment import normalize, to_model_geometry
from resnet_jax.data.pipeline import normalization
from resnet_jax.models import ResNet, create_model
from resnet_jax.steps import TrainState

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def default_data(image_size: int = 0, path: str = FASHION_MNIST) -> ml_collections.ConfigDict:
    """Real Fashion-MNIST from the IDX files in `path`, per-channel normalised, at `image_size` (0: 28)."""
    c = data_lib.default_config()
    c.update(name="fashion_mnist", source="idx", path=str(path), image_size=image_size, normalize="channel")
    return c


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """--data: the folder of the Fashion-MNIST IDX files that zoo nets at initialisation are measured on."""
    parser.add_argument("--data", default=FASHION_MNIST, help=f"Fashion-MNIST IDX folder (default {FASHION_MNIST})")


def saved_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The config a run was trained with (its config.json, upgraded to today's keys)."""
    saved = Path(workdir) / "config.json"
    if not saved.exists():
        raise FileNotFoundError(f"{saved} not found: --workdir must be a run of python -m resnet_jax.train")
    return from_saved(saved.read_text())


def load_run(workdir: str | Path, which: str = "best") -> tuple[Any, TrainState]:
    """(run, state): the run's fixed parts (resnet_jax.loop.setup: data pipeline, model, mesh) and its `which`
    checkpoint, restored read-only and verified as resnet_jax.evaluate does."""
    from resnet_jax.loop import setup  # the loop pulls in orbax/matplotlib: only when a run is read
    from resnet_jax.steps import init_state

    config = saved_config(workdir)
    run = setup(config)
    state = init_state(run.model, run.tx, run.pipeline.image_shape, config.seed, run.mesh)
    with Checkpoints(workdir, best_metric=run.best_metric, read_only=True) as checkpoints:
        restored = checkpoints.restore(state, which)
    if restored is None:
        raise FileNotFoundError(f"no {which} checkpoint in {workdir}; train it first")
    return run, restored[0]


def load_net(model: str | None = None, workdir: str | Path | None = None, num_classes: int = 10,
             image_shape: tuple[int, int, int] = (28, 28, 1), seed: int = 0, **overrides: Any) -> tuple[ResNet, dict]:
    """(model, variables {'params', 'batch_stats'}): zoo `model` (with ResNet field `overrides`) initialised from
    `seed`, or the best checkpoint of the run in `workdir` (then the other arguments are ignored)."""
    if (model is None) == (workdir is None):
        raise ValueError("give a zoo model name or a trained run's workdir, not both")
    if workdir is not None:
        run, state = load_run(workdir)
        return run.model, {"params": state.params, "batch_stats": state.batch_stats}
    net = create_model(model, num_classes, **overrides)
    variables = jax.jit(lambda key: net.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False))(
        jax.random.key(seed))
    return net, variables


@functools.cache
def _dataset(key: str) -> data_lib.Dataset:
    return data_lib.load_dataset(ml_collections.ConfigDict(json.loads(key)))


def real_batch(n: int, seed: int, image_size: int = 0, data: ml_collections.ConfigDict | None = None,
               split: str = "test") -> dict[str, np.ndarray]:
    """{'image', 'label'}: `n` examples of `split` drawn without replacement by `seed`, normalised with the statistics
    of the train split as the training pipeline does. data: a run's data config (default: Fashion-MNIST IDX at
    `image_size`); no augmentation."""
    data = default_data(image_size) if data is None else data
    data_lib.validate_config(data)
    dataset = _dataset(json.dumps(data.to_dict(), sort_keys=True, default=list))
    images, labels = dataset.splits[split]
    if n > len(labels):
        raise ValueError(f"asked for {n} examples of {split!r}, which has {len(labels)}")
    pick = np.sort(np.random.default_rng(seed).choice(len(labels), n, replace=False))
    mean, std = normalization(data.normalize, dataset.splits["train"][0], data.pad_to_32, data.channels)
    image = to_model_geometry(images[pick], data.pad_to_32, data.channels)
    return {"image": np.asarray(normalize(image, mean, std)), "label": np.asarray(labels[pick])}


def parse_model(spec: str) -> tuple[str, dict[str, Any]]:
    """'resnet56' or 'resnet56:block=basic,zero_init_residual=True' -> (zoo name, ResNet field overrides)."""
    name, _, rest = spec.partition(":")
    overrides = {}
    for item in filter(None, re.split(r",(?=\w+=)", rest)):  # a comma inside a value (a tuple) stays
        key, _, value = item.partition("=")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return name, overrides
