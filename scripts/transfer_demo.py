"""Transfer to unseen classes, measured: pretrain on Fashion-MNIST 0-4, transfer to 5-9 with 10, 100 or all labels.

    python scripts/transfer_demo.py run --root runs/transfer_fashion [--seeds 0 1 2] [--shots 10 100 0]
    python scripts/transfer_demo.py report --root runs/transfer_fashion --out experiments/results/transfer

`run` trains, for each seed, a backbone on classes 0-4 (<root>/pretrain-seed<s>), then for each number of shots and
seed the four methods of experiments/transfer_fashion.py one after another (<root>/<method>-<shots>shot-seed<s>,
starting from that seed's backbone): scratch, frozen, frozen_cached, finetune; last, frozen and frozen_cached again on
all labels for CACHING_EPOCHS epochs (<root>/<method>-allshot-<E>ep-seed<s>). frozen and frozen_cached always run back
to back, so their time ratio compares runs made under the same machine load. Every run is an ordinary
`train_and_evaluate` run; scripts/ablation.py's runner records its wall time, device, commit and load (a finished run
is skipped, an unfinished one resumes). `report` writes report.md, transfer.png, summary.json and, with
--copy-records, each run's records to <out>/records/.
"""

import argparse
import json
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from resnet_jax.metrics import METRICS_FILE, read_metrics  # noqa: E402
from resnet_jax.provenance import provenance  # noqa: E402
from scripts.ablation import (  # noqa: E402
    STATUS_FILE,
    fmt,
    load_experiment,
    mean_std,
    read_status,
    run_cell,
    write_status,
)

EXPERIMENT = ROOT / "experiments" / "transfer_fashion.py"
LABELS = {"scratch": "from scratch", "frozen": "frozen backbone + head",
          "frozen_cached": "frozen + head, cached features", "finetune": "fine-tune all (backbone at 0.1x)"}


def shots_name(shots: int) -> str:
    return "all" if shots == 0 else str(shots)


def plan(seeds: list[int], shots_list: list[int]) -> list[tuple[str, str, int]]:
    """(workdir name, config argument, seed) in running order: the backbones first, then shots x seed x method."""
    runs = [(f"pretrain-seed{s}", "pretrain", s) for s in seeds]
    experiment = load_experiment(EXPERIMENT)
    runs += [(f"{m}-{shots_name(n)}shot-seed{s}", f"{m},{n}", s)
             for n in shots_list for s in seeds for m in experiment.METHODS]
    epochs = experiment.CACHING_EPOCHS
    runs += [(f"{m}-allshot-{epochs}ep-seed{s}", f"{m},0,{epochs}", s)
             for s in seeds for m in ("frozen", "frozen_cached")]
    return runs


def run_config(arg: str, seed: int, root: Path):
    config = load_experiment(EXPERIMENT).get_config(arg)
    config.seed = config.data.subset_seed = seed
    if config.init_from.format:
        config.init_from.path = str(root / f"pretrain-seed{seed}")
    return config


def run_all(root: Path, seeds: list[int], shots_list: list[int], command: str) -> None:
    runs = plan(seeds, shots_list)
    start = time.perf_counter()
    for i, (name, arg, seed) in enumerate(runs, 1):
        done, cpu = read_status(root / name).get("done"), time.process_time()
        outcome = run_cell(run_config(arg, seed, root), root / name, command)
        # CPU time of this process (all its threads): far less sensitive to the machine's load than wall time
        if not done:
            write_status(root / name, read_status(root / name) | {"cpu_seconds": time.process_time() - cpu})
        print(f"[transfer {i}/{len(runs)}] {name}: {outcome}", flush=True)
    print(f"[transfer] {len(runs)} runs in {time.perf_counter() - start:.0f} s", flush=True)


# --- report ---------------------------------------------------------------------------------------------------


def load_run(workdir: Path) -> dict | None:
    """A finished run's records: name parts, final metrics, wall time, steady step throughput; None if unfinished."""
    status = read_status(workdir)
    if not status.get("done"):
        return None
    events = read_metrics(workdir)
    config = json.loads((workdir / "config.json").read_text())
    final = [e for e in events if "test/accuracy" in e][-1]
    # Steady state: the train logs after the first epoch (which holds the compilation).
    rates = [e["images_per_sec"] for e in events if "images_per_sec" in e and e["epoch"] > 1]
    method, shots = (workdir.name.split("-")[0], config["data"]["train_per_class"])
    return {"name": workdir.name, "method": method, "shots": shots, "epochs": config["num_epochs"],
            "seed": config["seed"], "status": status,
            "test_accuracy": 100 * final["test/accuracy"], "seconds": status["seconds"],
            "cpu_seconds": status.get("cpu_seconds"), "steps": final["step"],
            "train_images": final["step"] * config["batch_size"],
            "images_per_sec": statistics.median(rates) if rates else None}


def summarize(runs: list[dict], lengths: dict) -> dict:
    """(method, shots) -> accuracy (mean, std), wall time (mean, std), seeds, over the runs of the table's lengths
    (`lengths`: shots -> (batch, epochs)); plus every cached/uncached pair."""
    table = {}
    for run in runs:
        if run["epochs"] == lengths[run["shots"]][1]:
            table.setdefault((run["method"], run["shots"]), []).append(run)
    cells = {key: {"accuracy": mean_std([r["test_accuracy"] for r in group]),
                   "seconds": mean_std([r["seconds"] for r in group]),
                   "cpu_seconds": (mean_std([r["cpu_seconds"] for r in group])
                                   if all(r["cpu_seconds"] for r in group) else None),
                   "seeds": sorted(r["seed"] for r in group)}
             for key, group in table.items()}
    by_name = {r["name"]: r for r in runs}
    pairs = []
    for run in runs:
        cached = by_name.get(run["name"].replace("frozen-", "frozen_cached-", 1))
        if run["method"] == "frozen" and cached:
            pairs.append({"shots": run["shots"], "epochs": run["epochs"], "seed": run["seed"],
                          "seconds": (run["seconds"], cached["seconds"]),
                          "cpu_seconds": (run["cpu_seconds"], cached["cpu_seconds"]),
                          "wall_ratio": run["seconds"] / cached["seconds"],
                          "cpu_ratio": (run["cpu_seconds"] / cached["cpu_seconds"]
                                        if run["cpu_seconds"] and cached["cpu_seconds"] else None),
                          "step_ratio": (cached["images_per_sec"] / run["images_per_sec"]
                                         if cached["images_per_sec"] and run["images_per_sec"] else None),
                          "accuracy_difference": cached["test_accuracy"] - run["test_accuracy"]})
    return {"cells": cells, "pairs": pairs}


def seconds(stat: tuple[float, float | None] | None) -> str:
    if stat is None:
        return "—"
    mean, std = stat
    return f"{mean:.0f}" if std is None else f"{mean:.0f} ± {std:.0f}"


def plot(runs: list[dict], summary: dict, methods: list[str], shots_list: list[int], path: Path) -> None:
    """Test accuracy against labels per class (left) and CPU time per run (right), mean and spread over seeds."""
    fig, (acc_ax, time_ax) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    positions = range(len(shots_list))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        keys = [(method, n) for n in shots_list if (method, n) in summary["cells"]]
        x = [shots_list.index(n) for _, n in keys]
        acc = [summary["cells"][k]["accuracy"] for k in keys]
        cached = method == "frozen_cached"  # on top of frozen's line (the same accuracy): drawn dashed to stay visible
        acc_ax.errorbar(x, [m for m, _ in acc], yerr=[s or 0 for _, s in acc], marker="x" if cached else "o",
                        ls="--" if cached else "-", capsize=3, label=LABELS[method])
        secs = [summary["cells"][k]["cpu_seconds"] or summary["cells"][k]["seconds"] for k in keys]
        time_ax.bar([p + (i - (len(methods) - 1) / 2) * width for p in x], [m for m, _ in secs], width,
                    yerr=[s or 0 for _, s in secs], capsize=2, label=LABELS[method])
    for ax in (acc_ax, time_ax):
        ax.set_xticks(list(positions), [f"{shots_name(n)} per class" for n in shots_list])
        ax.set_xlabel("labelled training images of classes 5-9")
        ax.grid(alpha=0.3)
    acc_ax.set_ylabel("test accuracy on classes 5-9 (%)")
    acc_ax.legend()
    time_ax.set_ylabel("CPU time per run (s, the process's threads)")
    seeds = sorted({r["seed"] for r in runs})
    fig.suptitle("Fashion-MNIST: backbone pretrained on classes 0-4, transferred to classes 5-9 "
                 f"(mean ± std over seeds {seeds})")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(root: Path, out: Path, command: str, copy_records: bool) -> dict:
    runs = [r for d in sorted(root.iterdir()) if d.is_dir() and (r := load_run(d))]
    transfer_runs = [r for r in runs if r["method"] != "pretrain"]
    if not transfer_runs:
        raise SystemExit(f"no finished transfer run under {root}")
    out.mkdir(parents=True, exist_ok=True)
    experiment = load_experiment(EXPERIMENT)
    methods = [m for m in experiment.METHODS if any(r["method"] == m for r in transfer_runs)]
    shots_list = [n for n in experiment.SHOTS if any(r["shots"] == n for r in transfer_runs)]
    summary = summarize(transfer_runs, experiment.LENGTH)
    plot(transfer_runs, summary, methods, shots_list, out / "transfer.png")
    report = provenance()
    statuses = [r["status"] for r in runs]
    loads = [s["load_average_1m"] for s in statuses]
    total = sum(s["seconds"] for s in statuses)
    cpu_total = sum(s.get("cpu_seconds", 0.0) for s in statuses)
    pretrain = [r for r in runs if r["method"] == "pretrain"]

    lines = ["# Transfer to unseen classes: Fashion-MNIST 0-4 → 5-9", "", "## How it was produced", "",
             *[f"- Runs: `{c}`" for c in sorted({s["command"] for s in statuses})],
             f"- Report: `{command}`",
             f"- Device: {statuses[0]['device']}; host CPU {statuses[0]['cpu']}",
             f"- Runs finished {min(s['date'] for s in statuses)} to {max(s['date'] for s in statuses)} at commit "
             f"{', '.join(sorted({s['commit'] for s in statuses}))}; report {report['date']} at {report['commit']}; "
             f"jax {report['versions']['jax']}, flax {report['versions']['flax']}",
             f"- **Machine load:** a shared 2-core machine, busy with other work: the 1-minute load average at the end "
             f"of each run was {min(loads):.1f} to {max(loads):.1f} (median {statistics.median(loads):.1f}). "
             "Wall times are those of a loaded machine and only comparable within this study; ratios come from runs "
             "made back to back.",
             f"- Wall time: {total:.0f} s ({total / 60:.1f} min) for all {len(runs)} runs ({len(pretrain)} backbones, "
             f"{len(transfer_runs)} transfer runs), data loading, compilation, evaluation and checkpoints included; "
             f"CPU time {cpu_total:.0f} s ({cpu_total / 60:.1f} min) over the runs that recorded it "
             f"({sum('cpu_seconds' in s for s in statuses)} of {len(statuses)})",
             "",
             "Setup (experiments/transfer_fashion.py): " + experiment.__doc__.split("\n\n")[2].replace("\n", " "),
             "",
             "```", experiment.__doc__.split("\n\n")[3].strip(), "```", ""]
    if pretrain:
        acc = mean_std([r["test_accuracy"] for r in pretrain])
        lines += [f"Backbones (classes 0-4, {pretrain[0]['steps']} steps): test accuracy {fmt(acc)}% on classes 0-4, "
                  f"{statistics.mean(r['seconds'] for r in pretrain):.0f} s per run.", ""]
    seeds = sorted({r["seed"] for r in transfer_runs})
    header = "| method | " + " | ".join(f"{shots_name(n)} per class" for n in shots_list) + " |"
    rule = "| --- | " + " | ".join("---:" for _ in shots_list) + " |"

    def table(cell_text) -> list[str]:
        return [header, rule] + [f"| {LABELS[m]} | " + " | ".join(
            cell_text(c) if (c := summary["cells"].get((m, n))) else "—" for n in shots_list) + " |" for m in methods]

    lines += ["## Results", "",
              "Test accuracy (%) on the 5,000 test images of classes 5-9 after the last epoch (no model selection), "
              f"mean ± sample standard deviation over seeds {seeds} (the seed also draws the few-shot subset):", "",
              *table(lambda c: fmt(c["accuracy"])), "",
              "Time per run, whole run (data, compilation, training, an evaluation and a checkpoint after each epoch): "
              "wall seconds on the loaded machine / CPU seconds of the process (all threads; far less sensitive to "
              "the load than wall time), mean ± std over the seeds:", "",
              *table(lambda c: f"{seconds(c['seconds'])} / {seconds(c['cpu_seconds'])}")]
    lines += ["", "![accuracy and CPU time](transfer.png)", ""]
    if summary["pairs"]:
        lines += ["## Feature caching", "",
                  "Each frozen run and its cached twin ran back to back (same seed, same steps). CPU and wall time: "
                  "whole run (uncached / cached, mean over seeds), and their ratios. Step ratio: median training "
                  "throughput (wall) after the first epoch, cached / uncached. Accuracy difference: cached − "
                  "uncached (the same steps: 0 up to float rounding). A whole run also loads data, compiles, "
                  "evaluates and saves a checkpoint after every epoch: caching saves the backbone's forward pass of "
                  "every training step, so it pays more the more epochs the head trains.", "",
                  "| labels per class | epochs | CPU s (uncached / cached) | CPU-time ratio | wall s | wall-time ratio "
                  "| step ratio | accuracy difference (points) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for n, epochs in sorted({(p["shots"], p["epochs"]) for p in summary["pairs"]},
                                key=lambda k: (shots_list.index(k[0]), k[1])):
            group = [p for p in summary["pairs"] if (p["shots"], p["epochs"]) == (n, epochs)]
            if group:

                def ratio(key, group=group):
                    values = [p[key] for p in group if p[key]]
                    return fmt(mean_std(values)) + "x" if values else "—"

                def mean(key, i, group=group):
                    return f"{statistics.mean(p[key][i] for p in group):.0f}" if all(p[key][i] for p in group) else "—"

                lines.append(f"| {shots_name(n)} | {epochs} | {mean('cpu_seconds', 0)} / {mean('cpu_seconds', 1)} | "
                             f"{ratio('cpu_ratio')} | {mean('seconds', 0)} / {mean('seconds', 1)} | "
                             f"{ratio('wall_ratio')} | "
                             f"{ratio('step_ratio')} | "
                             f"{max(abs(p['accuracy_difference']) for p in group):.2f} at most |")
        lines.append("")
    if copy_records:
        for run in runs:
            dest = out / "records" / run["name"]
            dest.mkdir(parents=True, exist_ok=True)
            for name in (METRICS_FILE, "config.json", STATUS_FILE):
                shutil.copy(root / run["name"] / name, dest / name)
        lines += [f"Each run's metrics.jsonl, config.json and {STATUS_FILE} are in `records/`; "
                  f"`python scripts/transfer_demo.py report --root {out}/records --out {out}` rebuilds this report "
                  "from them.", ""]
    (out / "report.md").write_text("\n".join(lines))
    flat = {f"{m}/{shots_name(n)}": c for (m, n), c in summary["cells"].items()}
    result = {"runs": [{k: v for k, v in r.items() if k != "status"} for r in runs], "cells": flat,
              "pairs": summary["pairs"], "total_seconds": total, "report": report}
    (out / "summary.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train the backbones and the transfer runs (skipping finished ones)")
    run.add_argument("--root", type=Path, required=True)
    run.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the experiment's SEEDS")
    run.add_argument("--shots", type=int, nargs="+", default=None, help="labels per class, 0 = all; default: SHOTS")
    report = commands.add_parser("report", help="write report.md, transfer.png and summary.json")
    report.add_argument("--root", type=Path, required=True)
    report.add_argument("--out", type=Path, required=True)
    report.add_argument("--copy-records", action="store_true", help="copy each run's records to OUT/records")
    args = parser.parse_args()
    command = shlex.join(["python", *sys.argv])
    if args.command == "report":
        result = write_report(args.root, args.out, command, args.copy_records)
        print(f"wrote {args.out}/report.md ({len(result['runs'])} runs)")
        return
    experiment = load_experiment(EXPERIMENT)
    run_all(args.root, args.seeds or list(experiment.SEEDS), args.shots or list(experiment.SHOTS), command)


if __name__ == "__main__":
    main()
