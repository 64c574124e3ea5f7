"""Where resnet_jax's CPU train step loses to PyTorch eager, and what resnet_jax.xla_cpu wins back.

    python benchmarks/cpu_gap.py layers [--batch-size 128] [--repeats 5]
    python benchmarks/cpu_gap.py step [--model resnet20] [--batch-size 128] [--repeats 6] [--steps-per-repeat 2]
    python benchmarks/cpu_gap.py hlo [--model resnet20] [--batch-size 128]

layers: each conv shape of resnet20, its forward, input gradient and weight gradient in JAX (XLA's default compiler
options, and resnet_jax.xla_cpu's) against torch's conv2d and convolution_backward, plus the two transposes XLA puts
before a weight-gradient conv; in units of torch's forward conv of the same repeat.
step: the train step of benchmarks/train_step.py in the four JAX variants (lax's conv or the materialising one, XLA's
options or xla_cpu's), the forward pass alone before and after, and PyTorch eager; ratios to torch eager.
hlo: what XLA compiled the train step into, before and after: FLOPs and bytes of the optimised module against the
FLOPs of the unoptimised one (the excess is recomputation), fusions, ReLU (`maximum`) ops, materialising writes.
Everything timed runs interleaved in one process and is timed by the wall clock and by the process' CPU time: on a
shared machine the CPU time is far less sensitive to other load. Results go to
benchmarks/results/cpu_gap-<mode>-<date>.json.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from collections.abc import Callable
from functools import partial

if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads, as train_step.py does (see there)
import torch
import torch._dynamo  # noqa: F401  (before TensorFlow, which resnet_jax's data imports: the other order segfaults)
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import train_step as bench
from resnet_jax import create_model, xla_cpu
from resnet_jax.provenance import device_slug, write_record
from resnet_jax.steps import create_train_state

# resnet20's convs at batch 128: (height = width, in channels, out channels, stride) and how many of each.
RESNET20_CONVS = [(32, 3, 16, 1, 1), (32, 16, 16, 1, 6), (32, 16, 32, 2, 1), (16, 32, 32, 1, 5), (16, 32, 64, 2, 1),
                  (8, 64, 64, 1, 5)]
DN = ("NHWC", "HWIO", "NHWC")


def timed(fn: Callable[[], object], calls: int) -> tuple[float, float]:
    """(wall, CPU) seconds per call of `fn` (which blocks until its result is ready)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls


def interleaved(fns: dict[str, Callable[[], object]], reference: str, repeats: int, calls: int) -> dict:
    """Each fn timed `calls` times per repeat, in rotating order; medians of seconds and of per-repeat ratios to
    `reference`."""
    names, times = list(fns), {k: {"wall": [], "cpu": []} for k in fns}
    load = []
    for i in range(repeats):
        for name in names[i % len(names):] + names[: i % len(names)]:
            wall, cpu = timed(fns[name], calls)
            times[name]["wall"].append(wall)
            times[name]["cpu"].append(cpu)
        load.append(os.getloadavg()[0])
    out = {"load_average_per_repeat": load, "results": {}}
    for name, t in times.items():
        out["results"][name] = {
            **{f"{c}_s_median": statistics.median(t[c]) for c in ("wall", "cpu")},
            **{f"{c}_ratio_to_{reference}":
               statistics.median(a / b for a, b in zip(t[c], times[reference][c], strict=True))
               for c in ("wall", "cpu")},
        }
    return out


# ---- layers ---------------------------------------------------------------------------------------


def layer_fns(size: int, cin: int, cout: int, stride: int, batch: int) -> dict[str, Callable[[], object]]:
    """The timed computations of one conv shape, checked against torch's weight gradient first."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, size, size, cin), np.float32))
    w = jnp.asarray(rng.standard_normal((3, 3, cin, cout), np.float32) * 0.1)
    conv = lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=DN)  # noqa: E731
    dy = jnp.asarray(rng.standard_normal(jax.eval_shape(conv, x, w).shape, np.float32))
    parts = {
        "fwd": lambda x, w, dy: conv(x, w),
        "dx": lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0],
        "dw": lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0],
        "dw transposes": lambda x, w, dy: (jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(dy, (1, 2, 0, 3))),
    }
    fns = {}
    for options_name, options in (("xla defaults", None), ("xla_cpu", xla_cpu.compiler_options("cpu"))):
        for part, f in parts.items():
            if part == "dw transposes" and options is None:
                continue  # plain data movement: the options do not touch it
            compiled = jax.jit(f, compiler_options=options)
            fns[f"jax {part} ({options_name})"] = partial(lambda c: jax.block_until_ready(c(x, w, dy)), compiled)

    tx = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
    tw = torch.from_numpy(np.asarray(w).transpose(3, 2, 0, 1).copy())
    tdy = torch.from_numpy(np.asarray(dy).transpose(0, 3, 1, 2).copy())
    backward = partial(torch.ops.aten.convolution_backward, tdy, tx, tw, None, [stride] * 2, [1, 1], [1, 1], False,
                       [0, 0], 1)
    fns["torch fwd"] = lambda: torch.nn.functional.conv2d(tx, tw, stride=stride, padding=1)
    fns["torch dx"] = partial(backward, [True, False, False])
    fns["torch dw"] = partial(backward, [False, True, False])
    torch_dw = backward([False, True, False])[1].numpy().transpose(2, 3, 1, 0)
    for name in ("jax dw (xla defaults)", "jax dw (xla_cpu)"):
        dw_options = None if "defaults" in name else xla_cpu.compiler_options("cpu")
        jax_dw = np.asarray(jax.jit(parts["dw"], compiler_options=dw_options)(x, w, dy))
        np.testing.assert_allclose(jax_dw, torch_dw, rtol=1e-4, atol=1e-3 * np.abs(torch_dw).max())
    for f in fns.values():  # compile and warm up
        f()
    return fns


def layers(args: argparse.Namespace) -> dict:
    record = {"batch_size": args.batch_size, "repeats": args.repeats, "calls_per_repeat": 3, "shapes": []}
    for size, cin, cout, stride, count in RESNET20_CONVS:
        with torch.no_grad():
            result = interleaved(layer_fns(size, cin, cout, stride, args.batch_size), "torch fwd", args.repeats, 3)
        shape = {"input": [args.batch_size, size, size, cin], "out_channels": cout, "stride": stride,
                 "in_resnet20": count}
        record["shapes"].append({**shape, **result})
        units = " ".join(f"{k}: {v['cpu_ratio_to_torch fwd']:.2f}" for k, v in result["results"].items())
        print(f"{shape['input']} -> {cout}, stride {stride} (x{count}): torch fwd "
              f"{result['results']['torch fwd']['cpu_s_median'] * 1e3:.1f} ms CPU; CPU time in torch fwds: {units}; "
              f"load {statistics.median(result['load_average_per_repeat']):.1f}", flush=True)
    return record


# ---- step -----------------------------------------------------------------------------------------


def forward_runner(model_name: str, batch_size: int, plain: bool) -> Callable[[], object]:
    """The train-mode forward pass alone (BN statistics updated), before (plain) or after resnet_jax.xla_cpu."""
    overrides = {"conv": nn.Conv} if plain else {}
    model = create_model(model_name, bench.NUM_CLASSES, **overrides)
    images, _ = bench.random_batch(bench.Case(model_name, batch_size))
    x = jnp.asarray(images)
    variables = model.init(jax.random.key(0), x[:1], train=False)
    apply = jax.jit(partial(model.apply, train=True, mutable=["batch_stats"]),
                    compiler_options=None if plain else xla_cpu.compiler_options("cpu"))
    run = lambda: jax.block_until_ready(apply(variables, x))  # noqa: E731
    run()
    return run


def step(args: argparse.Namespace) -> dict:
    variants = {
        "jax: lax conv, xla default options (before)": dict(plain_conv=True, xla_default_options=True),
        "jax: lax conv, xla_cpu options": dict(plain_conv=True),
        "jax: materialising conv, xla default options": dict(xla_default_options=True),
        "jax: materialising conv, xla_cpu options (after)": {},
    }
    case = bench.Case(args.model, args.batch_size)
    runners = [bench.make_jax_runner(case, name=name, **v) for name, v in variants.items()]
    runners.append(bench.make_torch_runner(case))
    fns = {r.name: partial(r.run, args.steps_per_repeat) for r in runners}
    for name, plain in (("jax forward only (before)", True), ("jax forward only (after)", False)):
        forward = forward_runner(args.model, args.batch_size, plain)
        fns[name] = lambda f=forward: [f() for _ in range(args.steps_per_repeat)]
    result = interleaved(fns, runners[-1].name, args.repeats, 1)
    for name, r in result["results"].items():
        images_per_s = args.steps_per_repeat * args.batch_size
        print(f"{name:52s} {images_per_s / r['wall_s_median']:7.1f} images/s wall, "
              f"{images_per_s / r['cpu_s_median']:7.1f} "
              f"per CPU-second; vs torch eager: {1 / r['wall_ratio_to_' + runners[-1].name]:.2f}x wall, "
              f"{1 / r['cpu_ratio_to_' + runners[-1].name]:.2f}x CPU time")
    return {"model": args.model, "batch_size": args.batch_size, "repeats": args.repeats,
            "steps_per_repeat": args.steps_per_repeat, "first_step_s": {r.name: r.first_step_s for r in runners},
            **result}


def hlo(args: argparse.Namespace) -> dict:
    case, variants = bench.Case(args.model, args.batch_size), {
        "before": dict(plain_conv=True, xla_default_options=True),
        "materialising conv, xla default options": dict(xla_default_options=True),
        "after": {},
    }
    record = {"model": args.model, "batch_size": args.batch_size, "variants": {}}
    for name, variant in variants.items():
        model, step, tx = bench.jax_step_fn(args.model, **variant)
        images, labels = bench.random_batch(case)
        batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
        state = create_train_state(model.init(jax.random.key(0), batch["image"][:1], train=False), tx)
        lowered = step.lower(state, batch)
        compiled = lowered.compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        text = compiled.as_text()

        def count(op, text=text):
            return len(re.findall(rf"= \S+ {op}\(", text))

        record["variants"][name] = stats = {
            "unoptimised_gflop": bench.xla_flops(lowered) / 1e9, "optimised_gflop": cost["flops"] / 1e9,
            "optimised_gbytes_accessed": cost["bytes accessed"] / 1e9, "fusions": count("fusion"),
            "relu_maximum_ops": count("maximum"), "materialising_writes": count("dynamic-update-slice"),
        }
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items()),
              flush=True)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("layers", "step", "hlo"))
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--steps-per-repeat", type=int, default=2)
    args = parser.parse_args()
    jax.config.update("jax_platforms", "cpu")
    torch.set_num_threads(os.cpu_count())
    record = {**bench.environment(), "benchmark": f"cpu_gap {args.mode}",
              "xla_cpu_compiler_options": xla_cpu.compiler_options("cpu"),
              **{"layers": layers, "step": step, "hlo": hlo}[args.mode](args)}
    write_record(record, bench.RESULTS, f"cpu_gap-{args.mode}", device_slug())


if __name__ == "__main__":
    main()
