"""float32 vs bfloat16 (vs float16 with loss scaling) on a short real run: the quickstart's resnet8 on Fashion-MNIST.

    python scripts/mixed_precision.py --root runs/mixed_precision --out experiments/results/mixed_precision \
        [--dtypes float32 bfloat16 float16] [--seeds 0 1] [--epochs 1]

Each (dtype, seed) is an ordinary train_and_evaluate run of experiments/quickstart.py in <root>/<dtype>-seed<s>
(re-running resumes it, or skips it once <workdir>/mixed_precision.json records it done). <out> gets summary.json
(final metrics, wall time, provenance), report.md and every run's metrics.jsonl and config.json under records/.
"""

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from experiments.quickstart import get_config
from resnet_jax.metrics import METRICS_FILE
from resnet_jax.provenance import provenance
from resnet_jax.loop import train_and_evaluate

COMMAND = "python scripts/mixed_precision.py"
STATUS = "mixed_precision.json"
REPORTED = ("val/accuracy", "test/accuracy", "test/loss", "train_epoch/loss")


def run(root: Path, dtype: str, seed: int, epochs: int) -> dict:
    """Train one cell and return its final record, wall time and provenance (kept in <workdir>/STATUS once done)."""
    workdir = root / f"{dtype}-seed{seed}"
    if (workdir / STATUS).exists():
        return json.loads((workdir / STATUS).read_text())
    config = get_config()
    config.model.dtype, config.seed, config.num_epochs = dtype, seed, epochs
    started, t0 = provenance(), time.perf_counter()
    record = train_and_evaluate(config, workdir)
    result = {"dtype": dtype, "seed": seed, "epochs": epochs, "seconds": time.perf_counter() - t0,
              **{k: record[k] for k in REPORTED}, "provenance": started}
    (workdir / STATUS).write_text(json.dumps(result, indent=1) + "\n")
    return result


def report(runs: list[dict], out: Path, root: Path, command: str) -> None:
    """summary.json, report.md and the runs' records in `out`."""
    dtypes = list(dict.fromkeys(r["dtype"] for r in runs))
    table = {}
    for dtype in dtypes:
        accs = [r["test/accuracy"] for r in runs if r["dtype"] == dtype]
        table[dtype] = {"test_accuracy_mean": statistics.mean(accs), "test_accuracy_spread": max(accs) - min(accs),
                        "seeds": len(accs)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(
        json.dumps({"command": command, "runs": runs, "by_dtype": table}, indent=1) + "\n")
    lines = [
        "# Mixed precision on a short real run",
        "",
        f"`{command}`: experiments/quickstart.py (resnet8, real Fashion-MNIST, 55k/5k/10k) for "
        f"{runs[0]['epochs']} epoch(s) per run; only `model.dtype` and `seed` change. Params, optimizer state and BN "
        "statistics are float32 in every run; float16 uses dynamic loss scaling.",
        "",
        "| dtype | seed | val acc | test acc | test loss | train loss (epoch) | wall (s) | device, load, commit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        p = r["provenance"]
        lines.append(f"| {r['dtype']} | {r['seed']} | {r['val/accuracy']:.4f} | {r['test/accuracy']:.4f} | "
                     f"{r['test/loss']:.4f} | {r['train_epoch/loss']:.4f} | {r['seconds']:.0f} | "
                     f"{p['device']}, {p['cpu']}, load {p['load_average_1m']}, {p['commit']}, {p['date'][:10]} |")
    lines += ["", "| dtype | mean test accuracy | spread over seeds (max - min) |", "|---|---|---|"]
    lines += [f"| {d} | {t['test_accuracy_mean']:.4f} | {t['test_accuracy_spread']:.4f} ({t['seeds']} seeds) |"
              for d, t in table.items()]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    for r in runs:
        name = f"{r['dtype']}-seed{r['seed']}"
        (out / "records" / name).mkdir(parents=True, exist_ok=True)
        for f in (METRICS_FILE, "config.json"):
            shutil.copy(root / name / f, out / "records" / name / f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("runs/mixed_precision"))
    parser.add_argument("--out", type=Path, default=Path("experiments/results/mixed_precision"))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16", "float16"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    command = f"{COMMAND} --root {args.root} --out {args.out} --dtypes {' '.join(args.dtypes)} " \
              f"--seeds {' '.join(map(str, args.seeds))} --epochs {args.epochs}"
    runs = [run(args.root, dtype, seed, args.epochs) for seed in args.seeds for dtype in args.dtypes]
    report(runs, args.out, args.root, command)
    print((args.out / "report.md").read_text())


if __name__ == "__main__":
    main()
