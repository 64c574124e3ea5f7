"""The training loss and the accuracy counts, shared by the train/eval steps and the diagnostics, and their names."""

import jax
import jax.numpy as jnp
import optax

EVAL_METRICS = ("loss", "accuracy", "top5")  # what an evaluation reports for each split: 'val/accuracy', ...


def higher_is_better(metric: str) -> bool:
    """Accuracies improve upwards, losses downwards (for the best checkpoint and the plateau)."""
    return not metric.endswith("loss")


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy, optionally against smoothed labels."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def top_k_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """1.0 where the label is among the k highest logits."""
    _, top = jax.lax.top_k(logits, min(k, logits.shape[-1]))
    return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)
