"""Lesion study (Veit, Wilber & Belongie 2016): delete blocks of a trained net at test time and measure its test error.

    python -m resnet_jax.lab lesion --workdir runs/lab_cpu/resnet20_s0 --workdir runs/lab_cpu/plain20_s0 --out DIR

A deleted block returns its shortcut alone (resnet_jax.models.residual_join, the deleted set a traced input): the
identity, or option A's strided zero padding / the projection where the shape changes; its branch's parameters stay
unused. A plain net's deleted block becomes its parameter-free shortcut, so the plain twin is the control: it has no
path around a deleted layer. First each single block is deleted, then k random blocks (--draws draws per k, the sets
drawn by --seed); k = 0 is the intact net. Errors are on the run's whole test split with the jitted eval_step of
resnet_jax.steps (BatchNorm on the running averages). The net compiles once for every set (the deleted blocks are
a traced input: `alive`); each set's evaluation is timed (`seconds`), repeated sets are evaluated once.
"""

import argparse
import json
import time
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax import xla_cpu
from resnet_jax.lab.common import load_run
from resnet_jax.loop import evaluate_split
from resnet_jax.models import ResNet
from resnet_jax.steps import TrainState, eval_sums


def alive(model: ResNet, deleted: Iterable[str]) -> dict[str, dict[str, jax.Array]]:
    """The 'lesion' collection that deletes the blocks `deleted` of `model` as traced values (residual_join):
    {block name: {'alive': bool}} for every block."""
    deleted = set(model.known_blocks(deleted, "the deleted blocks"))
    return {name: {"alive": jnp.asarray(name not in deleted)} for name in model.block_names()}


def lesioned_eval_step(state: TrainState, batch: dict, lesion: dict, *, model: ResNet) -> dict:
    """resnet_jax.steps.eval_step with the blocks that `lesion` (alive) marks dead deleted."""
    variables = {"params": state.params, "batch_stats": state.batch_stats, "lesion": lesion}
    return eval_sums(model.apply(variables, batch["image"], train=False), batch)


class Lesions:
    """Test error of one trained net with any set of its blocks deleted. The net is compiled once, the deleted set
    being a traced input (`compile_seconds`); each distinct set is evaluated once (`seconds`: its wall time)."""

    def __init__(self, model: ResNet, state: TrainState, pipeline: Any, split: str = "test"):
        self.model, self.state, self.pipeline, self.split = model, state, pipeline, split
        start = time.perf_counter()
        batch = next(iter(pipeline.eval_batches(split)))
        options = xla_cpu.compiler_options(jax.devices()[0].platform)
        self.step = jax.jit(partial(lesioned_eval_step, model=model), compiler_options=options).lower(
            state, batch, alive(model, ())).compile()
        self.compile_seconds = time.perf_counter() - start
        self.results: dict[frozenset, dict[str, float]] = {}

    def evaluate(self, lesion: Iterable[str]) -> dict[str, float]:
        """{'error', 'loss', 'seconds'} with the blocks `lesion` deleted (() = the intact net)."""
        key = frozenset(lesion)
        if key not in self.results:
            start = time.perf_counter()
            mask = alive(self.model, key)
            metrics = evaluate_split(lambda state, batch: self.step(state, batch, mask), self.state, self.pipeline,
                                     self.split)
            self.results[key] = {"error": 1.0 - metrics[f"{self.split}/accuracy"],
                                 "loss": metrics[f"{self.split}/loss"], "seconds": time.perf_counter() - start}
        return self.results[key]

    def single(self) -> dict[str, float]:
        """{block name: test error with that block alone deleted}, in forward order."""
        return {name: self.evaluate((name,))["error"] for name in self.model.block_names()}

    def random_sets(self, ks: Sequence[int], draws: int, seed: int) -> list[list[tuple[str, ...]]]:
        """For each k, `draws` sets of k distinct blocks drawn uniformly (k = 0: the empty set)."""
        names = self.model.block_names()
        if max(ks) > len(names):
            raise ValueError(f"cannot delete {max(ks)} blocks: this network has {len(names)}")
        rng = np.random.default_rng(seed)
        return [[tuple(names[i] for i in sorted(rng.choice(len(names), k, replace=False))) for _ in range(draws)]
                for k in ks]

    def versus_k(self, ks: Sequence[int], draws: int, seed: int) -> np.ndarray:
        """(len(ks), draws) test errors with k random blocks deleted (random_sets)."""
        return np.array([[self.evaluate(s)["error"] for s in sets] for sets in self.random_sets(ks, draws, seed)])


def downsampling_blocks(model: ResNet) -> list[str]:
    """The blocks whose shortcut changes the shape (stride 2): Veit et al.'s exceptions."""
    return [f"stage{i + 1}_block{j + 1}" for i, n in enumerate(model.stage_sizes) for j in range(n)
            if model.block_strides(i, j) == 2]


def study(workdir: str | Path, ks: Sequence[int], draws: int, seed: int, split: str = "test") -> dict[str, Any]:
    """The lesion study of the run in `workdir` (its best checkpoint): intact, single-block and k-block errors."""
    run, state = load_run(workdir)
    lesions = Lesions(run.model, state, run.pipeline, split)
    intact = lesions.evaluate(())
    single = lesions.single()
    errors = lesions.versus_k(ks, draws, seed)
    timings = [r["seconds"] for r in lesions.results.values()]
    return {
        "workdir": str(workdir), "label": Path(workdir).name, "model": run.config.model.name,
        "residual": run.model.residual, "split": split, "examples": run.pipeline.split_sizes[split],
        "intact_error": intact["error"], "intact_loss": intact["loss"],
        "single": single, "downsampling": downsampling_blocks(run.model),
        "ks": list(ks), "draws": draws, "seed": seed, "errors_vs_k": errors.tolist(),
        "sets_evaluated": len(timings), "seconds_per_set": {"mean": float(np.mean(timings)), "max": max(timings)},
        "seconds_total": float(np.sum(timings)), "compile_seconds": lesions.compile_seconds,
    }


def plot(records: list[dict[str, Any]], single_path: Path, k_path: Path) -> None:
    """Single-block deletion errors (bars, downsampling blocks hatched) and error versus k (mean and range over
    draws), every net overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(records[0]["single"])
    width = 0.8 / len(records)
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names) * len(records)), 4.5))
    for i, r in enumerate(records):
        x = np.arange(len(r["single"])) + (i - (len(records) - 1) / 2) * width
        hatch = ["//" if n in r["downsampling"] else "" for n in r["single"]]
        bars = ax.bar(x, [100 * e for e in r["single"].values()], width, label=r["label"], color=f"C{i}")
        for bar, h in zip(bars, hatch, strict=True):
            bar.set_hatch(h)
        ax.axhline(100 * r["intact_error"], color=f"C{i}", ls="--", lw=1)
    ax.set_xticks(np.arange(len(names)), [n.replace("stage", "s").replace("_block", "b") for n in names],
                  rotation=90 if len(names) > 12 else 0)
    ax.set(ylabel="test error (%)", title="Deleting one block at test time (dashed: intact; hatched: downsampling)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(single_path, dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for i, r in enumerate(records):
        errors = 100 * np.asarray(r["errors_vs_k"])
        ax.plot(r["ks"], errors.mean(1), marker="o", color=f"C{i}", label=r["label"])
        ax.fill_between(r["ks"], errors.min(1), errors.max(1), color=f"C{i}", alpha=0.2)
    ax.set(xlabel="blocks deleted (k)", ylabel="test error (%)",
           title=f"Deleting k random blocks (mean, min-max over {records[0]['draws']} draws)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(k_path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m resnet_jax.lab lesion", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", action="append", required=True,
                        help="a trained run (its best checkpoint), repeatable: e.g. a residual net and its plain twin")
    parser.add_argument("--ks", default="0,1,2,3,4,5", help="numbers of random blocks deleted")
    parser.add_argument("--draws", type=int, default=5, help="random sets per k")
    parser.add_argument("--seed", type=int, default=0, help="the draw of the random sets")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", required=True, help="folder for lesion.json, lesion_single.png, lesion_k.png")
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    records = []
    for workdir in args.workdir:
        record = study(workdir, ks, args.draws, args.seed, args.split)
        worst = max(record["single"], key=record["single"].get)
        print(f"{record['label']}: intact {100 * record['intact_error']:.2f}%, worst single deletion {worst} "
              f"{100 * record['single'][worst]:.2f}%, {record['sets_evaluated']} sets in "
              f"{record['seconds_total']:.1f} s ({record['seconds_per_set']['mean']:.2f} s per set) after "
              f"{record['compile_seconds']:.1f} s compiling")
        records.append(record)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lesion.json").write_text(json.dumps({"args": vars(args), "nets": records}, indent=1) + "\n")
    plot(records, out / "lesion_single.png", out / "lesion_k.png")
    print(f"wrote {out}/lesion.json, lesion_single.png, lesion_k.png")
