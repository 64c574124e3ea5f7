"""Optimizers, weight decay and learning-rate schedules, all from optax, configured in epochs or steps.

Schedules are written in the unit the recipe states (`config.schedule.unit`: 'epochs' or 'steps') and
converted to optimizer steps here, so the paper's "divide by 10 at 32k and 48k iterations" and the
Keras seed's "x0.1 after epoch 80" are both one line of config.
"""

import math
from collections.abc import Callable

import jax
import ml_collections
import optax

from resnet_jax.losses import higher_is_better

SCHEDULES = ("constant", "piecewise", "cosine")
OPTIMIZERS = ("sgd", "adam", "adamw")


def schedule_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            name="constant",  # 'constant' | 'piecewise' | 'cosine' (linear warm-up then cosine to 0)
            unit="epochs",  # unit of boundaries, warmup and (for configs that set it) the run length
            boundaries=(),  # piecewise: points where the rate is multiplied by the matching scale
            scales=(),  # piecewise: multiplicative factors, cumulative (0.1, 0.1 -> 0.1x then 0.01x)
            warmup=0.0,  # length of the warm-up, in `unit`
            # piecewise/constant: a constant rate during warm-up (paper's ResNet-110: 0.01); cosine warms up
            # linearly from 0
            warmup_lr=0.0,
            # piecewise/constant: rise linearly from warmup_lr to the base rate instead (Goyal et al.)
            warmup_linear=False,
        )
    )


def plateau_config() -> ml_collections.ConfigDict:
    """Keras' ReduceLROnPlateau: on an epoch-level metric that stopped improving, multiply the rate by factor.

    The cuts multiply the schedule's rate; min_lr bounds the multiplier at min_lr / optimizer.learning_rate.
    An evaluation improves on the best one only by more than min_delta, an absolute amount in the metric's own
    direction (Keras' min_delta; optax's default relative tolerance would count a slightly worse accuracy as better).
    """
    return ml_collections.ConfigDict(
        dict(enabled=False, monitor="val/loss", factor=0.1**0.5, patience=5, min_lr=0.5e-6, cooldown=0, min_delta=1e-4)
    )


def optimizer_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            name="sgd",  # 'sgd' | 'adam' | 'adamw'
            learning_rate=0.1,
            momentum=0.9,  # sgd
            nesterov=False,  # sgd
            b1=0.9,  # adam/adamw
            b2=0.999,
            eps=1e-8,  # Keras' Adam uses 1e-7
            weight_decay=1e-4,
            # 'l2': add weight_decay * w to the gradient before the optimizer (the paper's weight decay; Keras'
            # kernel_regularizer=l2(c) equals weight_decay = 2c). 'decoupled': AdamW's decay (adamw only).
            weight_decay_mode="l2",
            decay_norm_and_bias=False,  # False: decay conv/dense kernels only, not BN scale/bias or biases
            # The learning rate of scalar (0-d) parameters (Fixup's biases and multipliers, SkipInit's and ReZero's
            # gains) relative to the others: Fixup's reference code trains them at 1/10 (0.1).
            scalar_lr_scale=1.0,
        )
    )


def to_steps(value: float, unit: str, steps_per_epoch: int) -> int:
    """Convert a length in 'epochs' or 'steps' to optimizer steps."""
    if unit == "steps":
        return int(value)
    if unit == "epochs":
        return int(round(value * steps_per_epoch))
    raise ValueError(f"unknown schedule unit {unit!r}; choose 'epochs' or 'steps'")


def make_schedule(
    config: ml_collections.ConfigDict, base_lr: float, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
    """The learning rate as a function of the optimizer step."""
    unit = config.unit
    if not config.warmup >= 0:
        raise ValueError(f"schedule.warmup={config.warmup} must be >= 0")
    warmup = to_steps(config.warmup, unit, steps_per_epoch)
    if config.name == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, base_lr, warmup, max(total_steps, warmup + 1))
    if config.name == "constant":
        main = optax.constant_schedule(base_lr)
    elif config.name == "piecewise":
        if len(config.boundaries) != len(config.scales):
            raise ValueError(
                f"schedule.boundaries {config.boundaries} and schedule.scales {config.scales} differ in length")
        if any(not b >= 0 for b in config.boundaries) or list(config.boundaries) != sorted(config.boundaries):
            raise ValueError(f"schedule.boundaries {config.boundaries} must be >= 0 and in increasing order")
        if any(not s > 0 for s in config.scales):
            raise ValueError(f"schedule.scales {config.scales} must be > 0")
        boundaries = [to_steps(b, unit, steps_per_epoch) for b in config.boundaries]
        main = optax.piecewise_constant_schedule(base_lr, dict(zip(boundaries, config.scales, strict=True)))
    else:
        raise ValueError(f"unknown schedule {config.name!r}; choose one of {', '.join(SCHEDULES)}")
    if warmup == 0:
        return main
    if config.warmup_linear:
        ramp = optax.linear_schedule(config.warmup_lr, base_lr, warmup)
    else:
        ramp = optax.constant_schedule(config.warmup_lr)
    return optax.join_schedules([ramp, lambda step: main(step + warmup)], [warmup])


def kernel_mask(params) -> dict:
    """True for conv and dense kernels (ndim > 1); False for BN scale/bias and biases."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def scalar_mask(params) -> dict:
    """True for scalar (0-d) parameters."""
    return jax.tree.map(lambda p: p.ndim == 0, params)


def make_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    """An optax optimizer with the configured weight decay, driven by `schedule`."""
    if config.name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {config.name!r}; choose one of {', '.join(OPTIMIZERS)}")
    checks = {"learning_rate": (0 < config.learning_rate < math.inf, "finite and > 0"),
              "weight_decay": (0 <= config.weight_decay < math.inf, "finite and >= 0"),
              "momentum": (0 <= config.momentum < 1, "in [0, 1)"), "b1": (0 <= config.b1 < 1, "in [0, 1)"),
              "b2": (0 <= config.b2 < 1, "in [0, 1)"), "eps": (0 < config.eps < math.inf, "finite and > 0"),
              "scalar_lr_scale": (0 < config.scalar_lr_scale < math.inf, "finite and > 0")}
    for key, (ok, what) in checks.items():
        if not ok:
            raise ValueError(f"optimizer.{key}={config[key]} must be {what}")
    if config.weight_decay_mode not in ("l2", "decoupled"):
        raise ValueError(f"unknown weight_decay_mode {config.weight_decay_mode!r}; choose 'l2' or 'decoupled'")
    if (config.weight_decay_mode == "decoupled") != (config.name == "adamw"):
        raise ValueError(
            f"optimizer {config.name!r} with weight_decay_mode {config.weight_decay_mode!r}: decoupled weight decay "
            "is AdamW's; use optimizer.name='adamw' with weight_decay_mode='decoupled', or weight_decay_mode='l2' "
            "otherwise"
        )
    mask: Callable | None = None if config.decay_norm_and_bias else kernel_mask
    if config.name == "adamw":
        opt = optax.adamw(schedule, config.b1, config.b2, config.eps, weight_decay=config.weight_decay, mask=mask)
    else:
        opt = (optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov) if config.name == "sgd"
               else optax.adam(schedule, config.b1, config.b2, config.eps))
        if config.weight_decay:
            opt = optax.chain(optax.add_decayed_weights(config.weight_decay, mask), opt)
    if config.scalar_lr_scale != 1:  # every optimizer here is linear in its rate: scaling the update scales the rate
        opt = optax.chain(opt, optax.masked(optax.scale(config.scalar_lr_scale), scalar_mask))
    return opt


def make_plateau(config: ml_collections.ConfigDict, base_lr: float) -> optax.GradientTransformationExtraArgs:
    """optax's reduce_on_plateau, stepped at each evaluation with the monitored metric; its scale multiplies the rate.

    The tolerance is absolute (atol=min_delta, rtol=0): the metric is negated for accuracies, and a relative tolerance
    on a negative value would call a slightly worse accuracy an improvement.
    """
    for key in ("patience", "cooldown"):
        if not (isinstance(config[key], int) and config[key] >= 0):
            raise ValueError(f"plateau.{key}={config[key]} must be an integer >= 0")
    if not config.min_lr >= 0:
        raise ValueError(f"plateau.min_lr={config.min_lr} must be >= 0")
    if not config.min_delta > 0:  # optax needs a tolerance; Keras' default min_delta is 1e-4
        raise ValueError(f"plateau.min_delta={config.min_delta} must be > 0")
    return optax.contrib.reduce_on_plateau(
        factor=config.factor,
        patience=config.patience,
        rtol=0.0,
        atol=config.min_delta,
        cooldown=config.cooldown,
        min_scale=config.min_lr / base_lr,
    )


def with_plateau(tx: optax.GradientTransformation, plateau: optax.GradientTransformationExtraArgs
                 ) -> optax.GradientTransformation:
    """`tx` followed by a multiplication by the plateau's scale: the optimizer state becomes (tx's, the plateau's).

    The train step only reads the scale; the loop moves the plateau at each evaluation (`step_plateau`).
    """

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u: u * state.scale.astype(u.dtype), updates), state

    return optax.chain(tx, optax.GradientTransformation(plateau.init, update))


def step_plateau(plateau: optax.GradientTransformationExtraArgs, opt_state: tuple, monitor: str, value: float) -> tuple:
    """The optimizer state of `with_plateau` after one evaluation of `monitor` (optax minimises: accuracies negated)."""
    *rest, state = opt_state
    _, state = plateau.update({}, state, value=-value if higher_is_better(monitor) else value)
    return (*rest, state)


def plateau_scale(opt_state: tuple) -> float:
    """The factor by which the plateau has cut the rate so far (the last element of a `with_plateau` state)."""
    return float(opt_state[-1].scale)
