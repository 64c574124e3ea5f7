"""The lab's model hooks and variants (docs/lab.md): the sown residual branch, test-time lesions, BN-free residual
blocks and stochastic depth, each against a known answer on tiny nets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from jax import lax

from resnet_jax import config as config_lib
from resnet_jax import create_model

WIDTHS = (4, 8, 16)
X = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))


def init(model):
    return model.init(jax.random.key(0), X, train=False)


def set_leaves(variables, predicate, value=0.0):
    """A copy of `variables` with every leaf whose path (a tuple of names) satisfies `predicate` set to `value`."""
    flat = traverse_util.flatten_dict(variables)
    return traverse_util.unflatten_dict({k: jnp.full_like(v, value) if predicate(k) else v for k, v in flat.items()})


def test_the_sown_branch_is_the_block_output_minus_its_identity_shortcut():
    model = create_model("resnet14", 10, version="v2", widths=WIDTHS)  # stage1_block2: a v2 identity block
    _, state = model.apply(init(model), X, train=False, mutable=["intermediates"], capture_intermediates=True)
    inter = state["intermediates"]
    block_in, block_out = inter["stage1_block1"]["__call__"][0], inter["stage1_block2"]["__call__"][0]
    (branch,) = inter["stage1_block2"]["branch"]
    np.testing.assert_allclose(branch, block_out - block_in, atol=1e-5)
    assert float(jnp.std(branch)) > 0.1  # a real branch, not zeros


def zero_branch(block: str, version: str, variables):
    """The variables with `block`'s residual branch output made exactly zero: v1 its last BN's scale (its shift is 0),
    v2 its last conv's kernel."""
    convs = sorted(k for k in variables["params"][block] if k.startswith("Conv"))
    norms = sorted(k for k in variables["params"][block] if k.startswith("BatchNorm"))
    last = (norms[-1], "scale") if version == "v1" else (convs[-1], "kernel")
    return set_leaves(variables, lambda k: k[:2] == ("params", block) and k[2:] == last)


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_lesioning_a_block_whose_branch_is_zero_changes_nothing(block, version):
    model = create_model("resnet14", 10, version=version, block=block, widths=WIDTHS, shortcut="B")
    variables = init(model)
    for name in ("stage1_block2", "stage2_block1"):  # an identity block and a downsampling (projection) one
        zeroed = zero_branch(name, version, variables)
        lesioned = model.clone(lesion=(name,))
        whole = model.apply(zeroed, X, train=False)
        np.testing.assert_allclose(lesioned.apply(zeroed, X, train=False), whole, atol=1e-5)
        # ... while lesioning the block with its branch intact changes the logits: the lesion does delete something
        assert not np.allclose(lesioned.apply(variables, X, train=False), model.apply(variables, X, train=False))


def stem_and_head(variables, x, eps=1e-5):
    """A v1 CIFAR resnet8 (option A) with every block deleted, by hand: stem conv-BN-ReLU, the stages' strided
    subsampling and zero channels (16 -> ... -> WIDTHS[-1]), global average, Dense."""
    p, s = variables["params"], variables["batch_stats"]
    conv = p["stem_conv"]["kernel"]
    y = lax.conv_general_dilated(x, conv, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    bn, stats = p["stem_norm"], s["stem_norm"]
    y = jax.nn.relu((y - stats["mean"]) / jnp.sqrt(stats["var"] + eps) * bn["scale"] + bn["bias"])
    y = y[:, ::4, ::4, :]  # stages 2 and 3 stride 2
    y = jnp.pad(y, ((0, 0), (0, 0), (0, 0), (0, WIDTHS[-1] - WIDTHS[0])))
    return jnp.mean(y, axis=(1, 2)) @ p["head"]["kernel"] + p["head"]["bias"]


def test_lesioning_every_block_leaves_the_stem_and_head_path_in_residual_and_plain_nets():
    residual = create_model("resnet8", 10, widths=WIDTHS)  # option A: no shortcut parameters, the plain twin's tree
    variables = init(residual)
    everything = tuple(residual.block_names())
    assert everything == ("stage1_block1", "stage2_block1", "stage3_block1")
    expected = stem_and_head(variables, X)
    for name in ("resnet8", "plain8"):
        model = create_model(name, 10, widths=WIDTHS, lesion=everything)
        np.testing.assert_allclose(model.apply(variables, X, train=False), expected, atol=1e-5)


def test_lesion_names_that_are_not_blocks_are_refused_with_the_block_names():
    with pytest.raises(ValueError, match=r"\['stage4_block1'\].*stage1_block1, stage2_block1, stage3_block1"):
        create_model("resnet8", 10, widths=WIDTHS, lesion=("stage4_block1",))


def test_lesion_is_a_test_time_knob_not_a_config_key():
    assert "lesion" not in config_lib.model_config()
