"""Changing the data as a researcher would: a new augmentation and a new data source registered from an experiment
file train through the CLI; mixup's soft labels go through pipeline, loss and metrics; label smoothing is computed."""

import json

import jax
import numpy as np
import optax
import pytest

from resnet_jax import losses
from resnet_jax.data import (DataError, default_config, load_dataset, make_pipeline, register_augmentation,
                             register_source, validate_config)
from resnet_jax.data.augment import AUGMENTATIONS
from resnet_jax.data.sources import SOURCES
from resnet_jax.metrics import read_metrics
from resnet_jax.loop import train_and_evaluate
from tests.test_data import mesh, tiny_dataset
from tests.test_train import run_cli, tiny_config

TINY_RUN = """
    c.model.update(name="resnet8", widths=(4, 8, 16))
    c.update(batch_size=32, num_steps=2, log_every_steps=1)
    return c
"""

AUGMENTATION_EXPERIMENT = '''
from pathlib import Path

from resnet_jax.config import default_config
from resnet_jax.data import register_augmentation


@register_augmentation("invert")
def invert(image, label, key, context):
    """Photographic negative; the marker file says the pipeline built it into its batches."""
    Path(__file__).with_name("invert_was_traced").write_text(str(image.shape))
    return 255 - image, label


def get_config():
    c = default_config()
    c.data.update(name="fashion_mnist", source="idx", path={path!r}, val_size=64, augment=("flip", "invert"))
''' + TINY_RUN

SOURCE_EXPERIMENT = '''
import numpy as np

from resnet_jax.config import default_config
from resnet_jax.data import register_source


def read(config):
    """An .npz file of x_train, y_train, x_test, y_test: (N, H, W) uint8 images, (N,) integer labels."""
    with np.load(config.path) as arrays:
        splits = {{split: (arrays[f"x_{{split}}"][..., None], arrays[f"y_{{split}}"].astype(np.int32))
                  for split in ("train", "test")}}
    return splits, ["dark", "bright"], f"npz file {{config.path}}"


def validate(config):
    if not config.path.endswith(".npz"):
        raise ValueError(f"source='npz' reads an .npz file, not data.path={{config.path!r}}")


register_source("npz", read, validate=validate)


def get_config():
    c = default_config()
    c.data.update(name="bright_or_dark", source="npz", path={path!r}, val_size=64)
''' + TINY_RUN


def test_a_user_registered_augmentation_trains_through_the_cli(tmp_path, learnable_idx_dir):
    experiment = tmp_path / "invert_experiment.py"
    experiment.write_text(AUGMENTATION_EXPERIMENT.format(path=str(learnable_idx_dir)))
    out = run_cli("resnet_jax.train", "--config", str(experiment), "--workdir", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "invert_was_traced").read_text() == "(28, 28, 1)"  # per example: one image at a time
    assert "test/accuracy" in read_metrics(tmp_path / "run")[-1]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["augment"] == ["flip", "invert"]


def test_a_registered_augmentation_changes_the_batches_as_it_says():
    register_augmentation("invert_for_test", lambda image, label, key, context: (255 - image, label))
    try:
        data = tiny_dataset(n_train=16)
        batches = {}
        for names in ((), ("invert_for_test",)):
            c = default_config()
            c.update(augment=names, normalize="none")
            validate_config(c)
            batches[names] = next(make_pipeline(c, 8, mesh(), 0, dataset=data).train_batches(0))
        plain, inverted = batches[()], batches[("invert_for_test",)]
        np.testing.assert_array_equal(plain["label"], inverted["label"])  # the same examples
        np.testing.assert_allclose(np.asarray(inverted["image"]), 1 - np.asarray(plain["image"]), atol=1e-6)
    finally:
        del AUGMENTATIONS["invert_for_test"]


def test_a_user_registered_data_source_trains_through_the_cli(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 320), ("test", 100)):
        labels = rng.integers(0, 2, n).astype(np.uint8)
        arrays[f"x_{split}"] = (40 + 120 * labels[:, None, None] + rng.integers(0, 80, (n, 28, 28))).astype(np.uint8)
        arrays[f"y_{split}"] = labels
    np.savez(tmp_path / "bright.npz", **arrays)
    experiment = tmp_path / "npz_experiment.py"
    experiment.write_text(SOURCE_EXPERIMENT.format(path=str(tmp_path / "bright.npz")))
    out = run_cli("resnet_jax.train", "--config", str(experiment), "--workdir", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"npz file {tmp_path / 'bright.npz'}" in out.stdout and "2 classes" in out.stdout
    assert "val/accuracy" in read_metrics(tmp_path / "run")[-1]

    out = run_cli("resnet_jax.train", "--config", str(experiment), "--workdir", str(tmp_path / "other"),
                  "--config.data.path=bright.csv")
    assert out.returncode == 2 and "source='npz' reads an .npz file, not data.path='bright.csv'" in out.stderr
    out = run_cli("resnet_jax.train", "--config", str(experiment), "--workdir", str(tmp_path / "other"),
                  "--config.data.source=npy")
    assert out.returncode == 2
    assert "unknown data.source 'npy'; choose one of tfds, idx, cifar, folder, npz" in out.stderr


def test_mixup_gives_soft_labels_that_train_and_are_counted(tmp_path, learnable_idx_dir):
    data = tiny_dataset(n_train=16)  # labels are the example indices: a soft label says which two were mixed
    c = default_config()
    c.update(augment=("mixup",), normalize="none", mixup_alpha=0.4)
    batch = next(make_pipeline(c, 8, mesh(), 0, dataset=data).train_batches(0))
    labels, images = np.asarray(batch["label"]), np.asarray(batch["image"])
    assert labels.shape == (8, 16) and labels.dtype == np.float32
    np.testing.assert_allclose(labels.sum(1), 1, rtol=1e-6)
    first, second = labels.argmax(1), labels[::-1].argmax(1)  # partner i is example 7 - i of the batch
    weight = labels[np.arange(8), first]
    assert len(set(np.round(weight, 6))) == 1 and 0 < weight[0] < 1  # one weight per batch
    raw = data.splits["train"][0].astype(np.float32) / 255
    mixed = weight[:, None, None, None] * raw[first] + (1 - weight[:, None, None, None]) * raw[second]
    np.testing.assert_allclose(images, mixed, atol=1e-5)
    np.testing.assert_array_equal(losses.top_k_correct(np.eye(16)[first] * 9, labels, 1), np.ones(8))

    config = tiny_config(learnable_idx_dir, num_steps=3, log_every_steps=1)
    config.data.augment = ("crop", "flip", "mixup")
    record = train_and_evaluate(config, tmp_path / "mixup")
    assert np.isfinite(record["val/loss"]) and 0 <= record["val/accuracy"] <= 1
    assert all(np.isfinite(e["train/loss"]) for e in read_metrics(tmp_path / "mixup") if "train/loss" in e)


def test_a_source_may_give_soft_labels_and_they_reach_train_and_eval_batches():
    rng = np.random.default_rng(0)
    soft = rng.dirichlet((1, 1, 1), 13).astype(np.float32)
    images = rng.integers(0, 256, (13, 6, 6, 1), dtype=np.uint8)
    splits = {"train": (images[:10], soft[:10]), "test": (images[10:], soft[10:])}
    register_source("soft_for_test", lambda config: (splits, ["a", "b", "c"], "soft labels in memory"))
    try:
        c = default_config()
        c.update(name="soft", source="soft_for_test", val_size=2, eval_batch_size=4)
        validate_config(c)
        pipeline = make_pipeline(c, 4, mesh(), 0)
        train = next(pipeline.train_batches(0))["label"]
        assert train.shape == (4, 3) and {tuple(row) for row in np.asarray(train)} <= {tuple(row) for row in soft[:8]}
        batches = list(pipeline.eval_batches("test"))  # 3 examples in a batch of 4: one padded, masked out
        np.testing.assert_array_equal(np.asarray(batches[0]["label"])[:3], soft[10:])
        assert np.asarray(batches[0]["mask"]).tolist() == [1, 1, 1, 0]
        c.classes = (0, 1)
        with pytest.raises(DataError, match="select examples by their integer label, but soft labels in memory has"):
            load_dataset(c)
    finally:
        del SOURCES["soft_for_test"]


def smoothed_cross_entropy_by_hand(logits, targets, smoothing):
    """-sum_c t_c log softmax(z)_c with t = (1 - s) y + s / C, written out."""
    logits, targets = np.asarray(logits, np.float64), np.asarray(targets, np.float64)
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    smoothed = (1 - smoothing) * targets + smoothing / logits.shape[-1]
    return -(smoothed * log_softmax).sum(-1)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_label_smoothing_is_in_the_loss_for_integer_and_soft_labels(smoothing):
    logits = np.array([[2.0, 1.0, 0.0, -1.0], [0.0, 0.5, 3.0, 0.0], [1.0, 1.0, 1.0, 1.0]], np.float32)
    labels = np.array([0, 2, 3])
    soft = np.array([[0.7, 0.3, 0, 0], [0, 0, 1, 0], [0.25, 0.25, 0.25, 0.25]], np.float32)
    for given, targets in ((labels, np.eye(4)[labels]), (soft, soft)):
        expected = smoothed_cross_entropy_by_hand(logits, targets, smoothing)
        np.testing.assert_allclose(losses.cross_entropy(logits, given, smoothing), expected, rtol=1e-5)
    # the hand count by numbers: example 0, smoothing 0.1 -> -(0.925 log p0 + 0.025 (log p1 + log p2 + log p3))
    if smoothing == 0.1:
        assert float(losses.cross_entropy(logits, labels, smoothing)[0]) == pytest.approx(0.5902, abs=1e-4)
    argmax = losses.top_k_correct(logits, np.array([0, 2, 0]), 1)  # a soft label counts as its most probable class
    assert losses.top_k_correct(logits, soft, 1).tolist() == argmax.tolist() == [1, 1, 1]


def test_soft_labels_are_counted_in_an_eval_step():
    """eval_step's sums over a padded batch with one-hot labels equal those with the integer labels."""
    from resnet_jax import create_model
    from resnet_jax.steps import create_train_state, eval_step

    model = create_model("resnet8", 3, widths=(4, 8, 16))
    x = jax.random.normal(jax.random.key(0), (6, 8, 8, 1))
    state = create_train_state(model.init(jax.random.key(1), x, train=False), optax.sgd(0.1))
    labels = np.array([0, 1, 2, 2, 1, 0])
    mask = np.array([1, 1, 1, 1, 0, 0], np.float32)
    hard = eval_step(state, {"image": x, "label": labels, "mask": mask}, model=model)
    soft = eval_step(state, {"image": x, "label": np.eye(3, dtype=np.float32)[labels], "mask": mask}, model=model)
    for key in hard:
        assert float(hard[key]) == pytest.approx(float(soft[key]), rel=1e-6), key
    assert float(hard["count"]) == 4
