"""ImageNet-style input: crop geometry, PIL and tf.data crops, the streamed folder pipeline (exact resume, sharding,
determinism, evaluation once each), the recipes' schedules and a tiny ImageNet-layout run through the whole path."""

import json

import jax
import numpy as np
import pytest
from PIL import Image

from resnet_jax import optim
from resnet_jax.data import DataError, default_config, imagenet, make_pipeline, validate_config
from resnet_jax.data.sources import common
from resnet_jax.data.sources import folder as folder_source

RNG = np.random.default_rng(0)
CLASSES = ("n01", "n02", "n03")  # class k's images are dominated by colour channel k, so labels can be read back


def class_image(k: int, h: int, w: int) -> np.ndarray:
    """A smooth image whose channel k is bright: a gradient with a little noise, JPEG-friendly like a photo."""
    y, x = np.mgrid[0:h, 0:w]
    image = np.full((h, w, 3), 40.0) + 30 * np.sin(x / 7.0 + y / 11.0)[..., None] + RNG.normal(0, 4, (h, w, 3))
    image[..., k] += 150
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def imagenet_folder(tmp_path_factory):
    """train/<class>/*.JPEG (4 per class) and val/<class>/*.JPEG (2 per class), of varying sizes."""
    root = tmp_path_factory.mktemp("imagenet")
    for split, n in (("train", 4), ("val", 2)):
        for k, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                h, w = RNG.integers(24, 72, 2)
                Image.fromarray(class_image(k, h, w)).save(root / split / name / f"{name}_{i}.JPEG", quality=90)
    return root


def folder_config(root, **overrides):
    c = default_config()
    c.update(name="tiny_imagenet", source="folder", path=str(root), image_size=16, augment=("inception_crop", "flip"),
             eval_crop=0.875, normalize="none", workers=2)
    c.update(overrides)
    return c


def mesh():
    return jax.make_mesh((jax.device_count(),), ("data",))


def within_rounding(box, height, width):
    """The box's area fraction and aspect are in range up to the rounding of its sides to whole pixels."""
    top, left, h, w = box
    assert top >= 0 and top + h <= height and left >= 0 and left + w <= width, box
    lo, hi = imagenet.CROP_ASPECT
    assert (w + 0.5) / (h - 0.5) >= lo and (w - 0.5) / (h + 0.5) <= hi, box
    assert (w + 0.5) * (h + 0.5) >= imagenet.CROP_AREA[0] * height * width, box


@pytest.mark.parametrize("height, width", [(375, 500), (500, 375), (64, 64)])
def test_random_resized_crops_cover_the_area_and_aspect_ranges(height, width):
    boxes = np.array([imagenet.random_resized_crop_box(height, width, imagenet.example_uniforms(0, 0, i))
                      for i in range(2000)])
    for box in boxes:
        within_rounding(box, height, width)
    area = boxes[:, 2] * boxes[:, 3] / (height * width)
    log_aspect = np.log(boxes[:, 3] / boxes[:, 2])
    assert area.min() < 0.1 and area.max() > 0.9 and 0.35 < np.median(area) < 0.6
    # log-uniform aspects, slightly biased to the image's own shape (large crops of the other shape do not fit)
    assert log_aspect.min() < np.log(0.8) and log_aspect.max() > np.log(1.25) and abs(log_aspect.mean()) < 0.05
    for offset, side, size in ((boxes[:, 0], boxes[:, 2], height), (boxes[:, 1], boxes[:, 3], width)):
        where = (offset + 0.5) / (size - side + 1)  # mean 1/2 and spread when boxes are placed uniformly
        assert abs(where.mean() - 0.5) < 0.03 and where.std() > 0.2


def test_random_resized_crop_falls_back_to_the_centred_clamped_crop():
    too_big = np.tile([1.0, 0.0, 0.5, 0.5], (imagenet.ATTEMPTS, 1))  # whole area at aspect 3/4 never fits
    assert imagenet.random_resized_crop_box(100, 60, too_big).tolist() == [10, 0, 80, 60]  # taller than 3/4
    assert imagenet.random_resized_crop_box(60, 100, too_big).tolist() == [0, 10, 60, 80]  # wider than 4/3
    assert imagenet.random_resized_crop_box(80, 90, too_big).tolist() == [0, 0, 80, 90]    # within: all of it
    # A 224x1000 strip: most attempts do not fit, so some crops are the fallback; the rest are in range.
    boxes = [imagenet.random_resized_crop_box(224, 1000, imagenet.example_uniforms(1, 0, i)) for i in range(500)]
    fallback = [b.tolist() == [0, 350, 224, 299] for b in boxes]
    assert 0 < sum(fallback) < 250
    for box, fell_back in zip(boxes, fallback, strict=True):
        if not fell_back:
            within_rounding(box, 224, 1000)
    first_fit = np.array([[0.5, 0.5, 0.0, 0.999]] * imagenet.ATTEMPTS)  # 54% of the area, square, top right
    assert imagenet.random_resized_crop_box(100, 100, first_fit).tolist() == [0, 27, 73, 73]


def test_center_crop_box_is_the_resize_256_centre_224_box():
    assert imagenet.center_crop_box(375, 500, 0.875).tolist() == [24, 86, 328, 328]
    assert imagenet.center_crop_box(500, 375, 0.875).tolist() == [86, 24, 328, 328]
    assert imagenet.center_crop_box(256, 256, 224 / 256).tolist() == [16, 16, 224, 224]
    assert imagenet.center_crop_box(5, 8, 1.0).tolist() == [0, 2, 5, 5]


def test_crop_uniforms_are_a_function_of_seed_epoch_example():
    np.testing.assert_array_equal(imagenet.example_uniforms(3, 1, 7), imagenet.example_uniforms(3, 1, 7))
    for other in ((4, 1, 7), (3, 2, 7), (3, 1, 8)):
        assert not np.array_equal(imagenet.example_uniforms(3, 1, 7), imagenet.example_uniforms(*other))


def write_jpeg(path, array, quality=95):
    Image.fromarray(array).save(path, quality=quality)
    return path


def test_load_crop_decodes_at_reduced_scale_and_matches_a_full_decode(tmp_path, monkeypatch):
    big = write_jpeg(tmp_path / "big.jpg", class_image(1, 600, 800))
    box = np.array([100, 200, 400, 320])  # 320 wide, 400 high: at 1/8 scale still 40x50 >= 32x32
    resized_from = []
    resize = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda self, *a, **k: resized_from.append(self.size) or resize(
        self, *a, **k))
    ours = imagenet.load_crop(big, lambda h, w: box, 32)
    assert ours.shape == (32, 32, 3) and ours.dtype == np.uint8
    assert resized_from == [(100, 75)]  # decoded at 1/8 scale in the DCT domain (draft), not 800x600
    with Image.open(big) as image:
        full = np.asarray(image.resize((32, 32), Image.Resampling.BILINEAR, box=(200, 100, 520, 500)), np.float64)
    assert np.abs(ours - full).mean() < 2.5

    gray = tmp_path / "gray.png"
    Image.fromarray(class_image(0, 20, 30)[..., 0]).save(gray)
    assert imagenet.load_crop(gray, lambda h, w: imagenet.center_crop_box(h, w, 1.0), 8).shape == (8, 8, 3)


def test_tf_crop_matches_the_pil_crop(tmp_path):
    """tf.data's decode_and_crop_jpeg path and the PIL path crop the same box to within a few grey levels."""
    tf = pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")
    path = write_jpeg(tmp_path / "a.jpg", class_image(2, 90, 120))
    feature = tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")
    for box in ([10, 20, 60, 50], [0, 0, 90, 120], [30, 5, 11, 40]):
        ours = imagenet.load_crop(path, lambda h, w, box=box: np.array(box), 24).astype(np.float64)

        def box_fn(h, w, i, box=box):
            return np.array(box, np.int32)

        theirs = imagenet.tf_crop(tf.constant(path.read_bytes()), feature, box_fn, tf.constant(0, tf.int64), 24).numpy()
        assert theirs.shape == (24, 24, 3) and np.abs(ours - theirs).mean() < 2.0, box


def test_tfds_imagenet_streams_crops_and_resumes_exactly(tmp_path, monkeypatch):
    """imagenet2012 under tfds' mock data: cropped to image_size, and start_step=k gives the tail of the epoch,
    decoding only the examples it yields (skipped records are never decoded)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    from tests.test_data import write_tfds_metadata

    write_tfds_metadata(tmp_path, "imagenet2012", 12, splits=("train", "validation"))
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(tmp_path)):
        c = default_config()
        c.update(name="imagenet2012", source="tfds", image_size=16, augment=("inception_crop", "flip"), eval_crop=0.875,
                 normalize="imagenet", eval_batch_size=8)
        pipeline = make_pipeline(c, 4, mesh(), seed=0)
        assert pipeline.origin.endswith("streamed") and pipeline.image_shape == (16, 16, 3)
        assert pipeline.split_sizes == {"train": 12, "test": 12} and pipeline.num_classes == 1000
        epoch = list(pipeline.train_batches(0))
        cropped = []
        train_box = imagenet.Crops.train_box
        monkeypatch.setattr(imagenet.Crops, "train_box", lambda *a: cropped.append(a) or train_box(*a))
        resumed = list(pipeline.train_batches(0, start_step=1))
        assert len(epoch) == 3 and len(resumed) == 2 and len(cropped) == 8
        for a, b in zip(resumed, epoch[1:], strict=True):
            np.testing.assert_array_equal(a["image"], b["image"])
            np.testing.assert_array_equal(a["label"], b["label"])
        masks = [b["mask"] for b in pipeline.eval_batches("test")]
        assert len(masks) == 2 and sum(m.sum() for m in masks) == 12


@pytest.fixture(scope="module")
def folder_pipeline(imagenet_folder):
    return make_pipeline(folder_config(imagenet_folder), 4, mesh(), seed=1)


def test_streamed_folder_resumes_mid_epoch_exactly_and_deterministically(imagenet_folder, folder_pipeline):
    pipeline = folder_pipeline
    assert pipeline.origin == f"image folder {imagenet_folder}, streamed"
    assert pipeline.split_sizes == {"train": 12, "val": 6} and pipeline.steps_per_epoch == 3
    assert pipeline.class_names == list(CLASSES) and pipeline.image_shape == (16, 16, 3)
    epoch = list(pipeline.train_batches(1))
    assert [b["image"].shape for b in epoch] == [(4, 16, 16, 3)] * 3
    assert sorted(np.concatenate([b["label"] for b in epoch]).tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    for a, b in zip(list(pipeline.train_batches(1, start_step=2)), epoch[2:], strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    again = make_pipeline(folder_config(imagenet_folder), 4, mesh(), seed=1)
    for a, b in zip(again.train_batches(1), epoch, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
    other = list(pipeline.train_batches(2))
    assert not np.array_equal(np.concatenate([b["label"] for b in other]), np.concatenate([b["label"] for b in epoch]))
    for batch in epoch + other:  # inception crops keep each image's class colour: images stay paired with labels
        colour = np.asarray(batch["image"]).mean((1, 2)).argmax(-1)
        np.testing.assert_array_equal(colour, batch["label"])


def test_a_resumed_epoch_decodes_only_the_images_it_yields(folder_pipeline, monkeypatch):
    decoded = []
    load_crop = imagenet.load_crop
    monkeypatch.setattr(imagenet, "load_crop", lambda path, *a: decoded.append(path) or load_crop(path, *a))
    assert len(list(folder_pipeline.train_batches(0, start_step=2))) == 1
    assert len(decoded) == 4
    next(folder_pipeline.train_batches(0))  # an abandoned iterator decodes at most the batches it prefetched
    assert len(decoded) <= 4 + 4 * (1 + folder_source.PREFETCH)


def test_streamed_folder_evaluates_every_example_once_with_the_centre_crop(imagenet_folder, folder_pipeline):
    batches = list(folder_pipeline.eval_batches("val"))  # 6 examples, batches of 4: the last padded
    mask = np.concatenate([b["mask"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    assert len(batches) == 2 and mask.tolist() == [1] * 6 + [0] * 2
    assert sorted(labels[:6].tolist()) == [0, 0, 1, 1, 2, 2]
    first = next(iter(sorted((imagenet_folder / "val").rglob("*.JPEG"))))
    images = np.concatenate([b["image"] for b in batches])[:6]
    expected = imagenet.load_crop(first, lambda h, w: imagenet.center_crop_box(h, w, 0.875), 16) / 255.0
    assert np.isclose(images, expected, atol=1e-6).all(axis=(1, 2, 3)).sum() == 1  # normalize='none': x / 255
    np.testing.assert_array_equal(images.mean((1, 2)).argmax(-1), labels[:6])


def test_a_broken_jpeg_in_a_streamed_folder_is_named(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split / "n01").mkdir(parents=True)
        write_jpeg(tmp_path / split / "n01" / "ok.JPEG", class_image(0, 30, 40))
    broken = tmp_path / "val" / "n01" / "cut.JPEG"
    broken.write_bytes(write_jpeg(tmp_path / "whole.jpg", class_image(0, 30, 40)).read_bytes()[:200])
    pipeline = make_pipeline(folder_config(tmp_path), 1, mesh(), seed=0)
    with pytest.raises(DataError, match=f"{broken} could not be read as an image .*replace or remove it"):
        list(pipeline.eval_batches("val"))


@pytest.mark.parametrize("processes", [1, 2, 4, 8])
def test_each_process_reads_a_disjoint_part_and_together_the_whole_batch(processes):
    for step in range(3):
        parts = [common.local_positions(step, 16, p, processes) for p in range(processes)]
        assert all(len(part) == 16 // processes for part in parts)
        np.testing.assert_array_equal(np.concatenate(parts), np.arange(step * 16, (step + 1) * 16))
    order = common.epoch_order(100, seed=0, epoch=3)
    np.testing.assert_array_equal(order, common.epoch_order(100, seed=0, epoch=3))  # every process: the same
    assert sorted(order.tolist()) == list(range(100))


BAD = [
    (dict(eval_crop=0), r"data.eval_crop=0.0 must be a fraction in \(0, 1\]"),
    (dict(eval_crop=1.5), r"data.eval_crop=1.5 must be a fraction in \(0, 1\]"),
    (dict(workers=-2), "data.workers=-2 must be a whole number >= 0"),
    (dict(source="idx", name="mnist", path=""),
     r"augment=\('inception_crop', 'flip'\) and eval_crop=0.875 crops the full-size images as they are streamed: use "
     "source='tfds' or 'folder'"),
    (dict(in_memory=True), "in_memory=True"),
    (dict(image_size=0), "needs data.image_size, the size of the crops"),
    (dict(augment=("flip",), eval_crop=1.0, image_size=0, in_memory=False),
     "a streamed image folder needs data.image_size"),
    (dict(source="cifar", name="cifar10", augment=("flip",), in_memory=False),
     "in_memory=False streams from tfds or an image folder; source='cifar'"),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=[",".join(f"{k}={v}" for k, v in o.items()) for o, _ in BAD])
def test_bad_imagenet_data_configs_fail_before_anything_is_read(imagenet_folder, overrides, message):
    with pytest.raises(ValueError, match=message):
        validate_config(folder_config(imagenet_folder, **overrides))


def test_grayscale_data_cannot_take_imagenet_normalisation():
    from tests.test_data import tiny_dataset

    c = default_config()
    c.update(normalize="imagenet", pad_to_32=True)
    with pytest.raises(ValueError, match="normalize='imagenet' is for RGB images; these have 1 channel"):
        make_pipeline(c, 8, mesh(), 0, dataset=tiny_dataset())


def test_goyal_schedule_warms_up_linearly_and_steps_at_30_60_80():
    from experiments.imagenet_goyal import get_config

    c = get_config()
    c.batch_size = 1024  # the rate follows the batch: 0.1 x 1024 / 256
    assert c.optimizer.learning_rate == pytest.approx(0.4)
    assert c.checkpoint_every_steps == 1_281_167 // 4 // 1024  # a quarter epoch of images
    lr = optim.make_schedule(c.schedule, c.optimizer.learning_rate, steps_per_epoch=100, total_steps=9000)
    expected = {0: 0.1, 250: 0.25, 499: 0.1 + 0.3 * 499 / 500, 500: 0.4, 2999: 0.4, 3000: 0.04, 5999: 0.04,
                6000: 0.004, 8000: 0.0004, 8999: 0.0004}
    for step, rate in expected.items():
        assert float(lr(step)) == pytest.approx(rate, rel=1e-5), step
    c.schedule.warmup_linear = False  # the paper's ResNet-110 form: constant at warmup_lr
    assert float(optim.make_schedule(c.schedule, 0.4, 100, 9000)(250)) == pytest.approx(0.1)


def test_cosine_recipe_scales_with_the_batch_and_decays_to_zero():
    from experiments.imagenet_cosine import get_config

    c = get_config()
    c.batch_size = 2048
    assert c.optimizer.learning_rate == pytest.approx(2.048) and c.label_smoothing == 0.1
    lr = optim.make_schedule(c.schedule, c.optimizer.learning_rate, steps_per_epoch=10, total_steps=900)
    assert float(lr(0)) == 0 and float(lr(40)) == pytest.approx(1.024) and float(lr(80)) == pytest.approx(2.048)
    assert float(lr(899)) < 1e-3


class SimulatedPreemption(Exception):
    pass


def test_imagenet_recipe_trains_on_a_tiny_folder_and_a_mid_epoch_resume_ends_where_it_would_have(
        imagenet_folder, tmp_path, monkeypatch):
    """The Goyal recipe, its model shrunk, through the whole streamed folder path (crops, flips, eval crop,
    checkpoints); a run stopped right after a mid-epoch checkpoint and resumed ends bit for bit as one that was not."""
    import chex

    from experiments.imagenet_goyal import get_config
    from resnet_jax.checkpoints import Checkpoints
    from resnet_jax.loop import setup, train_and_evaluate
    from resnet_jax.steps import init_state

    c = get_config()
    c.model.update(name="resnet8", widths=(4, 8, 16), dtype="float32")
    c.data.update(path=str(imagenet_folder), image_size=16, workers=2)
    c.batch_size = 4  # 3 steps per epoch, 2 epochs; checkpoints at steps 2, 4 and 6 (2 is mid-epoch)
    c.num_epochs = 2
    c.checkpoint_every_steps = 2
    c.log_every_steps = 2
    c.schedule.update(warmup=1, boundaries=(1.5,), scales=(0.1,))
    full = train_and_evaluate(c, tmp_path / "full")
    assert set(full) >= {"train_epoch/loss", "val/loss", "val/accuracy", "val/top5"}
    assert np.isfinite(full["val/loss"]) and full["val/top5"] == 1.0  # 3 classes: top-5 holds all of them
    saved = json.loads((tmp_path / "full" / "config.json").read_text())
    assert saved["data"]["augment"] == ["inception_crop", "flip"]
    assert saved["optimizer"]["learning_rate"] == pytest.approx(0.1 * 4 / 256)  # the rate followed the batch

    save = Checkpoints.save

    def save_then_die(self, *args, **kwargs):
        save(self, *args, **kwargs)
        self.close()
        raise SimulatedPreemption

    with monkeypatch.context() as m:
        m.setattr(Checkpoints, "save", save_then_die)
        with pytest.raises(SimulatedPreemption):
            train_and_evaluate(c, tmp_path / "resumed")
    assert Checkpoints(tmp_path / "resumed").latest_step() == 2
    assert train_and_evaluate(c, tmp_path / "resumed") == full
    run = setup(c)
    template = init_state(run.model, run.tx, run.pipeline.image_shape, c.seed, run.mesh)
    final = []
    for name in ("full", "resumed"):
        checkpoints = Checkpoints(tmp_path / name)
        final.append(checkpoints.restore(template)[0])
        checkpoints.close()
    chex.assert_trees_all_equal(*final)
