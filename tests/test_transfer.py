"""Transfer learning: frozen stages stay bit-identical, frozen params get no decay, the backbone rate scales, cached
features train the same head, class and few-shot subsets, heads, and the errors that say what to fix."""

import importlib.util
from functools import partial
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import create_model, transfer
from resnet_jax.checkpoints import Checkpoints
from resnet_jax.config import default_config
from resnet_jax.data import DataError, load_dataset
from resnet_jax.summary import count_params
from resnet_jax.loop import train_and_evaluate
from resnet_jax.steps import create_train_state, train_step
from tests.test_train import tiny_config

ROOT = Path(__file__).resolve().parents[1]
FROZEN_2 = ("stem_conv", "stem_norm", "stage1_block1")  # freeze_stages=2 on resnet8: the stem and stage 1


def tiny_model(**options):
    return create_model("resnet8", 3, widths=(4, 8, 16), **options)


def make_tx(model, freeze_stages=0, backbone_lr_scale=1.0, lr=0.1, **optimizer):
    c = default_config()
    c.transfer.update(freeze_stages=freeze_stages, backbone_lr_scale=backbone_lr_scale)
    c.optimizer.update(optimizer)
    return transfer.make_optimizer(c, optax.constant_schedule(lr), model)


def split(tree, layers):
    return {k: v for k, v in tree.items() if k in layers}, {k: v for k, v in tree.items() if k not in layers}


def test_frozen_stages_and_their_bn_statistics_stay_bit_identical_while_the_rest_learns():
    model = tiny_model(frozen_bn_stages=2)
    tx = make_tx(model, freeze_stages=2, name="sgd", momentum=0.9, weight_decay=0.01, decay_norm_and_bias=True)
    x = jax.random.normal(jax.random.key(1), (24, 16, 16, 3))
    batch = {"image": x, "label": jax.random.randint(jax.random.key(2), (24,), 0, 3)}
    start = create_train_state(model.init(jax.random.key(0), x, train=False), tx)
    step = jax.jit(partial(train_step, model=model, tx=tx))
    state, first = step(start, batch)
    for _ in range(7):
        state, metrics = step(state, batch)
    for collection in ("params", "batch_stats"):
        frozen_before, rest_before = split(getattr(start, collection), FROZEN_2)
        frozen_after, rest_after = split(getattr(state, collection), FROZEN_2)
        chex.assert_trees_all_equal(frozen_after, frozen_before)  # bit-identical: no update, no decay, running BN
        for layer in rest_before:  # every other layer moved (its BN statistics too)
            assert not np.array_equal(jax.tree.leaves(rest_after[layer])[0],
                                      jax.tree.leaves(rest_before[layer])[0]), layer
    assert float(metrics["loss"]) < 0.5 * float(first["loss"])
    # The optimizer holds momentum for the trainable parameters only (besides the schedules' step counters).
    trainable = count_params(split(start.params, FROZEN_2)[1])
    assert sum(leaf.size for leaf in jax.tree.leaves(start.opt_state) if leaf.ndim) == trainable


def test_frozen_parameters_get_no_weight_decay_and_the_backbone_rate_scales():
    model = tiny_model()
    params = model.init(jax.random.key(0), jnp.ones((1, 16, 16, 3)), train=False)["params"]
    zero = jax.tree.map(jnp.zeros_like, params)
    # Head only, with decay on every parameter: the zero gradient moves the head by -lr * wd * w, nothing else at all.
    tx = make_tx(model, freeze_stages=-1, name="sgd", momentum=0.0, weight_decay=0.1, decay_norm_and_bias=True)
    updates, _ = jax.jit(tx.update)(zero, tx.init(params), params)
    head, backbone = split(updates, ("head",))
    assert all(not np.any(leaf) for leaf in jax.tree.leaves(backbone))
    np.testing.assert_allclose(head["head"]["kernel"], -0.1 * 0.1 * params["head"]["kernel"], rtol=1e-6)
    # backbone_lr_scale: Adam's update is proportional to the rate, so the backbone's updates are 0.1x, the head's
    # unchanged; the frozen stem moves not at all.
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(3), p.shape), params)
    moves = {}
    for scale in (1.0, 0.1):
        tx = make_tx(model, freeze_stages=1, backbone_lr_scale=scale, name="adam", weight_decay=0.0)
        opt_state, update = tx.init(params), jax.jit(tx.update)
        for _ in range(2):
            updates, opt_state = update(grads, opt_state, params)
        moves[scale] = updates
    for layer in moves[1.0]:
        a, b = jax.tree.leaves(moves[1.0][layer]), jax.tree.leaves(moves[0.1][layer])
        expected = 0.0 if layer.startswith("stem") else 1.0 if layer == "head" else 0.1
        for u1, u01 in zip(a, b, strict=True):
            np.testing.assert_allclose(u01, expected * u1, rtol=1e-5, atol=1e-12, err_msg=layer)
        assert layer.startswith("stem") or np.any(a[0])


def test_seed_heads_are_model_options_and_the_default_head_is_unchanged():
    def shapes(model, size):
        x = jnp.zeros((1, size, size, 3))
        return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))["params"]

    # The seeds' head on an ImageNet net at 32x32 (resnet50: the same 1x1x2048 output as their ResNet-152).
    default = shapes(create_model("resnet50", 10), 32)
    seeds = shapes(create_model("resnet50", 10, head_pooling="flatten", head_hidden=(1000,)), 32)
    assert count_params(seeds) - count_params(default) == (2048 * 1000 + 1000) + (1000 * 10 + 10) - (2048 * 10 + 10)
    assert set(seeds) - set(default) == {"head_hidden1"}
    model = tiny_model(head_hidden=(8,), head_dropout=0.5)
    x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    assert set(variables) == {"params", "batch_stats"}

    def run(key):
        return model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(key)})[0]

    assert not np.allclose(run(0), run(1))  # dropout acts in training...
    # ...and not in evaluation
    chex.assert_trees_all_equal(model.apply(variables, x, train=False), model.apply(variables, x, train=False))
    with pytest.raises(ValueError, match="frozen_bn_stages=5: this network has 4 stages"):
        tiny_model(frozen_bn_stages=5)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, learnable_idx_dir):
    """A finished tiny run on the 2-class fixture: the backbone the transfer tests start from."""
    workdir = tmp_path_factory.mktemp("transfer") / "source"
    train_and_evaluate(tiny_config(learnable_idx_dir, num_steps=8), workdir)
    return workdir


def transfer_config(idx_dir, source, **overrides):
    c = tiny_config(idx_dir, num_steps=12)
    c.data.update(augment=(), classes=(1, 0))  # the labels swapped: the fresh head has to learn them
    c.init_from.update(format="checkpoint", path=str(source))
    c.transfer.freeze_stages = -1
    c.model.update(head_hidden=(8,), head_dropout=0.25)
    c.optimizer.update(name="adam", learning_rate=1e-2, weight_decay=0.0)
    c.update_from_flattened_dict(overrides)
    return c


def saved_variables(workdir, which, num_classes, **head):
    """{'params', 'batch_stats'} of a tiny run's checkpoint (28x28x1 inputs)."""
    model = create_model("resnet8", num_classes, widths=(4, 8, 16), **head)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False))
    checkpoints = Checkpoints(workdir)
    variables = checkpoints.restore_variables(abstract, which)
    checkpoints.close()
    return variables


def test_cached_features_train_the_same_head_as_the_full_forward(tmp_path, learnable_idx_dir, source_run):
    records, states = {}, {}
    for cached in (False, True):
        config = transfer_config(learnable_idx_dir, source_run, **{"transfer.cache_features": cached})
        records[cached] = train_and_evaluate(config, tmp_path / str(cached))
        states[cached] = saved_variables(tmp_path / str(cached), "latest", 2, head_hidden=(8,))
    # Same steps on the same features: the same head up to float rounding (features from other batch sizes).
    heads = [split(states[c]["params"], ("head", "head_hidden1"))[0] for c in (False, True)]
    chex.assert_trees_all_close(heads[0], heads[1], atol=1e-5, rtol=1e-5)
    assert records[True]["test/accuracy"] == pytest.approx(records[False]["test/accuracy"], abs=0.011)
    assert records[False]["test/accuracy"] > 0.9  # the new head learned the swapped labels on the frozen features
    # The backbone is the source run's best checkpoint, bit for bit, parameters and BN statistics.
    source = saved_variables(source_run, "best", 10)  # the fixture's data names 10 classes

    def backbone(v, collection):
        return split(v[collection], ("head", "head_hidden1"))[1]

    for variables in states.values():
        for collection in ("params", "batch_stats"):
            chex.assert_trees_all_equal(backbone(variables, collection), backbone(source, collection))


def test_transfer_errors_say_what_to_fix(tmp_path, learnable_idx_dir, source_run):
    def fails(error, match, **overrides):
        workdir = tmp_path / "run"
        with pytest.raises(error, match=match):
            train_and_evaluate(transfer_config(learnable_idx_dir, source_run, **overrides), workdir)
        assert not workdir.exists()  # refused before anything was written

    fails(FileNotFoundError, r"torchvision weights file '.*resnet50-missing.pth' is not there\. Download it from "
          r"https://example.org/w.pth",
          **{"init_from.format": "torchvision", "init_from.path": str(tmp_path / "resnet50-missing.pth"),
             "init_from.url": "https://example.org/w.pth"})
    fails(FileNotFoundError, "is not a resnet-jax run directory", **{"init_from.path": str(tmp_path)})
    fails(ValueError, "unknown init_from.format 'onnx'", **{"init_from.format": "onnx"})
    fails(ValueError, r"keep_head=True, but the head of .* has shape \(16, 10\) and this model's \(8, 1\)",
          **{"init_from.keep_head": True, "data.classes": (0,)})
    fails(ValueError, "freeze_stages=5, but this 3-stage network has 4 stages", **{"transfer.freeze_stages": 5})
    fails(ValueError, "cache_features needs no augmentation",
          **{"transfer.cache_features": True, "data.augment": ("flip",)})
    fails(ValueError, r"cache_features needs the whole backbone frozen \(transfer.freeze_stages=-1; it freezes 2 of 4",
          **{"transfer.cache_features": True, "transfer.freeze_stages": 2})


def write_classes_idx(root, write_idx, n_per_class=10, classes=4):
    """IDX files whose image i has its label at pixel (0, 0) and i at pixel (0, 1)."""
    root.mkdir()
    for prefix, n in (("train", n_per_class * classes), ("t10k", 2 * classes)):
        labels = (np.arange(n) % classes).astype(np.uint8)
        images = np.zeros((n, 4, 4), np.uint8)
        images[:, 0, 0], images[:, 0, 1] = labels, np.arange(n)
        write_idx(root / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def test_class_and_per_class_subsets(tmp_path, write_idx):
    root = write_classes_idx(tmp_path / "idx", write_idx)

    def load(**data):
        return load_dataset(data_config(root, classes=(3, 1), val_size=4, **data))

    full = load()
    assert full.class_names == ["3", "1"] and full.num_classes == 2
    for images, labels in full.splits.values():
        np.testing.assert_array_equal(images[:, 0, 0, 0], np.array([3, 1])[labels])  # kept and relabelled 0..k-1
    assert [len(y) for y in (full.splits["train"][1], full.splits["val"][1], full.splits["test"][1])] == [16, 4, 4]
    few = load(train_per_class=3, subset_seed=0)
    x, y = few.splits["train"]
    assert np.bincount(y).tolist() == [3, 3]
    assert set(x[:, 0, 1, 0]) <= set(full.splits["train"][0][:, 0, 1, 0])  # drawn from train, never from val
    assert list(x[:, 0, 1, 0]) == sorted(x[:, 0, 1, 0])  # in stored order
    chex.assert_trees_all_equal(few.splits["val"], full.splits["val"])
    chex.assert_trees_all_equal(load(train_per_class=3, subset_seed=0).splits, few.splits)  # deterministic
    assert set(load(train_per_class=2, subset_seed=0).splits["train"][0][:, 0, 1, 0]) < set(x[:, 0, 1, 0])  # nested
    assert not np.array_equal(load(train_per_class=3, subset_seed=1).splits["train"][0], x)  # another draw
    with pytest.raises(DataError, match=r"classes=\(3, 10\) must be distinct labels in \[0, 10\) \(0: 0, 1: 1"):
        load_dataset(data_config(root, classes=(3, 10)))
    with pytest.raises(DataError, match=r"classes \[4\] have no training images here; choose among \[0, 1, 2, 3\]"):
        load_dataset(data_config(root, classes=(3, 4)))


def data_config(root, **data):
    c = default_config().data
    c.update(name="mnist", source="idx", path=str(root), **data)
    return c


def load_recipe(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("recipe, arg, filename", [
    ("transfer_mnist_resnet152", "keras", "resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    ("transfer_mnist_resnet152", "torchvision", "resnet152-f82ba261.pth"),
    ("transfer_folder_resnet50", "imagenet", "resnet50-11ad3fa6.pth"),
    ("transfer_folder_resnet50", "imagenet_frozen", "resnet50-11ad3fa6.pth"),
])
def test_recipes_stop_at_once_naming_the_weights_file(tmp_path, monkeypatch, recipe, arg, filename):
    monkeypatch.setenv("HOME", str(tmp_path))  # no weights in ~/.cache here
    config = load_recipe(recipe).get_config(arg)
    with pytest.raises(FileNotFoundError, match=rf"{filename}' is not there\. Download it from https://\S+/{filename}"):
        train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
