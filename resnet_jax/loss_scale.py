"""Dynamic loss scaling for float16 compute (flax.training.dynamic_scale.DynamicScale, as in Flax's ImageNet example).

float16 has a 5-bit exponent: gradients below ~6e-8 flush to zero and values above 65504 overflow. So the loss is
multiplied by a scale S before differentiation and the gradients divided by S after, in float32; a step whose
gradients are not finite is skipped (parameters, optimizer state and BN statistics unchanged) and S halved, and S
doubles after `growth_interval` finite steps in a row. bfloat16 keeps float32's exponent range and needs none of this.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax.training.dynamic_scale import DynamicScale

from resnet_jax import xla_cpu


def for_dtype(dtype: Any) -> DynamicScale | None:
    """The initial loss scale for a compute dtype: a DynamicScale for float16, None (no scaling) otherwise."""
    if jnp.dtype(dtype) != jnp.float16:
        return None
    return DynamicScale(fin_steps=jnp.zeros((), jnp.int32), scale=jnp.asarray(2.0**16, jnp.float32))  # strongly typed


def value_and_grad(
    fun: Callable, loss_scale: DynamicScale | None, params: Any
) -> tuple[DynamicScale | None, jax.Array, Any, Any]:
    """(new loss scale, whether the gradients are finite, fun's (loss, aux), float32 gradients) of a has_aux loss.

    Without a loss scale this is jax.value_and_grad(fun, has_aux=True)(params), with gradients reported finite.
    With one, the gradients of an overflowed step are zeros and the train step skips it: an overflow is the scale at
    work, not a diverged run.
    """
    if loss_scale is None:
        value, grads = jax.value_and_grad(fun, has_aux=True)(params)
        return None, jnp.array(True), value, grads
    loss_scale, finite, value, grads = loss_scale.value_and_grad(fun, has_aux=True)(params)
    return loss_scale, finite, value, xla_cpu.select_tree(finite, grads, jax.tree.map(jnp.zeros_like, grads))
