"""Gradient flow at initialization: per-block gradient norm of plain vs residual CIFAR nets at several depths.

    .venv/bin/python scripts/gradient_flow.py [--depths 20 56 110] [--batch-size 128] [--out DIR]

One train-mode forward/backward pass per network (CIFAR ResNets, option-A shortcuts, 10 classes) on one
batch of Fashion-MNIST padded to 32x32x3 (a random Gaussian batch, labelled as such, if the data set is
absent). Plain and residual nets of one depth get the same weights (same seed; option A has no shortcut
parameters), so only the additions differ. Writes gradient_flow.png (gradient norm and activation RMS vs
block index, log y) and gradient_flow.json (the numbers, with device, date and git commit) to DIR.
"""

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import resnet_jax  # noqa: E402
from resnet_jax import data, diagnostics  # noqa: E402
from resnet_jax.provenance import provenance  # noqa: E402

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
ROOT = Path(__file__).resolve().parents[1]


def fashion_mnist_batch(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n shuffled training images through the data pipeline: zero-padded to 32x32x3, per-channel standardised."""
    config = data.default_config()
    config.update(name="fashion_mnist", source="idx", path=str(FASHION_MNIST), pad_to_32=True, channels=3)
    pipeline = data.make_pipeline(config, n, jax.make_mesh((jax.device_count(),), ("data",)), seed)
    batch = next(pipeline.train_batches(epoch=0))
    return np.asarray(batch["image"]), np.asarray(batch["label"])


def plot(runs: list[dict], depths: list[int], source: str, path: Path) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharey="row", constrained_layout=True)
    colors = dict(zip(depths, plt.cm.viridis(np.linspace(0, 0.85, len(depths))), strict=True))
    for run in runs:
        col = int(run["residual"])
        for row, key in enumerate(("grad_norm", "act_norm")):
            axes[row, col].plot(run[key], "o-", ms=2.5, lw=1.2, color=colors[run["depth"]], label=run["model"])
    for col, kind in enumerate(("Plain", "Residual")):
        axes[0, col].set_title(f"{kind} networks: gradient norm per block at init")
        axes[1, col].set_title(f"{kind} networks: activation RMS per block at init")
        axes[0, col].set_ylabel("||dL/dw|| of the block")
        axes[1, col].set_ylabel("RMS of the block's output")
        for ax in axes[:, col]:
            ax.set_yscale("log")
            ax.set_xlabel("block index (0 = stem, last = head)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
    fig.suptitle(f"Gradient flow at initialization (train-mode BN, cross-entropy) on {source}")
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[20, 56, 110], help="CIFAR depths (6n+2)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="seed of the batch and of the initialisation")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments/results/gradient_flow")
    args = parser.parse_args()

    if FASHION_MNIST.exists():
        images, labels = fashion_mnist_batch(args.batch_size, args.seed)
        source = f"a Fashion-MNIST training batch of {args.batch_size} (padded to 32x32x3)"
    else:
        rng = np.random.default_rng(args.seed)
        images = rng.standard_normal((args.batch_size, 32, 32, 3), dtype=np.float32)
        labels = rng.integers(0, 10, args.batch_size, dtype=np.int32)
        source = f"a RANDOM Gaussian batch of {args.batch_size} (Fashion-MNIST not found)"
    batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}

    runs = []
    for residual in (False, True):
        for depth in args.depths:
            name = f"{'resnet' if residual else 'plain'}{depth}"
            start = time.perf_counter()
            model = resnet_jax.create_model(name, 10)
            variables = model.init(jax.random.key(args.seed), batch["image"][:1], train=False)
            out = diagnostics.measure(model, variables, batch)
            groups = diagnostics.layer_groups(variables["params"])
            runs.append({
                "model": name,
                "depth": depth,
                "residual": residual,
                "groups": groups,
                "grad_norm": [out[f"diag/grad_norm/{g}"] for g in groups],
                "act_norm": [out[f"diag/act_norm/{g}"] for g in groups],
                "seconds": round(time.perf_counter() - start, 2),
            })  # fmt: skip
            blocks = runs[-1]["grad_norm"][1:-1]
            print(f"{name:>10}: first block {blocks[0]:.3g}, last block {blocks[-1]:.3g}, "
                  f"first/last {blocks[0] / blocks[-1]:.3g} ({runs[-1]['seconds']} s)")  # fmt: skip

    args.out.mkdir(parents=True, exist_ok=True)
    plot(runs, args.depths, source, args.out / "gradient_flow.png")
    meta = {
        "depths": args.depths,
        "batch": source,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "shortcut": "A",
        **provenance(),
        "runs": runs,
    }
    (args.out / "gradient_flow.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {args.out}/gradient_flow.png and gradient_flow.json")


if __name__ == "__main__":
    main()
