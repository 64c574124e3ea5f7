"""The training state and the pure train and evaluation steps: what a loop of your own needs, and nothing else.

    from resnet_jax import create_model
    from resnet_jax.steps import create_train_state, train_step, eval_step

Importing this module loads JAX, Flax and optax only (no orbax, TensorFlow, matplotlib or tqdm), so it drops into any
loop. `compile_steps` jits both steps over a device mesh: the batch sharded along 'data', the state replicated, so
XLA computes BatchNorm statistics over the global batch on one CPU or many hosts alike.
"""

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax import loss_scale as loss_scaling
from resnet_jax import xla_cpu
from resnet_jax.losses import cross_entropy, top_k_correct


class TrainState(struct.PyTreeNode):
    """Everything that changes during training. The RNG is not here: dropout keys derive from (seed, step)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    loss_scale: Any = None  # float16 compute: flax DynamicScale (resnet_jax.loss_scale); otherwise None


def create_train_state(variables: dict, tx: optax.GradientTransformation, loss_scale: Any = None) -> TrainState:
    """A step-0 TrainState around model variables ({'params', 'batch_stats'} from `model.init(..., train=False)`;
    a net without BatchNorm (norm='none') has no batch_stats: they are {}).

    loss_scale: resnet_jax.loss_scale.for_dtype(model.dtype), required for float16 compute.
    """
    params = variables["params"]
    return TrainState(jnp.zeros((), jnp.int32), params, variables.get("batch_stats", {}), tx.init(params),
                      loss_scale)


def init_state(model: nn.Module, tx: optax.GradientTransformation, image_shape: tuple[int, ...], seed: int,
               mesh: jax.sharding.Mesh) -> TrainState:
    """A fresh TrainState, created directly with replicated sharding on the mesh (with a loss scale for float16)."""

    def init():
        variables = model.init(jax.random.key(seed), jnp.zeros((1, *image_shape), jnp.float32), train=False)
        return create_train_state(variables, tx, loss_scaling.for_dtype(model.dtype))

    return jax.jit(init, out_shardings=NamedSharding(mesh, P()))()


def all_finite(*trees: Any) -> jax.Array:
    """True when every element of every array in `trees` is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(trees)]))


def train_step(state: TrainState, batch: dict, *, model: nn.Module, tx: optax.GradientTransformation,
               label_smoothing: float = 0.0, seed: int = 0) -> tuple[TrainState, dict]:
    """One optimizer step on a (global) batch {'image', 'label'}; returns the new state and the batch's mean metrics.

    A step is applied only if its loss, gradients, new parameters and BN statistics are all finite; otherwise the
    state stays as it was but for its step counter (and loss scale), and metrics['nonfinite'] is 1. With float16
    compute (a loss scale in the state) an overflow of the scaled gradients also skips the step, as the scale's
    normal work rather than a divergence: metrics['overflow'] is 1 and nonfinite stays 0.
    """
    if state.loss_scale is None and jnp.dtype(model.dtype) == jnp.float16:
        raise ValueError("float16 compute needs dynamic loss scaling: create the state with "
                         "loss_scale=resnet_jax.loss_scale.for_dtype(jnp.float16) (init_state does), or use bfloat16")
    dropout_key = jax.random.fold_in(jax.random.key(seed), state.step)

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        logits, updates = model.apply(variables, batch["image"], train=True, mutable=["batch_stats"],
                                      rngs={"dropout": dropout_key})
        return cross_entropy(logits, batch["label"], label_smoothing).mean(), (logits, updates.get("batch_stats", {}))

    loss_scale, no_overflow, (loss, (logits, batch_stats)), grads = loss_scaling.value_and_grad(
        loss_fn, state.loss_scale, state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                        batch_stats=batch_stats, opt_state=opt_state, loss_scale=loss_scale)
    finite = all_finite(loss, grads, new.params, new.batch_stats)
    skipped = state.replace(step=new.step, loss_scale=loss_scale)
    new = xla_cpu.select_tree(finite & no_overflow, new, skipped)
    metrics = {
        "loss": loss,
        "accuracy": top_k_correct(logits, batch["label"], 1).mean(),
        "top5": top_k_correct(logits, batch["label"], 5).mean(),
        "nonfinite": 1.0 - finite.astype(jnp.float32),
    }
    if loss_scale is not None:
        metrics |= {"loss_scale": loss_scale.scale, "overflow": 1.0 - no_overflow.astype(jnp.float32)}
    return new, metrics


def eval_step(state: TrainState, batch: dict, *, model: nn.Module) -> dict:
    """Sums (not means) over the real examples (mask == 1) of a padded batch, so that a split is counted exactly
    once."""
    logits = model.apply({"params": state.params, "batch_stats": state.batch_stats}, batch["image"], train=False)
    return eval_sums(logits, batch)


def eval_sums(logits: jnp.ndarray, batch: dict) -> dict:
    """eval_step's sums of loss, top-1 and top-5 hits and count over the batch's real examples, from its logits."""
    mask = batch["mask"]
    return {
        "loss": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
        "accuracy": jnp.sum(top_k_correct(logits, batch["label"], 1) * mask),
        "top5": jnp.sum(top_k_correct(logits, batch["label"], 5) * mask),
        "count": jnp.sum(mask),
    }


def compile_steps(model: nn.Module, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                  label_smoothing: float = 0.0, seed: int = 0):
    """(train, evaluate): train_step and eval_step jitted for the mesh, state replicated, batch sharded along 'data',
    the state donated to the train step (with resnet_jax.xla_cpu's compiler options on CPU)."""
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    options = xla_cpu.compiler_options(mesh.devices.flat[0].platform)
    train = jax.jit(partial(train_step, model=model, tx=tx, label_smoothing=label_smoothing, seed=seed),
                    in_shardings=(replicated, sharded), out_shardings=(replicated, replicated), donate_argnums=0,
                    compiler_options=options)
    evaluate = jax.jit(partial(eval_step, model=model), in_shardings=(replicated, sharded), out_shardings=replicated,
                       compiler_options=options)
    return train, evaluate
