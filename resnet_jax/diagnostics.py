"""Gradient-flow diagnostics: per-block gradient norms, activation norms and update/weight ratios.

A *group* is one top-level layer of the model: `stem` (stem_conv and stem_norm together), each
`stage{i}_block{j}`, `final_norm` (pre-activation nets) and `head`. Everything is measured per group;
the functions here are pure and jit-friendly and return dicts in forward order (jitted, in sorted key order:
`layer_groups` gives the forward order back).

Metric keys carry their own prefix, ready for metrics.jsonl / TensorBoard as they are:
`diag/grad_norm/<group>`, `diag/act_norm/<group>` (from `diagnostics_fn` / `measure`) and
`diag/update_ratio/<group>` (from `update_ratio_metrics`).
"""

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.losses import cross_entropy
from resnet_jax.models import forward_order

Params = Mapping[str, Any]
Batch = Mapping[str, jax.Array]  # {'image': (N, H, W, C) floats, 'label': (N,) ints or (N, C) soft labels}
LossFn = Callable[[jax.Array, jax.Array], jax.Array]

STEM_LAYERS = ("stem_conv", "stem_norm")  # forward order; the stem's output is the last one present


def mean_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The training loss without label smoothing or weight decay."""
    return cross_entropy(logits, labels).mean()


def group_of(layer: str) -> str:
    """The group of a top-level layer name: the stem's layers share one, every other layer is its own."""
    return "stem" if layer in STEM_LAYERS else layer


def layer_groups(params: Params) -> list[str]:
    """The groups of a params tree (top-level layer names as keys), in forward order."""
    return sorted({group_of(layer) for layer in params}, key=forward_order)


def _sq_norms(tree: Params) -> dict[str, jax.Array]:
    """Sum of squares of all leaves of each group."""
    sums: dict[str, jax.Array] = {}
    for layer, sub in tree.items():
        s = sum(jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in jax.tree.leaves(sub))
        sums[group_of(layer)] = sums.get(group_of(layer), 0.0) + s
    return {g: sums[g] for g in sorted(sums, key=forward_order)}


def grad_norms(grads: Params) -> dict[str, jax.Array]:
    """The L2 norm of the gradient of each group (all its leaves together), in forward order."""
    return {g: jnp.sqrt(s) for g, s in _sq_norms(grads).items()}


def update_ratios(params: Params, new_params: Params) -> dict[str, jax.Array]:
    """||new - old|| / ||old|| for each group: the relative size of one optimizer step."""
    delta = jax.tree.map(lambda new, old: new - old, new_params, params)
    old = _sq_norms(params)
    return {g: jnp.sqrt(s / old[g]) for g, s in _sq_norms(delta).items()}


def _is_top_level(module: nn.Module, method: str) -> bool:
    return method == "__call__" and len(module.path) == 1


def _rms_per_group(intermediates: Mapping[str, Any]) -> dict[str, jax.Array]:
    """RMS over all elements (batch included) of each group's output, from captured intermediates."""
    outputs = {layer: v["__call__"][0] for layer, v in intermediates.items()}
    for layer in STEM_LAYERS:  # the later stem layer overwrites the earlier one
        if layer in outputs:
            outputs["stem"] = outputs.pop(layer)
    rms = {g: jnp.sqrt(jnp.mean(jnp.square(y.astype(jnp.float32)))) for g, y in outputs.items()}
    return {g: rms[g] for g in sorted(rms, key=forward_order)}


def _forward(model: nn.Module, variables: Params, params: Params, x: jax.Array) -> tuple[jax.Array, dict]:
    """Train-mode forward pass (BN on batch statistics, as the training step sees it); returns logits
    and the captured outputs of the top-level layers. The updated batch_stats are discarded. Dropout and stochastic
    depth draw from a fixed key: one draw, the same at every diagnosed step."""
    logits, state = model.apply(
        {**variables, "params": params},
        x,
        train=True,
        mutable=["batch_stats", "intermediates"],
        capture_intermediates=_is_top_level,
        rngs={"dropout": jax.random.key(0)},
    )
    return logits, state["intermediates"]


def activation_norms(model: nn.Module, variables: Params, x: jax.Array) -> dict[str, jax.Array]:
    """RMS of each group's output over the whole batch, with the model in train mode.

    Train mode because that is what the training step (and so the gradient) sees; at init the running
    statistics are still (0, 1) and eval mode would measure an unnormalised network. The stem's output
    is that of its last layer (stem_norm before its ReLU for v1 nets, stem_conv for v2); `head` is the logits.
    """
    return _rms_per_group(_forward(model, variables, variables["params"], x)[1])


def _prefixed(kind: str, per_group: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    return {f"diag/{kind}/{g}": v for g, v in per_group.items()}


def diagnostics_fn(
    model: nn.Module, loss_fn: LossFn = mean_cross_entropy
) -> Callable[[Params, Batch], dict[str, jax.Array]]:
    """A jitted `fn(variables, batch)` giving `diag/grad_norm/<group>` and `diag/act_norm/<group>` from
    one train-mode forward and backward pass on the batch (gradient of `loss_fn`, no weight decay).
    `variables` is {'params', 'batch_stats'}; BN uses the batch's statistics and the running ones stay as they are."""

    def loss(params, variables, batch):
        logits, intermediates = _forward(model, variables, params, batch["image"])
        return loss_fn(logits, batch["label"]), intermediates

    @jax.jit
    def fn(variables: Params, batch: Batch) -> dict[str, jax.Array]:
        grads, intermediates = jax.grad(loss, has_aux=True)(variables["params"], variables, batch)
        return {**_prefixed("grad_norm", grad_norms(grads)), **_prefixed("act_norm", _rms_per_group(intermediates))}

    return fn


@jax.jit
def update_ratio_metrics(params: Params, new_params: Params) -> dict[str, jax.Array]:
    """`diag/update_ratio/<group>` for one step from `params` to `new_params`."""
    return _prefixed("update_ratio", update_ratios(params, new_params))


def measure(
    model: nn.Module, variables: Params, batch: Batch, loss_fn: LossFn = mean_cross_entropy
) -> dict[str, float]:
    """All of `diagnostics_fn` in one call, as Python floats in forward order (compiles on every call)."""
    out = diagnostics_fn(model, loss_fn)(variables, batch)
    groups = layer_groups(variables["params"])
    return {f"diag/{kind}/{g}": float(out[f"diag/{kind}/{g}"]) for kind in ("grad_norm", "act_norm") for g in groups}
