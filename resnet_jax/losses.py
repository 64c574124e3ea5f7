"""The training loss and the accuracy counts, shared by the train/eval steps and the diagnostics, and their names."""

import jax
import jax.numpy as jnp
import optax

EVAL_METRICS = ("loss", "accuracy", "top5")  # what an evaluation reports for each split: 'val/accuracy', ...


def higher_is_better(metric: str) -> bool:
    """Accuracies improve upwards, losses downwards (for the best checkpoint and the plateau)."""
    return not metric.endswith("loss")


def targets(labels: jax.Array, num_classes: int) -> jax.Array:
    """Rows of class probabilities: one-hot for integer labels (N,), soft labels (N, C) (mixup's) as they are."""
    return labels.astype(jnp.float32) if labels.ndim == 2 else jax.nn.one_hot(labels, num_classes)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy against integer or soft labels, optionally smoothed: (1 - s) y + s / C."""
    smoothed = optax.smooth_labels(targets(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, smoothed)


def top_k_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """1.0 where the label (a soft label's most probable class) is among the k highest logits."""
    classes = jnp.argmax(labels, axis=-1) if labels.ndim == 2 else labels
    _, top = jax.lax.top_k(logits, min(k, logits.shape[-1]))
    return jnp.any(top == classes[:, None], axis=-1).astype(jnp.float32)
