"""resnet_jax.data: readers on small files the tests write, bad files and configs refused early and clearly, tfds
under mock_data (where tfds is installed), augmentation, pipeline properties."""

import gzip
import io
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import tarfile

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from resnet_jax import config as config_lib
from resnet_jax.data import DataError, Dataset, augment, default_config, load_dataset, make_pipeline, sources
from resnet_jax.data import __main__ as data_main
from resnet_jax.data.config import upgrade_data, validate_config
from resnet_jax.data.sources.cifar import CIFAR
from resnet_jax.data.sources.idx import CLASS_NAMES

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
    (lambda raw: (lambda z: z[:20] + bytes(b ^ 0x5A for b in z[20:40]) + z[40:])(gzip.compress(raw)),
     "corrupt or truncated gzip"),
])
def test_idx_corrupt_files_are_named(idx_dir, damage, message):
    path, _ = idx_dir
    bad = path / "t10k-images-idx3-ubyte"
    bad.write_bytes(damage(bad.read_bytes()))
    with pytest.raises(DataError, match=message) as e:
        load_dataset(config(name="fashion_mnist", source="idx", path=str(path)))
    assert str(bad) in str(e.value)


def write_split(write_idx, root, prefix, images, labels):
    write_idx(root / f"{prefix}-images-idx3-ubyte", images)
    write_idx(root / f"{prefix}-labels-idx1-ubyte", labels)


def test_idx_labels_outside_the_classes_name_the_file_and_the_fix(idx_dir, write_idx):
    path, arrays = idx_dir
    labels = arrays["t10k"][1].copy()
    labels[1] = 200
    write_split(write_idx, path, "t10k", arrays["t10k"][0], labels)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: label 200 of example 1 is outside the 10 classes "
                                        r"0..9; these are not fashion_mnist labels.*data.num_classes"):
        load_dataset(config(name="fashion_mnist", source="idx", path=str(path)))


def test_idx_of_an_unknown_name_needs_num_classes(idx_dir):
    path, arrays = idx_dir
    with pytest.raises(ValueError, match="data.name='kmnist' is not one of mnist, fashion_mnist: set data.num_classes"):
        validate_config(config(name="kmnist", source="idx", path=str(path)))
    data = load_dataset(config(name="kmnist", source="idx", path=str(path), num_classes=10))
    assert data.num_classes == 10 and data.class_names == [str(i) for i in range(10)]
    top = int(max(arrays["train"][1].max(), arrays["t10k"][1].max()))
    with pytest.raises(DataError, match=f"label {top} .* outside the {top} classes.*if kmnist has more classes"):
        load_dataset(config(name="kmnist", source="idx", path=str(path), num_classes=top))
    with pytest.raises(DataError, match=r"data.num_classes=7 but the data \(IDX files in .*\) has 10 classes"):
        load_dataset(config(name="fashion_mnist", source="idx", path=str(path), num_classes=7))


@pytest.mark.parametrize("test_images, test_labels, message", [
    (np.zeros((3, 28, 28), np.uint8), np.zeros(2, np.uint8),
     r"\(3, 28, 28\) and .* \(2,\) are not N images with N labels"),
    (np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.uint8), "the test split of IDX files in .* holds no images"),
    (np.zeros((3, 32, 32), np.uint8), np.zeros(3, np.uint8), "hold images of different shapes.*set image_size=N"),
])
def test_idx_splits_that_do_not_fit_together(idx_dir, write_idx, test_images, test_labels, message):
    path, _ = idx_dir
    write_split(write_idx, path, "t10k", test_images, test_labels)
    with pytest.raises(DataError, match=message):
        load_dataset(config(name="fashion_mnist", source="idx", path=str(path)))


def test_val_size_and_train_subset_must_fit_the_train_split(idx_dir):
    path, _ = idx_dir  # 7 train images
    with pytest.raises(DataError, match=r"val_size=7 must be in \[0, 7\) for a train split of 7 images"):
        load_dataset(config(name="fashion_mnist", source="idx", path=str(path), val_size=7))
    with pytest.raises(DataError, match="train_subset=6 but the train split has 5 images .after val_size=2."):
        load_dataset(config(name="fashion_mnist", source="idx", path=str(path), val_size=2, train_subset=6))
    assert len(load_dataset(config(name="fashion_mnist", source="idx", path=str(path), val_size=2,
                                   train_subset=5)).splits["train"][1]) == 5


BAD_CONFIGS = [
    (dict(train_subset=-5), "data.train_subset=-5 must be a whole number >= 0"),
    (dict(val_size=-1), "data.val_size=-1 must be a whole number >= 0"),
    (dict(image_size=-3), "data.image_size=-3 must be a whole number >= 0"),
    (dict(image_size=True), "data.image_size=True must be a whole number >= 0"),
    (dict(image_size=None), "data.image_size=None must be a whole number >= 0"),
    (dict(eval_batch_size=-8), "data.eval_batch_size=-8 must be a whole number >= 0"),
    (dict(num_classes=-1), "data.num_classes=-1 must be a whole number >= 0"),
    (dict(channels=2), r"data.channels=2 must be 0 \(keep\), 1 or 3"),
    (dict(pad_to_32=True, image_size=64), "data.pad_to_32 zero-pads .* data.image_size=64 makes them larger"),
    (dict(source="web"), "unknown data.source 'web'; choose one of tfds, idx, cifar, folder"),
    (dict(augment=("flip", "rotate")), "unknown data.augment 'rotate'; choose among the registered augmentations crop"),
    (dict(augment=("mixup", "flip")), r"batch augmentations \(mixup\) mix examples .* after the per-example ones"),
    (dict(mixup_alpha=0.0), "data.mixup_alpha=0.0 must be > 0"),
    (dict(normalize="zscore"), "unknown data.normalize 'zscore'; choose one of channel, pixel_mean, imagenet, none"),
    (dict(in_memory="yes"), "unknown data.in_memory 'yes'"),
    (dict(in_memory=False), "in_memory=False streams from tfds or an image folder; source='idx' is read into memory"),
    (dict(name=""), "data.name is empty"),
    (dict(val_sise=5), r"unknown data key\(s\) 'val_sise' \(did you mean 'val_size'\?\)"),
    (dict(path="/no/such/dir"), "data.path='/no/such/dir' does not exist"),
    (dict(source="cifar", name="cifar10", path="/no/such/dir"), "data.path='/no/such/dir' does not exist"),
    (dict(source="cifar", name="mnist"), "source='cifar' reads cifar10 or cifar100, not 'mnist'"),
    (dict(source="cifar", name="cifar10", path=""), "source='cifar' needs path=DIR holding cifar-10-batches-py/"),
    (dict(source="folder", path=""), "source='folder' needs path=DIR laid out as path/train/<class>"),
    (dict(name="kmnist", num_classes=10, path=""), "source='idx' needs path=DIR holding train-images-idx3-ubyte"),
    (dict(source="tfds", manual_dir="/no/such/dir"), "data.manual_dir='/no/such/dir' is not a directory"),
]


@pytest.mark.parametrize("overrides, message", BAD_CONFIGS,
                         ids=[",".join(f"{k}={v}" for k, v in o.items()) for o, _ in BAD_CONFIGS])
def test_bad_data_configs_fail_before_anything_is_read(idx_dir, monkeypatch, overrides, message):
    """By validate_config, which the run's one validation (resnet_jax.config.validate) calls."""
    path, _ = idx_dir
    c = config(name="fashion_mnist", source="idx", path=str(path))
    c.update(overrides)

    def no_reading(*args):
        raise AssertionError("a file was read before the config was checked")

    monkeypatch.setattr(sources.idx, "read_idx", no_reading)
    monkeypatch.setattr(sources.tfds, "open_tfds", no_reading)
    with pytest.raises(ValueError, match=message):
        validate_config(c)
    run = config_lib.default_config()
    run.data = c
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.validate(run)


def test_a_data_config_saved_by_an_older_version_is_upgraded_and_loads(idx_dir):
    """A run's config.json written before data.num_classes, with augment one name: upgrade_data gives the missing keys
    their defaults and the name its list; without the upgrade, validation names the missing key."""
    path, _ = idx_dir
    saved = json.loads(config(name="fashion_mnist", source="idx", path=str(path)).to_json_best_effort())
    del saved["num_classes"]
    with pytest.raises(ValueError, match="data key.s. num_classes missing.*upgrade_data"):
        validate_config(ml_collections.ConfigDict(saved))
    for old, new in (("crop_flip", ("crop", "flip")), ("none", ()), ("shift_flip", ("shift", "flip")),
                     ("inception_crop_flip", ("inception_crop", "flip")), (["flip"], ("flip",))):
        assert upgrade_data(saved | {"augment": old})["augment"] == new
    upgraded = ml_collections.ConfigDict(upgrade_data(saved | {"augment": "crop_flip"}))
    validate_config(upgraded)
    assert upgraded.augment == ("crop", "flip") and upgraded.num_classes == 0
    assert load_dataset(upgraded).num_classes == make_pipeline(upgraded, 4, mesh(), 0).num_classes == 10
    with pytest.raises(ValueError, match=r"data.augment='crop_flip' is one name; list the augmentations in order"):
        validate_config(ml_collections.ConfigDict(saved | {"num_classes": 0, "augment": "crop_flip"}))


def test_a_file_given_for_a_directory(idx_dir):
    path, _ = idx_dir
    with pytest.raises(DataError, match="is a file; source='folder' reads a directory laid out as path/train"):
        validate_config(config(name="signs", source="folder", path=str(path / "t10k-images-idx3-ubyte")))


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
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="IDX files for 'mnist' not found"):
        data_main.main(["mnist", "--source", "idx", "--path", str(tmp_path / "empty")])
    with pytest.raises(SystemExit, match=r"error: data.channels=2 must be 0 \(keep\), 1 or 3"):
        data_main.main(["fashion_mnist", "--source", "idx", "--path", str(path), "--channels", "2"])


def test_missing_files_say_where_they_were_looked_for(tmp_path):
    with pytest.raises(DataError, match="train-images-idx3-ubyte") as e:
        load_dataset(config(name="mnist", source="idx", path=str(tmp_path)))
    assert str(tmp_path) in str(e.value)
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        load_dataset(config(name="cifar10", source="cifar", path=str(tmp_path)))
    with pytest.raises(DataError, match="path/train/<class>"):
        validate_config(config(name="signs", source="folder"))


def test_unknown_tfds_dataset():
    with pytest.raises(DataError, match="unknown dataset 'no_such_dataset'.*catalog"):
        load_dataset(config(name="no_such_dataset", source="tfds"))


def test_tfds_not_prepared_offline_is_a_clear_error(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(DataError, match="could not download or prepare 'mnist'.*no network.*source='idx'") as e:
        load_dataset(config(name="mnist", source="tfds", path=str(tmp_path)))
    assert str(tmp_path) in str(e.value) and isinstance(e.value.__cause__, ConnectionError)


class Py2Pickler(pickle._Pickler):
    """Pickles as Python 2's cPickle did the CIFAR archives: str and bytes as py2 strings (read back as bytes)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj):
        n = len(obj)
        header = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(header + obj)
        self.memoize(obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin-1"))

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def dumps(obj, py2=False):
    """py2: protocol 2 with numpy 1's module paths, as the archives on the CIFAR site; else this Python's default."""
    if not py2:
        return pickle.dumps(obj)
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def write_cifar(root, name, py2=False):
    """A small python-pickle CIFAR archive (folder and .tar.gz); returns {split: (rows of 3072, labels)}, names."""
    folder, archive, train, test, meta, label_key, names_key = CIFAR[name]
    num_classes = 10 if name == "cifar10" else 100
    (root / folder).mkdir()
    written = {}
    for split, members in (("train", train), ("test", test)):
        rows, labels = [], []
        for member in members:
            batch = {b"data": RNG.integers(0, 256, (3, 3072), dtype=np.uint8),
                     label_key: RNG.integers(0, num_classes, 3).tolist(), b"batch_label": member.encode(),
                     b"filenames": [f"{member}_{i}.png".encode() for i in range(3)]}
            (root / folder / member).write_bytes(dumps(batch, py2))
            rows.append(batch[b"data"])
            labels += batch[label_key]
        written[split] = np.concatenate(rows), np.array(labels)
    names = [f"class{i}" for i in range(num_classes)]
    (root / folder / meta).write_bytes(dumps({names_key: [n.encode() for n in names]}, py2))
    tar_cifar(root, name)
    return written, names


def tar_cifar(root, name):
    folder, archive = CIFAR[name][:2]
    with tarfile.open(root / archive, "w:gz") as tar:
        tar.add(root / folder, arcname=folder)


@pytest.mark.parametrize("name, py2", [("cifar10", True), ("cifar100", False)], ids=["cifar10-py2", "cifar100-py3"])
def test_cifar_archive_folder_and_tarball(tmp_path, name, py2):
    written, names = write_cifar(tmp_path, name, py2)
    folder, archive = CIFAR[name][:2]
    if py2:  # what the restricted unpickler must allow: exactly numpy 1's array constructors
        assert b"cnumpy.core.multiarray\n_reconstruct" in (tmp_path / folder / "data_batch_1").read_bytes()
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


class RunsCode:
    """A pickle payload: unpickling it calls `call(*args)`."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize("where", ["folder", "tar.gz"])
@pytest.mark.parametrize("payload, named", [
    (lambda marker: RunsCode(os.system, f"touch {marker}"), f"{os.system.__module__}.system"),
    (lambda marker: RunsCode(exec, f"open({str(marker)!r}, 'w').close()"), "builtins.exec"),
])
def test_crafted_cifar_pickle_is_refused_and_its_code_never_runs(tmp_path, where, payload, named):
    write_cifar(tmp_path, "cifar10")
    control, marker = tmp_path / "control", tmp_path / "pwned"
    pickle.loads(pickle.dumps(payload(control)))  # the payload works: a plain unpickler runs it
    assert control.exists()
    batch = {b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 2], b"filenames": payload(marker)}
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps(batch))
    tar_cifar(tmp_path, "cifar10")
    path = tmp_path / ("cifar-10-batches-py" if where == "folder" else "cifar-10-python.tar.gz")
    with pytest.raises(DataError, match=rf"data_batch_2 is not a CIFAR batch: its pickle names {named}.*"
                                        "refused without running anything"):
        load_dataset(config(name="cifar10", source="cifar", path=str(path)))
    assert not marker.exists()


def _replace_batch(member, batch):
    def damage(folder):
        (folder / member).write_bytes(pickle.dumps(batch))
    return damage


@pytest.mark.parametrize("damage, message", [
    (lambda folder: (folder / "data_batch_3").unlink(), "has no data_batch_3: the archive is incomplete"),
    (lambda folder: (folder / "test_batch").unlink(), "has no test_batch: the archive is incomplete"),
    (lambda folder: (folder / "data_batch_2").write_bytes((folder / "data_batch_2").read_bytes()[:500]),
     "data_batch_2 is not a complete CIFAR pickle"),
    (_replace_batch("data_batch_1", {b"data": np.zeros((3, 1024), np.uint8), b"labels": [0, 1, 2]}),
     r"b'data' is \(3, 1024\) uint8, expected \(N, 3072\) uint8"),
    (_replace_batch("data_batch_1", {b"data": np.zeros((3, 3072), np.float32), b"labels": [0, 1, 2]}),
     r"b'data' is \(3, 3072\) float32, expected"),
    (_replace_batch("data_batch_1", {b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]}),
     "labels for 3 images"),
    (_replace_batch("test_batch", {b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 10, 2]}),
     "test_batch: label 10 of example 1 is outside the 10 classes 0..9"),
    (_replace_batch("data_batch_4", [1, 2, 3]), "data_batch_4 is not a CIFAR batch: expected a dict"),
    (_replace_batch("batches.meta", {b"names": []}), "batches.meta holds no list of class names"),
])
def test_damaged_cifar_archives_are_named(tmp_path, damage, message):
    write_cifar(tmp_path, "cifar10")
    damage(tmp_path / "cifar-10-batches-py")
    with pytest.raises(DataError, match=message):
        load_dataset(config(name="cifar10", source="cifar", path=str(tmp_path / "cifar-10-batches-py")))


def test_truncated_cifar_tarball_is_named(tmp_path):
    write_cifar(tmp_path, "cifar10")
    archive = tmp_path / "cifar-10-python.tar.gz"
    raw = archive.read_bytes()
    for cut, message in ((len(raw) // 2, "truncated or corrupt"), (100, "is not a readable tar archive")):
        archive.write_bytes(raw[:cut])
        with pytest.raises(DataError, match=message):
            load_dataset(config(name="cifar10", source="cifar", path=str(archive)))


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_folder(root, shape=(6, 5, 3), splits=(("train", {"cat": 3, "dog": 2}), ("test", {"cat": 1, "dog": 2}))):
    """<root>/<split>/<class>/<i>.png of random images; returns {image bytes: class}."""
    written = {}
    for split, per_class in splits:
        for label, n in per_class.items():
            for i in range(n):
                image = RNG.integers(0, 256, shape, dtype=np.uint8)
                write_png(root / split / label / f"{i}.png", image)
                written[image.tobytes()] = label
    return written


def test_image_folder(tmp_path):
    written = write_folder(tmp_path)
    (tmp_path / "train" / "cat" / ".DS_Store").write_bytes(b"\0")  # hidden files are ignored
    (tmp_path / "README.md").write_text("files beside the split folders are ignored")
    data = load_dataset(config(name="signs", source="folder", path=str(tmp_path), val_size=1))
    assert data.class_names == ["cat", "dog"]
    assert {k: len(y) for k, (_, y) in data.splits.items()} == {"train": 4, "val": 1, "test": 3}
    for images, labels in data.splits.values():
        assert images.shape[1:] == (6, 5, 3)
        assert [written[x.tobytes()] for x in images] == [data.class_names[y] for y in labels]

    write_png(tmp_path / "train" / "dog" / "odd.png", RNG.integers(0, 256, (9, 9, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="odd.png.*share one shape; set data.image_size=N"):
        load_dataset(config(name="signs", source="folder", path=str(tmp_path)))
    resized = load_dataset(config(name="signs", source="folder", path=str(tmp_path), image_size=4))
    assert resized.splits["train"][0].shape == (6, 4, 4, 3)


def test_image_folder_reads_as_tfds_image_folder_does(tmp_path):
    """Same classes, same example order (sorted, then shuffled with the split's name as seed), same pixels."""
    import tensorflow_datasets as tfds
    splits = (("train", {"b": 4, "a": 5, "c": 3}), ("val", {"a": 2, "b": 2}), ("test", {"c": 2, "a": 1}))
    write_folder(tmp_path, (4, 3, 3), splits)
    ours = load_dataset(config(name="letters", source="folder", path=str(tmp_path)))
    builder = tfds.folder_dataset.ImageFolder(str(tmp_path))
    assert ours.class_names == builder.info.features["label"].names == ["a", "b", "c"]
    for split in ("train", "val", "test"):
        theirs = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))
        np.testing.assert_array_equal(ours.splits[split][0], np.stack([ex["image"] for ex in theirs]))
        np.testing.assert_array_equal(ours.splits[split][1], [ex["label"] for ex in theirs])


def test_resize_is_within_one_grey_level_of_tf_image(tmp_path):
    """Local files are resized with PIL, streamed tfds data with tf.image: the two agree to one level."""
    import tensorflow as tf
    for shape, size in (((28, 28, 1), 32), ((32, 32, 3), 24), ((75, 100, 3), 32), ((40, 60, 3), 64)):
        image = RNG.integers(0, 256, shape, dtype=np.uint8)
        ours, theirs = sources.common.resize_image(image, size), sources.tfds.resize(tf.constant(image), size).numpy()
        assert ours.shape == theirs.shape == (size, size, shape[-1])
        difference = np.abs(ours.astype(int) - theirs)
        assert difference.max() <= 1 and difference.mean() < 0.05, (shape, size, difference.mean())


def test_grayscale_folder_gives_one_channel_and_channels_3_rgb(tmp_path):
    write_folder(tmp_path, (5, 5))
    gray = load_dataset(config(name="signs", source="folder", path=str(tmp_path)))
    rgb = load_dataset(config(name="signs", source="folder", path=str(tmp_path), channels=3))
    assert gray.splits["train"][0].shape == (5, 5, 5, 1) and rgb.splits["train"][0].shape == (5, 5, 5, 3)
    np.testing.assert_array_equal(rgb.splits["train"][0], gray.splits["train"][0].repeat(3, -1))
    write_png(tmp_path / "train" / "dog" / "colour.png", RNG.integers(0, 256, (5, 5, 3), dtype=np.uint8))
    with pytest.raises(DataError, match=r"is \(5, 5, 3\) \(HWC\) but .* is \(5, 5, 1\).*set data.channels=3"):
        load_dataset(config(name="signs", source="folder", path=str(tmp_path)))
    assert load_dataset(config(name="signs", source="folder", path=str(tmp_path), channels=3)).num_classes == 2


def _write(relative, content):
    def damage(root):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(content)
    return damage


def _png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("damage, message", [
    (_write("train/cat/notes.txt", b"x"), "notes.txt is not a .png/.jpg/.jpeg image file"),
    (_write("train/cat/scan.bmp", _png_bytes(np.zeros((6, 5, 3), np.uint8))), "scan.bmp is not a .png/.jpg/.jpeg"),
    (_write("train/cat/garbage.png", b"not a png at all"), "garbage.png could not be read as an image"),
    (_write("test/dog/cut.png", _png_bytes(RNG.integers(0, 256, (6, 5, 3), dtype=np.uint8))[:60]),
     "cut.png could not be read as an image"),
    (_write("train/cat/deep.png", _png_bytes(np.zeros((6, 5), np.uint16))), "deep.png has PIL mode 'I;16'"),
    (lambda root: (root / "train" / "bird").mkdir(), r"class folder .*train/bird holds no images"),
    (_write("test/bird/0.png", _png_bytes(np.zeros((6, 5, 3), np.uint8))), r"class folder\(s\) \['bird'\] that"),
    (_write("train/loose.png", _png_bytes(np.zeros((6, 5, 3), np.uint8))), "loose.png is not in a class folder"),
    (lambda root: (root / "extra").mkdir(), r"holds split folders \['extra', 'test', 'train'\]; expected"),
    (lambda root: (root / "test" / "dog" / "folder.png").mkdir(), "folder.png is not a .png/.jpg/.jpeg image file"),
])
def test_bad_image_folders_are_named(tmp_path, damage, message):
    write_folder(tmp_path)
    damage(tmp_path)
    with pytest.raises(DataError, match=message):
        load_dataset(config(name="signs", source="folder", path=str(tmp_path)))


def write_tfds_metadata(root, name, num_examples, splits=("train", "test")):
    """The metadata tfds.testing.mock_data needs to know the splits (MockPolicy.USE_FILES)."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=str(root))
    builder.info.set_splits(tfds.core.SplitDict(
        [tfds.core.SplitInfo(name=s, shard_lengths=[num_examples], num_bytes=0) for s in splits]))
    os.makedirs(builder.data_dir)
    builder.info.write_to_directory(builder.data_dir)


def test_tfds_in_memory_and_streamed_under_mock_data(tmp_path):
    import tensorflow_datasets as tfds
    n = 24
    write_tfds_metadata(tmp_path, "fashion_mnist", n)
    with tfds.testing.mock_data(num_examples=n, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(tmp_path)):
        data = load_dataset(config(name="fashion_mnist", source="tfds", val_size=4))
        assert {k: x.shape for k, (x, _) in data.splits.items()} == {
            "train": (n - 4, 28, 28, 1), "val": (4, 28, 28, 1), "test": (n, 28, 28, 1)}
        assert data.num_classes == 10 and "tfds fashion_mnist" in data.origin
        assert "streamed" not in make_pipeline(config(name="fashion_mnist"), 8, mesh(), 0).origin

        c = config(name="fashion_mnist", in_memory=False, pad_to_32=True, channels=3, augment=("crop", "flip"),
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


def augmented(images, keys, names):
    labels = np.zeros(len(images), np.int32)
    return np.asarray(augment.augment(images, labels, keys, None, names, augment.Context(10, default_config()))[0])


def test_crop_is_a_window_of_the_zero_padded_image():
    images = RNG.integers(1, 256, (16, 8, 8, 2), dtype=np.uint8)  # no zeros: padding is recognisable
    cropped = augmented(images, jax.random.split(jax.random.key(0), 16), ("crop",))
    offsets = []
    for image, crop in zip(images, cropped, strict=True):
        padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
        found = [(dy, dx) for dy in range(9) for dx in range(9) if (padded[dy:dy + 8, dx:dx + 8] == crop).all()]
        assert len(found) == 1
        offsets += found
    assert len(set(offsets)) > 1


def test_shift_fills_with_the_nearest_pixel():
    images = RNG.integers(0, 256, (16, 20, 20, 1), dtype=np.uint8)  # shifts of up to 10% = 2 pixels
    shifted = augmented(images, jax.random.split(jax.random.key(1), 16), ("shift",))
    shifts = []
    for image, out in zip(images, shifted, strict=True):
        edge = np.pad(image, ((2, 2), (2, 2), (0, 0)), mode="edge")
        shifts += [(dy, dx) for dy in range(5) for dx in range(5) if (edge[dy:dy + 20, dx:dx + 20] == out).all()]
    assert len(shifts) == 16 and len(set(shifts)) > 1


def test_flip_mirrors_half_and_twice_is_identity():
    images = RNG.integers(0, 256, (32, 6, 6, 3), dtype=np.uint8)
    keys = jax.random.split(jax.random.key(2), 32)
    flipped = augmented(images, keys, ("flip",))
    mirrored = [(out == image[:, ::-1]).all() for image, out in zip(images, flipped, strict=True)]
    assert all(m or (out == image).all() for m, image, out in zip(mirrored, images, flipped, strict=True))
    assert 0 < sum(mirrored) < 32
    np.testing.assert_array_equal(augmented(flipped, keys, ("flip",)), images)


@pytest.fixture(scope="module")
def tiny_pipeline():
    c = config(pad_to_32=True, channels=3, augment=("crop", "flip"), eval_batch_size=5)
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
    for a, b in zip(again, epoch[3:], strict=True):
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
    with pytest.raises(ValueError, match="unknown data.augment 'rotate'"):
        validate_config(config(augment=("rotate",)))
    with pytest.raises(ValueError, match="in_memory=False streams from tfds"):
        validate_config(config(source="idx", in_memory=False))
    with pytest.raises(ValueError, match="pad_to_32 .* 40x40"):
        make_pipeline(config(pad_to_32=True), 8, mesh(), 0, dataset=tiny_dataset(shape=(40, 40, 1)))
    with pytest.raises(ValueError, match="fewer than one batch"):
        make_pipeline(config(), 64, mesh(), 0, dataset=data)


MULTI_DEVICE = """
import jax, numpy as np
from tests.test_data import config, tiny_dataset
from resnet_jax.data import make_pipeline
data, c = tiny_dataset(), config(pad_to_32=True, channels=3, augment=("shift", "flip"))
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
c.augment = ("shift", "flip", "mixup")  # mixup pairs examples across the devices' parts of the global batch
mixed, mixed_alone = (next(make_pipeline(c, 8, m, 0, dataset=data).train_batches(2, start_step=1)) for m in (two, one))
np.testing.assert_array_equal(mixed["image"], mixed_alone["image"])
np.testing.assert_array_equal(mixed["label"], mixed_alone["label"])
print("ok")
"""


def test_two_devices_shard_batches_and_check_divisibility():
    """In a subprocess, as the device count is fixed when JAX starts."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", MULTI_DEVICE], capture_output=True, text=True, cwd=root,
                            env=os.environ | {"JAX_NUM_CPU_DEVICES": "2", "JAX_PLATFORMS": "cpu"}, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
