"""Input-pipeline throughput: augmented images/s of the in-memory pipeline (gather + crop_flip + normalise, jitted).

Two datasets at batch 128: real Fashion-MNIST from Debian's IDX files, zero-padded to 32x32 and repeated to 3
channels, and CIFAR-shaped data, random uint8 50000x32x32x3 (the pipeline's cost does not depend on pixel values).
In the same run it times resnet20's train step (benchmarks/train_step.py) at the same batch size and reports
pipeline / step: the pipeline must not be what limits training. Prints the figures and writes
benchmarks/results/input_pipeline-<date>.json.

    .venv/bin/python benchmarks/input_pipeline.py [--steps 50] [--repeats 5] [--batch-size 128]
"""

import argparse
import itertools
import json
import os
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from resnet_jax.data import Dataset, Pipeline, default_config, make_pipeline
from resnet_jax.provenance import provenance
from train_step import measure_jax_train_step

RESULTS = Path(__file__).parent / "results"
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist


def measure_pipeline(pipeline: Pipeline, steps: int) -> float:
    """Augmented train images per second over `steps` batches after one warm-up batch (compilation).

    Each batch is waited for before the next is asked for: a conservative figure, with no overlap between batches.
    """
    batches = (batch for epoch in itertools.count() for batch in pipeline.train_batches(epoch))
    jax.block_until_ready(next(batches))
    start = time.perf_counter()
    for _ in range(steps):
        jax.block_until_ready(next(batches))
    return steps * pipeline.batch_size / (time.perf_counter() - start)


def cases() -> dict[str, tuple]:
    """name -> (config, dataset or None to read it as config says)."""
    fashion = default_config()
    fashion.update(name="fashion_mnist", source="idx", path=FASHION_MNIST, pad_to_32=True, channels=3,
                   augment="crop_flip")
    cifar = default_config()
    cifar.update(name="cifar_shaped_random", augment="crop_flip")
    rng = np.random.default_rng(0)
    random_cifar = Dataset("cifar_shaped_random",
                           {"train": (rng.integers(0, 256, (50_000, 32, 32, 3), dtype=np.uint8),
                                      rng.integers(0, 10, 50_000, dtype=np.int32))},
                           10, [str(i) for i in range(10)], "random uint8 50000x32x32x3 (CIFAR-shaped)")
    return {"fashion_mnist": (fashion, None), "cifar_shaped_random": (cifar, random_cifar)}


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

    record = {"benchmark": "input_pipeline", **provenance(), "resnet20_train_step_images_per_sec": step_rate,
              "load_average_1m": {"before": load_before, "after": os.getloadavg()[0]},
              "batch_size": args.batch_size, "steps": args.steps, "repeats": args.repeats,
              "timing": "each batch waited for (block_until_ready) after a warm-up batch", "results": results}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"input_pipeline-{record['date'][:10]}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
