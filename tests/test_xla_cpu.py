"""resnet_jax.xla_cpu: the model's CPU-fast conv gives lax's numbers, the train step decides once whether to apply
itself, and the loop compiles with its options.

Both are CPU features, so the tests compile for the CPU whatever the default device.
"""

import re
from functools import partial

import chex
import flax.linen as nn
import jax
import optax
import pytest

from resnet_jax import create_model, xla_cpu
from resnet_jax.steps import compile_steps, create_train_state, train_step

BATCH = {
    "image": jax.random.normal(jax.random.key(1), (8, 16, 16, 3)),
    "label": jax.random.randint(jax.random.key(2), (8,), 0, 10),
}
TX = optax.sgd(0.1, momentum=0.9)
CPU = jax.devices("cpu")[0]


def tiny(**overrides):
    model = create_model("resnet8", 10, widths=(4, 8, 16), **overrides)
    return model, create_train_state(model.init(jax.random.key(0), BATCH["image"][:1], train=False), TX)


def test_materialising_conv_gives_lax_numbers_and_computes_each_conv_input_once():
    with jax.default_device(CPU):
        (model, state), (plain, plain_state) = tiny(), tiny(conv=nn.Conv)
        step, plain_step = (jax.jit(partial(train_step, model=m, tx=TX)) for m in (model, plain))
        hlo = step.lower(state, BATCH).compile().as_text()
        plain_hlo = plain_step.lower(plain_state, BATCH).compile().as_text()
        # resnet8 has 7 convs; their inputs are written back onto themselves (and so not fused into their readers).
        materialised = lambda text: len(re.findall(r"= \S+ dynamic-update-slice\(", text))  # noqa: E731
        assert materialised(hlo) >= 7 and materialised(plain_hlo) == 0
        new, metrics = step(state, BATCH)
        plain_new, plain_metrics = plain_step(plain_state, BATCH)
    chex.assert_trees_all_close((new, metrics), (plain_new, plain_metrics), rtol=1e-5, atol=1e-6)


def test_select_tree_picks_a_whole_tree_by_one_scalar():
    a = {"w": jax.numpy.ones((2, 3)), "s": jax.numpy.array(1.0)}
    b = {"w": jax.numpy.zeros((2, 3)), "s": jax.numpy.array(-1.0)}
    pick = jax.jit(xla_cpu.select_tree)
    chex.assert_trees_all_equal(pick(jax.numpy.array(True), a, b), a)
    chex.assert_trees_all_equal(pick(jax.numpy.array(False), a, b), b)


def test_the_train_step_checks_each_array_for_non_finite_values_once():
    # A jnp.where per array made XLA:CPU recompute the whole finiteness check inside every array's select: compile
    # time grew with the square of the number of arrays (resnet110: over 8 minutes). One conditional decides instead.
    with jax.default_device(CPU):
        model, state = tiny()
        hlo = jax.jit(partial(train_step, model=model, tx=TX)).lower(state, BATCH).compile().as_text()
    checked = 1 + len(jax.tree.leaves((state.params, state.params, state.batch_stats)))  # loss, grads, new state
    # XLA may repeat the loss's scalar check in a fusion or two; the select per array repeated it in every one (121).
    assert len(re.findall(r" is-finite\(", hlo)) <= checked + 2
    assert len(re.findall(r" conditional\(", hlo)) == 1


def test_compile_steps_compiles_with_the_xla_cpu_options(monkeypatch):
    assert xla_cpu.compiler_options("gpu") is None and xla_cpu.compiler_options("tpu") is None
    model, state = tiny()
    mesh = jax.make_mesh((1,), ("data",), devices=[CPU])
    # An option XLA does not know fails the compile: proof that compile_steps hands xla_cpu's options to XLA.
    monkeypatch.setattr(xla_cpu, "CPU_COMPILER_OPTIONS", {"xla_cpu_no_such_option": "1"})
    monkeypatch.setattr(xla_cpu, "MEASURED_JAXLIB", "")
    train_fn, eval_fn = compile_steps(model, TX, mesh)
    with pytest.raises(Exception, match="xla_cpu_no_such_option"):
        train_fn.lower(state, BATCH).compile()
    with pytest.raises(Exception, match="xla_cpu_no_such_option"):
        eval_fn.lower(state, BATCH | {"mask": jax.numpy.ones(8)}).compile()
