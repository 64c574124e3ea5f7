"""The model zoo: parameter counts from the papers and torchvision, shapes, BatchNorm modes, options, errors."""

import dataclasses
import re
from functools import partial
from pathlib import Path

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags as absl_flags
from flax import traverse_util
from ml_collections import config_flags

from resnet_jax import config as config_lib
from resnet_jax import create_model, list_models, models
from resnet_jax.models import Layout, head_of
from resnet_jax.summary import count_params, forward_macs
from resnet_jax.summary import main as summary_main

ROOT = Path(__file__).resolve().parents[1]


def abstract_variables(name, num_classes, shape=(1, 32, 32, 3), **kw):
    model = create_model(name, num_classes, **kw)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


def shortcut_params(params) -> int:
    flat = traverse_util.flatten_dict(params)
    return sum(v.size for k, v in flat.items() if any(p.startswith("shortcut") for p in k))


@pytest.mark.parametrize(
    "name, num_classes, expected",
    [
        ("resnet20", 10, 269_722),
        ("resnet56", 10, 853_018),
        ("resnet110", 10, 1_727_962),
        ("resnet18", 1000, 11_689_512),
        ("resnet34", 1000, 21_797_672),
        ("resnet50", 1000, 25_557_032),
        ("resnet101", 1000, 44_549_160),
        ("resnet152", 1000, 60_192_808),
    ],
)
def test_parameter_counts_match_papers_and_torchvision(name, num_classes, expected):
    # Parameters do not depend on the input size, so ImageNet models are traced at 64x64 to save time.
    assert count_params(abstract_variables(name, num_classes, (1, 64, 64, 3))["params"]) == expected


@pytest.mark.parametrize("name", ["resnet20", "resnet18", "resnet50", "preact_resnet56"])
def test_plain_twin_is_the_residual_net_without_shortcut_parameters(name):
    nc = 10 if name != "resnet18" and name != "resnet50" else 1000
    res = abstract_variables(name, nc, (1, 64, 64, 3))["params"]
    plain = abstract_variables(name.replace("resnet", "plain"), nc, (1, 64, 64, 3))["params"]
    assert shortcut_params(plain) == 0
    assert count_params(plain) == count_params(res) - shortcut_params(res)


def test_shortcut_options_a_b_c():
    counts = {s: abstract_variables("resnet20", 10, shortcut=s)["params"] for s in "ABC"}
    assert shortcut_params(counts["A"]) == 0  # option A is parameter-free
    # B: 1x1 conv + BN only at the two stage transitions (16->32, 32->64).
    assert shortcut_params(counts["B"]) == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    # C: a projection in all 9 blocks.
    c = traverse_util.flatten_dict(counts["C"])
    assert len({k[0] for k in c if k[1] == "shortcut_conv"}) == 9


def test_every_family_and_option_runs_with_the_right_output_shape():
    small = dict(widths=(4, 8, 16, 32))
    cases = [
        ("resnet20", dict(shortcut="A"), (2, 32, 32, 3)),
        ("resnet20", dict(shortcut="B", version="v2"), (2, 28, 28, 1)),
        ("plain20", dict(shortcut="C"), (2, 32, 32, 3)),
        ("preact_resnet11", dict(), (2, 32, 32, 3)),
        ("preact_plain11", dict(), (2, 32, 32, 3)),
        ("resnet18", small, (2, 32, 32, 3)),
        ("resnet50", dict(small, version="v1"), (2, 64, 64, 3)),
        ("resnet50", dict(small, version="v2", shortcut="C"), (2, 48, 40, 3)),
        ("plain34", small, (2, 32, 32, 3)),
    ]
    for name, kw, shape in cases:
        model = create_model(name, 7, **kw)
        variables = model.init(jax.random.key(0), jnp.ones(shape), train=False)
        assert set(variables) == {"params", "batch_stats"}
        y = model.apply(variables, jnp.ones(shape), train=False)
        chex.assert_shape(y, (shape[0], 7))
        chex.assert_tree_all_finite(y)


def test_imagenet_stem_and_stages_follow_torchvision_shapes():
    model = create_model("resnet50", 10, widths=(4, 8, 16, 32))
    x = jnp.ones((1, 224, 224, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    _, state = model.apply(variables, x, train=False, capture_intermediates=True, mutable=["intermediates"])
    inter = state["intermediates"]
    assert inter["stem_conv"]["__call__"][0].shape == (1, 112, 112, 4)
    assert inter["stage1_block1"]["__call__"][0].shape == (1, 56, 56, 16)
    assert inter["stage4_block3"]["__call__"][0].shape == (1, 7, 7, 128)


def test_v1_strides_the_first_1x1_and_v15_the_3x3():
    x = jnp.ones((1, 16, 16, 3))
    for version, first_conv_size in (("v1", 2), ("v1.5", 4)):
        model = create_model("resnet50", 10, widths=(4, 8, 16, 32), version=version)
        variables = model.init(jax.random.key(0), x, train=False)
        _, state = model.apply(variables, x, train=False, capture_intermediates=True, mutable=["intermediates"])
        first_conv = state["intermediates"]["stage2_block1"]["Conv_0"]["__call__"][0]
        assert first_conv.shape[1] == first_conv_size  # stage2 input is 4x4


@pytest.fixture(scope="module")
def resnet20_and_batch():
    model = create_model("resnet20", 10)
    x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
    return model, model.init(jax.random.key(0), x, train=False), x


def test_running_statistics_update_only_in_train_mode(resnet20_and_batch):
    model, variables, x = resnet20_and_batch
    y_train, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    chex.assert_trees_all_equal_structs(updates["batch_stats"], variables["batch_stats"])
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), updates["batch_stats"], variables["batch_stats"])
    assert all(jax.tree.leaves(changed))
    # Eval mode uses the running averages: no mutation, and each example's output is independent of the batch.
    y_eval = model.apply(variables, x, train=False)
    np.testing.assert_allclose(model.apply(variables, x[:1], train=False), y_eval[:1], rtol=1e-5, atol=1e-5)
    # Train mode normalises with batch statistics, so the same example depends on its batch mates.
    y_train_one, _ = model.apply(variables, x[:2], train=True, mutable=["batch_stats"])
    assert not np.allclose(y_train_one[0], y_train[0], atol=1e-4)


def test_jit_and_eager_agree(resnet20_and_batch):
    model, variables, x = resnet20_and_batch
    eager = model.apply(variables, x, train=False)
    jitted = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    chex.assert_trees_all_close(eager, jitted, rtol=1e-5, atol=1e-5)


def test_plain_twin_drops_the_addition(resnet20_and_batch):
    """Option A has no shortcut parameters, so counting them cannot tell the twins apart: run them instead. With
    the last BN of each block zeroed, a residual block outputs its (post-ReLU) input, subsampled and zero-padded
    where the stage changes; the plain block outputs relu(0) = 0. Same parameters, so only the addition differs."""
    residual, variables, x = resnet20_and_batch
    flat = traverse_util.flatten_dict(variables["params"])
    flat = {k: jnp.zeros_like(v) if k[-2:] == ("BatchNorm_1", "scale") else v for k, v in flat.items()}
    variables = dict(variables, params=traverse_util.unflatten_dict(flat))
    inter = {}
    for which, model in (("residual", residual), ("plain", create_model("plain20", 10))):
        _, state = model.apply(variables, x, train=False, capture_intermediates=True, mutable=["intermediates"])
        inter[which] = {k: v["__call__"][0] for k, v in state["intermediates"].items() if "__call__" in v}
    stem = jax.nn.relu(inter["residual"]["stem_norm"])
    np.testing.assert_allclose(inter["residual"]["stage1_block3"], stem, atol=1e-6)
    padded = jnp.pad(stem[:, ::2, ::2], ((0, 0), (0, 0), (0, 0), (0, 16)))
    np.testing.assert_allclose(inter["residual"]["stage2_block1"], padded, atol=1e-6)
    for block in ("stage1_block1", "stage2_block1", "stage3_block3"):
        np.testing.assert_array_equal(inter["plain"][block], 0)


def test_zero_init_residual_zeroes_the_last_bn_scale_of_each_block():
    model = create_model("resnet20", 10, zero_init_residual=True)
    params = model.init(jax.random.key(0), jnp.ones((1, 32, 32, 3)), train=False)["params"]
    assert float(jnp.abs(params["stage2_block3"]["BatchNorm_1"]["scale"]).sum()) == 0.0
    assert float(jnp.abs(params["stage2_block3"]["BatchNorm_0"]["scale"]).sum()) > 0.0


@pytest.mark.parametrize(
    "name, kw, message",
    [
        ("resnet21", {}, "6n+2"),
        ("resnet7", {}, "6n+2"),
        ("preact_resnet57", {}, "9n+2"),
        ("vgg16", {}, "unknown model"),
        ("resnet", {}, "unknown model"),
        ("resnet20", {"shortcut": "D"}, "unknown shortcut"),
        ("resnet20", {"version": "v3"}, "unknown version"),
        ("resnet20", {"widthz": (1, 2, 3)}, "unknown model option"),
        ("resnet20", {"widths": (16, 32)}, "differ in length"),
        ("preact_resnet56", {"zero_init_residual": True}, "zero_init_residual"),
    ],
)
def test_bad_names_depths_and_options_fail_with_a_clear_message(name, kw, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        create_model(name, 10, **kw)


def test_list_models_names_all_build():
    """Every listed name is traced (init with a training-mode forward pass, abstractly: no FLOPs), but the four of
    depth >= 1000, whose tracing alone takes about a minute on 2 cores: their stages are checked instead."""
    names = list_models()
    assert {"resnet20", "resnet1202", "preact_resnet1001", "resnet200", "plain56", "plain18", "preact_plain164",
            "cifar_resnet50", "cifar_plain200"} <= set(names)
    x = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
    for name in names:
        model = create_model(name, 10)
        if int(re.search(r"\d+", name).group()) >= 1000:  # the depth, not "101_2" read as 1012
            assert model.stage_sizes == ((200,) * 3 if model.block == "basic" else (111,) * 3)
            continue
        logits, variables = jax.eval_shape(partial(model.init_with_output, train=True), jax.random.key(0), x)
        assert logits.shape == (2, 10) and set(variables) == {"params", "batch_stats"}, name


@pytest.mark.parametrize("name, stem, stages", [
    ("resnet50", "imagenet", (3, 4, 6, 3)),
    ("cifar_resnet50", "cifar", (8, 8, 8)),
    ("plain152", "imagenet", (3, 8, 36, 3)),
    ("cifar_plain152", "cifar", (25, 25, 25)),
    ("resnet200", "imagenet", (3, 24, 36, 3)),
    ("cifar_resnet200", "cifar", (33, 33, 33)),
    ("cifar_resnet56", "cifar", (9, 9, 9)),
])
def test_depths_valid_for_both_families_have_a_cifar_name(name, stem, stages):
    """50, 152 and 200 are ImageNet depths and 6n+2 too: resnet<d> is the ImageNet net, cifar_resnet<d> the CIFAR
    one."""
    model = create_model(name, 10)
    assert (model.stem, tuple(model.stage_sizes), model.residual) == (stem, stages, "plain" not in name)
    if stem == "cifar":
        assert (model.block, model.version, model.shortcut, tuple(model.widths)) == ("basic", "v1", "A", (16, 32, 64))
    with pytest.raises(ValueError, match=r"CIFAR ResNet depth must be 6n\+2 .*; got 18"):
        create_model("cifar_resnet18", 10)


def test_summary_cli_prints_parameter_count(capsys):
    summary_main(["resnet20"])
    out = capsys.readouterr().out
    assert "trainable parameters: 269,722" in out
    assert "multiply-adds" in out


@pytest.mark.parametrize(
    "name, num_classes, trainable, total",
    [
        # torchvision's num_params, Keras' model.summary() (total includes BN moving statistics), the Keras seed's.
        ("wide_resnet50_2", 1000, 68_883_240, None),
        ("wide_resnet101_2", 1000, 126_886_696, None),
        ("keras_resnet50", 1000, 25_583_592, 25_636_712),
        ("keras_resnet101", 1000, 44_601_832, 44_707_176),
        ("keras_resnet152", 1000, 60_268_520, 60_419_944),
        ("keras_resnet50v2", 1000, 25_568_360, 25_613_800),
        ("keras_resnet101v2", 1000, 44_577_896, 44_675_560),
        ("keras_resnet152v2", 1000, 60_236_904, 60_380_648),
        ("keras_cifar_resnet20_v1", 10, 273_066, 274_442),
        ("keras_cifar_resnet29_v2", 10, 843_786, 849_002),
    ],
)
def test_other_frameworks_layouts_match_their_parameter_counts(name, num_classes, trainable, total):
    variables = abstract_variables(name, num_classes, (1, 64, 64, 3))
    assert count_params(variables["params"]) == trainable
    if total:
        assert count_params(variables) == total


@pytest.mark.parametrize(
    "name, layout, message",
    [
        ("resnet18", {"inner_widths": (64, 128, 256, 512)}, "inner_widths"),
        ("resnet50", {"inner_widths": (64, 128)}, "one width per stage"),
        ("resnet50", {"projection_from": "input"}, "pre-activation"),
        ("resnet50", {"padding": "valid"}, "unknown padding"),
        ("resnet50", {"conv_bias": "some"}, "unknown conv_bias"),
        ("keras_cifar_resnet21_v1", {}, "6n+2"),
        ("keras_cifar_resnet21_v2", {}, "9n+2"),
    ],
)
def test_bad_layout_options_fail_with_a_clear_message(name, layout, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        create_model(name, 10, layout=Layout(**layout))


def test_keras_seed_networks_initialise_like_keras_he_normal():
    # Keras' he_normal: a normal truncated at 2 standard deviations, variance 2 / fan_in, for convs and the classifier.
    # One width throughout (fewer kernel shapes to compile initialisers for).
    model = create_model("keras_cifar_resnet8_v1", 10, widths=(64, 64, 64))
    params = model.init(jax.random.key(0), jnp.ones((1, 8, 8, 3)), train=False)["params"]
    kernel = np.asarray(params["stage3_block1"]["Conv_1"]["kernel"])  # fan_in = fan_out = 3 * 3 * 64
    std = np.sqrt(2 / 576)
    assert abs(kernel.std() / std - 1) < 0.03 and np.abs(kernel).max() <= 2 * std / 0.87962566103423978
    head = np.asarray(params["head"]["kernel"])  # fan_in 64: std 0.177 (lecun_normal, the zoo default: 0.125)
    assert abs(head.std() / np.sqrt(2 / 64) - 1) < 0.1


def test_init_and_apply_without_train_raise_a_type_error_naming_it():
    """A Flax-style loop that leaves `train` out would silently run BatchNorm in inference mode: it must fail."""
    model = create_model("resnet8", 10, widths=(4, 8, 16))
    x = jnp.zeros((1, 16, 16, 3))
    with pytest.raises(TypeError, match="train"):
        model.init(jax.random.key(0), x)
    variables = model.init(jax.random.key(0), x, train=False)
    with pytest.raises(TypeError, match="train"):
        model.apply(variables, x, mutable=["batch_stats"])
    with pytest.raises(TypeError, match="train"):
        head_of(model).init(jax.random.key(0), jnp.zeros((1, 16)))


class OneConv(nn.Module):
    """One bias-free 3x3 conv with 8 filters and stride 2, for a hand count of its multiply-adds."""

    padding: str | int

    @nn.compact
    def __call__(self, x, *, train: bool):
        return nn.Conv(8, (3, 3), strides=2, padding=self.padding, use_bias=False)(x)


@pytest.mark.parametrize("size, padding, expected", [
    (33, "VALID", 16 * 16 * (3 * 3 * 3) * 8),  # 16x16 outputs, each 3x3x3 inputs for each of 8 filters
    # XLA counts the multiply-adds that read the input, not the zero border: the first output row and column read 2
    # of their 3 rows / columns, so 2 + 15 * 3 = 47 kernel rows (and columns) touch the 32x32 input.
    (32, 1, 47 * 47 * 3 * 8),
])
def test_forward_macs_of_a_strided_conv_is_the_hand_count(size, padding, expected):
    model = OneConv(padding)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape), train=False))
    assert forward_macs(model, variables, x) == expected


def test_forward_macs_of_resnet18_at_224_is_the_published_1_8_g():
    """torchvision lists resnet18 at 1.81 GFLOPS (multiply-adds, zero padding included); XLA leaves the padding's
    multiply-adds out (the test above), which is 7% here: a count off by any factor fails."""
    model = create_model("resnet18", 1000)
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape), train=False))
    assert 0.9 * 1.814e9 < forward_macs(model, variables, x) < 1.814e9


def test_a_registered_block_is_chosen_by_name_and_gets_only_the_options_it_declares():
    class ScaledBlock(models.Block):  # no field of the per-block options: it must get none of them
        @nn.compact
        def __call__(self, x):
            y = self.act(self.norm()(self.conv(self.filters, (3, 3), self.strides)(x)))
            y = y * self.param("branch_scale", nn.initializers.zeros, ())
            return self.act(y + models.identity_shortcut(self, x, self.filters) if self.residual else y)

    models.register_block("scaled_test", post=ScaledBlock)
    try:
        model = create_model("resnet8", 10, widths=(4, 8, 16), block="scaled_test", shortcut="A")
        params = model.init(jax.random.key(0), jnp.ones((1, 8, 8, 3)), train=False)["params"]
        assert params["stage2_block1"]["branch_scale"].shape == ()
        with pytest.raises(ValueError, match="block 'scaled_test' has no pre-activation"):
            create_model("resnet8", 10, block="scaled_test", version="v2")
    finally:
        del models.BLOCKS["scaled_test"]
    with pytest.raises(ValueError, match="unknown block 'bottlenek'; did you mean 'bottleneck'"):
        create_model("resnet8", 10, block="bottlenek")


def test_stage_of_and_forward_order_read_layer_names():
    assert [models.stage_of(layer, 4) for layer in ("stem_conv", "stage2_block10", "final_norm", "head_hidden1")] == [
        0, 2, 3, None]
    layers = ["head", "stage1_block10", "head_hidden2", "final_norm", "stage1_block9", "stage10_block1", "stem_norm",
              "head_hidden1"]
    assert sorted(layers, key=models.forward_order) == [
        "stem_norm", "stage1_block9", "stage1_block10", "stage10_block1", "final_norm", "head_hidden1", "head_hidden2",
        "head"]
    with pytest.raises(ValueError, match="cannot tell which stage"):
        models.stage_of("block3", 4)


def parse_cli(*overrides: str):
    """The run config the CLI builds from experiments/quickstart.py and --config.<key> overrides."""
    argv = ["train", "--config", str(ROOT / "experiments/quickstart.py"), *overrides]
    flags = absl_flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=flags, sys_argv=argv)
    flags(argv)
    return flags.config


# For every field a model section forwards: a command-line value that differs from resnet8's, the value the model
# must then have, and the options that value needs (a layout option of bottleneck or pre-activation blocks).
FORWARDED = {
    "stage_sizes": ("(2,1,1)", (2, 1, 1), ()),
    "widths": ("(4,8,16)", (4, 8, 16), ()),
    "block": ("bottleneck", "bottleneck", ()),
    "version": ("v2", "v2", ()),
    "stem": ("imagenet", "imagenet", ()),
    "shortcut": ("C", "C", ()),
    "residual": ("False", False, ()),
    "bn_momentum": ("0.99", 0.99, ()),
    "bn_epsilon": ("0.001", 0.001, ()),
    "zero_init_residual": ("True", True, ()),
    "dtype": ("bfloat16", jnp.bfloat16, ()),
    "param_dtype": ("float16", jnp.float16, ()),
    "act": ("gelu", nn.gelu, ()),
    "kernel_init": ("he_normal", config_lib.INITIALIZERS["he_normal"], ()),
    "head_init": ("glorot_uniform", config_lib.INITIALIZERS["glorot_uniform"], ()),
    "head_pooling": ("flatten", "flatten", ()),
    "head_hidden": ("(32,)", (32,), ()),
    "head_dropout": ("0.5", 0.5, ()),
    "conv": ("lax", nn.Conv, ()),
    "layout.inner_widths": ("(8,16,32)", (8, 16, 32), ("block=bottleneck",)),
    "layout.bottleneck_stride": ("1x1", "1x1", ()),
    "layout.downsample": ("last", "last", ()),
    "layout.conv_bias": ("all", "all", ()),
    "layout.padding": ("same", "same", ()),
    "layout.pool_padding": ("zeros", "zeros", ()),
    "layout.projection_norm": ("False", False, ()),
    "layout.projection_from": ("input", "input", ("version=v2",)),
    "layout.preact_stem_norm": ("True", True, ("version=v2",)),
    "norm": ("none", "none", ()),
    "stochastic_depth": ("0.2", 0.2, ()),
    "stochastic_depth_mode": ("example", "example", ()),
}


def test_every_model_field_set_on_the_command_line_reaches_the_model():
    sections = config_lib.model_config()
    forwarded = {k for k in config_lib.flat_keys(sections) if k not in ("name", "num_classes", "layout")}
    assert forwarded == set(FORWARDED)  # a new ResNet field is forwarded, and needs a line above
    assert len(forwarded) == 31  # before every field was forwarded: 10
    # model.num_classes is a key of its own; transfer.freeze_stages sets frozen_bn_stages; lesion is a test-time knob.
    unforwarded = models.ResNet.__dataclass_fields__.keys() - {k.split(".")[0] for k in forwarded}
    assert unforwarded == {"parent", "name", "num_classes", "frozen_bn_stages", "lesion"}
    for key, (cli, expected, needs) in FORWARDED.items():
        config = parse_cli(f"--config.model.{key}={cli}", *(f"--config.model.{k}" for k in needs))
        model = config_lib.build_model(config.model, 10)
        value = getattr(model.layout, key.removeprefix("layout.")) if key.startswith("layout.") else getattr(model, key)
        assert value == expected, key
        assert value != getattr(create_model("resnet8", 10), key.split(".")[0]) or key.startswith("layout."), key


def test_model_section_keeps_the_zoo_names_values_where_unset_and_refuses_unknown_keys():
    section = config_lib.model_config()
    section.update(name="keras_resnet50")
    section.layout.padding = "same"
    model = config_lib.build_model(section, 10)  # the other Keras layout options stay
    assert model.layout == dataclasses.replace(models.KERAS_LAYOUT, padding="same") and model.bn_epsilon == 1.001e-5
    with pytest.raises(config_lib.ConfigError, match=r"unknown model key\(s\): shortcutt \(did you mean shortcut\?\)"):
        config_lib.build_model(dict(section, shortcutt="A"), 10)
    with pytest.raises(config_lib.ConfigError, match=r"unknown model.layout key\(s\): paddin \(did you mean padding"):
        config_lib.build_model(dict(section, layout={"paddin": "same"}), 10)
    with pytest.raises(config_lib.ConfigError, match="unknown model.act 'gleu'; did you mean 'gelu'"):
        config_lib.build_model(dict(section, act="gleu"), 10)


def test_upgrade_model_maps_an_old_saved_section_to_the_same_model():
    old = {"name": "resnet20", "num_classes": 0, "shortcut": "", "version": "v2", "widths": [],
           "zero_init_residual": False, "bn_momentum": 0.0, "bn_epsilon": 0.001, "dtype": "float32",
           "head_pooling": "avg", "head_hidden": [], "head_dropout": 0.0}
    new = config_lib.upgrade_model(old)
    assert new == dict(old, shortcut=None, widths=None, zero_init_residual=None, bn_momentum=None, dtype=None,
                       head_pooling=None, head_hidden=None, head_dropout=None)
    assert config_lib.upgrade_model(new) == new
    model = config_lib.build_model(new, 10)
    assert (model.shortcut, model.version, tuple(model.widths), model.bn_epsilon) == ("A", "v2", (16, 32, 64), 0.001)
