"""Filter-normalised loss landscapes (Li, Xu, Taylor, Studer & Goldstein 2018, "Visualizing the loss landscape of
neural nets"): the loss and accuracy of a net at params + a*d1 (1D) and params + a*d1 + b*d2 (2D) on a grid.

    python -m resnet_jax.lab landscape --workdir runs/lab_landscape/resnet20 --examples 2000 --points 21 --out DIR

Directions: Gaussian, then filter-normalised: each filter of a direction (a conv kernel's output channel, HWIO's last
axis; a Dense kernel's output unit) is rescaled to the norm of the same filter of the weights. BatchNorm scales and
offsets and all biases (every 1-D parameter) are not perturbed: the direction is zero there (Li et al.'s choice).
BatchNorm runs in eval mode on the run's running statistics, which stay as trained. Grid points are evaluated
`chunk` at a time by one jitted vmap over the points, each point scanning over the examples in batches.
"""

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.losses import cross_entropy, top_k_correct

# Li et al.'s contour levels (vmin 0.1, vmax 10, vlevel 0.5), shared so that figures compare.
LEVELS = np.arange(0.1, 10.0, 0.5)


def random_direction(params: Any, key: jax.Array) -> Any:
    """A standard Gaussian tree of the shapes of `params` (one independent key per leaf)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    noise = [jax.random.normal(k, w.shape, w.dtype) for k, w in zip(keys, leaves, strict=True)]
    return jax.tree.unflatten(treedef, noise)


def filter_normalize(direction: Any, params: Any) -> Any:
    """Each filter of `direction` (last axis: output channel / unit) rescaled to its weight filter's norm; 1-D leaves
    (BatchNorm scales and offsets, biases) zeroed, so they stay unperturbed."""

    def one(d, w):
        if w.ndim < 2:
            return jnp.zeros_like(w)
        norm = lambda x: jnp.sqrt(jnp.sum(x * x, axis=tuple(range(w.ndim - 1))))  # noqa: E731
        return d * (norm(w) / (norm(d) + 1e-10))

    return jax.tree.map(one, direction, params)


def normalized_directions(params: Any, key: jax.Array, count: int) -> list[Any]:
    """`count` independent filter-normalised random directions around `params`."""
    return [filter_normalize(random_direction(params, k), params) for k in jax.random.split(key, count)]


def perturb(params: Any, directions: Sequence[Any], coefs: jax.Array) -> Any:
    """params + sum_k coefs[k] * directions[k]."""
    return jax.tree.map(lambda w, *ds: w + sum(c * d for c, d in zip(coefs, ds, strict=True)), params, *directions)


def landscape_fn(model: nn.Module, variables: dict, directions: Sequence[Any], images: np.ndarray,
                 labels: np.ndarray, batch_size: int = 500, chunk: int = 1) -> Callable[[np.ndarray], dict]:
    """A function of a (P, len(directions)) array of grid coefficients giving {'loss', 'accuracy'} (P,) over the
    examples, computed `chunk` points at a time (one jitted vmap), `batch_size` examples at a time per point."""
    n = len(labels)
    pad = -n % batch_size
    mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)]).reshape(-1, batch_size)
    images = np.concatenate([images, np.repeat(images[-1:], pad, 0)]).reshape(-1, batch_size, *images.shape[1:])
    labels = np.concatenate([labels, np.repeat(labels[-1:], pad, 0)]).reshape(-1, batch_size, *labels.shape[1:])
    data = jax.device_put((images, labels, mask))
    params, batch_stats = variables["params"], variables["batch_stats"]

    def at(coefs, data):
        moved = {"params": perturb(params, directions, coefs), "batch_stats": batch_stats}

        def one_batch(totals, batch):
            x, y, m = batch
            logits = model.apply(moved, x, train=False)
            return (totals[0] + jnp.sum(cross_entropy(logits, y) * m),
                    totals[1] + jnp.sum(top_k_correct(logits, y, 1) * m)), None

        (loss, correct), _ = jax.lax.scan(one_batch, (jnp.zeros(()), jnp.zeros(())), data)
        return loss / n, correct / n

    points = jax.jit(jax.vmap(at, in_axes=(0, None)))

    def evaluate(coefs: np.ndarray) -> dict:
        coefs = np.asarray(coefs, np.float32)
        losses, accuracies = [], []
        for start in range(0, len(coefs), chunk):
            part = coefs[start:start + chunk]
            padded = np.concatenate([part, np.repeat(part[-1:], chunk - len(part), 0)])  # one compiled shape
            loss, accuracy = jax.device_get(points(padded, data))
            losses.append(loss[:len(part)])
            accuracies.append(accuracy[:len(part)])
        return {"loss": np.concatenate(losses), "accuracy": np.concatenate(accuracies)}

    return evaluate


def first_examples(pipeline: Any, split: str, n: int) -> dict[str, np.ndarray]:
    """The first `n` examples of a run's `split` ({'image', 'label'}), preprocessed as the run evaluates them."""
    images, labels = [], []
    for batch in pipeline.eval_batches(split):
        keep = np.asarray(batch["mask"]) > 0
        images.append(np.asarray(batch["image"])[keep])
        labels.append(np.asarray(batch["label"])[keep])
        if sum(map(len, labels)) >= n:
            break
    return {"image": np.concatenate(images)[:n], "label": np.concatenate(labels)[:n]}


def local_minima(grid: np.ndarray) -> int:
    """Grid points strictly below all their (up to 8) neighbours: 1 for a convex bowl, many for a chaotic surface."""
    padded = np.pad(grid, 1, constant_values=np.inf)
    h, w = grid.shape
    neighbours = [padded[1 + i:1 + i + h, 1 + j:1 + j + w] for i in (-1, 0, 1) for j in (-1, 0, 1) if (i, j) != (0, 0)]
    return int(np.sum(np.all([grid < nb for nb in neighbours], axis=0)))


def compute(model: nn.Module, variables: dict, batch: dict, points: int = 21, span: float = 1.0, seed: int = 0,
            batch_size: int = 500, chunk: int = 1, two_d: bool = True) -> dict[str, Any]:
    """1D slice along d1 and (two_d) the 2D grid on (d1, d2) at `points` coefficients in [-span, span], with wall
    times (each includes its compilation)."""
    directions = normalized_directions(variables["params"], jax.random.key(seed), 2)
    axis = np.linspace(-span, span, points, dtype=np.float32)
    result: dict[str, Any] = {"alphas": axis}
    start = time.perf_counter()
    one = landscape_fn(model, variables, directions[:1], batch["image"], batch["label"], batch_size, chunk)
    line = one(axis[:, None])
    result |= {"loss_1d": line["loss"], "accuracy_1d": line["accuracy"], "seconds_1d": time.perf_counter() - start}
    if two_d:
        start = time.perf_counter()
        two = landscape_fn(model, variables, directions, batch["image"], batch["label"], batch_size, chunk)
        a, b = np.meshgrid(axis, axis, indexing="ij")
        grid = two(np.stack([a.ravel(), b.ravel()], 1))
        shape = (points, points)
        result |= {"loss_2d": grid["loss"].reshape(shape), "accuracy_2d": grid["accuracy"].reshape(shape),
                   "seconds_2d": time.perf_counter() - start}
        result["local_minima_2d"] = local_minima(result["loss_2d"])
    return result


def plot(results: dict[str, dict], path: Path) -> None:
    """One figure for one or more nets: the 1D slices overlaid, then one 2D contour per net (Li et al.'s levels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_2d = [name for name, r in results.items() if "loss_2d" in r]
    fig, axes = plt.subplots(1, 1 + len(with_2d), figsize=(4.2 * (1 + len(with_2d)), 3.8), squeeze=False)
    ax = axes[0, 0]
    for name, r in results.items():
        ax.plot(r["alphas"], r["loss_1d"], label=f"{name} loss")
        ax.plot(r["alphas"], 1 - r["accuracy_1d"], "--", label=f"{name} error")
    ax.set(xlabel="alpha (filter-normalised direction)", ylabel="test loss / error", title="1D slice", yscale="log")
    ax.legend(fontsize=7)
    for ax, name in zip(axes[0, 1:], with_2d, strict=True):
        r = results[name]
        contour = ax.contour(r["alphas"], r["alphas"], r["loss_2d"].T, levels=LEVELS, cmap="viridis")
        ax.clabel(contour, fontsize=6, fmt="%.1f")
        ax.plot(0, 0, "r+")
        ax.set(xlabel="alpha (d1)", ylabel="beta (d2)", title=f"{name}: 2D loss contours", aspect="equal")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """python -m resnet_jax.lab landscape: compute a net's landscape (--workdir or --model), or --plot saved ones."""
    from resnet_jax.lab import common  # the data and checkpoint machinery: only when run

    parser = argparse.ArgumentParser(prog="python -m resnet_jax.lab landscape", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="a trained run (its --checkpoint); its own test data and preprocessing")
    parser.add_argument("--model", help="a zoo name at initialisation instead (with --widths, --image-size)")
    parser.add_argument("--widths", type=lambda s: tuple(int(w) for w in s.split(",")), help="e.g. 8,16,32")
    parser.add_argument("--image-size", type=int, default=0, help="--model: resize Fashion-MNIST (0 = 28)")
    common.add_data_argument(parser)
    parser.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    parser.add_argument("--split", default="test")
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--points", type=int, default=21, help="grid points per axis")
    parser.add_argument("--span", type=float, default=1.0, help="coefficients in [-span, span]")
    parser.add_argument("--one-d", action="store_true", help="the 1D slice only")
    parser.add_argument("--seed", type=int, default=0, help="the directions' seed")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--chunk", type=int, default=1,
                        help="grid points per vmapped evaluation (1: fastest measured on CPU; try 8+ on a GPU)")
    parser.add_argument("--name", help="file name stem (default: the workdir's or model's name)")
    parser.add_argument("--plot", nargs="+", metavar="NPZ", help="only plot these saved landscapes into one figure")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.plot:
        results = {Path(p).stem.removesuffix("_landscape"): dict(np.load(p)) for p in args.plot}
        plot(results, out / ("_vs_".join(results) + "_landscape.png"))
        return
    if args.workdir:
        run, state = common.load_run(args.workdir, args.checkpoint)
        model, variables = run.model, {"params": state.params, "batch_stats": state.batch_stats}
        batch = first_examples(run.pipeline, args.split, args.examples)
    elif args.model:
        batch = common.real_batch(args.examples, args.seed, split=args.split,
                                  data=common.default_data(args.image_size, args.data))
        overrides = {"widths": args.widths} if args.widths else {}
        model, variables = common.load_net(model=args.model, image_shape=batch["image"].shape[1:], seed=args.seed,
                                           **overrides)
    else:
        parser.error("give --workdir (a trained run) or --model (a zoo name at initialisation)")
    name = args.name or (Path(args.workdir).name if args.workdir else args.model)
    result = compute(model, variables, batch, args.points, args.span, args.seed, args.batch_size, args.chunk,
                     not args.one_d)
    np.savez(out / f"{name}_landscape.npz", **result)
    summary = {k: (float(v) if np.ndim(v) == 0 else None) for k, v in result.items()}
    summary = {k: v for k, v in summary.items() if v is not None}
    summary |= {"examples": len(batch["label"]), "points": args.points, "span": args.span, "seed": args.seed,
                "chunk": args.chunk, "batch_size": args.batch_size}
    if args.points % 2:  # an odd grid has the origin at its centre
        summary["loss_at_origin"] = float(result["loss_1d"][args.points // 2])
    (out / f"{name}_landscape.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot({name: result}, out / f"{name}_landscape.png")
    print(json.dumps(summary))
