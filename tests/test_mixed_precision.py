"""Mixed precision: bfloat16 really computes in bfloat16 with float32 state; float16 is loss-scaled, never silently
not."""

from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.extend import core as jex_core

from resnet_jax import create_model
from resnet_jax.checkpoints import Checkpoints
from resnet_jax.config import default_config
from resnet_jax.loss_scale import DynamicScale, for_dtype
from resnet_jax.metrics import read_metrics
from resnet_jax.loop import train_and_evaluate
from resnet_jax.steps import create_train_state, train_step

TINY = dict(widths=(4, 8, 16))
BATCH = {
    "image": jax.random.normal(jax.random.key(1), (8, 16, 16, 3)),
    "label": jax.random.randint(jax.random.key(2), (8,), 0, 10),
}
TX = optax.sgd(0.1, momentum=0.9)


def tiny_state(dtype, loss_scale=None):
    model = create_model("resnet8", 10, dtype=dtype, **TINY)
    variables = model.init(jax.random.key(0), BATCH["image"][:1], train=False)
    return model, create_train_state(variables, TX, loss_scale=loss_scale)


def all_eqns(jaxpr):
    """Every equation of a jaxpr, those of its sub-jaxprs (jit, custom_vjp, ...) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple) else (value,):
                if isinstance(sub, jex_core.ClosedJaxpr):
                    yield from all_eqns(sub.jaxpr)
                elif isinstance(sub, jex_core.Jaxpr):
                    yield from all_eqns(sub)


def input_dtypes(jaxpr, primitive):
    return [tuple(str(v.aval.dtype) for v in e.invars) for e in all_eqns(jaxpr) if e.primitive.name == primitive]


def test_bfloat16_train_step_runs_convs_and_dots_in_bfloat16_and_keeps_float32_state():
    model, state = tiny_state(jnp.bfloat16)
    step = partial(train_step, model=model, tx=TX)
    jaxpr = jax.make_jaxpr(step)(state, BATCH).jaxpr
    convs, dots = input_dtypes(jaxpr, "conv_general_dilated"), input_dtypes(jaxpr, "dot_general")
    # resnet8: 7 convs, each forward + weight gradient, and the input gradient of all but the stem; the head's
    # forward and its two gradients.
    assert len(convs) == 7 + 7 + 6 and len(dots) == 3
    assert set(convs) == {("bfloat16", "bfloat16")} and set(dots) == {("bfloat16", "bfloat16")}

    new_state, metrics = jax.eval_shape(step, state, BATCH)
    float32 = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, jnp.float32), tree)  # noqa: E731
    for part in ("params", "opt_state", "batch_stats"):
        chex.assert_trees_all_equal_shapes_and_dtypes(getattr(new_state, part), float32(getattr(state, part)))
    assert metrics["loss"].dtype == jnp.float32
    loss_grads = jax.eval_shape(jax.grad(lambda p: step(state.replace(params=p), BATCH)[1]["loss"]), state.params)
    chex.assert_trees_all_equal_shapes_and_dtypes(loss_grads, float32(state.params))


def test_bfloat16_batch_norm_statistics_are_reduced_in_float32():
    model, state = tiny_state(jnp.bfloat16)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    _, out = model.apply(variables, BATCH["image"], train=True, capture_intermediates=True,
                         mutable=["batch_stats", "intermediates"])
    conv = out["intermediates"]["stem_conv"]["__call__"][0]
    assert conv.dtype == jnp.bfloat16
    # Running averages start at mean 0, variance 1 and decay by bn_momentum 0.9. Reduced in bfloat16, these sums
    # over 2,048 values would be off by about 1e-3 relative.
    x = np.asarray(conv, np.float64).reshape(-1, conv.shape[-1])
    stats = out["batch_stats"]["stem_norm"]
    np.testing.assert_allclose(stats["mean"], 0.1 * x.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * x.var(0), rtol=1e-5)
    assert stats["mean"].dtype == stats["var"].dtype == jnp.float32


def test_float16_without_a_loss_scale_is_refused():
    model, state = tiny_state(jnp.float16)
    with pytest.raises(ValueError, match="float16 compute needs dynamic loss scaling"):
        train_step(state, BATCH, model=model, tx=TX)


def test_float16_step_is_unscaled_and_matches_float32():
    model16, state16 = tiny_state(jnp.float16, for_dtype(jnp.float16))
    model32, state32 = tiny_state(jnp.float32)
    assert for_dtype(jnp.float32) is None and for_dtype(jnp.bfloat16) is None
    new16, metrics = jax.jit(partial(train_step, model=model16, tx=TX))(state16, BATCH)
    new32, _ = jax.jit(partial(train_step, model=model32, tx=TX))(state32, BATCH)
    assert float(metrics["overflow"]) == 0.0 and float(metrics["loss_scale"]) == 2.0**16
    chex.assert_trees_all_equal_dtypes(new16.params, new32.params)
    # The update is lr * gradient: equal to float32's within float16 rounding (an unscaled one would be 65536x).
    delta = lambda new, old: jax.tree.map(jnp.subtract, new.params, old.params)  # noqa: E731
    chex.assert_trees_all_close(delta(new16, state16), delta(new32, state32), atol=2e-3, rtol=5e-2)


def test_float16_overflowing_step_is_skipped_halves_the_scale_and_growth_doubles_it(tmp_path):
    model, state = tiny_state(jnp.float16, DynamicScale(growth_interval=2, scale=2.0**100))
    step = jax.jit(partial(train_step, model=model, tx=TX))
    skipped, metrics = step(state, BATCH)  # the loss times 2**100 overflows float16 in the backward pass
    assert float(metrics["overflow"]) == 1.0 and np.isfinite(float(metrics["loss"]))
    assert float(metrics["nonfinite"]) == 0.0  # the scale's normal work: not a divergence (nonfinite='stop' goes on)
    assert int(skipped.step) == 1 and float(skipped.loss_scale.scale) == 2.0**99
    for part in ("params", "opt_state", "batch_stats"):
        chex.assert_trees_all_equal(getattr(skipped, part), getattr(state, part))

    ok = skipped.replace(loss_scale=DynamicScale(growth_interval=2, scale=2.0**10))
    scales, updated = [], ok
    for _ in range(3):
        updated, metrics = step(updated, BATCH)
        assert float(metrics["overflow"]) == 0.0
        scales.append(float(updated.loss_scale.scale))
    assert scales == [2.0**10, 2.0**10, 2.0**11]  # doubled after growth_interval finite steps
    assert not np.allclose(updated.params["head"]["kernel"], ok.params["head"]["kernel"])

    # The scale is part of the state: a checkpoint keeps it, so a resumed run continues with it.
    checkpoints = Checkpoints(tmp_path)
    checkpoints.save(updated, {"epoch": 1})
    checkpoints.close()
    restored, _ = Checkpoints(tmp_path).restore(jax.eval_shape(lambda: state))
    chex.assert_trees_all_equal(restored, updated)


def test_float16_run_logs_its_loss_scale_and_overflow_rate(tmp_path, learnable_idx_dir):
    config = default_config()
    config.model.update(name="resnet8", widths=(4, 8, 16), dtype="float16")
    config.data.update(name="fashion_mnist", source="idx", path=str(learnable_idx_dir), val_size=64, augment=())
    config.update(batch_size=64, num_steps=4, log_every_steps=2)
    train_and_evaluate(config, tmp_path)
    logged = [e for e in read_metrics(tmp_path) if "train/loss" in e]
    assert [e["step"] for e in logged] == [2, 4]
    assert all(e["train/loss_scale"] == 2.0**16 and e["train/overflow"] == 0.0 for e in logged)
    assert "train_epoch/overflow" in read_metrics(tmp_path)[-1]
