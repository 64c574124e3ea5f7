"""The environments resnet-jax must run in: a machine without TensorFlow (the GPU image), and a plain `pytest`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

# As on a machine without TensorFlow: importing tensorflow or tensorflow_datasets fails and find_spec finds neither
# (None in sys.modules does both). Import statements naming them are recorded: the run must not even try one (with
# TF installed, each try would import it: seconds of start-up and a GiB of memory).
WITHOUT_TENSORFLOW = """
import builtins, importlib, sys
BLOCKED = ("tensorflow", "tensorflow_datasets")
for name in BLOCKED:
    sys.modules[name] = None
tried = []
def recorded(do_import):
    def wrapper(name, *args, **kwargs):
        if name.split(".")[0] in BLOCKED:
            tried.append(name)
        return do_import(name, *args, **kwargs)
    return wrapper
builtins.__import__ = recorded(builtins.__import__)
importlib.import_module = recorded(importlib.import_module)
"""

TRAIN_FROM_LOCAL_FILES = """
import json
import jax
import resnet_jax, resnet_jax.checkpoints, resnet_jax.diagnostics, resnet_jax.evaluate, resnet_jax.summary
from resnet_jax.config import default_config
from resnet_jax.data import __main__ as data_cli
from resnet_jax.metrics import read_metrics
from resnet_jax.loop import train_and_evaluate

idx, folder, out = sys.argv[1:4]
# Both runs have the same model, image shape (16x16x1, 2 classes) and schedule: with a compilation cache, the
# second run compiles nothing.
for key, value in (("compilation_cache_dir", f"{out}/jax_cache"), ("persistent_cache_min_compile_time_secs", 0),
                   ("persistent_cache_min_entry_size_bytes", 0)):
    jax.config.update(f"jax_{key}", value)
data_cli.main(["bright", "--source", "idx", "--path", idx, "--num-classes", "2", "--image-size", "16"])
data_cli.main(["shapes", "--source", "folder", "--path", folder, "--image-size", "16"])
runs = {"idx": dict(name="bright", source="idx", path=idx, num_classes=2, val_size=64, train_subset=64, image_size=16),
        "folder": dict(name="shapes", source="folder", path=folder, image_size=16)}
records = {}
for run, data in runs.items():
    c = default_config()
    c.model.update(name="resnet8", widths=(4, 8, 16))
    c.data.update(data)
    c.update(batch_size=32, num_steps=2, log_every_steps=1)
    records[run] = train_and_evaluate(c, f"{out}/{run}")
print("TRIED", json.dumps(tried))
try:  # the one source that needs tfds says so
    train_and_evaluate(default_config(), f"{out}/tfds")
except ValueError as e:
    print("TFDS", e)

# TensorBoard's reader (not resnet_jax) may try TensorFlow: it falls back to its own file reader
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
for run, record in records.items():
    events = EventAccumulator(f"{out}/{run}/tensorboard")
    events.Reload()
    logged = [(e["step"], e["train/loss"]) for e in read_metrics(f"{out}/{run}") if "train/loss" in e]
    shown = [(e.step, e.value) for e in events.Scalars("train/loss")]
    print("RUN", json.dumps({"run": run, "record": record, "logged": logged, "tensorboard": shown}))
"""


def write_image_folder(root: Path) -> None:
    """Two classes a net can tell apart: dark and bright 20x24 grayscale noise."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 32), ("test", 4)):
        for label, (low, high) in enumerate(((0, 100), (150, 256))):
            for i in range(n):
                path = root / split / f"class{label}" / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(low, high, (20, 24), dtype=np.uint8)).save(path)


def test_imports_reads_local_files_and_trains_without_tensorflow(tmp_path, learnable_idx_dir):
    folder = tmp_path / "folder"
    write_image_folder(folder)
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_TENSORFLOW + TRAIN_FROM_LOCAL_FILES, str(learnable_idx_dir), str(folder),
         str(tmp_path / "runs")],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env=os.environ | {"JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.splitlines()
    assert f"origin:  IDX files in {learnable_idx_dir}" in lines and "classes: 2: 0, 1" in lines
    assert f"origin:  image folder {folder}" in lines and "classes: 2: class0, class1" in lines
    assert lines.count("image:   stored 16x16x1 uint8, model input 16x16x1") == 2
    runs = [json.loads(line[4:]) for line in lines if line.startswith("RUN ")]
    assert [r["run"] for r in runs] == ["idx", "folder"]
    for r in runs:
        assert {"test/accuracy", "train_epoch/loss"} <= set(r["record"]), r
        assert len(r["logged"]) == 2 and np.allclose(r["tensorboard"], r["logged"]), r  # TensorBoard without TF
    assert [json.loads(line[6:]) for line in lines if line.startswith("TRIED ")] == [[]], "an import of TensorFlow"
    tfds_error = next(line for line in lines if line.startswith("TFDS "))
    assert "source='tfds' needs tensorflow-datasets and TensorFlow" in tfds_error and "source='idx'" in tfds_error
    assert not (tmp_path / "runs" / "tfds").exists()


def test_plain_pytest_collects_from_the_repository_root():
    """Not only `python -m pytest`: tests import scripts/ and tests/ from the root (pyproject's pythonpath)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([Path(sys.executable).parent / "pytest", "--collect-only", "-q", "tests/test_ablation.py"],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
