"""Streamed JPEG throughput: images/s of decoded, random-resized-cropped, flipped, normalised 224x224 batches from an
image folder of photo-sized JPEGs, per decoding thread (one per core), against the GPU train step they must feed.

The folder is synthetic (written once, then reused): 500x375 / 375x500 JPEGs at quality 90 with a natural image's
1/f spectrum, colour and sharp-edged shapes, not flat noise, since a JPEG's decoding time depends on its content.
Three figures per worker count, measured in turn, repeat by repeat, so that load from other work hits them alike:

  - decode: PIL decode + crop + resize alone (imagenet.load_crop on a thread pool): what a core gives the GPU;
  - pipeline: the whole streamed folder pipeline (resnet_jax.data, augment=('inception_crop', 'flip')), global batches
    ready on the device (here the CPU also runs the flips and normalisation that a GPU would);
  - tf.data: tf.image.decode_and_crop_jpeg on the same files and boxes (where TensorFlow is installed), for the
    decode-speed comparison behind the README's choice.

Cores needed = a train step's images/s / the decode rate per core, for the published GPU anchors (or --gpu-rate).

    .venv/bin/python benchmarks/jpeg_pipeline.py [--workers 1 2] [--images 256] [--batch-size 64] [--repeats 3]
"""

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np
from PIL import Image, ImageDraw

from input_pipeline import measure_pipeline
from resnet_jax.data import default_config, imagenet, make_pipeline
from resnet_jax.provenance import provenance, write_record

RESULTS = Path(__file__).parent / "results"
FOLDER = Path(os.environ.get("TMPDIR", "/tmp")) / "resnet_jax_jpegs"
SIZE = 224
# ResNet-50 training images/s per GPU, published (not ours): NVIDIA DeepLearningExamples (PyTorch AMP, one A100) and
# MLPerf Training v4.0 (MXNet + DALI: 64x H100, 8x H200), as in /work/shared/anchors.md.
GPU_ANCHORS = {"A100 PyTorch AMP (DeepLearningExamples)": 2470, "H100 MLPerf v4.0": 4900, "H200 MLPerf v4.0": 7900}


def natural_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A photo-like uint8 RGB image: 1/f luminance and chroma fields (natural images' spectrum) under a few
    sharp-edged shapes, so that it compresses and decodes like a photograph rather than like noise or flat colour."""
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :]
    f = np.hypot(fx, fy)
    f[0, 0] = 1

    def field():
        spectrum = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f
        x = np.fft.irfft2(spectrum, (height, width))
        return (x - x.mean()) / x.std()

    lum, a, b = field(), field(), field()
    rgb = 120 + 50 * lum[..., None] + 18 * np.stack([a, b - a, -b], -1) + rng.normal(0, 3, (height, width, 3))
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(3, 9)):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        x1, y1 = x0 + rng.integers(10, width // 2), y0 + rng.integers(10, height // 2)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1, y1), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return np.asarray(image)


def write_folder(root: Path, images: int, classes: int = 4, seed: int = 0) -> dict:
    """train/<class>/<i>.JPEG under root (kept when it already holds the same set); returns what it holds."""
    spec = {"images": images, "classes": classes, "seed": seed, "sizes": "500x375 or 375x500", "quality": 90}
    meta = root / "meta.json"
    if meta.exists() and json.loads(meta.read_text()).get("spec") == spec:
        return json.loads(meta.read_text())
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(images):
        folder = root / "train" / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        height, width = (375, 500) if rng.random() < 0.75 else (500, 375)  # ImageNet's commonest sizes
        paths.append(folder / f"{i}.JPEG")
        Image.fromarray(natural_image(rng, height, width)).save(paths[-1], quality=90)
    sizes = [p.stat().st_size for p in paths]
    info = {"spec": spec, "mean_kb": sum(sizes) / len(sizes) / 1000,
            "bits_per_pixel": 8 * sum(sizes) / (len(sizes) * 500 * 375)}
    meta.write_text(json.dumps(info))
    return info


def decode_rate(paths: list[Path], crops: imagenet.Crops, threads: int) -> float:
    """Images/s of random-resized crops decoded by PIL on `threads` threads (host work only)."""
    with ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        list(pool.map(lambda i: imagenet.load_crop(paths[i], lambda h, w: crops.train_box(h, w, 0, i), SIZE),
                      range(len(paths))))
        return len(paths) / (time.perf_counter() - start)


def tf_decode_rate(paths: list[Path], crops: imagenet.Crops, threads: int) -> float:
    """The same with tf.data: read_file + decode_and_crop_jpeg (imagenet.tf_crop) with `threads` threads."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    feature = tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")
    ds = tf.data.Dataset.from_tensor_slices([str(p) for p in paths]).enumerate()
    ds = ds.map(lambda i, p: imagenet.tf_crop(tf.io.read_file(p), feature, lambda h, w, j: crops.train_box(
        h, w, 0, j), i, SIZE), num_parallel_calls=threads, deterministic=True).batch(64)
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    ds = ds.with_options(options)
    start = time.perf_counter()
    n = sum(len(batch) for batch in ds)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="decoding threads to time")
    parser.add_argument("--images", type=int, default=256, help="JPEGs in the synthetic folder")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4, help="pipeline batches timed per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", type=Path, default=FOLDER)
    parser.add_argument("--gpu-rate", type=float, default=0, help="a measured train step's images/s to compare with")
    parser.add_argument("--no-tf", action="store_true", help="skip the tf.data comparison")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    folder = write_folder(args.folder, args.images)
    paths = sorted((args.folder / "train").rglob("*.JPEG"))
    crops = imagenet.Crops(SIZE, 0.875, True, seed=0)
    try:
        import tensorflow  # noqa: F401
        has_tf = not args.no_tf
    except ImportError:
        has_tf = False
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    pipelines = {}
    for workers in args.workers:
        c = default_config()
        c.update(name="synthetic_jpegs", source="folder", path=str(args.folder), image_size=SIZE,
                 augment=("inception_crop", "flip"), eval_crop=0.875, normalize="imagenet", workers=workers)
        pipelines[workers] = make_pipeline(c, args.batch_size, mesh, seed=0)
        measure_pipeline(pipelines[workers], 1)  # compile the batch functions outside the timing
    cases = [(kind, w) for w in args.workers for kind in ("decode", "pipeline") + ("tf.data",) * has_tf]
    rates = {case: [] for case in cases}
    for repeat in range(args.repeats):
        for kind, workers in cases[repeat % len(cases):] + cases[:repeat % len(cases)]:  # rotate the order
            if kind == "decode":
                rate = decode_rate(paths, crops, workers)
            elif kind == "tf.data":
                rate = tf_decode_rate(paths, crops, workers)
            else:
                rate = measure_pipeline(pipelines[workers], args.steps)
            rates[kind, workers].append(rate)
    load_after = os.getloadavg()[0]

    results = [{"measure": kind, "workers": w, "images_per_sec": statistics.median(r), "per_worker":
                statistics.median(r) / w, "repeats": r} for (kind, w), r in rates.items()]
    per_core = max(r["per_worker"] for r in results if r["measure"] == "decode")
    gpus = dict(GPU_ANCHORS, **({"measured (--gpu-rate)": args.gpu_rate} if args.gpu_rate else {}))
    cores = {name: rate / per_core for name, rate in gpus.items()}
    quiet = load_before < 0.5 * os.cpu_count()
    print(f"{len(paths)} synthetic JPEGs in {args.folder}: {folder['mean_kb']:.0f} kB each on average "
          f"({folder['bits_per_pixel']:.2f} bits/pixel; ImageNet's train set: about 110 kB), crops {SIZE}x{SIZE}")
    for r in results:
        print(f"{r['measure']:>9}, {r['workers']} worker(s): {r['images_per_sec']:7.0f} images/s "
              f"({r['per_worker']:.0f} per worker; repeats {', '.join(f'{x:.0f}' for x in r['repeats'])})")
    print(f"cores to feed a GPU at {per_core:.0f} decoded images/s per core: "
          + ", ".join(f"{name} {rate:,.0f}/s -> {cores[name]:.0f}" for name, rate in gpus.items()))
    if not quiet:
        print(f"PROVISIONAL: load average {load_before:.1f} on {os.cpu_count()} cores; re-run on a quiet machine")

    record = {"benchmark": "jpeg_pipeline", **provenance(), "provisional": not quiet,
              "load_average_1m": {"before": load_before, "after": load_after}, "folder": folder,
              "image_size": SIZE, "batch_size": args.batch_size, "steps": args.steps, "repeats": args.repeats,
              "timing": "decode: the folder once per repeat; pipeline: batches waited for after a warm-up batch",
              "results": results, "decode_images_per_sec_per_core": per_core,
              "gpu_images_per_sec": gpus, "gpu_rates_are": "published anchors unless 'measured'",
              "cores_needed": cores}
    write_record(record, RESULTS, "jpeg_pipeline", *([] if quiet else ["provisional"]))


if __name__ == "__main__":
    main()
