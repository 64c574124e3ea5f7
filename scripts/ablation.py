"""Plain vs residual depth ablation: train a grid of runs, then report on them as the paper's Figure 6 and a table.

    python scripts/ablation.py run --config experiments/ablation_cpu.py --root runs/ablation_cpu
        [--nets plain residual] [--depths 8 20 56] [--seeds 0 1] [--workers N --worker-index I] [--set key=value ...]
    python scripts/ablation.py report --root runs/ablation_cpu --out experiments/results/ablation_cpu [--copy-metrics]

Each cell of nets x depths x seeds is an ordinary `train_and_evaluate` run in <root>/<net><depth>-seed<s>, configured
by the experiment file's `get_config('plain56')` (or 'resnet56') with config.seed = s; the grid's defaults are the
file's NETS, DEPTHS and SEEDS. <workdir>/ablation.json records the runner's side (attempts, wall time, device,
commit, parameters, done): a done cell is skipped, any other resumes from its latest checkpoint.
`--workers N --worker-index I` takes every N-th cell, so N processes (one per GPU, with CUDA_VISIBLE_DEVICES)
share the grid without overlap.
"""

import argparse
import ast
import dataclasses
import importlib.util
import itertools
import json
import math
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import matplotlib
import ml_collections
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from resnet_jax.checkpoints import Checkpoints  # noqa: E402
from resnet_jax.diagnostics import layer_groups  # noqa: E402
from resnet_jax.metrics import METRICS_FILE, read_metrics, series  # noqa: E402
from resnet_jax.provenance import provenance  # noqa: E402
from resnet_jax.loop import train_and_evaluate  # noqa: E402
from resnet_jax.workdir import config_differences  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL_PREFIX = {"plain": "plain", "residual": "resnet"}
CELL_NAME = re.compile(r"(plain|residual)(\d+)-seed(\d+)")
STATUS_FILE = "ablation.json"
GRAD_PREFIX = "diag/grad_norm/"


@dataclasses.dataclass(frozen=True, order=True)
class Cell:
    """One run of the grid."""

    net: str  # 'plain' | 'residual'
    depth: int
    seed: int

    @property
    def model(self) -> str:
        return f"{MODEL_PREFIX[self.net]}{self.depth}"

    @property
    def name(self) -> str:
        return f"{self.net}{self.depth}-seed{self.seed}"


def grid(nets: list[str], depths: list[int], seeds: list[int]) -> list[Cell]:
    """Every cell, seed-major: one whole seed of the grid finishes before the next begins."""
    return [Cell(net, depth, seed) for seed in seeds for depth in depths for net in nets]


def partition(cells: list[Cell], workers: int, index: int) -> list[Cell]:
    """Worker `index`'s share of `workers`: every workers-th cell from the index-th on."""
    if not 0 <= index < workers:
        raise ValueError(f"--worker-index must be in [0, {workers}); got {index}")
    return cells[index::workers]


# --- running -----------------------------------------------------------------------------------------------


def load_experiment(path: str | Path) -> ModuleType:
    """The experiment file as a module; it may import others as `experiments.<name>`, as from the repo root."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_overrides(pairs: list[str]) -> dict:
    """['optimizer.learning_rate=0.05', 'data.path=/x'] -> {key: Python literal, or the string itself}."""
    overrides = {}
    for pair in pairs:
        key, _, text = pair.partition("=")
        try:
            overrides[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            overrides[key] = text
    return overrides


def cell_config(get_config: Callable, cell: Cell, overrides: dict) -> ml_collections.ConfigDict:
    """The cell's run config: the experiment's config for its model, its seed, then the command line's overrides."""
    config = get_config(cell.model)
    config.seed = cell.seed
    config.update_from_flattened_dict(overrides)
    return config


def read_status(workdir: Path) -> dict:
    path = workdir / STATUS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def write_status(workdir: Path, status: dict) -> None:
    (workdir / STATUS_FILE).write_text(json.dumps(status, indent=1) + "\n")


def checkpoint_params(workdir: Path) -> int:
    """Trainable parameters of the run, from its latest checkpoint's metadata (no array is read)."""
    checkpoints = Checkpoints(workdir)
    shapes = checkpoints.saved_shapes()
    checkpoints.close()
    return sum(math.prod(shape) for key, shape in shapes.items() if key.startswith("params/"))


def run_cell(config: ml_collections.ConfigDict, workdir: Path, command: str) -> str:
    """Train the cell, or resume it, unless it is done; returns what happened, for the status line."""
    status = read_status(workdir)
    if status.get("done"):
        differences = config_differences(workdir, config)
        if differences:
            raise ValueError(f"{workdir} holds a finished run with another config (differs in: {', '.join(differences)}); "
                             "use another --root, or remove it")
        return f"skipped (done, {status['seconds']:.0f} s)"
    action = "resumed" if (workdir / "config.json").exists() else "started"
    status.update(attempts=status.get("attempts", 0) + 1, command=command)
    start = time.perf_counter()
    try:
        record = train_and_evaluate(config, workdir)
        status.update(done=True, params=checkpoint_params(workdir), **provenance())  # date: when it finished
    finally:
        elapsed = time.perf_counter() - start
        status["seconds"] = status.get("seconds", 0.0) + elapsed
        if workdir.exists():
            write_status(workdir, status)
    return f"{action}, done in {elapsed:.0f} s: " + ", ".join(f"{k} {v:.4f}" for k, v in record.items() if "accuracy" in k)


def run_grid(get_config: Callable, cells: list[Cell], root: Path, overrides: dict | None = None, command: str = "") -> None:
    """Run each cell in <root>/<cell name>, one after another, printing one status line per cell."""
    start = time.perf_counter()
    for i, cell in enumerate(cells, 1):
        outcome = run_cell(cell_config(get_config, cell, overrides or {}), root / cell.name, command)
        print(f"[ablation {i}/{len(cells)}] {cell.name} ({cell.model}, seed {cell.seed}): {outcome}", flush=True)
    print(f"[ablation] {len(cells)} cell(s) in {time.perf_counter() - start:.0f} s", flush=True)


# --- report ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """A cell's records, as the report reads them."""

    cell: Cell
    events: list[dict]
    config: dict
    status: dict

    @property
    def train_error(self) -> float:
        """Training error (%) over the last epoch: the mean over its training steps, as trained."""
        return 100 * (1 - series(self.events, "train_epoch/accuracy")[1][-1])

    @property
    def test_error(self) -> float:
        """Test error (%) after the last epoch."""
        return 100 * (1 - series(self.events, "test/accuracy")[1][-1])


def load_runs(root: Path) -> list[Run]:
    """Every cell folder under root that has logged something, in (net, depth, seed) order."""
    runs = []
    for workdir in root.iterdir():
        match = CELL_NAME.fullmatch(workdir.name)
        if match and (workdir / METRICS_FILE).exists():
            cell = Cell(match[1], int(match[2]), int(match[3]))
            runs.append(Run(cell, read_metrics(workdir), json.loads((workdir / "config.json").read_text()), read_status(workdir)))
    return sorted(runs, key=lambda r: r.cell)


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None


def summarize(runs: list[Run]) -> dict[str, dict[int, dict]]:
    """net -> depth -> {'train', 'test': (mean, std), 'params', 'seeds', 'seconds'}, errors in %."""
    table: dict[str, dict[int, dict]] = {}
    for run in runs:
        table.setdefault(run.cell.net, {}).setdefault(run.cell.depth, []).append(run)
    return {
        net: {
            depth: {
                "train": mean_std([r.train_error for r in group]),
                "test": mean_std([r.test_error for r in group]),
                "params": group[0].status["params"],
                "seeds": [r.cell.seed for r in group],
                "seconds": float(np.mean([r.status["seconds"] for r in group])),
            }
            for depth, group in sorted(by_depth.items())
        }
        for net, by_depth in table.items()
    }


def fmt(stat: tuple[float, float | None]) -> str:
    mean, std = stat
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def compare(a: tuple[float, float | None], b: tuple[float, float | None]) -> str:
    """'higher', 'lower' or 'about the same' for b against a; differences within the seeds' spread are the same."""
    spread = max(a[1] or 0.0, b[1] or 0.0)
    if abs(b[0] - a[0]) <= spread:
        return "about the same"
    return "higher" if b[0] > a[0] else "lower"


MEANING = {
    ("plain", "higher"): "the deeper plain net trains worse (degradation)",
    ("plain", "lower"): "the deeper plain net does not (yet) train worse",
    ("plain", "about the same"): "the deeper plain net does not (yet) train worse",
    ("residual", "higher"): "here even the deeper residual net trains worse",
    ("residual", "lower"): "the deeper residual net trains better",
    ("residual", "about the same"): "the deeper residual net trains as well",
}


def than(word: str) -> str:
    return "as" if word == "about the same" else "than"


def observations(table: dict[str, dict[int, dict]]) -> list[str]:
    """Sentences computed from the table: does depth raise the plain nets' training error, and the residual nets'?"""
    lines, change, rises = [], {}, {}
    for net in ("plain", "residual"):
        rows = dict(sorted(table.get(net, {}).items()))
        if len(rows) < 2:
            continue
        name = {d: Cell(net, d, 0).model for d in rows}
        (low, shallow), (high, deep) = list(rows.items())[0], list(rows.items())[-1]
        word = compare(shallow["train"], deep["train"])
        change[net] = (word, deep["train"][0] - shallow["train"][0])
        steps = [(f"{name[a]} → {name[b]}", rows[b]["train"][0] - rows[a]["train"][0], compare(rows[a]["train"], rows[b]["train"]))
                 for a, b in itertools.pairwise(rows)]
        rises[net] = [f"{step} ({delta:+.2f} points)" for step, delta, w in steps if w == "higher"]
        by_depth = ", ".join(f"{step} {delta:+.2f} ({w})" for step, delta, w in steps)
        test_word = compare(shallow["test"], deep["test"])
        lines.append(f"**{net.capitalize()}:** {name[high]} ends with {word} training error {than(word)} {name[low]} "
                     f"({fmt(deep['train'])}% vs {fmt(shallow['train'])}%): {MEANING[net, word]}. Depth by depth, in "
                     f"points: {by_depth}. Test error is {test_word} ({fmt(deep['test'])}% vs {fmt(shallow['test'])}%).")
    for depth in sorted(set(table.get("plain", {})) & set(table.get("residual", {}))):
        plain, residual = table["plain"][depth], table["residual"][depth]
        train_word, test_word = compare(plain["train"], residual["train"]), compare(plain["test"], residual["test"])
        lines.append(f"At depth {depth}, resnet{depth} ends with {train_word} training error {than(train_word)} plain{depth} "
                     f"({fmt(residual['train'])}% vs {fmt(plain['train'])}%) and {test_word} test error "
                     f"({fmt(residual['test'])}% vs {fmt(plain['test'])}%).")
    if len(change) == 2:
        (plain_word, plain_delta), (residual_word, residual_delta) = change["plain"], change["residual"]
        if plain_word != "higher":
            verdict = "not reproduced: the deeper plain net does not (yet) train worse"
        elif residual_word != "higher":
            verdict = "reproduced: the deeper plain net trains worse, the deeper residual net does not"
        else:
            verdict = "partly reproduced: both deeper nets train worse"
        caveat = f"; but between neighbouring depths, {', '.join(rises['residual'])} does raise it" if rises["residual"] else ""
        lines.append(f"**Verdict:** the paper's degradation effect is {verdict} (training error from the shallowest to the "
                     f"deepest net: plain {plain_delta:+.2f} points, residual {residual_delta:+.2f} points{caveat}).")
    if any(len(row["seeds"]) < 2 for rows in table.values() for row in rows.values()):
        lines.append("With one seed per cell there is no estimate of seed-to-seed spread; differences of a fraction of "
                     "a point may be noise.")
    else:
        lines.append("Differences no larger than the larger of the two seed standard deviations are called about the same.")
    return lines


def error_curve(runs: list[Run], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(iterations, error % averaged over the runs) of the events holding `key` (an accuracy)."""
    curves = [series(r.events, key, x="step") for r in runs]
    n = min(len(values) for _, values in curves)
    iterations = np.asarray(curves[0][0][:n])
    return iterations, 100 * (1 - np.mean([values[:n] for _, values in curves], axis=0))


def depth_colors(runs: list[Run]) -> dict[int, tuple]:
    depths = sorted({r.cell.depth for r in runs})
    return dict(zip(depths, plt.cm.viridis(np.linspace(0, 0.85, len(depths)))))


def plot_figure6(runs: list[Run], path: Path) -> None:
    """Training error (dashed) and test error (solid) vs iterations; plain left, residual right, one colour per depth."""
    colors = depth_colors(runs)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True, constrained_layout=True)
    top = 0.0
    for ax, net in zip(axes, ("plain", "residual")):
        for depth, color in colors.items():
            group = [r for r in runs if (r.cell.net, r.cell.depth) == (net, depth)]
            if not group:
                continue
            x, train = error_curve(group, "train/accuracy")
            ax.plot(x, train, "--", color=color, lw=1.1)
            x, test = error_curve(group, "test/accuracy")
            ax.plot(x, test, "-", color=color, lw=2, marker="o", ms=3, label=group[0].cell.model)
            top = max(top, train[-1], test[-1])
        seeds = sorted({r.cell.seed for r in runs if r.cell.net == net})
        ax.set_title(f"{'Plain' if net == 'plain' else 'Residual'} networks (mean of {len(seeds)} seed{'s' * (len(seeds) > 1)})")
        ax.set_xlabel("iterations")
        ax.grid(alpha=0.3)
        styles = [Line2D([], [], color="k", ls="--", lw=1.1, label="training error"), Line2D([], [], color="k", lw=2, label="test error")]
        ax.legend(handles=ax.get_legend_handles_labels()[0] + styles, loc="upper right")
    axes[0].set_ylabel("error (%)")
    axes[0].set_ylim(0, min(100, max(5.0, 2.5 * top)))  # the final errors in the lower part, as in the paper
    fig.suptitle(f"Training error (dashed, each {runs[0].config['log_every_steps']} iterations) and test error (solid, after each "
                 "epoch) vs iterations, as in He et al. 2015, Figure 6")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def gradient_profiles(runs: list[Run]) -> dict[Cell, list[tuple[int, dict[str, float]]]]:
    """Gradient norm per block (stem to head, in forward order) at the first and last logged diagnostics step, for the
    first seed of each net and depth that logged diagnostics: cell -> [(step, {group: norm}), (step, {group: norm})]."""
    profiles = {}
    for run in runs:
        diag = [e for e in run.events if any(k.startswith(GRAD_PREFIX) for k in e)]
        if diag and all((c.net, c.depth) != (run.cell.net, run.cell.depth) for c in profiles):
            groups = layer_groups(dict.fromkeys(k.removeprefix(GRAD_PREFIX) for k in diag[0] if k.startswith(GRAD_PREFIX)))
            profiles[run.cell] = [(e["step"], {g: e[GRAD_PREFIX + g] for g in groups}) for e in (diag[0], diag[-1])]
    return profiles


def plot_gradients(profiles: dict[Cell, list[tuple[int, dict[str, float]]]], colors: dict[int, tuple], path: Path) -> None:
    """The gradient profiles, plain left and residual right: solid at the first logged step, dashed at the last."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True, constrained_layout=True)
    for ax, net in zip(axes, ("plain", "residual")):
        for cell, steps in profiles.items():
            if cell.net == net:
                for (step, norms), style in zip(steps, ("-", "--")):
                    ax.plot(list(norms.values()), style, color=colors[cell.depth], lw=1.3, marker="o", ms=2, label=f"{cell.model}, step {step}")
        ax.set_yscale("log")
        ax.set_title(f"{'Plain' if net == 'plain' else 'Residual'} networks: gradient norm per block")
        ax.set_xlabel("block index (0 = stem, last = head)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("||dL/dw|| of the block")
    fig.suptitle("Gradient norm per block at the first (solid) and last (dashed) logged step (train-mode BN, one seed)")
    fig.savefig(path, dpi=120)
    plt.close(fig)


SUMMARY_KEYS = ("data.name", "data.source", "data.train_subset", "data.val_size", "data.image_size", "data.augment",
                "model.widths", "model.shortcut", "batch_size", "num_steps", "num_epochs", "optimizer.name",
                "optimizer.learning_rate", "optimizer.momentum", "optimizer.weight_decay", "schedule.name", "schedule.unit",
                "schedule.boundaries", "schedule.scales", "schedule.warmup", "log_every_steps", "diagnostics_every_steps")


def config_value(config: dict, key: str):
    for part in key.split("."):
        config = config[part]
    return config


def copy_records(runs: list[Run], root: Path, dest: Path) -> None:
    """Each run's small records (not its checkpoints) to dest/<cell name>/."""
    for run in runs:
        (dest / run.cell.name).mkdir(parents=True, exist_ok=True)
        for name in (METRICS_FILE, "config.json", STATUS_FILE):
            shutil.copy(root / run.cell.name / name, dest / run.cell.name / name)


def write_report(root: Path, out: Path, command: str, copy_metrics: bool = False) -> dict:
    """report.md, figure6.png, gradient_norms.png (if diagnostics were logged) and summary.json in `out`."""
    runs = load_runs(root)
    done = [r for r in runs if r.status.get("done")]
    if not done:
        raise SystemExit(f"no finished run under {root}")
    out.mkdir(parents=True, exist_ok=True)
    table = summarize(done)
    plot_figure6(done, out / "figure6.png")
    profiles = gradient_profiles(done)
    if profiles:
        plot_gradients(profiles, depth_colors(done), out / "gradient_norms.png")
    report = provenance()
    meta = {
        "run_commands": sorted({r.status["command"] for r in done}),
        "report_command": command,
        "devices": sorted({f"{r.status['device']}; host CPU {r.status['cpu']}" for r in done}),
        "commits": sorted({r.status["commit"] for r in done}),
        "finished": [min(r.status["date"] for r in done), max(r.status["date"] for r in done)],
        "load_average_1m": [min(r.status["load_average_1m"] for r in done), max(r.status["load_average_1m"] for r in done)],
        "total_seconds": sum(r.status["seconds"] for r in done),
        "report": report,
    }

    lines = [f"# Plain vs residual networks: depth ablation ({out.name})", "", "## How it was produced", ""]
    lines += [f"- Runs: `{c}`" for c in meta["run_commands"]]
    lines += [f"- Report: `{command}`",
              f"- Device: {'; '.join(meta['devices'])}",
              f"- Runs finished {meta['finished'][0]} to {meta['finished'][1]} at commit {', '.join(meta['commits'])} "
              f"(1-minute load average at their ends: {meta['load_average_1m'][0]} to {meta['load_average_1m'][1]}); "
              f"report {report['date']} at {report['commit']}; jax {report['versions']['jax']}, flax {report['versions']['flax']}",
              f"- Wall time: {meta['total_seconds']:.0f} s ({meta['total_seconds'] / 60:.1f} min), the sum over the "
              f"{len(done)} runs (data loading, compilation and evaluation included)"]
    if len(done) < len(runs):
        lines.append(f"- Not finished, left out: {', '.join(r.cell.name for r in runs if not r.status.get('done'))}")
    first = done[0].config
    lines += ["", "Shared config (each run's full config is its `config.json`; model.name and seed vary per cell):", "",
              "| key | value |", "| --- | --- |"]
    lines += [f"| {k} | {config_value(first, k)} |" for k in SUMMARY_KEYS]

    lines += ["", "## Results", "",
              "Final training error: 1 − training accuracy over the last epoch, on the batches as they were trained "
              "(train-mode BN, the run's augmentation, the weights moving). Final test error: after the last epoch. "
              "Mean ± sample standard deviation over seeds, in %."]
    for net, rows in table.items():
        lines += ["", f"### {'Plain' if net == 'plain' else 'Residual'} networks", "",
                  "| model | depth | params | train error (%) | test error (%) | seeds | wall time per run (s) |",
                  "| --- | ---: | ---: | ---: | ---: | --- | ---: |"]
        for depth, row in rows.items():
            lines.append(f"| {Cell(net, depth, 0).model} | {depth} | {row['params']:,} | {fmt(row['train'])} | {fmt(row['test'])} | "
                         f"{', '.join(map(str, row['seeds']))} | {row['seconds']:.0f} |")
    lines += ["", "![Figure 6](figure6.png)", "", "## What we observed", ""]
    lines += [f"- {line}" for line in observations(table)]
    if profiles:
        lines += ["", "## Gradient norm per block", "",
                  "From `diag/grad_norm/<block>` (logged every `diagnostics_every_steps`; first seed of each depth): the "
                  "norm of the gradient of the cross-entropy with respect to each block's parameters, on one training "
                  "batch, at the first logged step (initialization) and the last.", "", "![Gradient norms](gradient_norms.png)",
                  "", "Ratio of the stem's gradient norm to the last block's (> 1: the gradient grows towards the input):",
                  "", "| model | at the first logged step | at the last logged step |", "| --- | ---: | ---: |"]
        for cell, steps in profiles.items():
            ratios = [norms["stem"] / norms[[g for g in norms if g.startswith("stage")][-1]] for _, norms in steps]
            lines.append(f"| {cell.model} | " + " | ".join(f"{r:.3g} (step {step})" for r, (step, _) in zip(ratios, steps)) + " |")
    if copy_metrics:
        copy_records(done, root, out / "records")
        lines += ["", f"Each run's metrics.jsonl, config.json and {STATUS_FILE} are in `records/`; "
                  f"`python scripts/ablation.py report --root {out}/records --out {out}` rebuilds the tables and figures from them."]
    (out / "report.md").write_text("\n".join(lines) + "\n")

    cells = [{"name": r.cell.name, "model": r.cell.model, "depth": r.cell.depth, "seed": r.cell.seed,
              "params": r.status["params"], "train_error": r.train_error, "test_error": r.test_error,
              "steps": r.events[-1]["step"], "seconds": r.status["seconds"]} for r in done]
    summary = {**meta, "table": table, "cells": cells}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train the grid's cells (skipping finished ones, resuming the others)")
    run.add_argument("--config", required=True, help="experiment file with get_config(model) and NETS, DEPTHS, SEEDS")
    run.add_argument("--root", type=Path, required=True, help="one workdir per cell is made under it")
    run.add_argument("--nets", nargs="+", choices=tuple(MODEL_PREFIX), help="default: the experiment's NETS")
    run.add_argument("--depths", type=int, nargs="+", help="default: the experiment's DEPTHS")
    run.add_argument("--seeds", type=int, nargs="+", help="default: the experiment's SEEDS")
    run.add_argument("--workers", type=int, default=1, help="processes sharing the grid")
    run.add_argument("--worker-index", type=int, default=0, help="this process's index in [0, workers)")
    run.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every cell, e.g. data.path=/data")
    report = commands.add_parser("report", help="write report.md, figure6.png and summary.json from the runs' records")
    report.add_argument("--root", type=Path, required=True)
    report.add_argument("--out", type=Path, required=True)
    report.add_argument("--copy-metrics", action="store_true", help="copy each run's metrics.jsonl, config.json and status to OUT/records")
    args = parser.parse_args()
    command = shlex.join(["python", *sys.argv])

    if args.command == "report":
        summary = write_report(args.root, args.out, command, args.copy_metrics)
        print(f"wrote {args.out}/report.md ({len(summary['cells'])} runs)")
        return
    experiment = load_experiment(args.config)
    cells = grid(args.nets or experiment.NETS, args.depths or experiment.DEPTHS, args.seeds or experiment.SEEDS)
    mine = partition(cells, args.workers, args.worker_index)
    print(f"[ablation] worker {args.worker_index} of {args.workers}: {len(mine)} of {len(cells)} cells under {args.root}", flush=True)
    run_grid(experiment.get_config, mine, args.root, parse_overrides(args.set), command)


if __name__ == "__main__":
    main()
