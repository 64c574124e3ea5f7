"""Training throughput with K steps per compiled call (resnet_jax.multistep) against one step per call.

For each model, on CIFAR-shaped in-memory data (random uint8 50000x32x32x3, crop_flip: the pipeline's cost does not
depend on pixel values), the training loop's own steps run both ways on the same state, in interleaved repeats
(machine noise hits both alike): `K=1` (the default: the pipeline's jitted gather, then the jitted step, two
dispatches a step) and `K=8` (or --steps-per-call: one `lax.scan` call for K steps, each gathering its own batch).
Reports median images/s and K / 1; writes benchmarks/results/steps_per_call-<date>-<device>.json with provenance.
The gain is the host's dispatch time saved, so it is largest for small models on fast devices; XLA:CPU runs a step
inside a loop many times slower than alone, so on a CPU the ratio is well below 1.

    .venv/bin/python benchmarks/steps_per_call.py [--models resnet8 resnet20] [--batch-size 128]
                                                  [--steps-per-call 8] [--repeats 5] [--repeat-s 2]
"""

import argparse
import math
import os
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from resnet_jax import create_model, multistep, optim
from resnet_jax.config import default_config
from resnet_jax.data import Dataset, make_pipeline
from resnet_jax.provenance import device_slug, provenance, write_record
from resnet_jax.steps import compile_steps, init_state

RESULTS = Path(__file__).parent / "results"


def cifar_shaped(n: int = 50_000) -> Dataset:
    rng = np.random.default_rng(0)
    train = (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.int32))
    return Dataset("cifar_shaped_random", {"train": train}, 10, [str(i) for i in range(10)],
                   f"random uint8 {n}x32x32x3 (CIFAR-shaped)")


def measure(model_name: str, batch_size: int, steps_per_call: int, repeats: int, repeat_s: float,
            dataset: Dataset, deadline: float | None = None) -> dict:
    """Median images/s of one and of `steps_per_call` steps per call with the default recipe's steps of
    `model_name`, in interleaved repeats of about `repeat_s` seconds (a multiple of steps_per_call steps each).
    No repeat starts after `deadline` (time.perf_counter()), except the first."""
    config = default_config()
    config.data.update(name=dataset.name, augment=("crop", "flip"))
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    pipeline = make_pipeline(config.data, batch_size, mesh, config.seed, dataset=dataset)
    model = create_model(model_name, pipeline.num_classes)
    lr = config.optimizer.learning_rate
    tx = optim.make_optimizer(config.optimizer, optim.make_schedule(config.schedule, lr, pipeline.steps_per_epoch,
                                                                    config.num_epochs * pipeline.steps_per_epoch))
    state = init_state(model, tx, pipeline.image_shape, config.seed, mesh)
    train_fn, _ = compile_steps(model, tx, mesh)
    runners = {f"K={k}": (k, multistep.Steps(train_fn, pipeline, k, mesh)) for k in (1, steps_per_call)}
    ways = list(runners)

    def timed(way: str, steps: int) -> float:
        """Seconds for `steps` steps from the start of an epoch, dispatched as the loop does, waited for at the end."""
        nonlocal state
        k, runner = runners[way]
        t0 = time.perf_counter()
        for _, n in runner.calls(0, steps, lambda s: False):
            state, _ = runner.run(state, n)
        jax.block_until_ready(state)
        return time.perf_counter() - t0

    first_call_s = {way: timed(way, steps_per_call) for way in ways}  # compiles each way's programs
    step_s = max(timed(way, steps_per_call) for way in ways) / steps_per_call
    steps = steps_per_call * max(1, math.ceil(repeat_s / step_s / steps_per_call))
    steps = min(steps, pipeline.steps_per_epoch // steps_per_call * steps_per_call)
    rates = {way: [] for way in ways}
    for i in range(repeats):
        if i and deadline is not None and time.perf_counter() > deadline:
            break
        for way in ways[i % 2:] + ways[:i % 2]:
            rates[way].append(steps * batch_size / timed(way, steps))
    medians = {way: statistics.median(r) for way, r in rates.items()}
    return {"model": model_name, "batch_size": batch_size, "steps_per_call": steps_per_call, "data": pipeline.origin,
            "augment": config.data.augment, "steps_per_repeat": steps, "first_call_s": first_call_s,
            "images_per_sec_median": medians, "images_per_sec_repeats": rates,
            "over_k1": {way: medians[way] / medians["K=1"] for way in ways},
            "over_k1_per_repeat": {way: [a / b for a, b in zip(rates[way], rates["K=1"], strict=True)]
                                   for way in ways}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet8", "resnet20"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps-per-call", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--repeat-s", type=float, default=2.0, help="seconds of training per way and repeat")
    args = parser.parse_args()

    record = {"benchmark": "steps_per_call", **provenance(), "results": []}
    dataset = cifar_shaped()
    for name in args.models:
        result = measure(name, args.batch_size, args.steps_per_call, args.repeats, args.repeat_s, dataset)
        record["results"].append(result)
        print(f"{name} b{args.batch_size}: " + ", ".join(
            f"{way} {rate:,.0f} images/s ({result['over_k1'][way]:.3f}x K=1)"
            for way, rate in result["images_per_sec_median"].items()))
    record["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    write_record(record, RESULTS, "steps_per_call", device_slug())


if __name__ == "__main__":
    main()
