"""Known answers of the filter-normalised loss landscape (resnet_jax.lab.landscape)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import create_model
from resnet_jax.lab import landscape
from resnet_jax.losses import cross_entropy
from resnet_jax.steps import create_train_state, eval_step

N = 22  # not a multiple of the batch size below: the padded batch must be masked out


@pytest.fixture(scope="module")
def net():
    """resnet8 (4, 8, 16) on 8x8 images, with BatchNorm running statistics moved away from their initial values."""
    model = create_model("resnet8", 10, widths=(4, 8, 16))
    rng = np.random.default_rng(0)
    images = rng.normal(size=(N, 8, 8, 1)).astype(np.float32)
    labels = rng.integers(0, 10, N).astype(np.int32)
    variables = model.init(jax.random.key(0), images[:1], train=False)
    _, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
    variables = {"params": variables["params"], "batch_stats": updates["batch_stats"]}
    directions = landscape.normalized_directions(variables["params"], jax.random.key(1), 2)
    return model, variables, images, labels, directions


def hand_loss(model, variables, images, labels, params):
    logits = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, images, train=False)
    return float(jnp.mean(cross_entropy(logits, labels)))


def test_filter_normalisation_gives_each_filter_the_weight_filters_norm(net):
    _, variables, *_, directions = net
    checked = 0
    leaves = jax.tree_util.tree_leaves_with_path(variables["params"])
    for (path, w), d in zip(leaves, jax.tree.leaves(directions[0]), strict=True):
        if w.ndim < 2:  # BatchNorm scale/bias and biases: not perturbed
            assert np.all(np.asarray(d) == 0), path
            continue
        norm = lambda x: np.sqrt(np.sum(np.square(x), axis=tuple(range(x.ndim - 1))))  # noqa: E731
        np.testing.assert_allclose(norm(d), norm(w), rtol=1e-5)
        checked += 1
    assert checked >= 8  # every conv kernel and the classifier's kernel
    names = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(variables["params"])}
    assert any("BatchNorm" in n for n in names)


def test_directions_are_independent_and_random(net):
    *_, directions = net
    a, b = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(d)]) for d in directions)
    assert abs(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)) < 0.2


def test_origin_is_the_models_loss_by_eval_step(net):
    model, variables, images, labels, directions = net
    evaluate = landscape.landscape_fn(model, variables, directions, images, labels, batch_size=8, chunk=2)
    at_origin = evaluate(np.zeros((1, 2)))
    state = create_train_state(variables, optax.sgd(0.1))
    sums = eval_step(state, {"image": images, "label": labels, "mask": np.ones(N, np.float32)}, model=model)
    np.testing.assert_allclose(at_origin["loss"][0], sums["loss"] / N, rtol=1e-5)
    np.testing.assert_allclose(at_origin["accuracy"][0], sums["accuracy"] / N, rtol=1e-6)


def test_1d_slice_equals_the_loss_of_params_plus_alpha_d(net):
    model, variables, images, labels, directions = net
    alphas = np.array([-0.7, 0.3, 1.0], np.float32)
    evaluate = landscape.landscape_fn(model, variables, directions[:1], images, labels, batch_size=8, chunk=2)
    got = evaluate(alphas[:, None])["loss"]
    for alpha, loss in zip(alphas, got, strict=True):
        moved = jax.tree.map(lambda w, d, a=alpha: w + a * d, variables["params"], directions[0])
        np.testing.assert_allclose(loss, hand_loss(model, variables, images, labels, moved), rtol=1e-5)
    assert got[2] > got[1]  # moving a whole filter-norm away costs loss


def test_bn_parameters_and_biases_are_not_moved(net):
    model, variables, *_, directions = net
    moved = landscape.perturb(variables["params"], directions, jnp.array([0.5, -2.0]))
    for w, m in zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(moved), strict=True):
        assert np.array_equal(w, m) == (w.ndim < 2)


def test_chunked_vmapped_grid_equals_one_point_at_a_time(net):
    model, variables, images, labels, directions = net
    coefs = np.random.default_rng(2).uniform(-1, 1, (7, 2)).astype(np.float32)
    chunked = landscape.landscape_fn(model, variables, directions, images, labels, batch_size=8, chunk=3)(coefs)
    single = landscape.landscape_fn(model, variables, directions, images, labels, batch_size=N, chunk=1)(coefs)
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(chunked[key], single[key], rtol=1e-5, atol=1e-6)


def test_compute_grid_centre_and_local_minima(net):
    model, variables, images, labels, _ = net
    result = landscape.compute(model, variables, {"image": images, "label": labels}, points=3, span=0.5,
                               seed=1, batch_size=11, chunk=4)
    assert result["loss_2d"].shape == (3, 3)
    np.testing.assert_allclose(result["loss_2d"][1, 1], result["loss_1d"][1], rtol=1e-5)  # both the origin
    bowl = np.add.outer(np.linspace(-1, 1, 9) ** 2, np.linspace(-1, 1, 9) ** 2)
    assert landscape.local_minima(bowl) == 1
    assert landscape.local_minima(np.cos(8 * bowl)) > 1
