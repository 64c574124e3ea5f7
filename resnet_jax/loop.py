"""The training loop: setup resolves everything (config, data, model, optimizer, workdir, checkpoint, init_from,
feature caching) before the loop starts; the loop is one flat pass over the steps with periodic actions.

Every interval is in steps (`Every`); a value of 0 means each epoch's end. The loop reads the device only at sync
points (a log, evaluation or checkpoint step, or an epoch's end): between them nothing waits for it. Re-running the
same command in the same workdir resumes from the newest intact checkpoint and continues exactly as an uninterrupted
run would (the data order and augmentation depend only on seed, epoch and step), also from the middle of an epoch.
SIGTERM, SIGINT and SIGUSR1 checkpoint at the next step (resnet_jax.preemption); a non-finite step stops the run or
is skipped (config.nonfinite, resnet_jax.divergence). Every process of a multi-host run takes the same decisions.
"""

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from resnet_jax import config as config_lib
from resnet_jax import data as data_lib
from resnet_jax import distributed, divergence, multistep, optim, preemption, transfer
from resnet_jax.checkpoints import Checkpoints
from resnet_jax.diagnostics import diagnostics_fn, update_ratio_metrics
from resnet_jax.losses import EVAL_METRICS, higher_is_better
from resnet_jax.metrics import MetricWriter, TrainMeter, plot_curves
from resnet_jax.models import ResNet
from resnet_jax.steps import TrainState, compile_steps, init_state
from resnet_jax.workdir import (CONFIG_FILE, WorkdirError, check_same_data, check_workdir, data_fingerprint,
                                save_config)


@dataclasses.dataclass(frozen=True)
class Run:
    """The fixed parts of a run, built from its config before anything is compiled or written."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    pipeline: Any  # resnet_jax.data.Pipeline
    model: ResNet
    schedule: optax.Schedule
    tx: optax.GradientTransformation  # ends with the plateau's scale when config.plateau.enabled (optim.with_plateau)
    plateau: optax.GradientTransformationExtraArgs | None
    total_steps: int
    best_metric: str


def setup(config: ml_collections.ConfigDict) -> Run:
    """Validate the config once, then build data, model and optimizer and check them against each other (no compile)."""
    config_lib.validate(config)
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    pipeline = data_lib.make_pipeline(config.data, config.batch_size, mesh, config.seed)
    if config.model.num_classes and config.model.num_classes != pipeline.num_classes:
        raise config_lib.ConfigError(
            f"model.num_classes={config.model.num_classes} but {config.data.name} has {pipeline.num_classes} classes; "
            "set model.num_classes=0 to take it from the data")
    model = transfer.configure(config, config_lib.build_model(config.model, pipeline.num_classes), pipeline)
    try:
        multistep.check(config.steps_per_call, pipeline)
    except ValueError as e:
        raise config_lib.ConfigError(str(e)) from None
    if config.steps_per_call > 1 and config.transfer.cache_features:
        raise config_lib.ConfigError(f"steps_per_call={config.steps_per_call} does not run over cached features: "
                                     "set steps_per_call=1 or transfer.cache_features=False")
    eval_splits = [s for s in ("val", "test") if s in pipeline.split_sizes]
    if not eval_splits:
        raise config_lib.ConfigError(f"{config.data.name} has no 'val' or 'test' split to evaluate on; "
                                     "set data.val_size > 0")
    best_metric = config.best_metric or f"{eval_splits[0]}/accuracy"
    monitored = {"best_metric": best_metric} | ({"plateau.monitor": config.plateau.monitor}
                                                if config.plateau.enabled else {})
    for key, metric in monitored.items():
        split, _, name = metric.partition("/")
        if split not in eval_splits or name not in EVAL_METRICS:
            hint = "; set data.val_size > 0 for a validation split" if split == "val" else ""
            raise config_lib.ConfigError(f"{key}={metric!r} is not a metric of this run: choose one of "
                                         f"{', '.join(f'{s}/{n}' for s in eval_splits for n in EVAL_METRICS)}{hint}")
    total_steps = config.num_steps or config.num_epochs * pipeline.steps_per_epoch
    lr = config.optimizer.learning_rate
    schedule = optim.make_schedule(config.schedule, lr, pipeline.steps_per_epoch, total_steps)
    tx = transfer.make_optimizer(config, schedule, model)
    plateau = optim.make_plateau(config.plateau, lr) if config.plateau.enabled else None
    tx = optim.with_plateau(tx, plateau) if plateau else tx
    return Run(config, mesh, pipeline, model, schedule, tx, plateau, total_steps, best_metric)


@dataclasses.dataclass
class Start:
    """Where the loop starts: the state (fresh, init_from or restored), what runs the steps, and the run's records."""

    state: TrainState
    info: dict  # the restored checkpoint's info: epoch, record, train_totals, data ({} when starting afresh)
    pipeline: Any  # run.pipeline, or its cached backbone features
    train_fn: Any  # None when the workdir holds this run finished
    eval_fn: Any
    checkpoints: Checkpoints


def start(run: Run, workdir: Path, overwrite: bool) -> Start:
    """Check the workdir and the weights to start from, restore or initialise the state, and compile the steps.
    Nothing is written to `workdir` before every check has passed."""
    config = run.config
    weights = transfer.load_init_from(config.init_from, run.model, run.pipeline.image_shape) \
        if config.init_from.format else None
    changed = distributed.run_on_lead(check_workdir, workdir, config, overwrite, errors=(WorkdirError,))
    checkpoints = Checkpoints(workdir, keep=config.checkpoint_keep, best_metric=run.best_metric)
    state = init_state(run.model, run.tx, run.pipeline.image_shape, config.seed, run.mesh)
    state, info = checkpoints.restore(state) or (state, {})
    if info:
        check_same_data(info.get("data"), run.pipeline, config.data.path)
        if int(state.step) >= run.total_steps:
            checkpoints.close()
            print(f"{workdir} holds this run finished ({int(state.step)} steps): nothing to do")
            return Start(state, info, run.pipeline, None, None, checkpoints)
        print(f"resuming from step {int(state.step)} (epoch {int(state.step) / run.pipeline.steps_per_epoch:.2f}) "
              f"in {workdir}" + (f" with changed {', '.join(changed)}" if changed else ""))
    elif weights:
        state = transfer.start_from(state, weights, run.tx)
        print(f"starting from the {config.init_from.format} weights in {config.init_from.path}")
    if distributed.is_lead():
        save_config(workdir, config)
    distributed.check_shared(workdir / CONFIG_FILE)
    model, pipeline = run.model, run.pipeline
    if config.transfer.cache_features:  # the head alone, on features of the frozen backbone computed once here
        model, pipeline = transfer.cache_features(run.model, state, pipeline, run.mesh)
    train_fn, eval_fn = compile_steps(model, run.tx, run.mesh, config.label_smoothing, config.seed)
    return Start(state, info, pipeline, train_fn, eval_fn, checkpoints)


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


# ---- Periodic actions ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Intervals:
    """The steps at which the periodic actions run: every so many steps (0: at each epoch's end), and always on the
    run's last step. Sync points, where the loop reads the device, are the steps where any of them runs."""

    log_every: int
    eval_every: int
    save_every: int
    steps_per_epoch: int
    total: int

    @classmethod
    def of(cls, config: ml_collections.ConfigDict, steps_per_epoch: int, total: int) -> "Intervals":
        return cls(config.log_every_steps, config.eval_every_steps or steps_per_epoch,
                   config.checkpoint_every_steps or steps_per_epoch, steps_per_epoch, total)

    def _every(self, n: int, step: int) -> bool:
        return step % n == 0 or step == self.total

    def log(self, step: int) -> bool:
        return self._every(self.log_every, step)

    def evaluate(self, step: int) -> bool:
        return self._every(self.eval_every, step)

    def save(self, step: int) -> bool:
        return self._every(self.save_every, step)

    def epoch_end(self, step: int) -> bool:
        return self._every(self.steps_per_epoch, step)

    def sync(self, step: int) -> bool:
        return any(due(step) for due in (self.log, self.evaluate, self.save, self.epoch_end))


class Diagnostics:
    """Gradient/activation norms on the batch before step s+1 (s a multiple of `every`), and the update ratios of
    that step; the lead process writes them."""

    def __init__(self, model: ResNet, every: int, writer: MetricWriter | None, steps_per_epoch: int):
        self.every = every
        self._diagnose = diagnostics_fn(model) if every else None
        self._writer, self._spe, self._pending = writer, steps_per_epoch, None

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def around(self, step: int) -> bool:
        """Whether a compiled call must end at `step`: a diagnosed step runs alone."""
        return self.due(step) or self.due(step - 1)

    def before(self, step: int, state: TrainState, batch: dict) -> None:
        diag = self._diagnose({"params": state.params, "batch_stats": state.batch_stats}, batch)
        self._pending = step, diag, jax.tree.map(jnp.copy, state.params)  # the step donates state.params

    def after(self, state: TrainState) -> None:
        if self._pending is None:
            return
        step, diag, params = self._pending
        self._pending = None
        if self._writer:
            record = jax.device_get(diag | update_ratio_metrics(params, state.params))
            self._writer.write(step, step / self._spe, record)


class Records:
    """The run's logs: metrics.jsonl and TensorBoard (lead process only), the progress bar, and printed evaluations."""

    def __init__(self, workdir: Path, run: Run, start_step: int):
        lead = distributed.is_lead()
        self.writer = MetricWriter(workdir, resume_step=start_step) if lead else None
        self.bar = tqdm(total=run.total_steps, initial=start_step, disable=not lead, leave=False)
        self.spe, self.batch_size, self.t0, self.window = run.pipeline.steps_per_epoch, run.config.batch_size, 0.0, 0
        self.restart()

    def restart(self) -> None:
        self.t0, self.window = time.perf_counter(), 0

    def advance(self, n: int) -> None:
        self.window += n
        self.bar.update(n)

    def train(self, step: int, means: dict, nonfinite: list[int], lr: float) -> None:
        scalars = {f"train/{k}": v for k, v in means.items()} | {"lr": lr}
        scalars["images_per_sec"] = self.window * self.batch_size / (time.perf_counter() - self.t0)
        scalars |= {"train/nonfinite_steps": len(nonfinite)} if nonfinite else {}
        self.write(step, scalars)
        self.bar.set_postfix(loss=f"{means.get('loss', math.nan):.3f}", lr=f"{lr:.2e}",
                             img_s=f"{scalars['images_per_sec']:.0f}")

    def event(self, step: int, record: dict) -> dict:
        """Log and print an evaluation and/or epoch record; returns it."""
        self.write(step, record)
        epochs = -(-self.bar.total // self.spe)
        at_end = step % self.spe == 0 or step == self.bar.total
        where = f"epoch {-(-step // self.spe)}/{epochs} (step {step})" if at_end else f"step {step}"
        print(f"{where}: " + ", ".join(f"{k} {v:.4g}" for k, v in record.items()))
        return record

    def write(self, step: int, scalars: dict) -> None:
        if self.writer:
            self.writer.write(step, step / self.spe, scalars)

    def __enter__(self) -> "Records":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
        if self.writer:
            self.writer.close()

    def finish(self, workdir: Path, metric: str, best: tuple[int, float] | None, checkpoints: Path) -> None:
        """The curves figure, and where everything is (lead process)."""
        if self.writer:
            best_text = f"best {metric} {best[1]:.4f} at step {best[0]}" if best else "no finite evaluation"
            print(f"done: {workdir}/metrics.jsonl, curves {plot_curves(workdir)}, checkpoints {checkpoints} "
                  f"({best_text})")


class Evaluation:
    """Evaluates on the run's 'val' and 'test' splits and keeps the best evaluation by run.best_metric."""

    def __init__(self, run: Run, begin: "Start"):
        self.metric, self.eval_fn, self.pipeline = run.best_metric, begin.eval_fn, begin.pipeline
        self.best = begin.checkpoints.best()  # (step, value) of the best evaluation so far; None before the first

    def __call__(self, state: TrainState, step: int) -> tuple[dict[str, float], bool]:
        """(the splits' metrics, whether they are the best so far)."""
        record = evaluate_all(self.eval_fn, state, self.pipeline)
        value, best = record[self.metric], self.best
        better = (lambda a, b: a > b) if higher_is_better(self.metric) else (lambda a, b: a < b)
        improved = math.isfinite(value) and (best is None or better(value, best[1]))
        self.best = (step, value) if improved else best
        return record, improved


def step_plateau(run: Run, state: TrainState, record: dict) -> TrainState:
    """The state after the plateau has seen this evaluation (unchanged without a plateau)."""
    if run.plateau is None:
        return state
    monitor = run.config.plateau.monitor
    opt_state = optim.step_plateau(run.plateau, state.opt_state, monitor, record[monitor])
    return state.replace(opt_state=jax.device_put(opt_state, NamedSharding(run.mesh, P())))


def learning_rate(run: Run, state: TrainState, step: int) -> float:
    """The rate of the update that produced `step`: the schedule's, times the plateau's cuts."""
    return float(run.schedule(step - 1)) * (optim.plateau_scale(state.opt_state) if run.plateau else 1.0)


# ---- The loop ----------------------------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, overwrite: bool = False) -> dict:
    """Train (or resume) the configured run in `workdir`; returns the last evaluation's record.

    Every check (config, data, workdir, checkpoints, init_from) passes before anything is written to `workdir`.
    Raises preemption.Preempted after checkpointing on a signal, divergence.NonFiniteError on a non-finite step.
    """
    workdir = Path(workdir)
    transfer.check_init_from(config.init_from)  # before any data is read: the weights to start from are there
    run = setup(config)
    describe(run)
    begin = start(run, workdir, overwrite)
    if begin.train_fn is None:  # the workdir holds this run finished
        return begin.info["record"]
    state, record, ckpt = begin.state, begin.info.get("record", {}), begin.checkpoints
    spe = run.pipeline.steps_per_epoch
    due = Intervals.of(config, spe, run.total_steps)
    runner = multistep.Steps(begin.train_fn, begin.pipeline, config.steps_per_call, run.mesh)
    records, meter = Records(workdir, run, int(state.step)), TrainMeter(begin.info.get("train_totals"))
    diagnostics = Diagnostics(run.model, config.diagnostics_every_steps, records.writer, spe)
    evaluate = Evaluation(run, begin)
    with ckpt, records, preemption.PreemptionGuard() as guard:
        for step, n in runner.calls(int(state.step), run.total_steps, lambda s: due.sync(s) or diagnostics.around(s)):
            if diagnostics.due(step):
                diagnostics.before(step, state, runner.batch())
            state, metrics = runner.run(state, n)
            step += n
            diagnostics.after(state)
            meter.add(step, metrics, n)
            records.advance(n)
            stopping = guard.stop_requested(due.sync(step))
            if not (due.sync(step) or stopping):
                continue
            means, nonfinite = meter.read()
            divergence.check(nonfinite, config.nonfinite, ckpt.describe(ckpt.latest_step()))
            lr = learning_rate(run, state, step)
            records.train(step, means, nonfinite, lr)
            evaluation, improved = evaluate(state, step) if due.evaluate(step) else ({}, False)
            event = evaluation | (meter.epoch_record() if due.epoch_end(step) else {})
            record = records.event(step, event | {"lr": lr}) if event else record
            state = step_plateau(run, state, record) if evaluation else state
            if due.save(step) or improved or stopping:
                info = {"epoch": step / spe, "record": record, "train_totals": meter.totals,
                        "data": data_fingerprint(begin.pipeline)}
                ckpt.save(state, info, evaluation.get(run.best_metric))
            if stopping:
                guard.stop(f"saved a checkpoint at step {step} (epoch {step / spe:.2f}) in {ckpt.manager.directory}; "
                           "re-run the same command to resume")
            records.restart()
    records.finish(workdir, run.best_metric, evaluate.best, ckpt.manager.directory)
    return record


def describe(run: Run) -> None:
    """Print what is about to train (every process; distributed.quiet_followers shows the lead's alone)."""
    p, config = run.pipeline, run.config
    print(f"data: {p.origin}; splits {p.split_sizes}; images {p.image_shape}; {p.num_classes} classes")
    print(f"best checkpoint by {run.best_metric}")
    print(f"model: {config.model.name} on {run.mesh.devices.size} device(s) ({jax.devices()[0].platform}); "
          f"{run.total_steps} steps of batch {config.batch_size} ({p.steps_per_epoch} per epoch)")
