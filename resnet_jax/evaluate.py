"""Evaluate a run's best or latest checkpoint on chosen splits, with the data and model of its saved config.

Read-only: a damaged checkpoint is reported and the next intact one ('latest': newest, 'best': next best) is used.

    python -m resnet_jax.evaluate --workdir runs/quickstart [--checkpoint best|latest] [--split test --split val]

A run whose experiment file registered a block, augmentation or data source is evaluated with --config FILE too.

Multi-host: the same flags as train (--coordinator_address, --num_processes, --process_id or --distributed) on every
process; each evaluates its share of every batch and process 0 prints the results.
"""

import argparse
import json
import runpy
from pathlib import Path

from resnet_jax import distributed
from resnet_jax.checkpoints import Checkpoints
from resnet_jax.config import from_saved
from resnet_jax.loop import evaluate_split, setup
from resnet_jax.steps import compile_steps, init_state


def evaluate_run(workdir: str | Path, which: str = "best", splits: tuple[str, ...] = ("test",)) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy of the `which` checkpoint in `workdir` on each split."""
    workdir = Path(workdir)
    saved = workdir / "config.json"
    if not saved.exists():
        raise FileNotFoundError(
            f"{saved} not found: --workdir must be a directory written by python -m resnet_jax.train")
    config = from_saved(saved.read_text())
    run = setup(config)
    missing = [s for s in splits if s not in run.pipeline.split_sizes]
    if missing:
        raise ValueError(f"split(s) {missing} not in this run's data (it has {sorted(run.pipeline.split_sizes)})")
    state = init_state(run.model, run.tx, run.pipeline.image_shape, config.seed, run.mesh)
    checkpoints = Checkpoints(workdir, best_metric=run.best_metric, read_only=True)
    restored = checkpoints.restore(state, which)
    checkpoints.close()
    if restored is None:
        raise FileNotFoundError(f"no {which} checkpoint in {workdir}; train first, or use --checkpoint latest")
    state, info = restored
    _, eval_fn = compile_steps(run.model, run.tx, run.mesh)
    results = {"step": int(state.step), "epoch": info.get("epoch")}  # the restored checkpoint's own epoch
    for split in splits:
        results.update(evaluate_split(eval_fn, state, run.pipeline, split))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    parser.add_argument("--split", action="append", help="split to evaluate (repeatable; default: test)")
    parser.add_argument("--config", help="the run's experiment file, run first for what it registers (blocks, "
                        "augmentations, data sources); the values come from the run's config.json")
    distributed.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        distributed.initialize(distributed.settings_from(args))  # validates the flags first
    except ValueError as e:
        parser.error(str(e))
    distributed.quiet_followers()
    if args.config:
        runpy.run_path(args.config.split(":")[0])
    try:
        results = evaluate_run(args.workdir, args.checkpoint, tuple(args.split or ["test"]))
    except (FileNotFoundError, ValueError) as e:  # ConfigError and CheckpointError are ValueErrors
        parser.error(str(e))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
