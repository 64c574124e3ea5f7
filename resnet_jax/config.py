"""The default run config: every key a run understands, in one place, and its validation.

Experiment files (experiments/*.py) start from `default_config()` and change what their recipe says;
the command line changes any key with --config.<key>=<value>. `validate(config)` checks every value before anything
is built, written or compiled, and names each bad key with what it accepts.
"""

import difflib
import json
import re
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import ml_collections
import optax

from resnet_jax import data as data_lib
from resnet_jax import divergence, models, optim, transfer
from resnet_jax.losses import EVAL_METRICS

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class ConfigError(ValueError):
    """A config that no run can use; the message names each bad key, its value and what is valid."""


def default_config() -> ml_collections.ConfigDict:
    """Every key a run understands; experiment files start from this and change what their recipe says."""
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(
        dict(
            name="resnet20",
            num_classes=0,  # 0 = the dataset's number of classes; otherwise it must match it
            # Empty/zero values keep the family's default (see resnet_jax.models.model_spec).
            shortcut="",  # 'A' | 'B' | 'C'
            version="",  # 'v1' | 'v1.5' | 'v2'
            widths=(),
            zero_init_residual=False,
            # BatchNorm running-average decay (PyTorch's momentum 0.1 == 0.9 here; Keras' default is 0.99) and
            # epsilon (PyTorch 1e-5, Keras 1e-3, Keras applications 1.001e-5); 0 = the zoo name's own (0.9, 1e-5
            # for torchvision-style nets, Keras' values for the keras_* names).
            bn_momentum=0.0,
            bn_epsilon=0.0,
            dtype="float32",  # compute: 'float32' | 'bfloat16' | 'float16' (dynamic loss scaling); params, BN statistics stay float32
            head_pooling="avg",  # 'avg' (global average pooling) | 'flatten' (the transfer seeds' Flatten)
            head_hidden=(),  # widths of hidden Dense+ReLU layers before the classifier; the seeds' head: (1000,)
            head_dropout=0.0,  # dropout before each Dense of the head (the 003 seed: 0.7)
        )
    )
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


def model_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The create_model keyword arguments of a `model` section; empty values keep the family's defaults."""
    options = {k: config[k] for k in ("shortcut", "version", "bn_momentum", "bn_epsilon") if config[k]}
    if config.widths:
        options["widths"] = tuple(config.widths)
    if config.dtype not in DTYPES:
        raise ConfigError(f"unknown model.dtype {config.dtype!r}; choose one of {', '.join(DTYPES)}")
    return dict(options, zero_init_residual=config.zero_init_residual, dtype=DTYPES[config.dtype],
                head_pooling=config.head_pooling, head_hidden=tuple(config.head_hidden), head_dropout=config.head_dropout)


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
        ("model", lambda: models.create_model(config.model.name, max(config.model.num_classes, 1),
                                              **model_options(config.model))),
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
    if "data" in saved:
        saved["data"] = data_lib.upgrade_data(saved["data"])
    return saved


def from_saved(text: str) -> ml_collections.ConfigDict:
    """A run's config.json as today's config: upgraded, and keys added since the run was made at their defaults."""
    config = default_config()
    config.update(upgrade(json.loads(text)))
    return config
