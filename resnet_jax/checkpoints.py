"""Orbax checkpoints of a run, all-or-nothing and verified: one CheckpointManager keeps the latest few and the best.

<workdir>/checkpoints/<step>/ holds the whole TrainState, a JSON `info` (epoch, last record, loop totals, a digest of
the state) and orbax's `metrics` ({best_metric: value} when the step was evaluated). One manager with one
preservation policy keeps the latest `keep` steps and the best evaluated one, so "latest" and "best" can never
disagree: a step directory appears whole (orbax writes it under a temporary name and renames it when complete) or
not at all, and the temporary folders a killed write leaves behind are removed when training reopens the manager.

A restore checks the arrays against the digest saved with them. A checkpoint that cannot be read or does not match is
reported and the next one is used (the newest intact for 'latest', the best intact for 'best'); when training, the
bad ones are moved to <workdir>/corrupt_checkpoints/ (never deleted) so that the resumed run can write those steps.
"""

import hashlib
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers

from resnet_jax import distributed
from resnet_jax.losses import higher_is_better

CORRUPT_DIR = "corrupt_checkpoints"


class CheckpointError(ValueError):
    """The checkpoints of a workdir cannot be used; the message says why and what to do."""


class CheckpointMismatchError(CheckpointError):
    pass


class Checkpoints:
    """The checkpoints of one run. `read_only` (evaluation) neither cleans nor moves anything."""

    def __init__(self, workdir: str | Path, keep: int = 3, best_metric: str = "val/accuracy", read_only: bool = False):
        self.workdir = Path(workdir).absolute()
        self.best_metric = best_metric
        self.read_only = read_only
        sign = 1.0 if higher_is_better(best_metric) else -1.0

        def rank(metrics: dict) -> tuple[float, int]:  # higher ranks better; of equal values the earlier step
            return (sign * metrics[best_metric], -metrics["step"]) if best_metric in metrics else (-math.inf, 0)

        self._rank = rank
        policy = checkpoint_managers.AnyPreservationPolicy([
            checkpoint_managers.LatestN(n=keep),
            checkpoint_managers.BestN(get_metric_fn=rank, n=1, keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(preservation_policy=policy, best_fn=rank, create=False,
                                               cleanup_tmp_directories=not read_only)
        handlers = {"state": ocp.StandardCheckpointHandler(), "info": ocp.JsonCheckpointHandler()}
        folder = self.workdir / "checkpoints"
        self._screen_metrics(folder)
        self.manager = ocp.CheckpointManager(folder, options=options, item_handlers=handlers)

    def _screen_metrics(self, folder: Path) -> None:
        """Set aside steps whose metrics file is damaged: orbax reads them all when the manager opens, and would
        fail."""
        damaged = []
        for path in folder.glob("*/metrics/metrics"):
            try:
                json.loads(path.read_text())
            except (ValueError, OSError) as e:
                if path.parent.parent.name.isdigit():
                    print(f"warning: the checkpoint at {path.parent.parent} is incomplete or corrupt ({_reason(e)})")
                    damaged.append(int(path.parent.parent.name))
        if damaged and self.read_only:
            raise CheckpointError(f"the metrics of step(s) {sorted(damaged)} in {folder} are damaged: resume the "
                                  "training (it moves them aside) or move those step folders away")
        if damaged:
            _move_aside(folder, sorted(damaged))

    def save(self, state: Any, info: dict, value: float | None = None) -> None:
        """Save `state` under its step with `info` and its digest; `value` is its best_metric if it was evaluated."""
        step = int(jax.device_get(state.step))
        metrics = {"step": step} | ({self.best_metric: value} if value is not None and math.isfinite(value) else {})
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  info=ocp.args.JsonSave(dict(info, digest=state_digest(state))))
        self.manager.save(step, args=args, metrics=metrics, force=True)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def describe(self, step: int | None) -> str:
        """'step N (<path>)', or 'none (...)' when there is no checkpoint: for messages."""
        if step is None:
            return f"none (nothing was saved in {self.manager.directory})"
        return f"step {step} ({self.manager.directory / str(step)})"

    def best(self) -> tuple[int, float] | None:
        """(step, value) of the best evaluated checkpoint by best_metric; None if no checkpoint was evaluated."""
        ranked = self._ranked()
        return (ranked[0], self.manager.metrics(ranked[0])[self.best_metric]) if ranked else None

    def _ranked(self) -> list[int]:
        """The evaluated steps, best first."""
        metrics = {s: self.manager.metrics(s) or {} for s in self.manager.all_steps()}
        evaluated = [s for s, m in metrics.items() if self.best_metric in m]
        return sorted(evaluated, key=lambda s: self._rank(metrics[s]), reverse=True)

    def saved_shapes(self, step: int | None = None) -> dict[str, tuple[int, ...]]:
        """{'params/stem_conv/kernel': shape, ...} of a checkpoint (default: the latest), from its metadata only."""
        step = self.manager.latest_step() if step is None else step
        return leaf_shapes(self.manager.item_metadata(step)["state"])

    def restore(self, abstract_state: Any, which: str = "latest") -> tuple[Any, dict] | None:
        """The newest ('latest') or best ('best') intact checkpoint as (state, info), laid out like `abstract_state`.

        None if there is none. Checkpoints that cannot be read or fail their digest are reported and skipped.
        """
        if which not in ("latest", "best"):
            raise ValueError(f"which={which!r}: choose 'latest' or 'best'")
        candidates = sorted(self.manager.all_steps(), reverse=True) if which == "latest" else self._ranked()
        bad = []
        for step in candidates:
            try:
                restored = self._restore(step, abstract_state)
            except CheckpointMismatchError:
                raise
            except Exception as e:  # noqa: BLE001 -- orbax/tensorstore/json raise many types for damaged files
                reason = _reason(e)
                print(f"warning: the checkpoint at {self.manager.directory / str(step)} is incomplete or corrupt "
                      f"({reason}); trying the next one")
                bad.append(step)
                continue
            if bad:
                print(f"falling back to step {step}, the {'newest' if which == 'latest' else 'best'} intact checkpoint")
                if not self.read_only:
                    _move_aside(self.manager.directory, bad)
                    self.manager.reload()
            return restored
        if bad:
            raise CheckpointError(
                f"no intact checkpoint in {self.manager.directory} (steps {', '.join(map(str, bad))} are damaged): "
                "move that folder away to start afresh, or pass --overwrite to move the whole run aside"
            )
        return None

    def _restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        where = self.manager.directory / str(step)
        check_compatible(self.saved_shapes(step), leaf_shapes(abstract_state), where)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), info=ocp.args.JsonRestore())
        restored = self.manager.restore(step, args=args)
        state, info = restored["state"], dict(restored["info"])
        saved_digest = info.pop("digest", None)
        if saved_digest is None:
            print(f"note: {where} was written without a digest (an older resnet-jax): restored unverified")
        elif state_digest(state) != saved_digest:
            raise CheckpointError("its arrays do not match the digest saved with them")
        return state, info

    def step(self, which: str) -> int | None:
        """The newest ('latest') or best evaluated ('best') step; None if there is none."""
        if which == "latest":
            return self.manager.latest_step()
        ranked = self._ranked()
        return ranked[0] if ranked else None

    def restore_variables(self, abstract_variables: dict, which: str = "best") -> dict | None:
        """Only the model variables ({'params', 'batch_stats'}, or the part of them `abstract_variables` names) of the
        `which` checkpoint, as host arrays, whatever optimizer wrote it: the start of a transfer run. (The digest covers
        the whole state, so this partial read is not verified.)"""
        step = self.step(which)
        if step is None:
            return None
        args = ocp.args.PyTreeRestore(abstract_variables,
                                      ocp.checkpoint_utils.construct_restore_args(abstract_variables),
                                      partial_restore=True)
        return ocp.PyTreeCheckpointer().restore(self.manager.directory / str(step) / "state", args=args)

    def close(self) -> None:
        """Wait for a save in flight, then release the manager."""
        self.manager.wait_until_finished()
        self.manager.close()

    def __enter__(self) -> "Checkpoints":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def saved_best_metric(workdir: str | Path) -> str:
    """The metric a run's checkpoints were ranked by (from orbax's metrics files); 'val/accuracy' if none was
    evaluated."""
    for path in sorted((Path(workdir) / "checkpoints").glob("*/metrics/metrics")):
        try:
            names = set(json.loads(path.read_text())) - {"step"}
        except (ValueError, OSError):
            continue
        if names:
            return names.pop()
    return "val/accuracy"


def _move_aside(folder: Path, steps: list[int]) -> None:
    """Move damaged step folders to <workdir>/corrupt_checkpoints/: process 0 moves them once every process has read
    them, and every process learns whether that worked (distributed.run_on_lead)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"resnet_jax.checkpoints.damaged.{steps}")
    distributed.run_on_lead(_move, folder, steps)


def _move(folder: Path, steps: list[int]) -> None:
    aside = folder.parent / CORRUPT_DIR
    aside.mkdir(exist_ok=True)
    for step in steps:
        target = aside / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        shutil.move(folder / str(step), target)
        print(f"moved the damaged checkpoint of step {step} to {target}")


def _reason(error: Exception) -> str:
    """The first line of an error, without TensorStore's spec dump, with its type unless that says nothing."""
    text = (str(error).strip().splitlines() or [""])[0].split(" See full TensorStore details")[0][:300]
    kind = type(error).__name__
    return text if kind in ("Exception", "CheckpointError") else f"{kind}: {text}" if text else kind


@jax.jit
def _checksums(leaves: list[jax.Array]) -> jax.Array:
    """Two 32-bit checksums per array of its bits: their sum, and their sum weighted by odd position factors."""

    def one(x):
        x = jnp.ravel(x)
        if x.dtype == jnp.bool_:
            x = x.astype(jnp.uint8)
        words = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}")).astype(jnp.uint32)
        odd = 2 * jnp.arange(words.size, dtype=jnp.uint32) + 1  # odd, so any one changed word changes the sum
        return jnp.stack([jnp.sum(words, dtype=jnp.uint32), jnp.sum(words * odd, dtype=jnp.uint32)])

    return jnp.stack([one(x) for x in leaves]) if leaves else jnp.zeros((0, 2), jnp.uint32)


def state_digest(tree: Any) -> str:
    """A digest of every bit of every array in `tree`, computed on the devices (any sharding, any number of hosts)."""
    leaves = [x for x in jax.tree.leaves(tree) if hasattr(x, "dtype")]
    shapes = str([(x.shape, str(x.dtype)) for x in leaves])
    return hashlib.sha256(shapes.encode() + np.asarray(_checksums(leaves)).tobytes()).hexdigest()[:32]


def leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{'params/stage1_block1/Conv_0/kernel': shape, ...}: the same names for a TrainState and for orbax's metadata
    of it."""

    def name(key) -> str:
        return str(next(getattr(key, a) for a in ("key", "name", "idx") if hasattr(key, a)))

    return {"/".join(map(name, path)): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree) if hasattr(leaf, "shape")}


def check_compatible(saved_shapes: dict, wanted: dict, where: Path) -> None:
    """Refuse, with the differing entries named, a checkpoint whose arrays do not fit the model being built."""
    differ = [
        f"{k}: checkpoint {saved_shapes.get(k, 'missing')} vs model {wanted.get(k, 'missing')}"
        for k in sorted(set(saved_shapes) | set(wanted))
        if saved_shapes.get(k) != wanted.get(k)
    ]
    if differ:
        shown = "\n  ".join(differ[:8]) + (f"\n  … and {len(differ) - 8} more" if len(differ) > 8 else "")
        raise CheckpointMismatchError(
            f"the checkpoint at {where} does not fit the model/optimizer being built ({len(differ)} entries differ):"
            f"\n  {shown}\n"
            "It was written by a run with another model, number of classes, widths or optimizer: use that run's "
            "config, or a new --workdir."
        )
