"""The default run config: every key a run understands, in one place, and its validation.

Experiment files (experiments/*.py) start from `default_config()` and change what their recipe says;
the command line changes any key with --config.<key>=<value>. `validate(config)` checks every value before anything
is built, written or compiled, and names each bad key with what it accepts.
"""

import dataclasses
import difflib
import json
import re
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import optax
from ml_collections import config_dict

from resnet_jax import data as data_lib
from resnet_jax import divergence, models, optim, transfer, xla_cpu
from resnet_jax.losses import EVAL_METRICS

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class ConfigError(ValueError):
    """A config that no run can use; the message names each bad key, its value and what is valid."""


def default_config() -> ml_collections.ConfigDict:
    """Every key a run understands; experiment files start from this and change what their recipe says."""
    c = ml_collections.ConfigDict()
    c.model = model_config()
    c.init_from = transfer.init_from_config()  # start from one of our runs or an ImageNet weights file
    c.transfer = transfer.transfer_config()  # what trains: frozen stages, backbone rate, feature caching
    c.data = data_lib.default_config()
    c.optimizer = optim.optimizer_config()
    c.schedule = optim.schedule_config()
    c.plateau = optim.plateau_config()
    c.seed = 0
    c.batch_size = 128  # global batch, split over all devices
    c.num_epochs = 10
    c.num_steps = 0  # > 0: stop after this many steps instead (the paper counts iterations: 64k)
    c.label_smoothing = 0.0
    c.nonfinite = "stop"  # a non-finite loss/gradient: 'stop' the run (nothing saved after it) | 'skip' the step
    # Intervals, in steps. None of them changes the training itself, so a resume may change them.
    c.log_every_steps = 50
    c.eval_every_steps = 0  # 0 = at each epoch's end; the best checkpoint and the plateau follow the evaluations
    c.checkpoint_every_steps = 0  # 0 = at each epoch's end; also at each new best evaluation and on preemption
    c.checkpoint_keep = 3  # latest checkpoints kept, besides the best one
    c.best_metric = ""  # the best checkpoint's metric; '' = val/accuracy if there is a val split, else test/accuracy
    c.diagnostics_every_steps = 0  # > 0: log gradient/activation/update diagnostics every K steps
    # Training steps per compiled call (resnet_jax.multistep): > 1 (e.g. 8) cuts the host's dispatch overhead for small
    # models on GPUs/TPUs (XLA:CPU runs it slower); in-memory data only. Same steps, records and resume points as 1.
    c.steps_per_call = 1
    return c


# Model fields set by name in a config: ResNet field -> {name: value}.
ACTIVATIONS = {name: getattr(nn, name) for name in ("relu", "relu6", "gelu", "silu", "swish", "elu", "celu", "selu",
                                                    "leaky_relu", "softplus", "tanh", "sigmoid", "hard_swish")}
INITIALIZERS = {
    "he_normal_fan_out": models.conv_init,  # torchvision's kaiming_normal_(mode='fan_out'): the zoo's convs
    "he_normal": models.keras_he_normal,  # Keras' (truncated, fan_in): the Keras seed's
    "lecun_normal": nn.initializers.lecun_normal(),  # Flax's Dense default: the zoo's classifier
    "glorot_uniform": nn.initializers.glorot_uniform(),  # Keras' default
}
NAMED = {"act": ACTIVATIONS, "kernel_init": INITIALIZERS, "head_init": INITIALIZERS, "dtype": DTYPES,
         "param_dtype": DTYPES, "conv": {"xla_cpu": xla_cpu.Conv, "lax": nn.Conv}}
# ResNet fields a model section does not hold: the module's own, num_classes (a key of its own: 0 = the dataset's),
# frozen_bn_stages (set from transfer.freeze_stages) and lesion (a test-time deletion of blocks the lab's instruments
# set with model.clone(lesion=...): as a config key it would silently train, checkpoint and evaluate a different net).
UNFORWARDED = {"parent", "name", "num_classes", "frozen_bn_stages", "lesion"}
# What an old model section (10 fields, before every ResNet field was forwarded) wrote for "the zoo name's value".
OLD_MODEL_DEFAULTS = {"shortcut": "", "version": "", "widths": (), "bn_momentum": 0.0, "bn_epsilon": 0.0,
                      "zero_init_residual": False, "dtype": "float32", "head_pooling": "avg", "head_hidden": (),
                      "head_dropout": 0.0}


def _unset(field: dataclasses.Field) -> Any:
    """A typed None for a model field (the zoo name's value until set): names for NAMED fields, the layout a section."""
    if field.name in NAMED:
        return config_dict.placeholder(str)
    if field.type is models.Layout:
        return ml_collections.ConfigDict({f.name: _unset(f) for f in dataclasses.fields(models.Layout)})
    if typing.get_origin(field.type) in (tuple, Sequence):
        return config_dict.placeholder(tuple)
    if field.type in (bool, int, float, str):
        return config_dict.placeholder(field.type)
    raise TypeError(f"ResNet.{field.name}: {field.type} has no config form; give it names in config.NAMED")


def model_fields() -> list[dataclasses.Field]:
    """The ResNet fields a model section forwards."""
    return [f for f in dataclasses.fields(models.ResNet) if f.name not in UNFORWARDED]


def model_config() -> ml_collections.ConfigDict:
    """The model section: a zoo name, num_classes (0 = the dataset's; otherwise it must match it) and every other
    ResNet field, None = the zoo name's value (resnet_jax.models.model_spec); callables and dtypes by name (NAMED)."""
    section = ml_collections.ConfigDict(dict(name="resnet20", num_classes=0))
    for field in model_fields():
        section[field.name] = _unset(field)
    return section


def _check_keys(keys: Iterable[str], valid: Sequence[str], where: str) -> None:
    unknown = sorted(set(keys) - set(valid))
    if unknown:
        near = {k: difflib.get_close_matches(k, valid, n=3, cutoff=0.6) for k in unknown}
        raise ConfigError(f"unknown {where} key(s): " + "; ".join(
            f"{k} (did you mean {', '.join(near[k])}?)" if near[k] else k for k in unknown) +
            f". Valid: {', '.join(valid)}")


def _model_value(key: str, value: Any) -> Any:
    """A section's value as the ResNet field takes it: a NAMED field's object, a JSON list as a tuple."""
    if key in NAMED:
        if value not in NAMED[key]:
            near = difflib.get_close_matches(str(value), NAMED[key], n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ConfigError(f"unknown model.{key} {value!r}; {hint}choose one of {', '.join(NAMED[key])}")
        return NAMED[key][value]
    return tuple(value) if isinstance(value, list) else value


def build_model(section: Mapping[str, Any], num_classes: int) -> models.ResNet:
    """The model a model section describes, with `num_classes` classes; unset (None) fields keep the zoo name's
    values, set layout fields replace those of the zoo name's layout. Unknown keys fail naming the nearest ones."""
    _check_keys(section.keys(), list(model_config().keys()), "model")
    layout = section.get("layout") or {}
    _check_keys(layout.keys(), [f.name for f in dataclasses.fields(models.Layout)], "model.layout")
    overrides = {k: _model_value(k, v) for k, v in section.items()
                 if k not in ("name", "num_classes", "layout") and v is not None}
    layout_set = {k: _model_value(k, v) for k, v in layout.items() if v is not None}
    if layout_set:
        zoo_layout = models.model_spec(section["name"]).get("layout", models.Layout())
        overrides["layout"] = dataclasses.replace(zoo_layout, **layout_set)
    return models.create_model(section["name"], num_classes, **overrides)


def upgrade_model(section: dict) -> dict:
    """An old saved model section in the current form: the values by which it said "the zoo name's value" ('' for
    shortcut/version, () for widths, 0 for bn_momentum/bn_epsilon, the ResNet defaults it always passed) are None."""

    def old_default(key: str, value: Any) -> bool:
        default = OLD_MODEL_DEFAULTS.get(key, ...)
        return tuple(value) == default if isinstance(value, list | tuple) else value == default

    return {k: None if old_default(k, v) else v for k, v in section.items()}


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError listing every bad value of a run config; nothing is read, written or compiled.

    The loop's keys are checked here; the model, optimizer, schedule and plateau sections by building them (cheap:
    no data, no arrays), so their one definition of what is valid is used; the data section by `resnet_jax.data.validate_config`.
    """
    problems = []

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            problems.append(f"{key}={config[key]!r}: {what}")

    def integer(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    need(integer(config.batch_size) and config.batch_size > 0, "batch_size", "must be a positive integer (the global batch)")
    for key in ("num_epochs", "num_steps", "seed", "eval_every_steps", "checkpoint_every_steps", "diagnostics_every_steps"):
        need(integer(config[key]) and config[key] >= 0, key, "must be an integer >= 0")
    for key in ("log_every_steps", "checkpoint_keep"):
        need(integer(config[key]) and config[key] >= 1, key, "must be an integer >= 1" + (
            " (0 would leave no checkpoint to resume from)" if key == "checkpoint_keep" else ""))
    need(integer(config.steps_per_call) and config.steps_per_call >= 1, "steps_per_call",
         "must be an integer >= 1 (training steps per compiled call; 1 = one step per call)")
    if config.num_epochs == 0 and config.num_steps == 0:
        problems.append("num_epochs=0 and num_steps=0: nothing to train; set one of them > 0")
    need(isinstance(config.label_smoothing, float | int) and 0 <= config.label_smoothing < 1, "label_smoothing",
         "must be in [0, 1)")
    need(config.nonfinite in divergence.MODES, "nonfinite", f"choose one of {', '.join(divergence.MODES)}")
    metrics = ("val", "test")
    monitored = {"best_metric": config.best_metric} if config.best_metric else {}
    if config.plateau.enabled:
        monitored["plateau.monitor"] = config.plateau.monitor
    for key, metric in monitored.items():
        split, _, name = str(metric).partition("/")
        if split not in metrics or name not in EVAL_METRICS:
            problems.append(f"{key}={metric!r}: choose one of {', '.join(f'{s}/{n}' for s in metrics for n in EVAL_METRICS)}")

    lr = config.optimizer.learning_rate
    lr = lr if 0 < lr < float("inf") else 1.0  # a bad rate is the optimizer's problem, not the schedule's or plateau's
    for section, build in (
        ("model", lambda: build_model(config.model, max(config.model.num_classes, 1))),
        ("optimizer", lambda: optim.make_optimizer(config.optimizer, optax.constant_schedule(1.0))),
        ("schedule", lambda: optim.make_schedule(config.schedule, lr, 1, max(config.num_steps, 1))),
        ("plateau", lambda: optim.make_plateau(config.plateau, lr)),
    ):
        try:
            build()
        except (ValueError, TypeError) as e:
            problems.append(f"{section}: {e}")
    try:
        data_lib.validate_config(config.data)
    except ValueError as e:
        problems.append(str(e))
    if config.model.num_classes < 0:
        problems.append(f"model.num_classes={config.model.num_classes}: must be >= 0 (0 = the dataset's classes)")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every key of `config` as a dotted path ('optimizer.learning_rate'), sections included."""
    keys = []
    for k, v in config.items():
        keys.append(prefix + k)
        if isinstance(v, ml_collections.ConfigDict):
            keys += flat_keys(v, f"{prefix}{k}.")
    return keys


def check_override_keys(argv: Sequence[str], flag: str = "config") -> None:
    """Raise ConfigError for --config.<key> overrides naming no key of default_config(), with the nearest valid keys.

    ml_collections' config_flags would fail on them with a bare AttributeError while parsing the flags.
    """
    keys = flat_keys(default_config())
    leaves = {k: k.rsplit(".", 1)[-1] for k in keys}
    problems = []
    for arg in argv:
        match = re.match(rf"^--?(?:no)?{flag}\.([^=\s]+)", arg)
        if not match or match[1] in keys:
            continue
        key = match[1]
        near = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
        near_leaves = difflib.get_close_matches(key.rsplit(".", 1)[-1], set(leaves.values()), n=3, cutoff=0.7)
        near += [k for k in keys if leaves[k] in near_leaves and k not in near]
        hint = f"did you mean {', '.join(f'--{flag}.{k}' for k in near[:4])}?" if near else "no similar key"
        problems.append(f"--{flag}.{key}: no such key ({hint})")
    if problems:
        raise ConfigError("unknown config key(s):\n  " + "\n  ".join(problems) +
                          "\nEvery key a run understands is in resnet_jax/config.py (default_config).")


def upgrade(saved: dict) -> dict:
    """A config dict saved by an older resnet-jax, with values whose spelling has changed since in today's spelling.

    The one place where old configs are upgraded: a section whose keys change adds its step here.
    """
    saved = dict(saved)
    if "model" in saved and "layout" not in saved["model"]:  # before every ResNet field was forwarded
        saved["model"] = upgrade_model(saved["model"])
    if "data" in saved:
        saved["data"] = data_lib.upgrade_data(saved["data"])
    return saved


def from_saved(text: str) -> ml_collections.ConfigDict:
    """A run's config.json as today's config: upgraded, and keys added since the run was made at their defaults."""
    config = default_config()
    config.update(upgrade(json.loads(text)))
    return config
