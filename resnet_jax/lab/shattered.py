"""Shattered gradients (Balduzzi, Frean, Leary, Lewis, Ma & McWilliams 2017): how alike the input gradients of a net
are at nearby inputs, at initialisation, plain versus residual, versus depth.

    python -m resnet_jax.lab shattered --model resnet56 --model plain56 --points 256 --out DIR

Their 1-D input line, adapted to images: x(t) = (1 - t) x_a + t x_b for two real test images, t on `points` values
in [0, 1]. At each point the gradient g(t) of one logit (--output; -1: the sum of the logits) with respect to the
image; the correlation matrix C[i, j] = cos(g(t_i), g(t_j)) and the autocorrelation rho(k) = mean_i C[i, i + k]
(uncentred, so a linear net's constant gradient gives exactly 1). Averaged over --pairs lines (mean and spread).
BatchNorm (--bn): 'line' (default) normalises with the statistics of the line's own images, taken in one train-mode
pass and then frozen (eval mode), so each point's gradient is its own and BN does its normalising work as in the
paper's BN ResNets; 'init' uses the initial running statistics (mean 0, variance 1), i.e. BN is the identity.
"""

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def line_statistics(model: nn.Module, variables: dict, line: jax.Array) -> dict:
    """`variables` with BatchNorm running statistics replaced by the batch statistics of the images `line` (taken with
    every block kept, if the net has stochastic depth); unchanged for a net without BatchNorm."""
    if "batch_stats" not in variables:
        return variables
    stats_net = model.clone(bn_momentum=0.0, stochastic_depth=0.0)
    _, updates = stats_net.apply(variables, line, train=True, mutable=["batch_stats"])
    return {**variables, "batch_stats": updates["batch_stats"]}


def input_gradients(model: nn.Module, variables: dict, images: jax.Array, output: int = 0) -> jax.Array:
    """(T, H*W*C): the gradient of logit `output` (-1: the sum of the logits) with respect to each image on its own,
    in eval mode (one vmapped jax.grad)."""

    def logit(x):
        logits = model.apply(variables, x[None], train=False)[0]
        return jnp.sum(logits) if output < 0 else logits[output]

    return jax.vmap(jax.grad(logit))(images).reshape(len(images), -1)


def correlation_matrix(gradients: jax.Array) -> jax.Array:
    """C[i, j] = cos(g_i, g_j), the uncentred correlation of the gradients at points i and j."""
    unit = gradients / (jnp.linalg.norm(gradients, axis=1, keepdims=True) + 1e-30)
    return unit @ unit.T


def autocorrelation(matrix: jax.Array) -> jax.Array:
    """rho(k) = mean over i of C[i, i + k] for k = 0 .. T-1: the correlation of gradients k points apart."""
    t = matrix.shape[0]
    lag = jnp.arange(t)[None, :] - jnp.arange(t)[:, None]
    sums = jnp.zeros(t, matrix.dtype).at[jnp.maximum(lag, 0)].add(jnp.where(lag >= 0, matrix, 0))
    return sums / (t - jnp.arange(t))


def line_of_images(a: np.ndarray, b: np.ndarray, points: int) -> np.ndarray:
    """(points, H, W, C): (1 - t) a + t b at `points` values of t in [0, 1]."""
    t = np.linspace(0, 1, points, dtype=np.float32).reshape(-1, 1, 1, 1)
    return (1 - t) * a[None] + t * b[None]


def measure(model: nn.Module, variables: dict, lines: np.ndarray, bn: str = "line", output: int = 0
            ) -> dict[str, np.ndarray]:
    """Per line of `lines` (L, T, H, W, C): the autocorrelation (L, T), the correlation matrix of the first line, the
    directional derivative d logit / dt along each line (L, T) and the mean gradient norm (L,)."""

    @jax.jit
    def one(line):
        used = line_statistics(model, variables, line) if bn == "line" else variables
        g = input_gradients(model, used, line, output)
        c = correlation_matrix(g)
        step = (line[-1] - line[0]).reshape(-1)
        return autocorrelation(c), c, g @ step, jnp.mean(jnp.linalg.norm(g, axis=1))

    if bn not in ("line", "init"):
        raise ValueError(f"bn must be 'line' or 'init'; got {bn!r}")
    results = [jax.device_get(one(jnp.asarray(line))) for line in lines]
    return {"autocorrelation": np.stack([r[0] for r in results]), "matrix": results[0][1],
            "derivative": np.stack([r[2] for r in results]), "grad_norm": np.array([r[3] for r in results])}


def correlation_length(rho: np.ndarray, level: float = 0.5) -> int:
    """The first lag at which the autocorrelation falls below `level` (len(rho) if it never does)."""
    below = np.nonzero(rho < level)[0]
    return int(below[0]) if len(below) else len(rho)


def plot(results: dict[str, dict], path: Path) -> None:
    """Autocorrelation versus lag for every net (mean and spread over lines), the derivative along the first line,
    and each net's correlation matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(2, max(2, len(names)), figsize=(3.3 * max(2, len(names)), 6.6), squeeze=False)
    for name in names:
        rho = results[name]["autocorrelation"]
        mean, sd = rho.mean(0), rho.std(0)
        lags = np.arange(len(mean))
        line = axes[0, 0].plot(lags, mean, label=name)[0]
        axes[0, 0].fill_between(lags, mean - sd, mean + sd, color=line.get_color(), alpha=0.2)
        d = results[name]["derivative"][0]
        axes[0, 1].plot(np.linspace(0, 1, len(d)), d / (np.abs(d).max() + 1e-30), lw=0.8, label=name)
    axes[0, 0].set(xlabel="lag (points)", ylabel="gradient autocorrelation", xscale="symlog", ylim=(-0.2, 1.02))
    axes[0, 0].legend(fontsize=6)
    axes[0, 1].set(xlabel="t along the line", ylabel="d logit / dt (scaled to max 1)")
    for ax in axes[0, 2:]:
        ax.axis("off")
    for ax, name in zip(axes[1], names, strict=False):
        ax.imshow(results[name]["matrix"], vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set(title=name, xticks=[], yticks=[])
    for ax in axes[1, len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    """python -m resnet_jax.lab shattered: the gradient autocorrelation of zoo nets at initialisation."""
    from resnet_jax.lab import common  # the data and checkpoint machinery: only when run

    parser = argparse.ArgumentParser(prog="python -m resnet_jax.lab shattered", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True,
                        help="zoo name (repeatable), e.g. plain56; NAME:field=value,... sets ResNet fields")
    parser.add_argument("--widths", type=lambda s: tuple(int(w) for w in s.split(",")), help="e.g. 16,32,64")
    parser.add_argument("--image-size", type=int, default=0, help="resize Fashion-MNIST (0 = 28)")
    parser.add_argument("--points", type=int, default=256)
    common.add_data_argument(parser)
    parser.add_argument("--pairs", type=int, default=4, help="lines (pairs of test images) averaged over")
    parser.add_argument("--output", type=int, default=0, help="the logit differentiated; -1: their sum")
    parser.add_argument("--bn", choices=("line", "init"), default="line")
    parser.add_argument("--seed", type=int, default=0, help="the images' draw and the nets' initialisation")
    parser.add_argument("--name", default="shattered", help="file name stem")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images = common.real_batch(2 * args.pairs, args.seed, data=common.default_data(args.image_size, args.data))["image"]
    lines = np.stack([line_of_images(images[2 * i], images[2 * i + 1], args.points) for i in range(args.pairs)])
    results: dict[str, dict[str, Any]] = {}
    summary = {}
    overrides = {"widths": args.widths} if args.widths else {}
    for name in args.model:
        zoo, fields = common.parse_model(name)
        model, variables = common.load_net(model=zoo, image_shape=images.shape[1:], seed=args.seed,
                                           **overrides | fields)
        start = time.perf_counter()
        results[name] = measure(model, variables, lines, args.bn, args.output)
        seconds = time.perf_counter() - start
        rho, grad_norm = results[name]["autocorrelation"], float(results[name]["grad_norm"].mean())
        if grad_norm == 0:  # e.g. Fixup at initialisation: its classifier starts at zero
            print(f"{name}: the gradient is exactly zero on every line, so its correlations are undefined (0 here)")
        summary[name] = {"mean_gradient_norm": grad_norm, "rho_lag1": [float(rho[:, 1].mean()), float(rho[:, 1].std())],
                         "rho_lag16": [float(rho[:, 16].mean()), float(rho[:, 16].std())],
                         "rho_mean_all_lags": [float(rho[:, 1:].mean()), float(rho[:, 1:].mean(1).std())],
                         "correlation_length_0.5": [correlation_length(r) for r in rho],
                         "seconds": round(seconds, 2)}
        print(name, json.dumps(summary[name]))
    np.savez(out / f"{args.name}.npz", **{f"{n}/{k}": v for n, r in results.items() for k, v in r.items()})
    meta = {"points": args.points, "pairs": args.pairs, "output": args.output, "bn": args.bn, "seed": args.seed,
            "widths": args.widths, "image_shape": list(images.shape[1:])}
    (out / f"{args.name}.json").write_text(json.dumps({"settings": meta, "nets": summary}, indent=2) + "\n")
    plot(results, out / f"{args.name}.png")
