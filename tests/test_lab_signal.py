"""resnet_jax.lab.signal: known answers for the signal propagation statistics (Brock et al. 2021, De & Smith 2020)."""

import json

import jax
import numpy as np
import pytest

from resnet_jax.lab import common, signal
from resnet_jax.lab.common import load_net
from resnet_jax.models import zero_pad_shortcut

SHAPE = (12, 12, 1)


@pytest.fixture(scope="module")
def images():
    return jax.random.normal(jax.random.key(1), (8, *SHAPE)) * 2.0 + 0.5


def numpy_stats(x):
    x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    return np.mean(x.mean(0) ** 2), np.mean(x.var(0))


def test_channel_stats_equal_numpys():
    x = np.random.default_rng(0).normal(size=(5, 3, 4, 6)) * np.arange(1, 7) + np.arange(6)
    sq_mean, var = signal.channel_stats(jax.numpy.asarray(x, jax.numpy.float32))
    np.testing.assert_allclose([sq_mean, var], numpy_stats(x), rtol=1e-5)
    assert np.isclose(numpy_stats(x)[0], np.mean(np.arange(6.0) ** 2), rtol=0.3)  # the data's channel means


@pytest.mark.parametrize("train", [True, False])
def test_zeroed_branches_propagate_the_identity(images, train):
    """zero_init_residual zeroes every branch's last BN scale: each block is its shortcut, so each block's statistics
    are those of its input (identity blocks) or of its input strided and zero-padded (option A, downsampling)."""
    model, variables = load_net("resnet14", widths=(4, 8, 16), image_shape=SHAPE, zero_init_residual=True)
    result = signal.measure(model, variables, images, train)
    blocks = signal.block_activations(model, variables, images, train)
    assert result["blocks"] == ["input", *blocks] == ["input"] + [f"stage{i}_block{j}" for i in (1, 2, 3)
                                                                  for j in (1, 2)]
    np.testing.assert_array_equal(result["branch_var"][1:], 0.0)
    for i, (name, block) in enumerate(blocks.items(), start=1):
        x, out = block["input"], block["output"]
        strides = 2 if name.endswith("block1") and name != "stage1_block1" else 1
        expected = zero_pad_shortcut(x, out.shape[-1], strides)
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_allclose([result["sq_mean"][i], result["var"][i]], numpy_stats(expected), rtol=1e-5)
        if strides == 1:  # the identity: the same statistics as the previous point
            np.testing.assert_allclose(result["var"][i], result["var"][i - 1], rtol=1e-6)
            np.testing.assert_allclose(result["sq_mean"][i], result["sq_mean"][i - 1], rtol=1e-6)


def test_branch_variance_of_a_residual_net(images):
    model, variables = load_net("resnet8", widths=(4, 8, 16), image_shape=SHAPE)
    result = signal.measure(model, variables, images, True)
    blocks = signal.block_activations(model, variables, images, True)
    assert np.isnan(result["branch_var"][0])
    for i, block in enumerate(blocks.values(), start=1):
        np.testing.assert_allclose(result["branch_var"][i], numpy_stats(block["branch"])[1], rtol=1e-5)
        np.testing.assert_allclose(result["branch_share"][i], result["branch_var"][i] / result["var"][i], rtol=1e-6)
    # BatchNorm on batch statistics with scale 1: each branch ends with unit variance per channel.
    np.testing.assert_allclose(result["branch_var"][1:], 1.0, rtol=1e-3)


def test_a_plain_net_has_no_branch_variance(images):
    model, variables = load_net("plain8", widths=(4, 8, 16), image_shape=SHAPE)
    result = signal.measure(model, variables, images, False)
    assert len(result["blocks"]) == 4
    assert np.isnan(result["branch_var"]).all() and np.isnan(result["branch_share"]).all()
    assert np.isfinite(result["var"]).all() and np.isfinite(result["sq_mean"]).all()


def test_parse_model():
    assert common.parse_model("resnet56") == ("resnet56", {})
    assert common.parse_model("resnet20:zero_init_residual=True,block=basic,widths=(4, 8, 16)") == (
        "resnet20", {"zero_init_residual": True, "block": "basic", "widths": (4, 8, 16)})


def test_cli_writes_records_and_figures(tmp_path):
    from resnet_jax.lab.__main__ import main

    main(["signal", "--model", "resnet8", "--model", "plain8", "--widths", "4,8,16", "--image-size", "8",
          "--examples", "16", "--out", str(tmp_path)])
    record = json.loads((tmp_path / "signal.json").read_text())
    assert [n["label"] for n in record["nets"]] == ["resnet8 (init)", "plain8 (init)"]
    assert len(record["nets"][0]["var"]) == 4
    assert (tmp_path / "signal.png").stat().st_size and (tmp_path / "branch_share.png").stat().st_size


def test_cli_names_the_instruments(capsys):
    from resnet_jax.lab.__main__ import INSTRUMENTS, main

    main([])
    usage = capsys.readouterr().out
    assert all(name in usage for name in INSTRUMENTS)
    with pytest.raises(SystemExit, match="unknown instrument 'nope'"):
        main(["nope"])


def test_a_stochastic_depth_net_in_train_mode_is_measured_with_its_dropped_blocks():
    model, variables = load_net("resnet8", widths=(4, 8, 16), image_shape=(8, 8, 1), stochastic_depth=0.9)
    images = jax.random.normal(jax.random.key(1), (16, 8, 8, 1))
    stats = signal.measure(model, variables, images, train=True)
    assert np.isfinite(stats["var"]).all()
    assert np.any(stats["branch_var"][1:] == 0)  # survival 0.1-0.7: the fixed draw drops some branch (all zero)
    np.testing.assert_allclose(signal.measure(model, variables, images, train=True)["var"], stats["var"])
