"""Known answers of the shattered-gradients instrument (resnet_jax.lab.shattered)."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import create_model
from resnet_jax.lab import shattered

T = 32


class Linear(nn.Module):
    """Two Dense layers and no activation: its input gradient is the same everywhere."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(3)(nn.Dense(7)(x.reshape(len(x), -1)))


@pytest.fixture(scope="module")
def lines():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 8, 8, 1)).astype(np.float32)
    return shattered.line_of_images(a, b, T)[None]


@pytest.fixture(scope="module")
def resnet8():
    model = create_model("resnet8", 10, widths=(4, 8, 16))
    return model, model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)


def test_line_of_images_ends_at_both_images(lines):
    a, b = np.ones((2, 1, 1)), np.zeros((2, 1, 1))
    line = shattered.line_of_images(a, b, 5)
    assert lines.shape == (1, T, 8, 8, 1)
    np.testing.assert_allclose(line[:, 0, 0, 0], [1, 0.75, 0.5, 0.25, 0])


def test_a_linear_network_has_gradient_correlation_one_at_every_lag(lines):
    model = Linear()
    variables = model.init(jax.random.key(0), lines[0, :1])
    result = shattered.measure(model, variables, lines, bn="init", output=1)
    np.testing.assert_allclose(result["autocorrelation"], 1.0, atol=1e-5)
    np.testing.assert_allclose(result["matrix"], 1.0, atol=1e-5)


@pytest.mark.parametrize("bn", ["init", "line"])
def test_a_resnet_with_identity_activation_is_linear_so_correlation_one(lines, bn):
    model = create_model("resnet8", 10, widths=(4, 8, 16), act=lambda x: x)
    variables = model.init(jax.random.key(0), lines[0, :1], train=False)
    result = shattered.measure(model, variables, lines, bn=bn, output=-1)
    np.testing.assert_allclose(result["autocorrelation"], 1.0, atol=1e-4)


def test_relu_resnet_gradients_decorrelate(resnet8, lines):
    model, variables = resnet8
    rho = shattered.measure(model, variables, lines, bn="line")["autocorrelation"][0]
    assert rho[0] == pytest.approx(1.0, abs=1e-5)
    assert rho[-1] < 0.99  # the control: a ReLU net's gradient is not constant along the line


def test_white_noise_autocorrelation_is_zero_beyond_lag_zero():
    d = 256
    noise = jax.random.normal(jax.random.key(3), (T, d))
    rho = np.asarray(shattered.autocorrelation(shattered.correlation_matrix(noise)))
    assert rho[0] == pytest.approx(1.0, abs=1e-5)
    # each cosine of independent d-dim Gaussians has sd 1/sqrt(d); rho(k) averages T - k of them
    bound = 6 / np.sqrt(d * (T - np.arange(1, T)))
    assert np.all(np.abs(rho[1:]) < bound)


def test_autocorrelation_is_the_mean_of_each_diagonal():
    matrix = jax.random.normal(jax.random.key(4), (9, 9))
    expected = [np.mean(np.diagonal(matrix, offset=k)) for k in range(9)]
    np.testing.assert_allclose(shattered.autocorrelation(matrix), expected, rtol=1e-5)


@pytest.mark.parametrize("bn", ["init", "line"])
def test_vmapped_gradients_equal_jax_grad_at_one_point(resnet8, lines, bn):
    model, variables = resnet8
    line = jnp.asarray(lines[0])
    used = shattered.line_statistics(model, variables, line) if bn == "line" else variables
    batched = shattered.input_gradients(model, used, line, output=3)
    for i in (0, 17):
        single = jax.grad(lambda x: model.apply(used, x[None], train=False)[0, 3])(line[i])
        np.testing.assert_allclose(batched[i], np.ravel(single), rtol=1e-4, atol=1e-6)


def test_line_statistics_make_eval_mode_match_train_mode_on_the_line(resnet8, lines):
    model, variables = resnet8
    line = jnp.asarray(lines[0])
    frozen = shattered.line_statistics(model, variables, line)
    train_mode, _ = model.apply(variables, line, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(model.apply(frozen, line, train=False), train_mode, rtol=1e-4, atol=1e-4)
    assert not np.allclose(model.apply(variables, line, train=False), train_mode, atol=1e-3)


def test_a_net_without_batchnorm_is_measured(lines):
    model = create_model("resnet8", 10, widths=(4, 8, 16), block="skipinit_basic")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
    measured = shattered.measure(model, variables, lines, bn="line")
    assert np.isfinite(measured["autocorrelation"]).all() and measured["grad_norm"][0] > 0
    np.testing.assert_allclose(measured["autocorrelation"][0, 0], 1.0, rtol=1e-5)  # every gradient with itself


def test_line_statistics_of_a_stochastic_depth_net_keep_every_block(lines):
    model = create_model("resnet8", 10, widths=(4, 8, 16), stochastic_depth=0.5)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
    stats = shattered.line_statistics(model, variables, lines[0])["batch_stats"]
    _, expected = model.clone(stochastic_depth=0.0, bn_momentum=0.0).apply(variables, lines[0], train=True,
                                                                          mutable=["batch_stats"])
    chex.assert_trees_all_close(stats, expected["batch_stats"])
    assert not np.allclose(stats["stem_norm"]["var"], variables["batch_stats"]["stem_norm"]["var"])
