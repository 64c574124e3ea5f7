"""A run's records: metrics.jsonl + TensorBoard events while training, and the curves figure after.

Each line of metrics.jsonl is one logged event: {"step": ..., "epoch": ..., "train/loss": ..., "lr": ...}, strict
JSON: a value that is not finite (a diverged loss) is written as null. Readers (the curves plot, the ablation report)
need nothing but this file.
"""

import json
import math
from collections.abc import Mapping
from pathlib import Path

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from resnet_jax.events import ScalarWriter  # noqa: E402

METRICS_FILE = "metrics.jsonl"


class MetricWriter:
    """Appends events to <workdir>/metrics.jsonl and to TensorBoard. Only process 0 should hold one."""

    def __init__(self, workdir: str | Path, resume_step: int = 0):
        self.path = Path(workdir) / METRICS_FILE
        # A resumed run replays the steps after its last checkpoint: drop the events it will log again
        # (diagnostics at the resume step itself are measured before that step, so they come again too).
        if self.path.exists():
            kept = [
                e for e in read_metrics(self.path.parent)
                if e["step"] < resume_step or (e["step"] == resume_step and not any(k.startswith("diag/") for k in e))
            ]
            self.path.write_text("".join(_strict_json(e) + "\n" for e in kept))
        self.tb = ScalarWriter(Path(workdir) / "tensorboard")

    def write(self, step: int, epoch: float, scalars: Mapping[str, float]) -> None:
        event = {"step": int(step), "epoch": round(float(epoch), 4), **{k: float(v) for k, v in scalars.items()}}
        with self.path.open("a") as f:
            f.write(_strict_json(event) + "\n")
        self.tb.write(step, scalars)

    def close(self) -> None:
        self.tb.close()


def _strict_json(event: dict) -> str:
    """One event as strict JSON: NaN and infinities (which json.dumps would write bare) become null."""
    return json.dumps({k: v if v is None or not isinstance(v, float) or math.isfinite(v) else None
                       for k, v in event.items()}, allow_nan=False)


def read_metrics(workdir: str | Path) -> list[dict]:
    """All events of a run, in order; a last line cut short (the process was killed while writing it) is left out."""
    path = Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    events = [json.loads(line) for line in lines[:-1]]
    try:
        return events + [json.loads(line) for line in lines[-1:]]
    except json.JSONDecodeError:
        return events


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def series(events: list[dict], key: str, x: str = "epoch") -> tuple[list[float], list[float]]:
    """(x values, values) of the events holding a finite `key`; x is 'epoch' or 'step'."""
    points = [(e[x], e[key]) for e in events if _finite(e.get(key))]
    return [p[0] for p in points], [p[1] for p in points]


class TrainMeter:
    """The train step metrics between two reads of the device, and the totals of the current epoch.

    `add` keeps each step's metrics on the device (no host sync); `read` fetches them in one transfer and averages
    over the finite steps (a step flagged `nonfinite` was not applied). The epoch totals are summed step by step, so
    they do not depend on when the window was read, and are JSON (`totals`) so that a mid-epoch checkpoint carries them.
    """

    def __init__(self, totals: Mapping | None = None):
        self.window: list[tuple[int, int, dict]] = []  # (last step, number of steps, metrics)
        self.totals = dict(totals) if totals else {"steps": 0, "nonfinite": 0, "sums": {}}

    def add(self, step: int, metrics: dict, count: int = 1) -> None:
        """The metrics of the update that produced `step` (still on the device); with count=n, those of the n updates
        up to `step`, stacked along a leading axis whose entries after the n-th are ignored (resnet_jax.multistep)."""
        self.window.append((step, count, metrics))

    def read(self) -> tuple[dict[str, float], list[int]]:
        """(means over the window's finite steps, the window's non-finite steps); empties the window."""
        fetched = jax.device_get([m for *_, m in self.window])
        steps, values = [], []
        for (last, count, _), m in zip(self.window, fetched, strict=True):
            steps += range(last - count + 1, last + 1)
            values += [{k: np.reshape(v, -1)[i] for k, v in m.items()} for i in range(count)]
        self.window = []
        bad = [s for s, m in zip(steps, values, strict=True) if m["nonfinite"]]
        good = [{k: float(v) for k, v in m.items() if k != "nonfinite"} for m in values if not m["nonfinite"]]
        # New dicts, never updated in place: a checkpoint being written asynchronously holds the previous ones.
        sums = dict(self.totals["sums"])
        for m in good:
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + v
        self.totals = {"steps": self.totals["steps"] + len(good), "nonfinite": self.totals["nonfinite"] + len(bad),
                       "sums": sums}
        means = {k: float(np.mean([m[k] for m in good])) for k in good[0]} if good else {}
        return means, bad

    def epoch_record(self) -> dict[str, float]:
        """{'train_epoch/<metric>': mean over the epoch's finite steps, 'train_epoch/nonfinite_steps': n}; resets."""
        n, totals = self.totals["steps"], self.totals
        record = {f"train_epoch/{k}": v / n for k, v in totals["sums"].items()} if n else {}
        if totals["nonfinite"]:
            record["train_epoch/nonfinite_steps"] = totals["nonfinite"]
        self.totals = {"steps": 0, "nonfinite": 0, "sums": {}}
        return record


def plot_curves(workdir: str | Path, out: str | Path | None = None) -> Path:
    """Loss and accuracy per epoch, train against validation/test, as the seeds' matplotlib figures.

    An epoch whose value is not finite (null in metrics.jsonl) is not dropped silently: a red x on the axis marks it.
    """
    events = read_metrics(workdir)
    out = Path(out or Path(workdir) / "curves.png")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        nonfinite = []
        for split, style in (("train_epoch", "-"), ("val", "--"), ("test", ":")):
            key = f"{split}/{metric}"
            epochs, values = series(events, key)
            if epochs:
                ax.plot(epochs, values, style, marker="o", markersize=3, label=split.replace("_epoch", ""))
            nonfinite += [e["epoch"] for e in events if key in e and not _finite(e[key])]
        if nonfinite:
            ax.plot(nonfinite, [0] * len(nonfinite), "x", color="red", markersize=8, clip_on=False,
                    transform=ax.get_xaxis_transform(), label="not finite")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} per epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(str(Path(workdir).name))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
