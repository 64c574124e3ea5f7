"""Input-pipeline throughput: augmented images/s of the in-memory pipeline (gather + crop_flip + normalise, jitted),
and the training step fed by it against the same step fed one synthetic device-resident batch.

Two datasets at batch 128: real Fashion-MNIST from Debian's IDX files, zero-padded to 32x32 and repeated to 3
channels, and CIFAR-shaped data, random uint8 50000x32x32x3 (the pipeline's cost does not depend on pixel values).
In the same run it times resnet20's train step (benchmarks/train_step.py) at the same batch size and reports
pipeline / step: the pipeline must not be what limits training. Then `fed_vs_resident` runs the training loop's
own step (resnet_jax.train) on resnet20 and real Fashion-MNIST both ways, interleaved: fed / resident should be
within 5% of 1. Prints the figures and writes benchmarks/results/input_pipeline-<date>.json.

    .venv/bin/python benchmarks/input_pipeline.py [--steps 50] [--repeats 5] [--batch-size 128]
"""

import argparse
import itertools
import math
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax.config import default_config as run_config
from resnet_jax.data import Dataset, Pipeline, default_config, make_pipeline
from resnet_jax.loop import setup
from resnet_jax.provenance import provenance, write_record
from resnet_jax.steps import compile_steps, init_state
from train_step import measure_jax_train_step

RESULTS = Path(__file__).parent / "results"
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist


def endless(pipeline: Pipeline) -> Iterator[dict[str, jax.Array]]:
    """The pipeline's training batches, epoch after epoch."""
    return (batch for epoch in itertools.count() for batch in pipeline.train_batches(epoch))


def measure_pipeline(pipeline: Pipeline, steps: int) -> float:
    """Augmented train images per second over `steps` batches after one warm-up batch (compilation).

    Each batch is waited for before the next is asked for: a conservative figure, with no overlap between batches.
    """
    batches = endless(pipeline)
    jax.block_until_ready(next(batches))
    start = time.perf_counter()
    for _ in range(steps):
        jax.block_until_ready(next(batches))
    return steps * pipeline.batch_size / (time.perf_counter() - start)


def fashion_mnist_data() -> ml_collections.ConfigDict:
    """The data config of real Fashion-MNIST (Debian's IDX files) as the model sees it: 32x32x3, crop_flip."""
    data = default_config()
    data.update(name="fashion_mnist", source="idx", path=FASHION_MNIST, pad_to_32=True, channels=3,
                augment=("crop", "flip"))
    return data


def cases() -> dict[str, tuple]:
    """name -> (config, dataset or None to read it as config says)."""
    fashion = fashion_mnist_data()
    cifar = default_config()
    cifar.update(name="cifar_shaped_random", augment=("crop", "flip"))
    rng = np.random.default_rng(0)
    random_cifar = Dataset("cifar_shaped_random",
                           {"train": (rng.integers(0, 256, (50_000, 32, 32, 3), dtype=np.uint8),
                                      rng.integers(0, 10, 50_000, dtype=np.int32))},
                           10, [str(i) for i in range(10)], "random uint8 50000x32x32x3 (CIFAR-shaped)")
    return {"fashion_mnist": (fashion, None), "cifar_shaped_random": (cifar, random_cifar)}


def fed_vs_resident(config: ml_collections.ConfigDict, repeats: int = 5, repeat_s: float = 0.5,
                    deadline: float | None = None) -> dict:
    """Images/s of a run's training step fed by its input pipeline vs fed one synthetic batch already on the devices.

    The run (data, model, optimizer, mesh) is built by resnet_jax.train.setup from `config`; both feeds drive the same
    compiled step on the same state, as the training loop does (batches dispatched ahead, the state waited for at the
    end of each repeat), in interleaved repeats of about `repeat_s` seconds. No repeat starts after `deadline`
    (time.perf_counter()), except the first. fed / resident is 1 when the pipeline costs the step nothing.
    """
    t0 = time.perf_counter()
    run = setup(config)
    state = init_state(run.model, run.tx, run.pipeline.image_shape, config.seed, run.mesh)
    train_fn, _ = compile_steps(run.model, run.tx, run.mesh, config.label_smoothing)
    setup_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    shape = (config.batch_size, *run.pipeline.image_shape)
    resident = jax.device_put({"image": rng.standard_normal(shape, dtype=np.float32),
                               "label": rng.integers(0, run.pipeline.num_classes, config.batch_size).astype(np.int32)},
                              NamedSharding(run.mesh, P("data")))
    batches = endless(run.pipeline)
    feeds = {"pipeline": lambda: next(batches), "resident": lambda: resident}

    def timed(feed: str, steps: int) -> float:
        nonlocal state
        t0 = time.perf_counter()
        for _ in range(steps):
            state, _ = train_fn(state, feeds[feed]())
        jax.block_until_ready(state)
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    timed("resident", 1)  # compiles the step (and, next line, the pipeline's batch function)
    first_step_s = time.perf_counter() - t0
    timed("pipeline", 1)
    steps = max(1, math.ceil(repeat_s / (timed("resident", 3) / 3)))
    rates = {feed: [] for feed in feeds}
    for i in range(repeats):
        if i and deadline is not None and time.perf_counter() > deadline:
            break
        for feed in list(feeds)[i % 2:] + list(feeds)[:i % 2]:
            rates[feed].append(steps * config.batch_size / timed(feed, steps))
    medians = {feed: statistics.median(r) for feed, r in rates.items()}
    return {"model": config.model.name, "widths": list(config.model.widths), "dtype": config.model.dtype,
            "batch_size": config.batch_size, "data": run.pipeline.origin, "augment": config.data.augment,
            "image_shape": list(run.pipeline.image_shape), "num_classes": run.pipeline.num_classes,
            "split_sizes": run.pipeline.split_sizes, "steps_per_epoch": run.pipeline.steps_per_epoch,
            "setup_s": setup_s, "first_step_s": first_step_s, "steps_per_repeat": steps,
            "images_per_sec_median": medians, "images_per_sec_repeats": rates,
            "fed_over_resident": medians["pipeline"] / medians["resident"],
            "fed_over_resident_per_repeat": [a / b for a, b in zip(rates["pipeline"], rates["resident"], strict=True)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="batches timed per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    load_before = os.getloadavg()[0]  # other work on the machine lowers the figures: recorded with them
    results = []
    for name, (config, dataset) in cases().items():
        pipeline = make_pipeline(config, args.batch_size, mesh, seed=0, dataset=dataset)
        rates = [measure_pipeline(pipeline, args.steps) for _ in range(args.repeats)]
        results.append({"data": name, "origin": pipeline.origin, "train_images": pipeline.split_sizes["train"],
                        "image_shape": pipeline.image_shape, "augment": config.augment,
                        "normalize": config.normalize, "images_per_sec": statistics.median(rates),
                        "images_per_sec_repeats": rates})
        print(f"{name:>20}: {'x'.join(map(str, pipeline.image_shape))}, {config.augment}, batch {args.batch_size}: "
              f"{statistics.median(rates):,.0f} images/s (median of {args.repeats} x {args.steps} batches; "
              f"min {min(rates):,.0f}, max {max(rates):,.0f})")

    step_rate = statistics.median(measure_jax_train_step("resnet20", args.batch_size, steps=5) for _ in range(3))
    for result in results:
        result["times_resnet20_train_step"] = result["images_per_sec"] / step_rate
    print(f"resnet20 train step (jit, batch {args.batch_size}): {step_rate:,.0f} images/s; pipeline / step: "
          + ", ".join(f"{r['data']} {r['times_resnet20_train_step']:,.0f}x" for r in results))

    config = run_config()  # resnet20, the default SGD recipe
    config.data, config.batch_size = fashion_mnist_data(), args.batch_size
    fed = fed_vs_resident(config, args.repeats)
    print(f"resnet20 train step fed by the pipeline / by a device-resident batch: {fed['fed_over_resident']:.3f} "
          f"({fed['images_per_sec_median']['pipeline']:,.0f} vs "
          f"{fed['images_per_sec_median']['resident']:,.0f} images/s)")

    record = {"benchmark": "input_pipeline", **provenance(), "resnet20_train_step_images_per_sec": step_rate,
              "fed_vs_resident": fed,
              "load_average_1m": {"before": load_before, "after": os.getloadavg()[0]},
              "batch_size": args.batch_size, "steps": args.steps, "repeats": args.repeats,
              "timing": "each batch waited for (block_until_ready) after a warm-up batch", "results": results}
    write_record(record, RESULTS, "input_pipeline")


if __name__ == "__main__":
    main()
