"""The pure steps (resnet_jax.steps) against hand computations: the evaluation counts only the real examples of a
padded batch, and the train step's loss is the label-smoothed cross-entropy it was asked for."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import create_model
from resnet_jax.steps import create_train_state, eval_step, train_step

MODEL = create_model("resnet8", 3, widths=(2, 4, 4))
IMAGES = jax.random.normal(jax.random.key(0), (6, 8, 8, 1))


@pytest.fixture(scope="module")
def state():
    return create_train_state(MODEL.init(jax.random.key(1), IMAGES[:1], train=False), optax.sgd(0.1))


def logits_of(state, images):
    return MODEL.apply({"params": state.params, "batch_stats": state.batch_stats}, images, train=False)


def test_eval_step_sums_over_the_real_examples_of_a_padded_batch_only(state):
    labels = jnp.array([0, 1, 2, 0, 1, 2])
    mask = jnp.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0])  # the last two rows are padding
    sums = eval_step(state, {"image": IMAGES, "label": labels, "mask": mask}, model=MODEL)
    logits = np.asarray(logits_of(state, IMAGES[:4]), np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert float(sums["count"]) == 4
    np.testing.assert_allclose(float(sums["loss"]), -log_probs[np.arange(4), labels[:4]].sum(), rtol=1e-5)
    assert float(sums["accuracy"]) == float((logits.argmax(-1) == np.asarray(labels[:4])).sum())
    assert float(sums["top5"]) == 4  # 3 classes: every label is in the top 5
    # padding that differs (other images, other labels) changes nothing
    other = eval_step(state, {"image": IMAGES.at[4:].set(9.0), "label": labels.at[4:].set(0), "mask": mask},
                      model=MODEL)
    for k in sums:
        np.testing.assert_allclose(float(other[k]), float(sums[k]), rtol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_train_steps_loss_is_the_smoothed_cross_entropy_of_its_batch(state, smoothing):
    labels = jnp.array([0, 1, 2, 2, 1, 0])
    step = jax.jit(partial(train_step, model=MODEL, tx=optax.sgd(0.1), label_smoothing=smoothing))
    _, metrics = step(state, {"image": IMAGES, "label": labels})
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits, _ = MODEL.apply(variables, IMAGES, train=True, mutable=["batch_stats"])  # the step's own forward
    logits = np.asarray(logits, np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    targets = np.full((6, 3), smoothing / 3) + (1 - smoothing) * np.eye(3)[np.asarray(labels)]
    np.testing.assert_allclose(float(metrics["loss"]), -(targets * log_probs).sum(-1).mean(), rtol=1e-5)
