"""What every instrument needs: a net (a zoo name at initialisation, or a trained run's checkpoint) and real images."""

from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import data as data_lib
from resnet_jax import models
from resnet_jax.checkpoints import Checkpoints
from resnet_jax.config import from_saved
from resnet_jax.loop import setup
from resnet_jax.steps import init_state

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def load_net(model: str | None = None, workdir: str | Path | None = None, num_classes: int = 10,
             image_shape: tuple[int, int, int] = (28, 28, 1), seed: int = 0, checkpoint: str = "best",
             **overrides: Any) -> tuple[nn.Module, dict]:
    """(model, {'params', 'batch_stats'}): zoo `model` initialised with `seed` (ResNet `overrides` such as widths),
    or the `checkpoint` of the run in `workdir`, built from its saved config."""
    if (model is None) == (workdir is None):
        raise ValueError("give exactly one of model (a zoo name) or workdir (a trained run)")
    if model is not None:
        net = models.create_model(model, num_classes, **overrides)
        variables = net.init(jax.random.key(seed), jnp.zeros((1, *image_shape), jnp.float32), train=False)
        return net, dict(variables)
    run = run_setup(workdir)
    state = init_state(run.model, run.tx, run.pipeline.image_shape, run.config.seed, run.mesh)
    checkpoints = Checkpoints(Path(workdir), best_metric=run.best_metric, read_only=True)
    restored = checkpoints.restore(state, checkpoint)
    checkpoints.close()
    if restored is None:
        raise FileNotFoundError(f"no {checkpoint} checkpoint in {workdir}")
    state = restored[0]
    return run.model, {"params": state.params, "batch_stats": state.batch_stats}


def run_setup(workdir: str | Path):
    """resnet_jax.loop.setup of the run in `workdir` (its model, data pipeline, ...), from its saved config.json."""
    saved = Path(workdir) / "config.json"
    if not saved.exists():
        raise FileNotFoundError(f"{saved} not found: --workdir must be a run written by python -m resnet_jax.train")
    return setup(from_saved(saved.read_text()))


def split_batch(pipeline: data_lib.Pipeline, split: str, n: int) -> dict[str, np.ndarray]:
    """The first `n` examples of a pipeline's `split` ({'image', 'label'}), preprocessed as the run evaluates them."""
    images, labels = [], []
    for batch in pipeline.eval_batches(split):
        keep = np.asarray(batch["mask"]) > 0
        images.append(np.asarray(batch["image"])[keep])
        labels.append(np.asarray(batch["label"])[keep])
        if sum(map(len, labels)) >= n:
            break
    return {"image": np.concatenate(images)[:n], "label": np.concatenate(labels)[:n]}


def real_batch(n: int, seed: int, image_size: int = 0, split: str = "test") -> dict[str, np.ndarray]:
    """`n` Fashion-MNIST examples of `split` drawn with `seed`, normalised per channel (the training default)."""
    config = data_lib.default_config()
    config.update(source="idx", path=FASHION_MNIST, image_size=image_size, eval_batch_size=1000)
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    pipeline = data_lib.make_pipeline(config, 1000, mesh, seed)
    everything = split_batch(pipeline, split, pipeline.split_sizes[split])
    pick = np.random.default_rng(seed).choice(len(everything["label"]), n, replace=False)
    return {k: v[pick] for k, v in everything.items()}
