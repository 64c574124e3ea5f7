"""Ablation over any config axes: train the grid of runs (the product of the axes' values), then report on it.

    python scripts/ablation.py run --config experiments/ablation_cpu.py --root runs/ablation_cpu
        [--axis KEY=V1,V2 ...] [--seeds 0,1] [--workers N --worker-index I] [--set KEY=VALUE ...]
    python scripts/ablation.py report --root runs/ablation_cpu --out experiments/results/ablation_cpu [--copy-metrics]

An axis is any dotted config key (`--axis model.zero_init_residual=True,False --axis optimizer.learning_rate=0.1,0.05`
is a 2 x 2 grid), `seed` (`--seeds 0,1`), or `config`: the argument of the experiment file's get_config, as in
`--config file.py:ARG` (the ablation files take a model name, since the recipe may depend on it). The grid is the
experiment file's `get_grid()` ({key: [values]}, if it defines one) updated by the --axis options, seed outermost.
Each cell is an ordinary `train_and_evaluate` run in <root>/<cell name>, the name made of its values
(e.g. resnet8-zero_init_residual=True-seed0).
<workdir>/ablation.json records the runner's side (the cell's axes, attempts, wall time, device, commit, parameters,
done): a done cell is skipped, any other resumes from its latest checkpoint. `--workers N --worker-index I` takes every
N-th cell, so N processes (one per GPU, with CUDA_VISIBLE_DEVICES) share the grid without overlap.

The report is a table over the axes (mean ± std over seeds of the final training and test error); when the cells are
plain and residual nets by depth, also the paper's Figure 6, its observations and the gradient norm per block.
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
from typing import Any

import matplotlib
import ml_collections
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from resnet_jax.checkpoints import Checkpoints  # noqa: E402
from resnet_jax.config import ConfigError, check_override_keys  # noqa: E402
from resnet_jax.diagnostics import layer_groups  # noqa: E402
from resnet_jax.metrics import METRICS_FILE, read_metrics, series  # noqa: E402
from resnet_jax.provenance import provenance  # noqa: E402
from resnet_jax.loop import train_and_evaluate  # noqa: E402
from resnet_jax.workdir import config_differences  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG_AXIS = "config"  # the experiment file's get_config argument, not a key of the config
STATUS_FILE = "ablation.json"
GRAD_PREFIX = "diag/grad_norm/"


def hashable(value: Any) -> Any:
    """Lists (as JSON gives back tuples) as tuples, so that values can key a group."""
    return tuple(hashable(v) for v in value) if isinstance(value, list | tuple) else value


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of the grid: its value on each axis, seed included."""

    axes: tuple[tuple[str, Any], ...]

    @property
    def seed(self) -> int:
        return dict(self.axes)["seed"]

    @property
    def name(self) -> str:
        """The values in axis order, each but `config`'s after its key's last part (the whole key if two share it)."""
        keys = [k for k, _ in self.axes if k != "seed"]
        leaves = [k.rsplit(".", 1)[-1] for k in keys]
        parts = [re.sub(r"[^\w.+-]+", "_", str(v)).strip("_") for k, v in self.axes if k != "seed"]
        parts = [part if key == CONFIG_AXIS else f"{key if leaves.count(leaf) > 1 else leaf}={part}"
                 for key, leaf, part in zip(keys, leaves, parts, strict=True)]
        return "-".join([*parts, f"seed{self.seed}"])


def grid(axes: dict[str, list]) -> list[Cell]:
    """Every cell of the axes' product, seed-major (one whole seed finishes before the next begins), the last axis
    varying fastest."""
    keys = ["seed", *(k for k in axes if k != "seed")]
    values = [axes.get("seed", [0]), *(axes[k] for k in keys[1:])]
    cells = [Cell(tuple(zip(keys, map(hashable, combo), strict=True))) for combo in itertools.product(*values)]
    names = [c.name for c in cells]
    if len(set(names)) < len(names):
        raise ValueError(f"two cells of the grid get the same name: {sorted(n for n in names if names.count(n) > 1)}")
    return cells


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


def literal(text: str) -> Any:
    """A Python literal from the command line ('0.05', '(2, 4)', 'True', also 'true'), or the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return {"true": True, "false": False}.get(text, text)


def parse_overrides(pairs: list[str]) -> dict:
    """['optimizer.learning_rate=0.05', 'data.path=/x'] -> {key: Python literal, or the string itself}."""
    return {key: literal(text) for key, _, text in (pair.partition("=") for pair in pairs)}


def parse_axis(text: str) -> tuple[str, list]:
    """'model.widths=(4, 8, 16),(8, 16, 32)' or 'model.zero_init_residual=true,false' -> (key, [values])."""
    key, _, values = text.partition("=")
    if not key or not values:
        raise ValueError(f"--axis {text!r}: give KEY=VALUE1,VALUE2,..., e.g. model.zero_init_residual=True,False")
    try:
        parsed = ast.literal_eval(f"[{values}]")
    except (ValueError, SyntaxError):
        parsed = [literal(v.strip()) for v in values.split(",")]
    return key, parsed


def grid_axes(experiment: ModuleType, axes: list[str], seeds: str | None) -> dict[str, list]:
    """The experiment's get_grid() (if any), updated by the command line's --axis options and --seeds."""
    merged = dict(experiment.get_grid()) if hasattr(experiment, "get_grid") else {}
    merged.update(parse_axis(a) for a in axes)
    if seeds:
        merged["seed"] = [int(s) for s in seeds.split(",")]
    return merged


def cell_config(get_config: Callable, cell: Cell, overrides: dict) -> ml_collections.ConfigDict:
    """The cell's run config: get_config(its `config` value, if it has one), the command line's overrides, then its
    value on every other axis. An axis or override naming no key of the config is refused, with the nearest keys."""
    axes = dict(cell.axes)
    config = get_config(axes.pop(CONFIG_AXIS)) if CONFIG_AXIS in axes else get_config()
    changes = overrides | axes
    check_override_keys([f"--config.{key}" for key in changes])
    config.update_from_flattened_dict(changes)
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


def run_cell(config: ml_collections.ConfigDict, workdir: Path, command: str, axes: dict | None = None) -> str:
    """Train the cell, or resume it, unless it is done; returns what happened, for the status line. `axes`, the
    cell's values, go into its status for the report."""
    status = read_status(workdir)
    if status.get("done"):
        differences = config_differences(workdir, config)
        if differences:
            raise ValueError(f"{workdir} holds a finished run with another config (differs in: "
                             f"{', '.join(differences)}); use another --root, or remove it")
        return f"skipped (done, {status['seconds']:.0f} s)"
    action = "resumed" if (workdir / "config.json").exists() else "started"
    status.update(attempts=status.get("attempts", 0) + 1, command=command, **({"axes": axes} if axes else {}))
    start = time.perf_counter()
    try:
        record = train_and_evaluate(config, workdir)
        status.update(done=True, params=checkpoint_params(workdir), **provenance())  # date: when it finished
    finally:
        elapsed = time.perf_counter() - start
        status["seconds"] = status.get("seconds", 0.0) + elapsed
        if workdir.exists():
            write_status(workdir, status)
    accuracies = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if "accuracy" in k)
    return f"{action}, done in {elapsed:.0f} s: {accuracies}"


def run_grid(get_config: Callable, cells: list[Cell], root: Path, overrides: dict | None = None,
             command: str = "") -> None:
    """Run each cell in <root>/<cell name>, one after another, printing one status line per cell."""
    start = time.perf_counter()
    for i, cell in enumerate(cells, 1):
        outcome = run_cell(cell_config(get_config, cell, overrides or {}), root / cell.name, command, dict(cell.axes))
        print(f"[ablation {i}/{len(cells)}] {cell.name}: {outcome}", flush=True)
    print(f"[ablation] {len(cells)} cell(s) in {time.perf_counter() - start:.0f} s", flush=True)


# --- report ------------------------------------------------------------------------------------------------


def natural(value: Any) -> tuple:
    """Sort key that puts resnet8 before resnet20 and False before True."""
    return tuple((0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", str(value)))


@dataclasses.dataclass(eq=False)
class Run:
    """A cell's records, as the report reads them."""

    name: str
    events: list[dict]
    config: dict
    status: dict

    @property
    def axes(self) -> dict[str, Any]:
        """The cell's value on each axis, seed included, as the runner recorded it."""
        return {k: hashable(v) for k, v in self.status["axes"].items()}

    @property
    def seed(self) -> int:
        return self.axes["seed"]

    @property
    def group(self) -> tuple[tuple[str, Any], ...]:
        """The cell's values but the seed: the runs of one group are one row of the table."""
        return tuple((k, v) for k, v in self.axes.items() if k != "seed")

    @property
    def model(self) -> str:
        return self.config["model"]["name"]

    @property
    def kind(self) -> tuple[str, int] | None:
        """('plain' or 'residual', depth) of the model, or None if it is no plain<depth> or resnet<depth>."""
        match = re.fullmatch(r"(plain|resnet)(\d+)", self.model)
        if not match:
            return None
        residual = self.config["model"].get("residual")  # an explicit setting outranks the zoo name
        is_residual = match[1] == "resnet" if residual is None else bool(residual)
        return ("residual" if is_residual else "plain"), int(match[2])

    @property
    def train_error(self) -> float:
        """Training error (%) over the last epoch: the mean over its training steps, as trained."""
        return 100 * (1 - series(self.events, "train_epoch/accuracy")[1][-1])

    @property
    def test_error(self) -> float:
        """Test error (%) after the last epoch."""
        return 100 * (1 - series(self.events, "test/accuracy")[1][-1])


def load_runs(root: Path) -> list[Run]:
    """Every cell folder under root that the runner started and that has logged something, by its values."""
    runs = [Run(workdir.name, read_metrics(workdir), json.loads((workdir / "config.json").read_text()),
                read_status(workdir))
            for workdir in root.iterdir() if (workdir / METRICS_FILE).exists() and (workdir / STATUS_FILE).exists()]
    return sorted(runs, key=lambda r: tuple(natural(v) for _, v in r.group) + (r.seed,))


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None


def summarize(runs: list[Run]) -> list[dict]:
    """One row per group of runs that differ only in seed: {'axes', 'model', 'train', 'test': (mean, std) in %,
    'params', 'seeds', 'seconds'}, in the runs' order."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    return [{"axes": dict(key), "model": group[0].model,
             "train": mean_std([r.train_error for r in group]), "test": mean_std([r.test_error for r in group]),
             "params": group[0].status["params"], "seeds": [r.seed for r in group],
             "seconds": float(np.mean([r.status["seconds"] for r in group]))}
            for key, group in groups.items()]


def by_net_and_depth(runs: list[Run], table: list[dict]) -> dict[str, dict[int, dict]] | None:
    """net -> depth -> row when the rows are plain and residual nets by depth, one row each (Figure 6's grid);
    else None."""
    kinds = {run.group: run.kind for run in runs}
    if None in kinds.values() or len(set(kinds.values())) < len(kinds):
        return None
    nets: dict[str, dict[int, dict]] = {}
    for row in table:
        net, depth = kinds[tuple(row["axes"].items())]
        nets.setdefault(net, {})[depth] = row
    return {net: dict(sorted(rows.items())) for net, rows in sorted(nets.items())}


def by_variant_and_depth(table: list[dict]) -> dict[str, dict[int, dict]] | None:
    """variant -> depth -> row when the grid's only axis is `config` and each value is <variant><depth> (e.g.
    'fixup56': experiments/trainability_cpu.py), one row each; else None."""
    cells = [re.fullmatch(r"([a-z_]+?)(\d+)", str(row["axes"].get(CONFIG_AXIS, ""))) for row in table]
    if any(m is None for m in cells) or any(set(row["axes"]) != {CONFIG_AXIS} for row in table):
        return None
    variants: dict[str, dict[int, dict]] = {}
    for match, row in zip(cells, table, strict=True):
        variants.setdefault(match[1], {})[int(match[2])] = row
    return {variant: dict(sorted(rows.items())) for variant, rows in variants.items()}


def plot_depth_sweep(variants: dict[str, dict[int, dict]], path: Path) -> None:
    """Final training error (left) and test error (right) against depth, one line per variant, seed spread as bars."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True, constrained_layout=True)
    for ax, key, title in zip(axes, ("train", "test"), ("Final training error", "Final test error"), strict=True):
        for i, (variant, rows) in enumerate(variants.items()):
            depths = list(rows)
            means = [rows[d][key][0] for d in depths]
            spreads = [rows[d][key][1] or 0.0 for d in depths]
            ax.errorbar(depths, means, yerr=spreads, marker="o", ms=4, capsize=3, color=f"C{i}", label=variant)
        ax.set_xscale("log")
        ax.set_xticks(sorted({d for rows in variants.values() for d in rows}),
                      labels=map(str, sorted({d for rows in variants.values() for d in rows})))
        ax.minorticks_off()
        ax.set(title=title, xlabel="depth (layers)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("error (%): mean, bars = std over seeds")
    axes[0].legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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


def observations(nets: dict[str, dict[int, dict]]) -> list[str]:
    """Sentences computed from the table: does depth raise the plain nets' training error, and the residual nets'?"""
    lines, change, rises = [], {}, {}
    for net in ("plain", "residual"):
        rows = nets.get(net, {})
        if len(rows) < 2:
            continue
        name = {d: row["model"] for d, row in rows.items()}
        (low, shallow), (high, deep) = list(rows.items())[0], list(rows.items())[-1]
        word = compare(shallow["train"], deep["train"])
        change[net] = (word, deep["train"][0] - shallow["train"][0])
        steps = [(f"{name[a]} → {name[b]}", rows[b]["train"][0] - rows[a]["train"][0],
                  compare(rows[a]["train"], rows[b]["train"])) for a, b in itertools.pairwise(rows)]
        rises[net] = [f"{step} ({delta:+.2f} points)" for step, delta, w in steps if w == "higher"]
        by_depth = ", ".join(f"{step} {delta:+.2f} ({w})" for step, delta, w in steps)
        test_word = compare(shallow["test"], deep["test"])
        lines.append(f"**{net.capitalize()}:** {name[high]} ends with {word} training error {than(word)} {name[low]} "
                     f"({fmt(deep['train'])}% vs {fmt(shallow['train'])}%): {MEANING[net, word]}. Depth by depth, in "
                     f"points: {by_depth}. Test error is {test_word} "
                     f"({fmt(deep['test'])}% vs {fmt(shallow['test'])}%).")
    for depth in sorted(set(nets.get("plain", {})) & set(nets.get("residual", {}))):
        plain, residual = nets["plain"][depth], nets["residual"][depth]
        train_word, test_word = compare(plain["train"], residual["train"]), compare(plain["test"], residual["test"])
        lines.append(f"At depth {depth}, {residual['model']} ends with {train_word} training error {than(train_word)} "
                     f"{plain['model']} ({fmt(residual['train'])}% vs {fmt(plain['train'])}%) and {test_word} test "
                     f"error ({fmt(residual['test'])}% vs {fmt(plain['test'])}%).")
    if len(change) == 2:
        (plain_word, plain_delta), (residual_word, residual_delta) = change["plain"], change["residual"]
        if plain_word != "higher":
            verdict = "not reproduced: the deeper plain net does not (yet) train worse"
        elif residual_word != "higher":
            verdict = "reproduced: the deeper plain net trains worse, the deeper residual net does not"
        else:
            verdict = "partly reproduced: both deeper nets train worse"
        caveat = (f"; but between neighbouring depths, {', '.join(rises['residual'])} does raise it"
                  if rises["residual"] else "")
        lines.append(f"**Verdict:** the paper's degradation effect is {verdict} (training error from the shallowest to "
                     f"the deepest net: plain {plain_delta:+.2f} points, residual {residual_delta:+.2f} "
                     f"points{caveat}).")
    return lines


def spread_note(table: list[dict]) -> str:
    if any(len(row["seeds"]) < 2 for row in table):
        return ("With one seed per cell there is no estimate of seed-to-seed spread; differences of a fraction of a "
                "point may be noise.")
    return "Differences no larger than the larger of the two seed standard deviations are called about the same."


def error_curve(runs: list[Run], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(iterations, error % averaged over the runs) of the events holding `key` (an accuracy)."""
    curves = [series(r.events, key, x="step") for r in runs]
    n = min(len(values) for _, values in curves)
    iterations = np.asarray(curves[0][0][:n])
    return iterations, 100 * (1 - np.mean([values[:n] for _, values in curves], axis=0))


def depth_colors(runs: list[Run]) -> dict[int, tuple]:
    depths = sorted({r.kind[1] for r in runs})
    return dict(zip(depths, plt.cm.viridis(np.linspace(0, 0.85, len(depths))), strict=True))


def plot_figure6(runs: list[Run], path: Path) -> None:
    """Training error (dashed) and test error (solid) vs iterations; plain left, residual right, one colour per
    depth."""
    colors = depth_colors(runs)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True, constrained_layout=True)
    top = 0.0
    for ax, net in zip(axes, ("plain", "residual"), strict=True):
        for depth, color in colors.items():
            group = [r for r in runs if r.kind == (net, depth)]
            if not group:
                continue
            x, train = error_curve(group, "train/accuracy")
            ax.plot(x, train, "--", color=color, lw=1.1)
            x, test = error_curve(group, "test/accuracy")
            ax.plot(x, test, "-", color=color, lw=2, marker="o", ms=3, label=group[0].model)
            top = max(top, train[-1], test[-1])
        seeds = sorted({r.seed for r in runs if r.kind[0] == net})
        ax.set_title(f"{net.capitalize()} networks (mean of {len(seeds)} seed{'s' * (len(seeds) > 1)})")
        ax.set_xlabel("iterations")
        ax.grid(alpha=0.3)
        styles = [Line2D([], [], color="k", ls="--", lw=1.1, label="training error"),
                  Line2D([], [], color="k", lw=2, label="test error")]
        ax.legend(handles=ax.get_legend_handles_labels()[0] + styles, loc="upper right")
    axes[0].set_ylabel("error (%)")
    axes[0].set_ylim(0, min(100, max(5.0, 2.5 * top)))  # the final errors in the lower part, as in the paper
    fig.suptitle(f"Training error (dashed, each {runs[0].config['log_every_steps']} iterations) and test error (solid, "
                 "after each epoch) vs iterations, as in He et al. 2015, Figure 6")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def gradient_profiles(runs: list[Run]) -> dict[Run, list[tuple[int, dict[str, float]]]]:
    """Gradient norm per block (stem to head, in forward order) at the first and last logged diagnostics step, for the
    first seed of each net and depth that logged diagnostics: run -> [(step, {group: norm}), (step, {group: norm})]."""
    profiles = {}
    for run in runs:
        diag = [e for e in run.events if any(k.startswith(GRAD_PREFIX) for k in e)]
        if diag and all(r.kind != run.kind for r in profiles):
            names = (k.removeprefix(GRAD_PREFIX) for k in diag[0] if k.startswith(GRAD_PREFIX))
            groups = layer_groups(dict.fromkeys(names))
            profiles[run] = [(e["step"], {g: e[GRAD_PREFIX + g] for g in groups}) for e in (diag[0], diag[-1])]
    return profiles


def plot_gradients(profiles: dict[Run, list[tuple[int, dict[str, float]]]], colors: dict[int, tuple],
                   path: Path) -> None:
    """The gradient profiles, plain left and residual right: solid at the first logged step, dashed at the last."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True, constrained_layout=True)
    for ax, net in zip(axes, ("plain", "residual"), strict=True):
        for run, steps in profiles.items():
            if run.kind[0] == net:
                for (step, norms), style in zip(steps, ("-", "--"), strict=True):
                    ax.plot(list(norms.values()), style, color=colors[run.kind[1]], lw=1.3, marker="o", ms=2,
                            label=f"{run.model}, step {step}")
        ax.set_yscale("log")
        ax.set_title(f"{net.capitalize()} networks: gradient norm per block")
        ax.set_xlabel("block index (0 = stem, last = head)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("||dL/dw|| of the block")
    fig.suptitle("Gradient norm per block at the first (solid) and last (dashed) logged step (train-mode BN, one seed)")
    fig.savefig(path, dpi=120)
    plt.close(fig)


SUMMARY_KEYS = ("model.name", "data.name", "data.source", "data.train_subset", "data.val_size", "data.image_size",
                "data.augment", "model.widths", "model.shortcut", "batch_size", "num_steps", "num_epochs",
                "optimizer.name", "optimizer.learning_rate", "optimizer.momentum", "optimizer.weight_decay",
                "schedule.name", "schedule.unit", "schedule.boundaries", "schedule.scales", "schedule.warmup",
                "log_every_steps", "diagnostics_every_steps")


def config_value(config: dict, key: str) -> Any:
    for part in key.split("."):
        config = config.get(part, {}) if isinstance(config, dict) else {}
    return "" if config == {} else config


def copy_records(runs: list[Run], root: Path, dest: Path) -> None:
    """Each run's small records (not its checkpoints) to dest/<cell name>/."""
    for run in runs:
        (dest / run.name).mkdir(parents=True, exist_ok=True)
        for name in (METRICS_FILE, "config.json", STATUS_FILE):
            shutil.copy(root / run.name / name, dest / run.name / name)


def results_table(table: list[dict]) -> list[str]:
    """The markdown table: one column per axis, one row per group of seeds."""
    keys = list(table[0]["axes"])
    lines = ["| " + " | ".join([*keys, "params", "train error (%)", "test error (%)", "seeds", "wall time per run (s)"])
             + " |", "| " + " | ".join(["---"] * len(keys) + ["---:"] * 3 + ["---", "---:"]) + " |"]
    for row in table:
        values = [str(row["axes"][k]) for k in keys]
        lines.append("| " + " | ".join([*values, f"{row['params']:,}", fmt(row["train"]), fmt(row["test"]),
                                        ", ".join(map(str, row["seeds"])), f"{row['seconds']:.0f}"]) + " |")
    return lines


def write_report(root: Path, out: Path, command: str, copy_metrics: bool = False) -> dict:
    """report.md and summary.json in `out`; figure6.png and gradient_norms.png (if diagnostics were logged) when the
    cells are plain and residual nets by depth; depth_sweep.png when they are <variant><depth> configs."""
    runs = load_runs(root)
    done = [r for r in runs if r.status.get("done")]
    if not done:
        raise SystemExit(f"no finished run under {root}")
    out.mkdir(parents=True, exist_ok=True)
    table = summarize(done)
    axes = list(table[0]["axes"])
    nets = by_net_and_depth(done, table)
    profiles = gradient_profiles(done) if nets else {}
    if nets:
        plot_figure6(done, out / "figure6.png")
    if profiles:
        plot_gradients(profiles, depth_colors(done), out / "gradient_norms.png")
    variants = by_variant_and_depth(table)
    if variants:
        plot_depth_sweep(variants, out / "depth_sweep.png")
    report = provenance()
    meta = {
        "run_commands": sorted({r.status["command"] for r in done}),
        "report_command": command,
        "devices": sorted({f"{r.status['device']}; host CPU {r.status['cpu']}" for r in done}),
        "commits": sorted({r.status["commit"] for r in done}),
        "finished": [min(r.status["date"] for r in done), max(r.status["date"] for r in done)],
        "load_average_1m": [min(r.status["load_average_1m"] for r in done),
                            max(r.status["load_average_1m"] for r in done)],
        "total_seconds": sum(r.status["seconds"] for r in done),
        "report": report,
    }

    title = "Plain vs residual networks: depth ablation" if nets else f"Ablation over {', '.join(axes)}"
    lines = [f"# {title} ({out.name})", "", "## How it was produced", ""]
    lines += [f"- Runs: `{c}`" for c in meta["run_commands"]]
    lines += [f"- Report: `{command}`",
              f"- Device: {'; '.join(meta['devices'])}",
              f"- Runs finished {meta['finished'][0]} to {meta['finished'][1]} at commit {', '.join(meta['commits'])} "
              f"(1-minute load average at their ends: {meta['load_average_1m'][0]} to {meta['load_average_1m'][1]}); "
              f"report {report['date']} at {report['commit']}; jax {report['versions']['jax']}, "
              f"flax {report['versions']['flax']}",
              f"- Wall time: {meta['total_seconds']:.0f} s ({meta['total_seconds'] / 60:.1f} min), the sum over the "
              f"{len(done)} runs (data loading, compilation and evaluation included)"]
    if len(done) < len(runs):
        lines.append(f"- Not finished, left out: {', '.join(r.name for r in runs if not r.status.get('done'))}")
    first = done[0].config
    lines += ["", f"Shared config (each run's full config is its `config.json`; per cell vary: {', '.join(axes)}, "
              "seed):", "", "| key | value |", "| --- | --- |"]
    shared = [k for k in SUMMARY_KEYS if len({json.dumps(config_value(r.config, k)) for r in done}) == 1]
    lines += [f"| {k} | {config_value(first, k)} |" for k in shared]

    lines += ["", "## Results", "",
              "Final training error: 1 − training accuracy over the last epoch, on the batches as they were trained "
              "(train-mode BN, the run's augmentation, the weights moving). Final test error: after the last epoch. "
              f"Mean ± sample standard deviation over seeds, in %. `{CONFIG_AXIS}` is the experiment file's "
              "get_config argument.", "", *results_table(table)]
    if variants:
        lines += ["", "![Final errors against depth](depth_sweep.png)"]
    if nets:
        lines += ["", "![Figure 6](figure6.png)", "", "## What we observed", ""]
        lines += [f"- {line}" for line in observations(nets)]
    lines += ["", f"{spread_note(table)}"]
    if profiles:
        lines += ["", "## Gradient norm per block", "",
                  "From `diag/grad_norm/<block>` (logged every `diagnostics_every_steps`; first seed of each depth): "
                  "the norm of the gradient of the cross-entropy with respect to each block's parameters, on one "
                  "training batch, at the first logged step (initialization) and the last.", "",
                  "![Gradient norms](gradient_norms.png)", "",
                  "Ratio of the stem's gradient norm to the last block's (> 1: the gradient grows towards the input):",
                  "", "| model | at the first logged step | at the last logged step |", "| --- | ---: | ---: |"]
        for run, steps in profiles.items():
            ratios = [norms["stem"] / norms[[g for g in norms if g.startswith("stage")][-1]] for _, norms in steps]
            lines.append(f"| {run.model} | " + " | ".join(f"{r:.3g} (step {step})"
                                                          for r, (step, _) in zip(ratios, steps, strict=True)) + " |")
    records = out / "records"
    if copy_metrics and root.resolve() != records.resolve():
        copy_records(done, root, records)
    if records.is_dir():
        lines += ["", f"Each run's metrics.jsonl, config.json and {STATUS_FILE} are in `records/`; `python "
                  f"scripts/ablation.py report --root {out}/records --out {out}` rebuilds the tables and figures from "
                  "them."]
    (out / "report.md").write_text("\n".join(lines) + "\n")

    cells = [{"name": r.name, "axes": r.axes, "model": r.model, "seed": r.seed, "params": r.status["params"],
              "train_error": r.train_error, "test_error": r.test_error, "steps": r.events[-1]["step"],
              "seconds": r.status["seconds"]} for r in done]
    summary = {**meta, "table": table, "cells": cells}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train the grid's cells (skipping finished ones, resuming the others)")
    run.add_argument("--config", required=True, help="experiment file with get_config() and, optionally, get_grid()")
    run.add_argument("--root", type=Path, required=True, help="one workdir per cell is made under it")
    run.add_argument("--axis", action="append", default=[], metavar="KEY=V1,V2",
                     help="an axis of the grid (repeatable): a dotted config key, or 'config' (get_config's argument)")
    run.add_argument("--seeds", metavar="S1,S2", help="the seed axis, e.g. 0,1 (default: the grid's, else 0)")
    run.add_argument("--workers", type=int, default=1, help="processes sharing the grid")
    run.add_argument("--worker-index", type=int, default=0, help="this process's index in [0, workers)")
    run.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                     help="config overrides for every cell, e.g. data.path=/data")
    report = commands.add_parser("report", help="write report.md, summary.json (and figures) from the runs' records")
    report.add_argument("--root", type=Path, required=True)
    report.add_argument("--out", type=Path, required=True)
    report.add_argument("--copy-metrics", action="store_true",
                        help="copy each run's metrics.jsonl, config.json and status to OUT/records")
    args = parser.parse_args()
    command = shlex.join(["python", *sys.argv])

    if args.command == "report":
        summary = write_report(args.root, args.out, command, args.copy_metrics)
        print(f"wrote {args.out}/report.md ({len(summary['cells'])} runs)")
        return
    experiment = load_experiment(args.config)
    axes, overrides = grid_axes(experiment, args.axis, args.seeds), parse_overrides(args.set)
    if set(axes) & set(overrides):
        parser.error(f"--set {', '.join(sorted(set(axes) & set(overrides)))}: that key is an axis of the grid")
    cells = grid(axes)
    try:  # an unknown key fails here, before anything trains
        cell_config(experiment.get_config, cells[0], overrides)
    except ConfigError as error:
        parser.error(str(error))
    mine = partition(cells, args.workers, args.worker_index)
    print(f"[ablation] worker {args.worker_index} of {args.workers}: {len(mine)} of {len(cells)} cells under "
          f"{args.root}; axes: {', '.join(axes)}", flush=True)
    run_grid(experiment.get_config, mine, args.root, overrides, command)


if __name__ == "__main__":
    main()
