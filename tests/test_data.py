"""resnet_jax.data: readers on small files the tests write, tfds under mock_data, augmentation, pipeline properties."""

import gzip
import os
import pickle
import re
import subprocess
import sys
import tarfile

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from resnet_jax.data import DataError, Dataset, augment, default_config, load_dataset, make_pipeline
from resnet_jax.data import __main__ as data_main
from resnet_jax.data.sources import CIFAR, CLASS_NAMES

RNG = np.random.default_rng(0)


def config(**overrides):
    c = default_config()
    c.update(overrides)
    return c


def mesh():
    return jax.make_mesh((jax.device_count(),), ("data",))


def tiny_dataset(n_train=40, n_test=13, shape=(28, 28, 1), one_train_image=False):
    """Random images whose labels are their index, so batches say which examples they hold.

    With one_train_image, every train image is the same: train batches then differ only by augmentation.
    """
    splits = {split: (RNG.integers(0, 256, (n, *shape), dtype=np.uint8), np.arange(n, dtype=np.int32))
              for split, n in (("train", n_train), ("test", n_test))}
    if one_train_image:
        splits["train"][0][:] = splits["train"][0][0]
    return Dataset("tiny", splits, n_train, [str(i) for i in range(n_train)], "memory")


@pytest.fixture
def idx_dir(tmp_path, write_idx):
    """Fashion-MNIST-format files: train gzipped, test plain."""
    arrays = {}
    for prefix, n, gz in (("train", 7, True), ("t10k", 3, False)):
        images, labels = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8), RNG.integers(0, 10, n, dtype=np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
        arrays[prefix] = images, labels
    return tmp_path, arrays


def test_idx_files_gz_and_plain_with_val_and_subset(idx_dir):
    path, arrays = idx_dir
    data = load_dataset(config(name="fashion_mnist", source="idx", path=str(path), val_size=2))
    (train_x, train_y), (test_x, _) = arrays["train"], arrays["t10k"]
    assert list(data.splits) == ["train", "val", "test"]
    np.testing.assert_array_equal(data.splits["train"][0][..., 0], train_x[:5])
    np.testing.assert_array_equal(data.splits["val"][0][..., 0], train_x[5:])
    np.testing.assert_array_equal(data.splits["test"][0][..., 0], test_x)
    np.testing.assert_array_equal(data.splits["val"][1], train_y[5:])
    assert data.splits["test"][1].dtype == np.int32 and data.splits["train"][0].dtype == np.uint8
    assert data.class_names == CLASS_NAMES["fashion_mnist"] and data.num_classes == 10
    assert str(path) in data.origin

    subset = load_dataset(config(name="fashion_mnist", source="idx", path=str(path), val_size=2, train_subset=3))
    np.testing.assert_array_equal(subset.splits["train"][1], train_y[:3])
    np.testing.assert_array_equal(subset.splits["val"][1], train_y[5:])


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[:-5], "truncated or corrupt"),
    (lambda raw: b"\x00\x00\x0d\x03" + raw[4:], "not an unsigned-byte IDX"),
    (lambda raw: raw + b"extra", "truncated or corrupt"),
    (lambda raw: gzip.compress(raw)[:-20], "corrupt or truncated gzip"),
])
def test_idx_corrupt_files_are_named(idx_dir, damage, message):
    path, _ = idx_dir
    bad = path / "t10k-images-idx3-ubyte"
    bad.write_bytes(damage(bad.read_bytes()))
    with pytest.raises(DataError, match=message) as e:
        load_dataset(config(name="fashion_mnist", source="idx", path=str(path)))
    assert str(bad) in str(e.value)


def test_cli_describes_the_data_and_draws_the_grid(idx_dir, tmp_path, capsys):
    path, arrays = idx_dir
    grid = tmp_path / "grid.png"
    data_main.main(["fashion_mnist", "--source", "idx", "--path", str(path), "--pad-to-32", "--channels", "3",
                    "--val-size", "2", "--grid", str(grid), "--per-class", "1"])
    out = capsys.readouterr().out
    assert f"IDX files in {path}" in out and "train 5, val 2, test 3" in out and "model input 32x32x3" in out
    printed_mean = float(re.search(r"per channel: mean \[([\d.]+)\]", out).group(1))
    assert abs(printed_mean - arrays["train"][0][:5].mean()) < 0.01
    assert Image.open(grid).size[0] > 100
    with pytest.raises(SystemExit, match="IDX files for 'mnist' not found"):
        data_main.main(["mnist", "--source", "idx", "--path", str(tmp_path / "empty")])


def test_missing_files_say_where_they_were_looked_for(tmp_path):
    with pytest.raises(DataError, match="train-images-idx3-ubyte") as e:
        load_dataset(config(name="mnist", source="idx", path=str(tmp_path)))
    assert str(tmp_path) in str(e.value)
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        load_dataset(config(name="cifar10", source="cifar", path=str(tmp_path)))
    with pytest.raises(DataError, match="path/train/<class>"):
        load_dataset(config(name="signs", source="folder", path=str(tmp_path / "nothing")))


def test_unknown_dataset_and_source():
    with pytest.raises(DataError, match="unknown dataset 'no_such_dataset'.*catalog"):
        load_dataset(config(name="no_such_dataset", source="tfds"))
    with pytest.raises(DataError, match="unknown source"):
        load_dataset(config(source="web"))
    with pytest.raises(DataError, match="cifar10 or cifar100"):
        load_dataset(config(name="mnist", source="cifar", path="/tmp"))


def test_tfds_not_prepared_offline_is_a_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(DataError, match="could not download or prepare 'mnist'.*no network.*source='idx'") as e:
        load_dataset(config(name="mnist", source="tfds", path=str(tmp_path)))
    assert str(tmp_path) in str(e.value) and isinstance(e.value.__cause__, ConnectionError)


def write_cifar(root, name):
    """A small python-pickle CIFAR archive (folder and .tar.gz); returns {split: (rows of 3072, labels)}, names."""
    folder, archive, train, test, meta, label_key, names_key = CIFAR[name]
    num_classes = 10 if name == "cifar10" else 100
    (root / folder).mkdir()
    written = {}
    for split, members in (("train", train), ("test", test)):
        rows, labels = [], []
        for member in members:
            batch = {b"data": RNG.integers(0, 256, (3, 3072), dtype=np.uint8),
                     label_key: RNG.integers(0, num_classes, 3).tolist()}
            (root / folder / member).write_bytes(pickle.dumps(batch))
            rows.append(batch[b"data"])
            labels += batch[label_key]
        written[split] = np.concatenate(rows), np.array(labels)
    names = [f"class{i}" for i in range(num_classes)]
    (root / folder / meta).write_bytes(pickle.dumps({names_key: [n.encode() for n in names]}))
    with tarfile.open(root / archive, "w:gz") as tar:
        tar.add(root / folder, arcname=folder)
    return written, names


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_archive_folder_and_tarball(tmp_path, name):
    written, names = write_cifar(tmp_path, name)
    folder, archive = CIFAR[name][:2]
    from_folder = load_dataset(config(name=name, source="cifar", path=str(tmp_path)))
    from_tar = load_dataset(config(name=name, source="cifar", path=str(tmp_path / archive)))
    assert "tar.gz" in from_tar.origin and from_folder.class_names == from_tar.class_names == names
    for split, (rows, labels) in written.items():
        images = from_folder.splits[split][0]
        assert images.shape == (len(rows), 32, 32, 3)
        # CIFAR rows are channel-major: 1024 red, 1024 green, 1024 blue values, each row by row.
        i, r, c, ch = 1, 5, 7, 2
        assert images[i, r, c, ch] == rows[i, ch * 1024 + r * 32 + c]
        np.testing.assert_array_equal(from_folder.splits[split][1], labels)
        np.testing.assert_array_equal(from_tar.splits[split][0], images)

    (tmp_path / folder / CIFAR[name][3][0]).unlink()  # drop the test batch
    with pytest.raises(DataError, match="not a complete"):
        load_dataset(config(name=name, source="cifar", path=str(tmp_path / folder)))


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder(tmp_path):
    written = {}
    for split, per_class in (("train", {"cat": 3, "dog": 2}), ("test", {"cat": 1, "dog": 2})):
        for label, n in per_class.items():
            for i in range(n):
                image = RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8)
                write_png(tmp_path / split / label / f"{i}.png", image)
                written[image.tobytes()] = label
    data = load_dataset(config(name="signs", source="folder", path=str(tmp_path), val_size=1))
    assert data.class_names == ["cat", "dog"]
    assert {k: len(y) for k, (_, y) in data.splits.items()} == {"train": 4, "val": 1, "test": 3}
    for images, labels in data.splits.values():
        assert images.shape[1:] == (6, 5, 3)
        assert [written[x.tobytes()] for x in images] == [data.class_names[y] for y in labels]

    write_png(tmp_path / "train" / "dog" / "odd.png", RNG.integers(0, 256, (9, 9, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="odd.png.*share one shape.*image_size"):
        load_dataset(config(name="signs", source="folder", path=str(tmp_path)))
    resized = load_dataset(config(name="signs", source="folder", path=str(tmp_path), image_size=4))
    assert resized.splits["train"][0].shape == (6, 4, 4, 3)


def write_tfds_metadata(root, name, num_examples):
    """The metadata tfds.testing.mock_data needs to know the splits (MockPolicy.USE_FILES)."""
    builder = tfds.builder(name, data_dir=str(root))
    builder.info.set_splits(tfds.core.SplitDict(
        [tfds.core.SplitInfo(name=s, shard_lengths=[num_examples], num_bytes=0) for s in ("train", "test")]))
    os.makedirs(builder.data_dir)
    builder.info.write_to_directory(builder.data_dir)


def test_tfds_in_memory_and_streamed_under_mock_data(tmp_path):
    n = 24
    write_tfds_metadata(tmp_path, "fashion_mnist", n)
    with tfds.testing.mock_data(num_examples=n, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(tmp_path)):
        data = load_dataset(config(name="fashion_mnist", source="tfds", val_size=4))
        assert {k: x.shape for k, (x, _) in data.splits.items()} == {
            "train": (n - 4, 28, 28, 1), "val": (4, 28, 28, 1), "test": (n, 28, 28, 1)}
        assert data.num_classes == 10 and "tfds fashion_mnist" in data.origin
        assert "streamed" not in make_pipeline(config(name="fashion_mnist"), 8, mesh(), 0).origin

        c = config(name="fashion_mnist", in_memory=False, pad_to_32=True, channels=3, augment="crop_flip",
                   eval_batch_size=10)
        pipeline = make_pipeline(c, 8, mesh(), seed=0)
        assert pipeline.origin.endswith("streamed") and pipeline.steps_per_epoch == n // 8
        assert pipeline.image_shape == (32, 32, 3) and pipeline.split_sizes == {"train": n, "test": n}
        epoch = list(pipeline.train_batches(1))
        assert len(epoch) == 3 and epoch[0]["image"].shape == (8, 32, 32, 3)
        resumed = next(pipeline.train_batches(1, start_step=2))
        np.testing.assert_array_equal(resumed["image"], epoch[2]["image"])
        np.testing.assert_array_equal(resumed["label"], epoch[2]["label"])
        masks = [b["mask"] for b in pipeline.eval_batches("test")]
        assert len(masks) == 3 and sum(m.sum() for m in masks) == n and masks[-1][-6:].sum() == 0


def test_crop_is_a_window_of_the_zero_padded_image():
    images = RNG.integers(1, 256, (16, 8, 8, 2), dtype=np.uint8)  # no zeros: padding is recognisable
    cropped = np.asarray(augment.augment(images, jax.random.split(jax.random.key(0), 16), "crop"))
    offsets = []
    for image, crop in zip(images, cropped):
        padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
        found = [(dy, dx) for dy in range(9) for dx in range(9) if (padded[dy:dy + 8, dx:dx + 8] == crop).all()]
        assert len(found) == 1
        offsets += found
    assert len(set(offsets)) > 1


def test_shift_fills_with_the_nearest_pixel():
    images = RNG.integers(0, 256, (16, 20, 20, 1), dtype=np.uint8)  # shifts of up to 10% = 2 pixels
    shifted = np.asarray(augment.augment(images, jax.random.split(jax.random.key(1), 16), "shift"))
    shifts = []
    for image, out in zip(images, shifted):
        edge = np.pad(image, ((2, 2), (2, 2), (0, 0)), mode="edge")
        shifts += [(dy, dx) for dy in range(5) for dx in range(5) if (edge[dy:dy + 20, dx:dx + 20] == out).all()]
    assert len(shifts) == 16 and len(set(shifts)) > 1


def test_flip_mirrors_half_and_twice_is_identity():
    images = RNG.integers(0, 256, (32, 6, 6, 3), dtype=np.uint8)
    keys = jax.random.split(jax.random.key(2), 32)
    flipped = np.asarray(augment.augment(images, keys, "flip"))
    mirrored = [(out == image[:, ::-1]).all() for image, out in zip(images, flipped)]
    assert all(m or (out == image).all() for m, image, out in zip(mirrored, images, flipped))
    assert 0 < sum(mirrored) < 32
    np.testing.assert_array_equal(augment.augment(flipped, keys, "flip"), images)


@pytest.fixture(scope="module")
def tiny_pipeline():
    c = config(pad_to_32=True, channels=3, augment="crop_flip", eval_batch_size=5)
    data = tiny_dataset(one_train_image=True)
    return make_pipeline(c, 8, mesh(), seed=3, dataset=data), data, c


def test_train_batches_are_a_function_of_seed_epoch_step(tiny_pipeline):
    pipeline, data, c = tiny_pipeline
    epoch = list(pipeline.train_batches(0))
    assert len(epoch) == pipeline.steps_per_epoch == 5
    batch = epoch[0]
    assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and batch["image"].sharding.spec == jax.sharding.PartitionSpec("data")
    labels = np.concatenate([b["label"] for b in epoch])
    assert len(set(labels.tolist())) == 40  # a permutation: every example once

    again = list(pipeline.train_batches(0, start_step=3))
    for a, b in zip(again, epoch[3:]):
        np.testing.assert_array_equal(a["image"], b["image"])
    assert not np.array_equal(epoch[1]["image"], epoch[2]["image"])  # same images, other augmentation
    other_epoch = list(pipeline.train_batches(1))
    assert not np.array_equal(np.concatenate([b["label"] for b in other_epoch]), labels)
    assert not np.array_equal(other_epoch[0]["image"], epoch[0]["image"])

    restarted = make_pipeline(c, 8, mesh(), seed=3, dataset=data)
    np.testing.assert_array_equal(next(restarted.train_batches(0, start_step=4))["image"], epoch[4]["image"])


def test_eval_covers_every_example_exactly_once(tiny_pipeline):
    pipeline, data, _ = tiny_pipeline
    batches = list(pipeline.eval_batches("test"))  # 13 examples, batches of 5
    assert len(batches) == 3 and all(b["image"].shape == (5, 32, 32, 3) for b in batches)
    mask = np.concatenate([b["mask"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    assert mask.sum() == 13 and sorted(labels[mask == 1].tolist()) == sorted(data.splits["test"][1].tolist())
    with pytest.raises(ValueError, match="no split 'val'"):
        next(pipeline.eval_batches("val"))


@pytest.mark.parametrize("normalize", ["channel", "pixel_mean", "none"])
def test_normalization_and_images_paired_with_labels(normalize):
    data = tiny_dataset(n_train=20)
    pipeline = make_pipeline(config(normalize=normalize, pad_to_32=True, channels=3), 10, mesh(), 0, dataset=data)
    images = np.concatenate([b["image"] for b in pipeline.eval_batches("train")]).astype(np.float64)
    if normalize == "channel":  # statistics of train as the model sees it (padded, 3 channels)
        np.testing.assert_allclose(images.mean((0, 1, 2)), 0, atol=1e-4)
        np.testing.assert_allclose(images.std((0, 1, 2)), 1, atol=1e-4)
    elif normalize == "pixel_mean":
        np.testing.assert_allclose(images.mean(0), 0, atol=1e-5)
        assert np.abs(images).max() <= 1
    else:
        batch = next(pipeline.train_batches(0))
        padded = np.pad(data.splits["train"][0], ((0, 0), (2, 2), (2, 2), (0, 0))).repeat(3, axis=-1)
        np.testing.assert_array_equal(np.round(np.asarray(batch["image"]) * 255), padded[batch["label"]])


def test_config_errors():
    data = tiny_dataset()
    with pytest.raises(ValueError, match="unknown augment 'rotate'"):
        make_pipeline(config(augment="rotate"), 8, mesh(), 0, dataset=data)
    with pytest.raises(ValueError, match="in_memory=False streams from tfds"):
        make_pipeline(config(source="idx", in_memory=False), 8, mesh(), 0)
    with pytest.raises(ValueError, match="pad_to_32 .* 40x40"):
        make_pipeline(config(pad_to_32=True), 8, mesh(), 0, dataset=tiny_dataset(shape=(40, 40, 1)))
    with pytest.raises(ValueError, match="fewer than one batch"):
        make_pipeline(config(), 64, mesh(), 0, dataset=data)


MULTI_DEVICE = """
import jax, numpy as np
from tests.test_data import config, tiny_dataset
from resnet_jax.data import make_pipeline
data, c = tiny_dataset(), config(pad_to_32=True, channels=3, augment="shift_flip")
two = jax.make_mesh((2,), ("data",))
for batch_size, eval_batch_size in ((7, 0), (8, 5)):
    try:
        make_pipeline(config(eval_batch_size=eval_batch_size), batch_size, two, 0, dataset=data)
        raise SystemExit("no error for batch sizes %d, %d" % (batch_size, eval_batch_size))
    except ValueError as e:
        assert "multiple of the 2 devices on mesh axis 'data'" in str(e), e
batch = next(make_pipeline(c, 8, two, 0, dataset=data).train_batches(2, start_step=1))
assert [s.data.shape for s in batch["image"].addressable_shards] == [(4, 32, 32, 3)] * 2
one = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
alone = next(make_pipeline(c, 8, one, 0, dataset=data).train_batches(2, start_step=1))
np.testing.assert_array_equal(batch["image"], alone["image"])  # batches do not depend on the device count
print("ok")
"""


def test_two_devices_shard_batches_and_check_divisibility():
    """In a subprocess, as the device count is fixed when JAX starts."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", MULTI_DEVICE], capture_output=True, text=True, cwd=root,
                            env=os.environ | {"JAX_NUM_CPU_DEVICES": "2", "JAX_PLATFORMS": "cpu"}, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
