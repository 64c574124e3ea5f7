"""Orbax checkpoints of a run: the latest few (every epoch) and the best by a validation metric.

<workdir>/checkpoints/<step>/  latest, kept `keep` deep; restoring it resumes the run exactly
<workdir>/best/<step>/         the best so far by the monitored metric (Keras' save_best_only)
Each holds the whole TrainState and a JSON `info` (epoch, best value, metrics).
"""

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
    pass


class Checkpoints:
    def __init__(self, workdir: str | Path, keep: int = 3):
        workdir = Path(workdir).absolute()
        handlers = {"state": ocp.StandardCheckpointHandler(), "info": ocp.JsonCheckpointHandler()}
        self.managers = {
            which: ocp.CheckpointManager(workdir / folder, options=ocp.CheckpointManagerOptions(max_to_keep=n), item_handlers=handlers)
            for which, folder, n in (("latest", "checkpoints", keep), ("best", "best", 1))
        }

    def save(self, state: Any, info: dict, best: bool = False) -> None:
        """Save `state` under its step as the latest checkpoint, and as the best one too if `best`."""
        step = int(jax.device_get(state.step))
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), info=ocp.args.JsonSave(info))
        for which in ("latest", "best") if best else ("latest",):
            self.managers[which].save(step, args=args, force=True)

    def latest_step(self, which: str = "latest") -> int | None:
        return self.managers[which].latest_step()

    def saved_shapes(self, which: str = "latest") -> dict[str, tuple[int, ...]]:
        """{'params/stem_conv/kernel': shape, ...} of the newest `which` checkpoint, from its metadata (no array is read)."""
        manager = self.managers[which]
        return leaf_shapes(manager.item_metadata(manager.latest_step())["state"])

    def restore(self, abstract_state: Any, which: str = "latest") -> tuple[Any, dict] | None:
        """The newest `which` checkpoint as (state, info), laid out like `abstract_state`; None if there is none."""
        manager = self.managers[which]
        step = manager.latest_step()
        if step is None:
            return None
        check_compatible(self.saved_shapes(which), leaf_shapes(abstract_state), manager.directory / str(step))
        restored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), info=ocp.args.JsonRestore())
        )
        return restored["state"], restored["info"]

    def restore_variables(self, abstract_variables: dict, which: str = "best") -> dict | None:
        """Only the model variables ({'params', 'batch_stats'}, or the part of them `abstract_variables` names) of the
        newest `which` checkpoint, as host arrays, whatever optimizer wrote it: the start of a transfer run."""
        manager = self.managers[which]
        step = manager.latest_step()
        if step is None:
            return None
        args = ocp.args.PyTreeRestore(abstract_variables, ocp.checkpoint_utils.construct_restore_args(abstract_variables),
                                      partial_restore=True)
        return ocp.PyTreeCheckpointer().restore(manager.directory / str(step) / "state", args=args)

    def close(self) -> None:
        for manager in self.managers.values():
            manager.wait_until_finished()
            manager.close()


def leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{'params/stage1_block1/Conv_0/kernel': shape, ...}: the same names for a TrainState and for orbax's metadata of it."""

    def name(key) -> str:
        return str(next(getattr(key, a) for a in ("key", "name", "idx") if hasattr(key, a)))

    return {"/".join(map(name, path)): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(tree) if hasattr(leaf, "shape")}


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
            f"the checkpoint at {where} does not fit the model/optimizer being built ({len(differ)} entries differ):\n  {shown}\n"
            "It was written by a run with another model, number of classes, widths or optimizer: use that run's config, "
            "or a new --workdir."
        )
