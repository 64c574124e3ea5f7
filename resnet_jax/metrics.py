"""A run's records: metrics.jsonl + TensorBoard events while training, and the curves figure after.

Each line of metrics.jsonl is one logged event: {"step": ..., "epoch": ..., "train/loss": ..., "lr": ...}.
Readers (the curves plot, the ablation report) need nothing but this file.
"""

import json
import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib

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
            self.path.write_text("".join(json.dumps(e) + "\n" for e in kept))
        self.tb = ScalarWriter(Path(workdir) / "tensorboard")

    def write(self, step: int, epoch: float, scalars: Mapping[str, float]) -> None:
        event = {"step": int(step), "epoch": round(float(epoch), 4), **{k: float(v) for k, v in scalars.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(event) + "\n")
        self.tb.write(step, scalars)

    def close(self) -> None:
        self.tb.close()


def read_metrics(workdir: str | Path) -> list[dict]:
    """All events of a run, in order."""
    path = Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def series(events: list[dict], key: str, x: str = "epoch") -> tuple[list[float], list[float]]:
    """(x values, values) of the events holding `key`; x is 'epoch' or 'step'."""
    points = [(e[x], e[key]) for e in events if key in e and math.isfinite(e[key])]
    return [p[0] for p in points], [p[1] for p in points]


def plot_curves(workdir: str | Path, out: str | Path | None = None) -> Path:
    """Loss and accuracy per epoch, train against validation/test, as the seeds' matplotlib figures."""
    events = read_metrics(workdir)
    out = Path(out or Path(workdir) / "curves.png")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for split, style in (("train_epoch", "-"), ("val", "--"), ("test", ":")):
            epochs, values = series(events, f"{split}/{metric}")
            if epochs:
                ax.plot(epochs, values, style, marker="o", markersize=3, label=split.replace("_epoch", ""))
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
