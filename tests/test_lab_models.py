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
TWO = (2, 1, 1)  # blocks per stage: stage1_block2 is an identity block, stage2_block1 a downsampling one
X = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))


def init(model):
    return model.init(jax.random.key(0), X, train=False)


def set_leaves(variables, predicate, value=0.0):
    """A copy of `variables` with every leaf whose path (a tuple of names) satisfies `predicate` set to `value`."""
    flat = traverse_util.flatten_dict(variables)
    return traverse_util.unflatten_dict({k: jnp.full_like(v, value) if predicate(k) else v for k, v in flat.items()})


def test_the_sown_branch_is_the_block_output_minus_its_identity_shortcut():
    model = create_model("resnet8", 10, version="v2", widths=WIDTHS, stage_sizes=TWO)  # stage1_block2: identity
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
    model = create_model("resnet8", 10, version=version, block=block, widths=WIDTHS, shortcut="B", stage_sizes=TWO)
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


def lesion_all(model):
    return model.clone(lesion=tuple(model.block_names()))


@pytest.mark.parametrize("block, version", [("skipinit_basic", "v1"), ("skipinit_basic", "v2"),
                                            ("skipinit_bottleneck", "v2"), ("rezero_basic", "v1")])
def test_skipinit_and_rezero_start_as_the_identity_per_block(block, version):
    model = create_model("resnet8", 10, block=block, version=version, widths=WIDTHS, stage_sizes=TWO)
    variables = init(model)
    assert "batch_stats" not in variables  # no normalisation anywhere (norm='none' is these blocks' default)
    logits, state = model.apply(variables, X, train=False, mutable=["intermediates"])
    branches = [state["intermediates"][name]["branch"][0] for name in model.block_names()]
    assert all(float(jnp.max(jnp.abs(b))) == 0 for b in branches)  # every block adds nothing to its shortcut
    np.testing.assert_allclose(logits, lesion_all(model).apply(variables, X, train=False), atol=1e-6)
    # ... and the branches are live: with gains of 1 the logits change
    live = set_leaves(variables, lambda k: k[-1] == "branch_gain", 1.0)
    assert not np.allclose(model.apply(live, X, train=False), logits, atol=1e-4)


@pytest.mark.parametrize("block, layers", [("fixup_basic", 2), ("fixup_bottleneck", 3)])
def test_fixup_starts_with_zero_branches_and_its_scaled_init(block, layers):
    model = create_model("resnet20", 10, block=block, widths=(16, 32, 64))  # L = 9 residual branches
    variables = init(model)
    assert "batch_stats" not in variables
    p = variables["params"]
    logits, state = model.apply(variables, X, train=False, mutable=["intermediates"])
    assert all(float(jnp.max(jnp.abs(state["intermediates"][n]["branch"][0]))) == 0 for n in model.block_names())
    assert float(jnp.max(jnp.abs(p["head"]["kernel"]))) == 0 and float(jnp.max(jnp.abs(logits))) == 0
    last = f"Conv_{layers - 1}"
    block3 = p["stage3_block3"]
    assert float(jnp.max(jnp.abs(block3[last]["kernel"]))) == 0 and float(block3["scale"]) == 1
    assert all(float(v) == 0 for k, v in block3.items() if k.startswith("bias"))
    assert sorted(k for k in block3 if k.startswith("bias")) == sorted(
        [f"bias{i}a" for i in range(1, layers + 1)] + [f"bias{i}b" for i in range(1, layers + 1)])
    kernel = block3["Conv_1" if layers == 3 else "Conv_0"]["kernel"]  # a 3x3 conv of 64 filters: 36,864 weights
    expected = np.sqrt(2 / (3 * 3 * 64)) * 9 ** (-1 / (2 * layers - 2))  # He (fan_out) x L^(-1/(2m-2))
    assert abs(float(jnp.std(kernel)) / expected - 1) < 0.03


def test_stochastic_depth_survival_decays_linearly_to_p_L():
    model = create_model("resnet14", 10, widths=WIDTHS, stochastic_depth=0.3)  # L = 6 blocks, p_L = 0.7
    np.testing.assert_allclose(model.survivals(), [0.95, 0.9, 0.85, 0.8, 0.75, 0.7])
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        create_model("resnet8", 10, stochastic_depth=1.0)


def scale_branches(variables, model, version, survivals):
    """The variables with each block's branch output multiplied by its survival: v2 its last conv's kernel, v1 its
    last BN's scale and shift (the blocks are linear in them)."""
    flat = traverse_util.flatten_dict(variables)
    for name, p in zip(model.block_names(), survivals, strict=True):
        convs = sorted(k for k in variables["params"][name] if k.startswith("Conv"))
        norms = sorted(k for k in variables["params"][name] if k.startswith("BatchNorm"))
        leaves = [(convs[-1], "kernel")] if version == "v2" else [(norms[-1], "scale"), (norms[-1], "bias")]
        for leaf in leaves:
            flat["params", name, *leaf] = flat["params", name, *leaf] * p
    return traverse_util.unflatten_dict(flat)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_stochastic_depth_in_evaluation_is_the_net_with_branches_scaled_by_their_survival(version):
    plain_sd = create_model("resnet14", 10, version=version, widths=WIDTHS, shortcut="B")
    model = plain_sd.clone(stochastic_depth=0.3)
    variables = init(model)
    variables = set_leaves(variables, lambda k: k[-1] == "bias" and k[1] != "head", 0.1)  # non-zero BN shifts
    expected = plain_sd.apply(scale_branches(variables, model, version, model.survivals()), X, train=False)
    once = model.apply(variables, X, train=False, rngs={"dropout": jax.random.key(1)})
    again = model.apply(variables, X, train=False, rngs={"dropout": jax.random.key(2)})
    np.testing.assert_array_equal(once, again)  # deterministic: no rng is drawn in evaluation
    np.testing.assert_allclose(once, expected, atol=1e-5)
    assert not np.allclose(once, plain_sd.apply(variables, X, train=False), atol=1e-4)


def train_logits(model, variables, key=None):
    rngs = {} if key is None else {"dropout": jax.random.key(key)}
    return model.apply(variables, X, train=True, mutable=["batch_stats"], rngs=rngs)[0]


def test_stochastic_depth_in_training_drops_whole_branches_for_the_batch():
    base = create_model("resnet8", 10, widths=WIDTHS)
    model = base.clone(stochastic_depth=0.5)  # survivals 5/6, 2/3, 1/2
    variables = init(model)
    almost_one = base.clone(stochastic_depth=1e-7)  # survival 1 - 1e-7: in training, nothing is dropped
    np.testing.assert_array_equal(train_logits(almost_one, variables, 0), train_logits(base, variables))
    names = base.block_names()
    subsets = [tuple(n for n, bit in zip(names, bits, strict=True) if bit) for bits in np.ndindex(2, 2, 2)]
    lesioned = {s: train_logits(base.clone(lesion=s), variables) for s in subsets}
    seen = set()
    for key in range(8):
        out = train_logits(model, variables, key)
        match = [s for s, y in lesioned.items() if np.allclose(out, y, atol=1e-5)]
        assert len(match) == 1, f"key {key}: the output is no net with a subset of blocks dropped"
        seen.add(match[0])
    assert () in seen and len(seen) > 2  # all kept sometimes, and several patterns of drops


def test_stochastic_depth_per_example_drops_each_example_independently():
    base = create_model("resnet8", 10, block="skipinit_basic", widths=WIDTHS)  # no BN: examples do not interact
    model = base.clone(stochastic_depth=0.5, stochastic_depth_mode="example")
    x = jnp.tile(X[:1], (16, 1, 1, 1))  # one image 16 times: any difference between rows is a different drop
    variables = set_leaves(init(model), lambda k: k[-1] == "branch_gain", 1.0)
    out = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(0)})
    names = base.block_names()
    subsets = [tuple(n for n, bit in zip(names, bits, strict=True) if bit) for bits in np.ndindex(2, 2, 2)]
    lesioned = [base.clone(lesion=s).apply(variables, x[:1], train=False)[0] for s in subsets]
    patterns = [[i for i, y in enumerate(lesioned) if np.allclose(row, y, atol=1e-5)] for row in out]
    assert all(len(p) == 1 for p in patterns)  # each example: the net with some subset of its blocks dropped
    assert len({p[0] for p in patterns}) > 2  # ... and the examples' subsets differ


def test_norm_none_is_refused_where_it_cannot_apply():
    with pytest.raises(ValueError, match="norm for block 'fixup_basic'"):
        create_model("resnet8", 10, block="fixup_basic", norm="batch")
    with pytest.raises(ValueError, match="zero_init_residual"):
        create_model("resnet8", 10, norm="none", zero_init_residual=True)
    with pytest.raises(ValueError, match="has no pre-activation"):
        create_model("resnet8", 10, block="fixup_basic", version="v2")

