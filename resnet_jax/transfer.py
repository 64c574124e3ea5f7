"""Transfer learning: start from other weights, freeze the first stages, scale the backbone's rate, cache features.

    init_from  where the weights come from: one of our runs ('checkpoint': its best or latest checkpoint) or an
               ImageNet file (resnet_jax.pretrained: 'torchvision', 'timm', 'keras'); the head starts afresh
               unless keep_head.
    transfer   what trains: freeze_stages (stem = stage 0, stage<i> = i, final_norm with the last stage; -1 = the
               whole backbone, so only the head trains), backbone_lr_scale for the stages that still train, and
               cache_features: with the whole backbone frozen and no augmentation, each split goes through the
               backbone once and the head trains on the stored features (the same steps, far cheaper).

Frozen parameters get no update, no weight decay and no optimizer state (optax.multi_transform + set_to_zero);
their BatchNorm runs on the running statistics and leaves them unchanged (the model's frozen_bn_stages).
"""

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax import optim
from resnet_jax.checkpoints import Checkpoints, check_compatible, leaf_shapes, saved_best_metric
from resnet_jax.data import Pipeline
from resnet_jax.models import ResNet, head_of, is_head, stage_of

FORMATS = ("checkpoint", "torchvision", "timm", "keras")  # '' = no init_from: a fresh initialisation
PRETRAINED_FORMATS = FORMATS[1:]


def init_from_config() -> ml_collections.ConfigDict:
    """The init_from section of a run config."""
    return ml_collections.ConfigDict(
        dict(
            format="",  # '' (fresh init) | 'checkpoint' (a resnet-jax workdir) | 'torchvision' | 'timm' | 'keras'
            path="",  # the workdir, or the weights file
            checkpoint="best",  # format 'checkpoint': the workdir's 'best' or 'latest' checkpoint
            keep_head=False,  # True: take the head too (its shape must fit); False: a fresh head for this data
            url="",  # where the weights file can be downloaded: named in the error when the file is missing
        )
    )


def transfer_config() -> ml_collections.ConfigDict:
    """The transfer section of a run config: what trains, and how."""
    return ml_collections.ConfigDict(
        dict(
            freeze_stages=0,  # freeze the first K stages (stem = stage 0); -1 = the whole backbone (head only)
            backbone_lr_scale=1.0,  # the unfrozen backbone's learning rate = this x the head's
            cache_features=False,  # whole backbone frozen + no augmentation: train the head on stored features
        )
    )


def num_stages(model: ResNet) -> int:
    """The stem and the residual stages."""
    return len(model.stage_sizes) + 1


def frozen_count(freeze_stages: int, model: ResNet) -> int:
    """How many leading stages freeze_stages freezes (-1 = all), checked against the model."""
    stages = num_stages(model)
    if not -1 <= freeze_stages <= stages:
        raise ValueError(
            f"transfer.freeze_stages={freeze_stages}, but this {len(model.stage_sizes)}-stage network has {stages} "
            f"stages counting the stem as stage 0: use 0 (train everything) to {stages} (the whole backbone), or -1 "
            "for the whole backbone")
    return stages if freeze_stages == -1 else freeze_stages


def param_labels(params, frozen: int, stages: int):
    """'frozen', 'backbone' or 'head' for every parameter, by its top-level layer."""

    def label(layer: str) -> str:
        stage = stage_of(layer, stages)
        return "head" if stage is None else "frozen" if stage < frozen else "backbone"

    return {layer: jax.tree.map(lambda _, layer=layer: label(layer), sub) for layer, sub in params.items()}


def make_optimizer(
    config: ml_collections.ConfigDict, schedule: optax.Schedule, model: ResNet
) -> optax.GradientTransformation:
    """The run's optimizer (optim.make_optimizer) for what trains, at backbone_lr_scale x the rate for the backbone;
    frozen parameters get zero updates, no weight decay and no optimizer state. Without freezing or scaling it is
    optim.make_optimizer itself (the same optimizer state as a run without transfer options)."""
    frozen, scale = frozen_count(config.transfer.freeze_stages, model), config.transfer.backbone_lr_scale
    if not scale > 0:
        raise ValueError(
            f"transfer.backbone_lr_scale must be > 0 (got {scale}); freeze stages with transfer.freeze_stages")
    if frozen == 0 and scale == 1:
        return optim.make_optimizer(config.optimizer, schedule)
    transforms = {
        "head": optim.make_optimizer(config.optimizer, schedule),
        "backbone": optim.make_optimizer(config.optimizer, lambda step: scale * schedule(step)),
        "frozen": optax.set_to_zero(),
    }
    return optax.multi_transform(transforms, partial(param_labels, frozen=frozen, stages=num_stages(model)))


def configure(config: ml_collections.ConfigDict, model: ResNet, pipeline: Pipeline) -> ResNet:
    """Check the transfer options against model and data (before anything is compiled); returns the model with the
    frozen stages' BatchNorm in inference mode (Keras' trainable=False)."""
    frozen = frozen_count(config.transfer.freeze_stages, model)
    if config.transfer.cache_features:
        problems = []
        if frozen < num_stages(model):
            problems.append(f"the whole backbone frozen (transfer.freeze_stages=-1; it freezes {frozen} of "
                            f"{num_stages(model)} stages)")
        if config.data.augment:
            problems.append(f"no augmentation (data.augment=(); it is {tuple(config.data.augment)!r}): each epoch "
                            "would see other images than the stored features")
        if not hasattr(pipeline, "train_order"):
            problems.append("the dataset in memory (it is streamed: set data.in_memory=True if it fits)")
        if config.diagnostics_every_steps:
            problems.append("no gradient diagnostics (diagnostics_every_steps=0): they need the full forward")
        if problems:
            raise ValueError("transfer.cache_features needs " + "; ".join(problems)
                             + ". Or set transfer.cache_features=False.")
    if model.head_dropout and config.diagnostics_every_steps:
        raise ValueError("diagnostics_every_steps runs the model in train mode without a dropout key: set "
                         "model.head_dropout=0 or diagnostics_every_steps=0")
    return model.clone(frozen_bn_stages=frozen)


# ---- init_from ---------------------------------------------------------------------------------------------


def check_init_from(config: ml_collections.ConfigDict) -> None:
    """Fail at once, before any data is read, when the weights to start from are not there or not understood."""
    if not config.format:
        return
    if config.format not in FORMATS:
        raise ValueError(f"unknown init_from.format {config.format!r}; choose one of {', '.join(map(repr, FORMATS))} "
                         "(or '' for a fresh initialisation)")
    if config.checkpoint not in ("best", "latest"):
        raise ValueError(f"init_from.checkpoint must be 'best' or 'latest'; got {config.checkpoint!r}")
    path = Path(config.path).expanduser()
    if config.format == "checkpoint":
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"init_from.path={str(config.path)!r} is not a resnet-jax run directory (no config.json there): "
                "pass the --workdir of the run to start from")
        return
    if not config.path or not path.is_file():
        where = f" Download it from {config.url} and" if config.url else " Get the file and"
        raise FileNotFoundError(
            f"init_from: the {config.format} weights file {str(config.path) or '(init_from.path is empty)'!r} is "
            f"not there.{where} put it there, or pass --config.init_from.path=FILE (see README, 'Pretrained weights').")


def load_init_from(config: ml_collections.ConfigDict, model: ResNet, image_shape: tuple[int, ...]) -> dict:
    """The variables to start from, {'params', 'batch_stats'} as host arrays, checked against `model`: without the
    head layers unless keep_head. Reads one of our checkpoints or (lazily imported) resnet_jax.pretrained."""
    check_init_from(config)
    fresh = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape)), train=False))
    wanted = {c: {k: v for k, v in fresh.get(c, {}).items() if config.keep_head or not is_head(k)}
              for c in ("params", "batch_stats")}  # a net without BatchNorm has no batch_stats: {}
    if config.format == "checkpoint":
        variables = _checkpoint_variables(Path(config.path).expanduser(), config.checkpoint, wanted, config.keep_head)
    else:
        from resnet_jax.pretrained import load_pretrained  # the weights loaders need torch/h5py only when used

        variables = load_pretrained(config.path, config.format, model, keep_head=config.keep_head)
    check_compatible(leaf_shapes(variables), leaf_shapes(wanted), Path(config.path))
    return variables


def _checkpoint_variables(workdir: Path, which: str, wanted: dict, keep_head: bool) -> dict:
    """The model variables of a run's `which` checkpoint, checked against `wanted` (from its metadata, before
    reading)."""
    # another run's: touch nothing
    checkpoints = Checkpoints(workdir, best_metric=saved_best_metric(workdir), read_only=True)
    try:
        step = checkpoints.step(which)
        if step is None:
            raise FileNotFoundError(f"init_from.path={str(workdir)!r} holds no {which} checkpoint yet: train that run "
                                    "first (or choose init_from.checkpoint='best' / 'latest')")
        expected = leaf_shapes(wanted)
        saved = {k: v for k, v in checkpoints.saved_shapes(step).items()
                 if k.split("/")[0] in wanted and (keep_head or not is_head(k.split("/")[1]))}
        head = "params/head/kernel"
        if keep_head and saved.get(head) != expected[head]:
            raise ValueError(
                f"init_from.keep_head=True, but the head of {workdir} has shape {saved.get(head)} and this model's "
                f"{expected[head]} (features x classes): set init_from.keep_head=False to train a fresh head for "
                "this data's classes")
        check_compatible(saved, expected, workdir / which)
        return checkpoints.restore_variables(wanted, which)
    finally:
        checkpoints.close()


def start_from(state, variables: dict, tx: optax.GradientTransformation):
    """`state` (a fresh TrainState) with `variables` merged over its own, and its optimizer state made afresh for
    them."""

    def merged(collection: str):
        flat = traverse_util.flatten_dict(jax.device_get(getattr(state, collection)))
        flat |= traverse_util.flatten_dict(variables[collection])
        return traverse_util.unflatten_dict(flat)

    params, batch_stats = merged("params"), merged("batch_stats")
    host = state.replace(params=params, batch_stats=batch_stats, opt_state=jax.device_get(tx.init(params)))
    # Each process supplies its own devices' copies (multi-host), laid out as the fresh state.
    return jax.tree.map(lambda a, like: jax.make_array_from_callback(like.shape, like.sharding, lambda i: a[i]),
                        host, state)


# ---- feature caching ---------------------------------------------------------------------------------------


class FeaturePipeline:
    """An in-memory pipeline's splits passed once through the frozen backbone: the same batches, of features.

    The training order is the image pipeline's (`train_order`), so the head sees exactly the steps it would see on
    images; evaluation batches are padded and masked in the same way.
    """

    def __init__(self, pipeline: Pipeline, model: ResNet, variables: dict, mesh: jax.sharding.Mesh):
        self.num_classes, self.class_names = pipeline.num_classes, pipeline.class_names
        self.split_sizes, self.batch_size = pipeline.split_sizes, pipeline.batch_size
        self.eval_batch_size, self.steps_per_epoch = pipeline.eval_batch_size, pipeline.steps_per_epoch
        self.origin = f"{pipeline.origin}, backbone features cached"
        self._pipeline = pipeline
        replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

        @partial(jax.jit, out_shardings=replicated)  # each batch's features on every device, as the images were
        def features(variables, batch):
            _, out = model.apply(variables, batch["image"], train=False, mutable=["features"])
            return out["features"]["backbone"][0], batch["label"]

        self._arrays = {}
        for split, n in self.split_sizes.items():
            batches = [features(variables, batch) for batch in pipeline.eval_batches(split)]
            stack = jax.jit(lambda xs, n=n: jnp.concatenate(xs)[:n], out_shardings=replicated)  # padding dropped
            self._arrays[split] = stack([x for x, _ in batches]), stack([y for _, y in batches])
        self.image_shape = tuple(self._arrays["train"][0].shape[1:])
        self._train_batch = jax.jit(self._train_batch_fn, out_shardings=sharded)
        self._eval_batch = jax.jit(self._eval_batch_fn, out_shardings=sharded)

    def _train_batch_fn(self, x, y, order, step):
        idx = jax.lax.dynamic_slice_in_dim(order, step * self.batch_size, self.batch_size)
        return {"image": x[idx], "label": y[idx]}

    def _eval_batch_fn(self, x, y, start):
        idx = start + jnp.arange(self.eval_batch_size)
        mask = idx < len(y)
        idx = jnp.minimum(idx, len(y) - 1)  # padding repeats the last example, masked out
        return {"image": x[idx], "label": y[idx], "mask": mask.astype(jnp.float32)}

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, jax.Array]]:
        x, y = self._arrays["train"]
        order = self._pipeline.train_order(epoch)
        for step in range(start_step, self.steps_per_epoch):
            yield self._train_batch(x, y, order, step)

    def eval_batches(self, split: str) -> Iterator[dict[str, jax.Array]]:
        x, y = self._arrays[split]
        for start in range(0, len(y), self.eval_batch_size):
            yield self._eval_batch(x, y, start)


def cache_features(model: ResNet, state, pipeline: Pipeline, mesh: jax.sharding.Mesh):
    """(head model, feature pipeline): the train and eval steps run the head alone on the backbone's stored features,
    with the same TrainState (the frozen backbone's parameters stay in it, untouched)."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return head_of(model), FeaturePipeline(pipeline, model, variables, mesh)
