"""Train a zoo model: pure, jit-compiled steps over a device mesh, and the loop around them.

    python -m resnet_jax.train --config experiments/quickstart.py --workdir runs/quickstart [--config.key=value ...]

The batch is sharded over the mesh axis 'data' and the state replicated, so XLA computes BatchNorm
statistics over the global batch (synchronised BN) on 1 CPU, 8 devices or many hosts alike.
Re-running the same command in the same workdir resumes from the latest checkpoint and continues
exactly as an uninterrupted run would (the data order and augmentation depend only on seed, epoch, step).
"""

import dataclasses
import json
import math
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import app, flags, logging
from flax import struct
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags
from tqdm import tqdm

from resnet_jax import data as data_lib
from resnet_jax import loss_scale as loss_scaling
from resnet_jax import optim, xla_cpu
from resnet_jax.checkpoints import Checkpoints
from resnet_jax.diagnostics import diagnostics_fn, update_ratio_metrics
from resnet_jax.losses import cross_entropy, top_k_correct
from resnet_jax.metrics import MetricWriter, plot_curves
from resnet_jax.models import ResNet, create_model

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
EVAL_METRICS = ("loss", "accuracy", "top5")


def higher_is_better(metric: str) -> bool:
    """Accuracies improve upwards, losses downwards (for the best checkpoint and the plateau)."""
    return not metric.endswith("loss")


class TrainState(struct.PyTreeNode):
    """Everything that changes during training. The RNG is not here: keys derive from (seed, epoch, step)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    plateau: Any  # optax.contrib ReduceLROnPlateauState; .scale multiplies the learning rate
    loss_scale: Any = None  # float16 compute: flax DynamicScale (resnet_jax.loss_scale); otherwise None


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> ResNet:
    """The configured zoo model; empty config values keep the family's defaults."""
    overrides = {k: config[k] for k in ("shortcut", "version") if config[k]}
    if config.widths:
        overrides["widths"] = tuple(config.widths)
    if config.dtype not in DTYPES:
        raise ValueError(f"unknown model.dtype {config.dtype!r}; choose one of {', '.join(DTYPES)}")
    return create_model(
        config.name,
        num_classes,
        zero_init_residual=config.zero_init_residual,
        bn_momentum=config.bn_momentum,
        bn_epsilon=config.bn_epsilon,
        dtype=DTYPES[config.dtype],
        **overrides,
    )


def train_step(state: TrainState, batch: dict, model: ResNet, tx: optax.GradientTransformation, label_smoothing: float = 0.0):
    """One optimizer step on a global batch; returns the new state and the batch's mean metrics.

    With a loss scale (float16), a step whose gradients overflow changes only the step counter and the scale;
    metrics then include the scale and `overflow` (1 for a skipped step).
    """
    if state.loss_scale is None and jnp.dtype(model.dtype) == jnp.float16:
        raise ValueError("float16 compute needs dynamic loss scaling: create the state with "
                         "loss_scale=resnet_jax.loss_scale.for_dtype(jnp.float16) (init_state does), or use bfloat16")

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        logits, updates = model.apply(variables, batch["image"], train=True, mutable=["batch_stats"])
        return cross_entropy(logits, batch["label"], label_smoothing).mean(), (logits, updates["batch_stats"])

    loss_scale, finite, (loss, (logits, batch_stats)), grads = loss_scaling.value_and_grad(loss_fn, state.loss_scale, state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: u * state.plateau.scale, updates)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )
    metrics = {
        "loss": loss,
        "accuracy": top_k_correct(logits, batch["label"], 1).mean(),
        "top5": top_k_correct(logits, batch["label"], 5).mean(),
    }
    if loss_scale is not None:
        new_state = loss_scaling.keep_if_finite(finite, new_state, state.replace(step=new_state.step))
        new_state = new_state.replace(loss_scale=loss_scale)
        metrics |= {"loss_scale": loss_scale.scale, "overflow": 1.0 - finite.astype(jnp.float32)}
    return new_state, metrics


def eval_step(state: TrainState, batch: dict, model: ResNet) -> dict:
    """Sums over the real (mask == 1) examples of a padded batch, so a split is counted exactly once."""
    logits = model.apply({"params": state.params, "batch_stats": state.batch_stats}, batch["image"], train=False)
    mask = batch["mask"]
    return {
        "loss": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
        "accuracy": jnp.sum(top_k_correct(logits, batch["label"], 1) * mask),
        "top5": jnp.sum(top_k_correct(logits, batch["label"], 5) * mask),
        "count": jnp.sum(mask),
    }


@dataclasses.dataclass(frozen=True)
class Run:
    """The fixed parts of a run, built from its config before anything is compiled."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    pipeline: data_lib.Pipeline
    model: ResNet
    schedule: optax.Schedule
    tx: optax.GradientTransformation
    plateau_tx: optax.GradientTransformationExtraArgs
    total_steps: int
    best_metric: str


def setup(config: ml_collections.ConfigDict) -> Run:
    """Build data, model and optimizer, checking the config against the data first (clear errors, no compile)."""
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    pipeline = data_lib.make_pipeline(config.data, config.batch_size, mesh, config.seed)
    if config.model.num_classes and config.model.num_classes != pipeline.num_classes:
        raise ValueError(
            f"model.num_classes={config.model.num_classes} but {config.data.name} has {pipeline.num_classes} classes; "
            "set model.num_classes=0 to take it from the data"
        )
    model = build_model(config.model, pipeline.num_classes)
    steps_per_epoch = pipeline.steps_per_epoch
    total_steps = config.num_steps or config.num_epochs * steps_per_epoch
    if total_steps <= 0:
        raise ValueError(f"nothing to train: num_epochs={config.num_epochs}, num_steps={config.num_steps}")
    eval_splits = [s for s in ("val", "test") if s in pipeline.split_sizes]
    if not eval_splits:
        raise ValueError(f"{config.data.name} has no 'val' or 'test' split to evaluate on; set data.val_size > 0")
    best_metric = config.best_metric or f"{eval_splits[0]}/accuracy"
    monitored = {"best_metric": best_metric, **({"plateau.monitor": config.plateau.monitor} if config.plateau.enabled else {})}
    for key, metric in monitored.items():
        split, _, name = metric.partition("/")
        if split not in eval_splits or name not in EVAL_METRICS:
            hint = "; set data.val_size > 0 for a validation split" if split == "val" and split not in eval_splits else ""
            raise ValueError(
                f"{key}={metric!r} is not a metric of this run: choose one of "
                f"{', '.join(f'{s}/{n}' for s in eval_splits for n in EVAL_METRICS)}{hint}"
            )
    schedule = optim.make_schedule(config.schedule, config.optimizer.learning_rate, steps_per_epoch, total_steps)
    tx = optim.make_optimizer(config.optimizer, schedule)
    plateau_tx = optim.make_plateau(config.plateau, config.optimizer.learning_rate)
    return Run(config, mesh, pipeline, model, schedule, tx, plateau_tx, total_steps, best_metric)


def create_train_state(variables: dict, tx: optax.GradientTransformation,
                       plateau_tx: optax.GradientTransformationExtraArgs | None = None, loss_scale: Any = None) -> TrainState:
    """A step-0 TrainState around model variables; without plateau_tx, a plateau whose scale stays 1.

    loss_scale: resnet_jax.loss_scale.for_dtype(model.dtype), required for float16 compute.
    """
    plateau_tx = plateau_tx or optax.contrib.reduce_on_plateau()
    params = variables["params"]
    return TrainState(jnp.zeros((), jnp.int32), params, variables["batch_stats"], tx.init(params), plateau_tx.init(params),
                      loss_scale)


def init_state(model: ResNet, tx: optax.GradientTransformation, plateau_tx: optax.GradientTransformationExtraArgs,
               image_shape: tuple[int, ...], seed: int, mesh: jax.sharding.Mesh) -> TrainState:
    """A fresh TrainState, created directly with replicated sharding on the mesh (with a loss scale for float16)."""

    def init():
        variables = model.init(jax.random.key(seed), jnp.zeros((1, *image_shape), jnp.float32), train=False)
        return create_train_state(variables, tx, plateau_tx, loss_scaling.for_dtype(model.dtype))

    return jax.jit(init, out_shardings=NamedSharding(mesh, P()))()


def compile_steps(model: ResNet, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh, label_smoothing: float = 0.0):
    """train_step and eval_step jitted for the mesh: state replicated, batch sharded along 'data', state donated
    (with resnet_jax.xla_cpu's compiler options on CPU)."""
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    options = xla_cpu.compiler_options(mesh.devices.flat[0].platform)
    train = jax.jit(
        partial(train_step, model=model, tx=tx, label_smoothing=label_smoothing),
        in_shardings=(replicated, sharded),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
        compiler_options=options,
    )
    evaluate = jax.jit(partial(eval_step, model=model), in_shardings=(replicated, sharded), out_shardings=replicated,
                       compiler_options=options)
    return train, evaluate


def evaluate_split(eval_fn, state: TrainState, pipeline, split: str) -> dict[str, float]:
    """Mean loss, top-1 and top-5 accuracy over every example of `split`."""
    totals = None
    for batch in pipeline.eval_batches(split):
        sums = eval_fn(state, batch)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = totals.pop("count")
    return {f"{split}/{k}": float(v / count) for k, v in totals.items()}


def config_differences(workdir: Path, config: ml_collections.ConfigDict) -> list[str]:
    """The keys in which `config` differs from the one saved in `workdir` (none if nothing is saved there)."""
    saved = Path(workdir) / "config.json"
    if not saved.exists():
        return []
    old, new = _flat(json.loads(saved.read_text())), _flat(json.loads(config.to_json_best_effort()))
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def prepare_workdir(workdir: Path, config: ml_collections.ConfigDict, overwrite: bool) -> None:
    """Save the resolved config; refuse to mix two different runs in one workdir unless asked (then keep the old one aside)."""
    differences = config_differences(workdir, config)
    if differences:
        if not overwrite:
            raise ValueError(
                f"{workdir} holds a run with a different config (differs in: {', '.join(differences)}). "
                "Use a new --workdir, or pass --overwrite to move the old run aside and start afresh."
            )
        aside = workdir.with_name(f"{workdir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.move(workdir, aside)
        logging.warning("moved the previous run in %s to %s", workdir, aside)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(json.loads(config.to_json_best_effort()), indent=2, sort_keys=True))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v)
    return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, overwrite: bool = False) -> dict[str, float]:
    """Train (or resume) the configured run in `workdir`; returns the last epoch's record."""
    workdir = Path(workdir)
    run = setup(config)
    lead = jax.process_index() == 0
    if lead:
        prepare_workdir(workdir, config, overwrite)
    pipeline, spe = run.pipeline, run.pipeline.steps_per_epoch
    print(f"data: {pipeline.origin}; splits {pipeline.split_sizes}; images {pipeline.image_shape}; {pipeline.num_classes} classes")
    print(f"best checkpoint by {run.best_metric}")
    print(f"model: {config.model.name} on {run.mesh.devices.size} device(s) ({jax.devices()[0].platform}); "
          f"{run.total_steps} steps of batch {config.batch_size} ({spe} per epoch)")

    checkpoints = Checkpoints(workdir, keep=config.checkpoint_keep)
    state = init_state(run.model, run.tx, run.plateau_tx, pipeline.image_shape, config.seed, run.mesh)
    restored = checkpoints.restore(state)
    info = {"best": None}
    if restored:
        state, info = restored
        if int(state.step) >= run.total_steps:
            checkpoints.close()
            print(f"{workdir} holds this run finished ({int(state.step)} steps): nothing to do")
            return info["record"]
        print(f"resuming from step {int(state.step)} (epoch {int(state.step) / spe:.2f}) in {workdir}")
    train_fn, eval_fn = compile_steps(run.model, run.tx, run.mesh, config.label_smoothing)
    writer = MetricWriter(workdir, resume_step=int(state.step)) if lead else None

    diagnose = diagnostics_fn(run.model) if config.diagnostics_every_steps else None

    record: dict[str, float] = info.get("record", {})
    step = int(state.step)
    num_epochs = math.ceil(run.total_steps / spe)
    for epoch in range(step // spe, num_epochs):
        epoch_metrics, window, t0 = [], [], time.perf_counter()
        steps_this_epoch = min(spe, run.total_steps - epoch * spe)
        bar = tqdm(total=steps_this_epoch, initial=step - epoch * spe, desc=f"epoch {epoch + 1}/{num_epochs}", disable=not lead, leave=False)
        epoch_end = epoch * spe + steps_this_epoch
        for batch in pipeline.train_batches(epoch, start_step=step - epoch * spe):
            if step >= epoch_end:
                break
            diagnosing = diagnose and step % config.diagnostics_every_steps == 0
            if diagnosing:  # every process joins the computation; the lead writes it
                diag = diagnose({"params": state.params, "batch_stats": state.batch_stats}, batch)
                params_before = jax.tree.map(jnp.copy, state.params)  # the step donates state.params
            state, metrics = train_fn(state, batch)
            if diagnosing:
                diag |= update_ratio_metrics(params_before, state.params)
                if lead:
                    writer.write(step, step / spe, jax.device_get(diag))
            step += 1
            window.append(metrics)
            bar.update(1)
            if step % config.log_every_steps == 0 or step == epoch_end:
                means = {k: float(v) for k, v in jax.device_get(_mean(window)).items()}
                elapsed = time.perf_counter() - t0
                scalars = {f"train/{k}": v for k, v in means.items()}
                scalars["lr"] = float(run.schedule(step - 1)) * float(state.plateau.scale)
                scalars["images_per_sec"] = len(window) * config.batch_size / elapsed
                if lead:
                    writer.write(step, step / spe, scalars)
                bar.set_postfix(loss=f"{means['loss']:.3f}", acc=f"{means['accuracy']:.3f}", lr=f"{scalars['lr']:.2e}",
                                img_s=f"{scalars['images_per_sec']:.0f}")
                epoch_metrics.append((len(window), means))
                window, t0 = [], time.perf_counter()
        bar.close()

        n = sum(w for w, _ in epoch_metrics)
        record = {f"train_epoch/{k}": sum(w * m[k] for w, m in epoch_metrics) / n for k in epoch_metrics[0][1]} if n else {}
        for split in ("val", "test"):
            if split in pipeline.split_sizes:
                record.update(evaluate_split(eval_fn, state, pipeline, split))
        record["lr"] = float(run.schedule(step - 1)) * float(state.plateau.scale)
        if config.plateau.enabled:
            monitored = record[config.plateau.monitor]
            value = -monitored if higher_is_better(config.plateau.monitor) else monitored
            _, plateau = run.plateau_tx.update({}, state.plateau, value=value)
            state = state.replace(plateau=jax.device_put(plateau, NamedSharding(run.mesh, P())))
        if lead:
            writer.write(step, step / spe, record)
            print(f"epoch {epoch + 1}/{num_epochs} (step {step}): " + ", ".join(f"{k} {v:.4g}" for k, v in record.items()))
        value, best = record[run.best_metric], info["best"]
        improved = best is None or (value > best if higher_is_better(run.best_metric) else value < best)
        if improved:
            info = {"best": record[run.best_metric], "best_metric": run.best_metric, "epoch": epoch + 1}
        checkpoints.save(state, dict(info, record=record), best=improved)

    checkpoints.close()
    if lead:
        writer.close()
        curves = plot_curves(workdir)
        print(f"done: {workdir}/metrics.jsonl, curves {curves}, checkpoints {workdir}/checkpoints (latest) and "
              f"{workdir}/best ({run.best_metric} {info['best']:.4f} at epoch {info.get('epoch')})")
    return record


def _mean(window: list[dict]) -> dict:
    return jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs)), *window)


def main(argv: list[str]) -> None:
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
    if FLAGS.distributed:
        jax.distributed.initialize()
    train_and_evaluate(FLAGS.config, FLAGS.workdir, overwrite=FLAGS.overwrite)


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    config_flags.DEFINE_config_file("config", None, "experiment config file (experiments/*.py)", lock_config=True)
    flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and figures; re-use it to resume")
    flags.DEFINE_bool("overwrite", False, "if --workdir holds a run with another config, move it aside and start afresh")
    flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() first (multi-host runs)")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
