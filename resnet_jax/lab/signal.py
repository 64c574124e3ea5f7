"""Signal propagation plots (Brock, De & Smith 2021) and the residual branch's share of the variance versus depth
(De & Smith 2020), per block, on a real batch, at initialisation or from a trained run's best checkpoint.

    python -m resnet_jax.lab signal --model resnet56 --model plain56 --out experiments/results/lab_signal/init56
    python -m resnet_jax.lab signal --workdir runs/lab_cpu/resnet20_s0 --workdir runs/lab_cpu/plain20_s0 --out DIR

Per block, in forward order, of its output over the batch's examples and positions: the average channel squared
mean (mean over channels of the squared channel mean), the average channel variance, and the residual branch's
average channel variance (the branch a block sows as intermediates/branch; NaN where a block has none: a plain
net, whose block is all branch and no shortcut). Point 0 is the first block's input (the stem's output). The
share var(branch) / var(block output) is the quantity De & Smith show shrinking like 1/depth with BatchNorm.
Post-activation (v1) blocks end in a ReLU after the addition, so their output is the ReLU'd sum; pre-activation (v2)
blocks output the residual stream itself. BatchNorm: batch statistics at initialisation (a fresh net's running
averages are still 0 and 1), running averages for a trained net (the net as it is evaluated); --bn overrides.
"""

import argparse
import json
import time
from functools import partial
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.lab.common import (add_data_argument, default_data, load_net, parse_model, real_batch,
                                  saved_config)
from resnet_jax.models import Block, ResNet, forward_order

STATS = ("sq_mean", "var", "branch_var")


def channel_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(average channel squared mean, average channel variance) of an (..., C) activation, moments taken over every
    axis but the last (examples and positions), as Brock et al. define them."""
    x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    return jnp.mean(jnp.mean(x, 0) ** 2), jnp.mean(jnp.var(x, 0))


def block_activations(model: ResNet, variables: dict, images: jax.Array, train: bool) -> dict[str, dict]:
    """{block name: {'input', 'output', 'branch' (absent where not sown)}} of every block, in forward order, from one
    forward pass (BatchNorm on batch statistics when `train`, and stochastic depth's blocks dropped by one fixed
    draw; the variables are not changed)."""

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, Block) and context.method_name == "__call__":
            context.module.sow("intermediates", "input", args[0])
            context.module.sow("intermediates", "output", out)
        return out

    mutable = ["intermediates", "batch_stats"] if train else ["intermediates"]
    with nn.intercept_methods(record):  # train: a stochastic-depth net drops blocks as in training (one fixed draw)
        _, state = model.apply(variables, images, train=train, mutable=mutable, rngs={"dropout": jax.random.key(0)})
    sown = state["intermediates"]
    return {name: {k: v[0] for k, v in sown[name].items()} for name in sorted(sown, key=forward_order)
            if "output" in sown[name]}


@partial(jax.jit, static_argnums=(0, 3))
def _measure(model: ResNet, variables: dict, images: jax.Array, train: bool) -> dict[str, jax.Array]:
    blocks = block_activations(model, variables, images, train)
    first = next(iter(blocks.values()))["input"]
    stats = [channel_stats(first)] + [channel_stats(b["output"]) for b in blocks.values()]
    nan = jnp.full((), jnp.nan)
    branch = [nan] + [channel_stats(b["branch"])[1] if "branch" in b and model.residual else nan
                      for b in blocks.values()]
    return {"sq_mean": jnp.stack([s[0] for s in stats]), "var": jnp.stack([s[1] for s in stats]),
            "branch_var": jnp.stack(branch)}


def measure(model: ResNet, variables: dict, images: Any, train: bool) -> dict[str, Any]:
    """The signal propagation of `model` on `images`, one jitted forward pass: {'blocks': ['input', block names...],
    'sq_mean', 'var', 'branch_var', 'branch_share' (branch_var / var): float arrays, one entry per point}."""
    stats = jax.device_get(_measure(model, variables, jnp.asarray(images), train))
    names = list(jax.eval_shape(lambda: block_activations(model, variables, jnp.asarray(images), train)))
    return {"blocks": ["input", *names], **stats, "branch_share": stats["branch_var"] / stats["var"]}


def plot(results: list[dict[str, Any]], path: Path, share_path: Path) -> None:
    """Brock et al.'s three panels (one line per net) to `path`; De & Smith's branch share with 1/(l+1) to
    `share_path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    titles = ("average channel squared mean", "average channel variance", "residual branch variance")
    for ax, key, title in zip(axes, STATS, titles, strict=True):
        for i, r in enumerate(results):
            ax.plot(np.arange(len(r["blocks"])), r[key], marker=".", color=f"C{i}", label=r["label"])
        ax.set(title=title, xlabel="block (0 = input of block 1)", yscale="log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Signal propagation on a real Fashion-MNIST batch (Brock, De & Smith 2021)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.5))
    depth = max(len(r["blocks"]) for r in results)
    for i, r in enumerate(results):  # the same colour as in the first figure
        if np.isfinite(r["branch_share"]).any():
            ax.plot(np.arange(len(r["blocks"])), r["branch_share"], marker=".", color=f"C{i}", label=r["label"])
    blocks = np.arange(1, depth)
    ax.plot(blocks, 1 / (blocks + 1), "k--", label="1/(l+1)")
    ax.set(xlabel="block l", ylabel="var(branch) / var(block output)", yscale="log",
           title="Residual branch share of the variance (De & Smith 2020)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(share_path, dpi=90)
    plt.close(fig)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Measure every net the arguments name (zoo models at initialisation, then trained runs) on one real batch."""
    nets = []
    widths = tuple(int(w) for w in args.widths.split(",")) if args.widths else None
    for spec in args.model or []:
        name, overrides = parse_model(spec)
        overrides = ({"widths": widths} if widths else {}) | overrides
        shape = (args.image_size or 28, args.image_size or 28, 1)
        nets.append((f"{spec} (init)", dict(model=name, image_shape=shape, seed=args.seed, **overrides),
                     default_data(args.image_size, args.data), args.bn != "running"))
    for workdir in args.workdir or []:
        data = saved_config(workdir).data
        nets.append((f"{Path(workdir).name} (trained)", dict(workdir=workdir), data, args.bn == "batch"))
    results = []
    for label, how, data, train in nets:
        batch = real_batch(args.examples, args.seed, args.image_size, data=data)
        model, variables = load_net(**how)
        start = time.perf_counter()
        stats = measure(model, variables, batch["image"], train)
        seconds = time.perf_counter() - start
        results.append({"label": label, "bn": "batch statistics" if train else "running averages",
                        "seconds": round(seconds, 3), **{k: np.asarray(v).tolist() if k != "blocks" else v
                                                         for k, v in stats.items()}})
        print(f"{label}: {len(stats['blocks']) - 1} blocks, output variance {stats['var'][0]:.3g} -> "
              f"{stats['var'][-1]:.3g}, {seconds:.2f} s (compile included)")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m resnet_jax.lab signal", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append",
                        help="zoo name at initialisation, repeatable; NAME:field=value,... sets ResNet fields")
    parser.add_argument("--workdir", action="append", help="a trained run (its best checkpoint), repeatable")
    parser.add_argument("--widths", default="", help="widths of the zoo models, e.g. 8,16,32 (default: the zoo's)")
    parser.add_argument("--image-size", type=int, default=0, help="Fashion-MNIST resized to this (0: 28x28)")
    parser.add_argument("--examples", type=int, default=256, help="test images in the batch")
    add_data_argument(parser)
    parser.add_argument("--seed", type=int, default=0, help="initialisation and batch draw")
    parser.add_argument("--bn", choices=("auto", "batch", "running"), default="auto",
                        help="BatchNorm statistics: auto = batch at init, running averages for a trained run")
    parser.add_argument("--out", required=True, help="folder for signal.json, signal.png and branch_share.png")
    args = parser.parse_args(argv)
    if not args.model and not args.workdir:
        parser.error("name at least one --model or --workdir")
    results = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "signal.json").write_text(json.dumps({"args": vars(args), "nets": results}, indent=1) + "\n")
    plot(results, out / "signal.png", out / "branch_share.png")
    print(f"wrote {out}/signal.json, signal.png, branch_share.png")
