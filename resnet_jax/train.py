"""Train a zoo model: pure, jit-compiled steps over a device mesh, and the loop around them.

    python -m resnet_jax.train --config experiments/quickstart.py --workdir runs/quickstart [--config.key=value ...]

The batch is sharded over the mesh axis 'data' and the state replicated, so XLA computes BatchNorm
statistics over the global batch (synchronised BN) on 1 CPU, 8 devices or many hosts alike.
Re-running the same command in the same workdir resumes from the newest intact checkpoint and continues
exactly as an uninterrupted run would (the data order and augmentation depend only on seed, epoch, step), also from
the middle of an epoch. SIGTERM, SIGINT and SIGUSR1 checkpoint at the next step boundary (resnet_jax.preemption);
a non-finite step stops the run or is skipped (resnet_jax.divergence). Exit codes: 0 done, 1 unusable workdir, data
or checkpoints, 2 invalid config or command line, 3 diverged, 75 preempted (re-run to resume).
"""

import dataclasses
import math
import sys
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

from resnet_jax import config as config_lib
from resnet_jax import data as data_lib
from resnet_jax import distributed, divergence, multistep, optim, preemption, transfer, xla_cpu
from resnet_jax import loss_scale as loss_scaling
from resnet_jax.checkpoints import CheckpointError, Checkpoints
from resnet_jax.diagnostics import diagnostics_fn, update_ratio_metrics
from resnet_jax.losses import EVAL_METRICS, cross_entropy, higher_is_better, top_k_correct
from resnet_jax.metrics import MetricWriter, TrainMeter, plot_curves
from resnet_jax.models import ResNet
from resnet_jax.workdir import (CONFIG_FILE, WorkdirError, check_same_data, check_workdir, data_fingerprint,
                                save_config)


class TrainState(struct.PyTreeNode):
    """Everything that changes during training. The RNG is not here: keys derive from (seed, epoch, step)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    plateau: Any  # optax.contrib ReduceLROnPlateauState; .scale multiplies the learning rate
    loss_scale: Any = None  # float16 compute: flax DynamicScale (resnet_jax.loss_scale); otherwise None


def train_step(state: TrainState, batch: dict, model: ResNet, tx: optax.GradientTransformation, label_smoothing: float = 0.0,
               seed: int = 0):
    """One optimizer step on a global batch; returns the new state and the batch's mean metrics.

    A step whose loss, gradients or new parameters are not finite is not applied (divergence.guard): the state stays
    as it was but for its step counter, and metrics['nonfinite'] is 1. `seed` and the step draw the dropout mask.
    float16 compute needs a loss scale (resnet_jax.loss_scale): a step whose scaled gradients overflow is skipped too,
    but as the scale's normal work, not a divergence; metrics then carry `loss_scale` and `overflow` (1: skipped).
    """
    if state.loss_scale is None and jnp.dtype(model.dtype) == jnp.float16:
        raise ValueError("float16 compute needs dynamic loss scaling: create the state with "
                         "loss_scale=resnet_jax.loss_scale.for_dtype(jnp.float16) (init_state does), or use bfloat16")
    dropout_key = jax.random.fold_in(jax.random.key(seed), state.step)

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        logits, updates = model.apply(variables, batch["image"], train=True, mutable=["batch_stats"],
                                      rngs={"dropout": dropout_key})
        return cross_entropy(logits, batch["label"], label_smoothing).mean(), (logits, updates["batch_stats"])

    loss_scale, finite, (loss, (logits, batch_stats)), grads = loss_scaling.value_and_grad(loss_fn, state.loss_scale, state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    updates = jax.tree.map(lambda u: u * state.plateau.scale, updates)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
        loss_scale=loss_scale,
    )
    new_state, nonfinite = divergence.guard(new_state, state.replace(loss_scale=loss_scale), loss, grads)
    metrics = {
        "loss": loss,
        "accuracy": top_k_correct(logits, batch["label"], 1).mean(),
        "top5": top_k_correct(logits, batch["label"], 5).mean(),
        "nonfinite": nonfinite,
    }
    if loss_scale is not None:
        new_state = loss_scaling.keep_if_finite(finite, new_state, state.replace(step=new_state.step, loss_scale=loss_scale))
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
    """Validate the config, then build data, model and optimizer, checking the config against the data (no compile)."""
    config_lib.validate(config)
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    pipeline = data_lib.make_pipeline(config.data, config.batch_size, mesh, config.seed)
    if config.model.num_classes and config.model.num_classes != pipeline.num_classes:
        raise config_lib.ConfigError(
            f"model.num_classes={config.model.num_classes} but {config.data.name} has {pipeline.num_classes} classes; "
            "set model.num_classes=0 to take it from the data"
        )
    model = transfer.configure(config, config_lib.build_model(config.model, pipeline.num_classes), pipeline)
    try:
        multistep.check(config.steps_per_call, pipeline)
    except ValueError as e:
        raise config_lib.ConfigError(str(e)) from None
    if config.steps_per_call > 1 and config.transfer.cache_features:
        raise config_lib.ConfigError(f"steps_per_call={config.steps_per_call} does not run over cached features: "
                                     "set steps_per_call=1 or transfer.cache_features=False")
    steps_per_epoch = pipeline.steps_per_epoch
    total_steps = config.num_steps or config.num_epochs * steps_per_epoch
    eval_splits = [s for s in ("val", "test") if s in pipeline.split_sizes]
    if not eval_splits:
        raise config_lib.ConfigError(f"{config.data.name} has no 'val' or 'test' split to evaluate on; set data.val_size > 0")
    best_metric = config.best_metric or f"{eval_splits[0]}/accuracy"
    monitored = {"best_metric": best_metric, **({"plateau.monitor": config.plateau.monitor} if config.plateau.enabled else {})}
    for key, metric in monitored.items():
        split, _, name = metric.partition("/")
        if split not in eval_splits or name not in EVAL_METRICS:
            hint = "; set data.val_size > 0 for a validation split" if split == "val" and split not in eval_splits else ""
            raise config_lib.ConfigError(
                f"{key}={metric!r} is not a metric of this run: choose one of "
                f"{', '.join(f'{s}/{n}' for s in eval_splits for n in EVAL_METRICS)}{hint}"
            )
    schedule = optim.make_schedule(config.schedule, config.optimizer.learning_rate, steps_per_epoch, total_steps)
    tx = transfer.make_optimizer(config, schedule, model)
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


def compile_steps(model: ResNet, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh, label_smoothing: float = 0.0,
                  seed: int = 0):
    """train_step and eval_step jitted for the mesh: state replicated, batch sharded along 'data', state donated
    (with resnet_jax.xla_cpu's compiler options on CPU)."""
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    options = xla_cpu.compiler_options(mesh.devices.flat[0].platform)
    train = jax.jit(
        partial(train_step, model=model, tx=tx, label_smoothing=label_smoothing, seed=seed),
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


def evaluate_all(eval_fn, state: TrainState, pipeline) -> dict[str, float]:
    """evaluate_split over the run's 'val' and 'test' splits (those it has)."""
    return {k: v for split in ("val", "test") if split in pipeline.split_sizes
            for k, v in evaluate_split(eval_fn, state, pipeline, split).items()}


def due(step: int, every: int, epoch_end: int, total_steps: int) -> bool:
    """Whether an interval of `every` steps (0: at each epoch's end) falls on `step`; the run's last step always does."""
    return step == total_steps or (step % every == 0 if every else step == epoch_end)


def sync_point(step: int, config: ml_collections.ConfigDict, epoch_end: int, total_steps: int) -> bool:
    """Whether the loop reads the device after `step`: a log, evaluation or checkpoint step, or the epoch's end."""
    return (step % config.log_every_steps == 0 or step == epoch_end
            or due(step, config.eval_every_steps, epoch_end, total_steps)
            or due(step, config.checkpoint_every_steps, epoch_end, total_steps))


def step_with_diagnostics(step_fn, diagnose, state: TrainState, batch: dict) -> tuple[TrainState, dict, dict]:
    """step_fn(state), the step on `batch`, with the gradient/activation diagnostics of `batch` before the step and
    the update ratios after."""
    diag = diagnose({"params": state.params, "batch_stats": state.batch_stats}, batch)
    params_before = jax.tree.map(jnp.copy, state.params)  # the step donates state.params
    state, metrics = step_fn(state)
    return state, metrics, diag | update_ratio_metrics(params_before, state.params)


def after_evaluation(run: Run, state: TrainState, record: dict, step: int, best: tuple | None):
    """Step the plateau with the evaluation and compare it with the best so far: (state, best, improved)."""
    if run.config.plateau.enabled:
        monitor = run.config.plateau.monitor
        plateau = optim.step_plateau(run.plateau_tx, state.plateau, monitor, record[monitor])
        state = state.replace(plateau=jax.device_put(plateau, NamedSharding(run.mesh, P())))
    value = record[run.best_metric]
    improved = math.isfinite(value) and (best is None or (value > best[1] if higher_is_better(run.best_metric)
                                                          else value < best[1]))
    return state, (step, value) if improved else best, improved


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, overwrite: bool = False) -> dict[str, float]:
    """Train (or resume) the configured run in `workdir`; returns the last evaluation's record.

    Every check (config, data, workdir, checkpoints) passes before anything is written to `workdir`. Raises
    preemption.Preempted after checkpointing on a signal, divergence.NonFiniteError on a non-finite step.
    """
    workdir = Path(workdir)
    transfer.check_init_from(config.init_from)  # before any data is read: the weights to start from are there
    run = setup(config)
    start = transfer.load_init_from(config.init_from, run.model, run.pipeline.image_shape) if config.init_from.format else None
    lead = distributed.is_lead()
    changed = distributed.run_on_lead(check_workdir, workdir, config, overwrite, errors=(WorkdirError,))
    pipeline, spe = run.pipeline, run.pipeline.steps_per_epoch
    print(f"data: {pipeline.origin}; splits {pipeline.split_sizes}; images {pipeline.image_shape}; {pipeline.num_classes} classes")
    print(f"best checkpoint by {run.best_metric}")
    print(f"model: {config.model.name} on {run.mesh.devices.size} device(s) ({jax.devices()[0].platform}); "
          f"{run.total_steps} steps of batch {config.batch_size} ({spe} per epoch)")

    checkpoints = Checkpoints(workdir, keep=config.checkpoint_keep, best_metric=run.best_metric)
    state = init_state(run.model, run.tx, run.plateau_tx, pipeline.image_shape, config.seed, run.mesh)
    state, info = checkpoints.restore(state) or (state, {})
    if info:
        check_same_data(info.get("data"), pipeline, config.data.path)
        if int(state.step) >= run.total_steps:
            checkpoints.close()
            print(f"{workdir} holds this run finished ({int(state.step)} steps): nothing to do")
            return info["record"]
        print(f"resuming from step {int(state.step)} (epoch {int(state.step) / spe:.2f}) in {workdir}"
              + (f" with changed {', '.join(changed)}" if changed else ""))
    elif start:
        state = transfer.start_from(state, start, run.tx)
        print(f"starting from the {config.init_from.format} weights in {config.init_from.path}")
    if lead:
        save_config(workdir, config)
    distributed.check_shared(workdir / CONFIG_FILE)
    step_model = run.model
    if config.transfer.cache_features:  # the head alone, on features of the frozen backbone computed once here
        step_model, pipeline = transfer.cache_features(run.model, state, pipeline, run.mesh)
    train_fn, eval_fn = compile_steps(step_model, run.tx, run.mesh, config.label_smoothing, config.seed)
    runner = multistep.Steps(train_fn, pipeline, config.steps_per_call, run.mesh)
    writer = MetricWriter(workdir, resume_step=int(state.step)) if lead else None
    diagnose = diagnostics_fn(run.model) if config.diagnostics_every_steps else None
    diagnosed = lambda s: bool(diagnose) and s % config.diagnostics_every_steps == 0  # noqa: E731 - before step s+1
    meter = TrainMeter(info.get("train_totals"))
    best = checkpoints.best()  # (step, value) of the best evaluation so far
    record: dict[str, float] = info.get("record", {})
    step = int(state.step)
    num_epochs = math.ceil(run.total_steps / spe)
    try:
        with preemption.PreemptionGuard() as guard:
            for epoch in range(step // spe, num_epochs):
                epoch_end = min((epoch + 1) * spe, run.total_steps)
                bar = tqdm(total=epoch_end - epoch * spe, initial=step - epoch * spe, desc=f"epoch {epoch + 1}/{num_epochs}",
                           disable=not lead, leave=False)
                t0, window = time.perf_counter(), 0
                stops_after = lambda s: sync_point(s, config, epoch_end, run.total_steps) or diagnosed(s)  # noqa: E731
                runner.start_epoch(epoch, step - epoch * spe)
                while step < epoch_end:
                    if diagnosed(step):  # every process joins; the lead writes
                        n, batch = 1, runner.batch()
                        state, metrics, diag = step_with_diagnostics(lambda s: runner.run(s, 1), diagnose, state, batch)
                        if lead:
                            writer.write(step, step / spe, jax.device_get(diag))
                    else:  # steps_per_call steps in one call, fewer if a sync point comes sooner
                        n = multistep.call_length(step, config.steps_per_call, stops_after)
                        state, metrics = runner.run(state, n)
                    step, window = step + n, window + n
                    meter.add(step, metrics, n)
                    bar.update(n)
                    # Sync points: the steps where the loop reads the device. Between them nothing waits for it.
                    evaluating = due(step, config.eval_every_steps, epoch_end, run.total_steps)
                    saving = due(step, config.checkpoint_every_steps, epoch_end, run.total_steps)
                    sync = sync_point(step, config, epoch_end, run.total_steps)
                    stopping = guard.stop_requested(sync)
                    if not (sync or stopping):
                        continue

                    means, nonfinite = meter.read()
                    divergence.check(nonfinite, config.nonfinite, checkpoints.describe(checkpoints.latest_step()))
                    lr = float(run.schedule(step - 1)) * float(state.plateau.scale)
                    scalars = {f"train/{k}": v for k, v in means.items()} | {"lr": lr}
                    scalars["images_per_sec"] = window * config.batch_size / (time.perf_counter() - t0)
                    scalars |= {"train/nonfinite_steps": len(nonfinite)} if nonfinite else {}
                    if lead:
                        writer.write(step, step / spe, scalars)
                    bar.set_postfix(loss=f"{means.get('loss', math.nan):.3f}", lr=f"{lr:.2e}",
                                    img_s=f"{scalars['images_per_sec']:.0f}")
                    event = evaluate_all(eval_fn, state, pipeline) if evaluating else {}
                    event |= meter.epoch_record() if step == epoch_end else {}
                    if event:
                        record = event | {"lr": lr}
                        if lead:
                            writer.write(step, step / spe, record)
                        where = f"epoch {epoch + 1}/{num_epochs} (step {step})" if step == epoch_end else f"step {step}"
                        print(f"{where}: " + ", ".join(f"{k} {v:.4g}" for k, v in record.items()))
                    improved = False
                    if evaluating:
                        state, best, improved = after_evaluation(run, state, record, step, best)
                    if saving or improved or stopping:
                        info = {"epoch": step / spe, "record": record, "train_totals": meter.totals,
                                "data": data_fingerprint(pipeline)}
                        checkpoints.save(state, info, record[run.best_metric] if evaluating else None)
                    if stopping:
                        guard.stop(f"saved a checkpoint at step {step} (epoch {step / spe:.2f}) in "
                                   f"{checkpoints.manager.directory}; re-run the same command to resume")
                    t0, window = time.perf_counter(), 0
                bar.close()
    finally:
        checkpoints.close()
        if lead:
            writer.close()

    if lead:
        curves = plot_curves(workdir)
        best_text = f"best {run.best_metric} {best[1]:.4f} at step {best[0]}" if best else "no finite evaluation"
        print(f"done: {workdir}/metrics.jsonl, curves {curves}, checkpoints {checkpoints.manager.directory} ({best_text})")
    return record


def main(argv: list[str]) -> None:
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
    try:
        distributed.initialize(distributed.settings_from(FLAGS))  # validates the flags first
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    distributed.quiet_followers()
    try:
        train_and_evaluate(FLAGS.config, FLAGS.workdir, overwrite=FLAGS.overwrite)
    except preemption.Preempted:
        sys.exit(preemption.EXIT_CODE)  # the message is printed; the checkpoint is written
    except divergence.NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(divergence.EXIT_CODE)
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (WorkdirError, distributed.NotSharedError, CheckpointError, data_lib.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, after refusing unknown --config.<key> overrides with the nearest valid keys."""
    try:
        config_lib.check_override_keys(argv)
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return app.parse_flags_with_usage(argv)


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    config_flags.DEFINE_config_file("config", None, "experiment config file (experiments/*.py)", lock_config=True)
    flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and figures; re-use it to resume")
    flags.DEFINE_bool("overwrite", False, "if --workdir holds a run with another config, move it aside and start afresh")
    distributed.define_flags()
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main, flags_parser=parse_flags)
