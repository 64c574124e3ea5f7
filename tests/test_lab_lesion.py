"""resnet_jax.lab.lesion: known answers for deleting blocks at test time (Veit, Wilber & Belongie 2016)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.lab.common import load_net
from resnet_jax.lab.lesion import Lesions, alive, downsampling_blocks
from resnet_jax.steps import TrainState

SHAPE = (8, 8, 1)


class Batches:
    """Two padded batches of 12 examples (the last 4 of the second padding), as a pipeline's eval_batches gives."""

    def __init__(self):
        key_x, key_y = jax.random.split(jax.random.key(3))
        self.images = jax.random.normal(key_x, (24, *SHAPE))
        self.labels = jax.random.randint(key_y, (24,), 0, 10)
        self.mask = jnp.arange(24) < 20

    def eval_batches(self, split):
        assert split == "test"
        for i in (0, 12):
            yield {"image": self.images[i:i + 12], "label": self.labels[i:i + 12],
                   "mask": self.mask[i:i + 12].astype(jnp.float32)}


def lesions_of(name, zeroed=None):
    """Lesions of a fresh `name` whose block `zeroed` has its branch's last BatchNorm scale set to zero."""
    model, variables = load_net(name, widths=(4, 8, 16), image_shape=SHAPE)
    params = variables["params"]
    if zeroed:
        last_norm = max(k for k in params[zeroed] if k.startswith("BatchNorm"))
        params = jax.tree.map(lambda x: x, params)
        params[zeroed][last_norm]["scale"] = jnp.zeros_like(params[zeroed][last_norm]["scale"])
    state = TrainState(jnp.zeros((), jnp.int32), params, variables["batch_stats"], None)
    return Lesions(model, state, Batches())


@pytest.fixture(scope="module")
def zeroed():
    return lesions_of("resnet8", zeroed="stage2_block1")


def test_deleting_a_block_whose_branch_is_zero_changes_nothing(zeroed):
    intact = zeroed.evaluate(())
    deleted = zeroed.evaluate(("stage2_block1",))
    assert (deleted["error"], deleted["loss"]) == (intact["error"], intact["loss"])


def test_deleting_other_blocks_changes_the_outputs(zeroed):
    intact = zeroed.evaluate(())
    for name in ("stage1_block1", "stage3_block1"):
        assert zeroed.evaluate((name,))["loss"] != intact["loss"]
    model = zeroed.model
    variables = {"params": zeroed.state.params, "batch_stats": zeroed.state.batch_stats}
    x = Batches().images
    logits = model.apply(variables, x, train=False)
    lesioned = model.clone(lesion=("stage1_block1",)).apply(variables, x, train=False)
    assert not np.allclose(logits, lesioned)


def test_single_deletions_one_per_block_in_forward_order(zeroed):
    single = zeroed.single()
    assert list(single) == ["stage1_block1", "stage2_block1", "stage3_block1"]
    assert single["stage2_block1"] == zeroed.evaluate(())["error"]
    assert downsampling_blocks(zeroed.model) == ["stage2_block1", "stage3_block1"]


def test_error_versus_k(zeroed):
    errors = zeroed.versus_k([0, 1, 3], draws=2, seed=0)
    assert errors.shape == (3, 2)
    np.testing.assert_array_equal(errors[0], zeroed.evaluate(())["error"])  # k = 0 is the intact net
    np.testing.assert_array_equal(errors[2], zeroed.evaluate(zeroed.model.block_names())["error"])
    sets = zeroed.random_sets([0, 1, 3], draws=2, seed=0)
    assert [len(s) for row in sets for s in row] == [0, 0, 1, 1, 3, 3]
    assert sets == zeroed.random_sets([0, 1, 3], draws=2, seed=0)  # the seed fixes the draw
    assert all(len(set(s)) == len(s) for row in sets for s in row)
    with pytest.raises(ValueError, match="has 3"):
        zeroed.random_sets([4], draws=1, seed=0)
    # Each distinct set is compiled and evaluated once, with its cost recorded.
    assert all(r["seconds"] > 0 for r in zeroed.results.values())


def test_a_plain_net_loses_its_layer():
    plain = lesions_of("plain8")
    intact = plain.evaluate(())
    assert plain.evaluate(("stage1_block1",))["loss"] != intact["loss"]
    assert plain.evaluate(("stage2_block1",))["loss"] != intact["loss"]  # a strided, zero-padded identity instead


@pytest.mark.parametrize("name", ["resnet8", "plain8"])
def test_the_traced_lesion_equals_the_static_one_with_one_compilation(name):
    from resnet_jax.steps import eval_step

    lesions = lesions_of(name)
    batch = next(Batches().eval_batches("test"))
    for deleted in [(), ("stage1_block1",), ("stage2_block1", "stage3_block1"), tuple(lesions.model.block_names())]:
        static = eval_step(lesions.state, batch, model=lesions.model.clone(lesion=deleted))
        traced = lesions.step(lesions.state, batch, alive(lesions.model, deleted))  # the one compiled executable
        np.testing.assert_allclose(traced["loss"], static["loss"], rtol=1e-6)
        assert traced["accuracy"] == static["accuracy"] and traced["count"] == static["count"] == 12
    with pytest.raises(ValueError, match="stage4_block1.*names no block"):
        alive(lesions.model, ("stage4_block1",))
