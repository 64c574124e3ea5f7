import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resnet_jax
from resnet_jax import diagnostics


class TwoLinear(nn.Module):
    """z = (x @ W1) @ W2, no biases; `train` only to match the zoo's call signature."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Dense(2, use_bias=False, name="layer1")(x)
        return nn.Dense(1, use_bias=False, name="layer2")(h)


def test_two_layer_linear_by_hand():
    # x = [1, 2], W1 = I, W2 = [1, 1]^T, loss = z: h = [1, 2], z = 3,
    # dL/dW2 = h^T = [1, 2]^T (norm sqrt 5), dL/dW1 = x^T W2^T = [[1, 1], [2, 2]] (norm sqrt 10).
    params = {"layer1": {"kernel": jnp.eye(2)}, "layer2": {"kernel": jnp.ones((2, 1))}}
    batch = {"image": jnp.array([[1.0, 2.0]]), "label": jnp.zeros(1, jnp.int32)}
    out = diagnostics.measure(TwoLinear(), {"params": params}, batch, loss_fn=lambda logits, labels: logits.sum())
    assert list(out) == [
        "diag/grad_norm/layer1",
        "diag/grad_norm/layer2",
        "diag/act_norm/layer1",
        "diag/act_norm/layer2",
    ]
    assert out["diag/grad_norm/layer1"] == pytest.approx(math.sqrt(10))
    assert out["diag/grad_norm/layer2"] == pytest.approx(math.sqrt(5))
    assert out["diag/act_norm/layer1"] == pytest.approx(math.sqrt((1 + 4) / 2))  # RMS of h
    assert out["diag/act_norm/layer2"] == pytest.approx(3.0)


def test_grad_norms_and_update_ratios_on_known_params():
    params = {
        "stem_conv": {"kernel": jnp.array([3.0])},
        "stem_norm": {"scale": jnp.array([4.0]), "bias": jnp.array([0.0])},
        "head": {"kernel": jnp.array([[1.0, 0.0]]), "bias": jnp.zeros(2)},
    }
    new = {
        "stem_conv": {"kernel": jnp.array([6.0])},
        "stem_norm": {"scale": jnp.array([8.0]), "bias": jnp.array([0.0])},
        "head": {"kernel": jnp.array([[1.0, 0.3]]), "bias": jnp.array([0.0, 0.4])},
    }
    assert {g: float(v) for g, v in diagnostics.grad_norms(params).items()} == pytest.approx({"stem": 5.0, "head": 1.0})
    ratios = diagnostics.update_ratios(params, new)
    assert list(ratios) == ["stem", "head"]
    assert float(ratios["stem"]) == pytest.approx(1.0)  # the stem doubled: ||Δw|| = ||w|| = 5
    assert float(ratios["head"]) == pytest.approx(0.5)  # ||(0.3, 0.4)|| / ||(1, 0)||
    metrics = diagnostics.update_ratio_metrics(params, new)
    assert sorted(metrics) == ["diag/update_ratio/head", "diag/update_ratio/stem"]


def test_layer_groups_are_in_numeric_forward_order():
    names = ["head", "stage1_block10", "stage2_block1", "stem_norm", "stage1_block9", "final_norm",
             "stage10_block1", "stage1_block1", "stem_conv"]  # fmt: skip
    params = {name: {"w": jnp.zeros(1)} for name in names}
    assert diagnostics.layer_groups(params) == [
        "stem", "stage1_block1", "stage1_block9", "stage1_block10", "stage2_block1", "stage10_block1",
        "final_norm", "head",
    ]  # fmt: skip


def test_preact_model_has_every_group():
    model = resnet_jax.create_model("preact_resnet11", 10, widths=(2, 2, 2))
    x = jnp.ones((2, 8, 8, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    groups = ["stem", "stage1_block1", "stage2_block1", "stage3_block1", "final_norm", "head"]
    assert diagnostics.layer_groups(variables["params"]) == groups
    acts = jax.jit(lambda v, x: diagnostics.activation_norms(model, v, x))(variables, x)
    assert sorted(acts) == sorted(groups)  # jit hands dicts back with sorted keys
    assert all(np.isfinite(float(v)) and float(v) > 0 for v in acts.values())


def test_plain_gradients_spread_far_more_than_residual_at_init():
    # With BN in train mode, a deep plain net's gradient explodes towards the input (Yang et al. 2019),
    # while the residual net's stays within a small factor: first/last block is ~2000x vs ~6x here.
    x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
    batch = {"image": x, "label": jnp.arange(8) % 10}
    models = {name: resnet_jax.create_model(name, 10, widths=(4, 8, 16)) for name in ("resnet56", "plain56")}
    # Option-A shortcuts have no parameters, so both nets share the same weights: only the additions differ.
    variables = models["resnet56"].init(jax.random.key(0), x[:1], train=False)
    spread = {}
    for name, model in models.items():
        out = diagnostics.measure(model, variables, batch)
        blocks = [v for k, v in out.items() if k.startswith("diag/grad_norm/stage")]
        assert len(blocks) == 27
        spread[name] = blocks[0] / blocks[-1]
    assert spread["plain56"] > 10 * spread["resnet56"]
