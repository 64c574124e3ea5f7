"""What makes the training step faster on XLA:CPU (jaxlib 0.10.2): a conv that reads a materialised input, one
compiler option, and a conditional where a select per array made compiling slow. Measured in benchmarks/cpu_gap.py;
the analysis is in benchmarks/README.md.

* XLA:CPU fuses every cheap elementwise producer into each of its consumers, however many there are. In a ResNet
  the BatchNorm-ReLU-residual chain of a stage is then recomputed, block after block, inside every fusion that
  reads an activation, among them the transposes that feed the weight-gradient convolutions. A
  dynamic-update-slice is never fused into its consumers, so writing a conv input's first element back onto
  itself makes XLA compute that input once and read it from memory.
* jaxlib 0.10.2 hands convolutions and reductions to YNNPACK. Its convolutions, the weight gradients above all, are
  slower here than XLA's Eigen ones, while its reductions (BatchNorm statistics) are faster than XLA's own.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import jaxlib
from jax import lax

# YNNPACK for reductions only: convolutions go to Eigen. The flag is jaxlib 0.10's (measured on 0.10.2); other
# versions keep XLA's defaults until measured, and are spared a flag their XLA may not know.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
MEASURED_JAXLIB = "0.10."


def materialized(x: jax.Array) -> jax.Array:
    """`x` itself (its first element written back onto itself), computed once instead of fused into each consumer.

    An array sharded in its type (an Explicit mesh, as multi-host runs use) is returned as it is: a one-element
    slice of a sharded dimension is not defined there.
    """
    if any(jax.typeof(x).sharding.spec):
        return x
    corner = (0,) * x.ndim
    return lax.dynamic_update_slice(x, lax.dynamic_slice(x, corner, (1,) * x.ndim), corner)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
    """lax.conv_general_dilated, reading a materialized `lhs` when compiled for CPU; the same numbers everywhere."""
    lhs = lax.platform_dependent(lhs, cpu=materialized, default=lambda x: x)
    return lax.conv_general_dilated(lhs, rhs, *args, **kwargs)


def select_tree(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    """`on_true` where the scalar `pred` holds, else `on_false` (pytrees of one structure).

    Compiled for CPU it is one lax.cond: with a jnp.where per leaf, XLA:CPU fused the whole computation of `pred`
    into every leaf's select, and a train step's compile time grew with the square of its number of arrays: on 2
    cores resnet56 took 144 s and resnet110 over 8 minutes, against 8 s and 19 s with the cond
    (benchmarks/compile_time.py). Elsewhere it is a jnp.where per leaf, which spares a GPU the host round trip of a
    conditional's predicate.
    """

    def where(pred: jax.Array, a: Any, b: Any) -> Any:
        return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)

    def cond(pred: jax.Array, a: Any, b: Any) -> Any:
        return lax.cond(pred, lambda: a, lambda: b)

    return lax.platform_dependent(pred, on_true, on_false, cpu=cond, default=where)


def compiler_options(platform: str) -> dict[str, Any] | None:
    """jax.jit compiler_options for a computation on `platform` ('cpu', 'gpu', 'tpu'): CPU_COMPILER_OPTIONS on CPU
    with the jaxlib they were measured with, else None (XLA's defaults)."""
    measured = jaxlib.__version__.startswith(MEASURED_JAXLIB)
    return dict(CPU_COMPILER_OPTIONS) if platform == "cpu" and measured else None


class Conv(nn.Conv):
    """nn.Conv reading a materialized input when compiled for CPU (`conv_general_dilated`): lax's numbers, faster.
    The default conv of `resnet_jax.models.ResNet`; `ResNet(conv=nn.Conv)` gives lax's own path."""

    conv_general_dilated: Callable = conv_general_dilated
