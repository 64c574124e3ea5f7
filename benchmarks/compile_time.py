"""Compile time of the train step against depth: resnet_jax now, with its old non-finite guard, and torch.compile.

    .venv/bin/python benchmarks/compile_time.py [--models resnet20 resnet56 resnet110] [--batch-size 128]
                                                [--old-guard-up-to 56] [--steps 5] [--no-torch]

The train step skips a step whose loss, gradients or new state are not finite: one scalar decides for every array
of the state. Before resnet_jax.xla_cpu.select_tree that was a jnp.where per array, and XLA:CPU fused the whole
finiteness check into each array's select, so compiling grew with the square of the array count. For each model
(benchmarks/train_step.py's case: CIFAR ResNet, 32x32, float32, SGD with momentum) this times in one process
`jax.jit(train_step).lower(...).compile()` as the step is now, the same with the old guard (a jnp.where per array,
patched in; only up to --old-guard-up-to, as it takes minutes beyond), and torch.compile's first step of the same
network as the peer, and one step of each after it (median of --steps) to show the guard costs no run time. Writes
benchmarks/results/compile_time-<date>-<device>.json with provenance.
"""

import argparse
import os
import re
import statistics
from typing import Any

if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads, as train_step.py does (see there)
import jax
import jax.numpy as jnp

from train_step import RESULTS, Case, Runner, TorchVariant, failure, make_jax_runner, make_torch_runner
from resnet_jax import xla_cpu
from resnet_jax.provenance import device_slug, provenance, write_record


def select_per_array(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    """The guard before xla_cpu.select_tree: a jnp.where per array."""
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), on_true, on_false)


def measure(runner: Runner, steps: int) -> dict[str, float]:
    """compile_s (JAX: lower + compile; torch.compile: its first step) and the median seconds of one step after."""
    return {"compile_s": runner.compile_s, "first_step_s": runner.first_step_s,
            "step_s": statistics.median(runner.run(1) for _ in range(steps))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--old-guard-up-to", type=int, default=56, help="largest depth timed with the old guard")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true", help="skip the torch.compile peer")
    args = parser.parse_args()

    rows = []
    for model in args.models:
        case = Case(model, args.batch_size)
        row: dict[str, Any] = {"model": model, "case": case.name, "jax": measure(make_jax_runner(case), args.steps)}
        if int(re.sub(r"\D", "", model)) <= args.old_guard_up_to:
            original = xla_cpu.select_tree
            xla_cpu.select_tree = select_per_array
            try:
                row["jax_old_guard"] = measure(make_jax_runner(case, name="jax, old guard"), args.steps)
            finally:
                xla_cpu.select_tree = original
        if not args.no_torch:
            try:
                peer = make_torch_runner(case, TorchVariant(compile=True), compile_timeout_s=None)
                row["torch_compile"] = measure(peer, args.steps)
            except Exception as e:  # noqa: BLE001 - a failed peer is recorded, the JAX figures stand
                row["torch_compile"] = {"error": failure(e)}
        jax_s = row["jax"]["compile_s"]
        old_s = row.get("jax_old_guard", {}).get("compile_s")
        torch_s = row.get("torch_compile", {}).get("compile_s")
        row["old_over_now"] = old_s / jax_s if old_s else None
        row["jax_over_torch_compile"] = jax_s / torch_s if torch_s else None
        rows.append(row)
        print(f"{model}: compile {jax_s:.1f} s now, "
              f"{f'{old_s:.1f} s with the old guard' if old_s else 'old guard not timed'}, "
              f"{f'torch.compile {torch_s:.1f} s' if torch_s else 'no torch.compile'}; "
              f"step {row['jax']['step_s'] * 1e3:.0f} ms now"
              + (f", {row['jax_old_guard']['step_s'] * 1e3:.0f} ms old" if old_s else ""), flush=True)

    record = {"benchmark": "compile_time", "args": vars(args), "rows": rows, **provenance()}
    write_record(record, RESULTS, "compile_time", device_slug(), f"b{args.batch_size}")


if __name__ == "__main__":
    main()
