"""Training: the pure step learns, BN is synchronised across devices, schedules match the recipes, runs resume
exactly."""

import json
import math
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import create_model, optim
from resnet_jax.checkpoints import CheckpointMismatchError, Checkpoints
from resnet_jax.config import default_config
from resnet_jax.losses import higher_is_better
from resnet_jax.metrics import read_metrics
from resnet_jax.loop import setup, train_and_evaluate
from resnet_jax.steps import create_train_state, init_state, train_step
from resnet_jax.workdir import check_workdir, save_config

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(name="resnet8", widths=(4, 8, 16))


def tiny_config(idx_dir, **overrides):
    c = default_config()
    c.model.update(TINY)
    c.data.update(name="fashion_mnist", source="idx", path=str(idx_dir), val_size=64, augment=("flip",))
    c.batch_size = 32
    c.num_epochs = 2
    c.optimizer.update(name="sgd", learning_rate=0.05, weight_decay=5e-4)
    c.schedule.update(name="cosine", warmup=0.5)
    c.log_every_steps = 3  # does not divide the 8 steps of an epoch: the epoch's last steps must still be logged
    c.update(overrides)
    return c


def fresh_state(model, tx, x):
    return create_train_state(model.init(jax.random.key(0), x, train=False), tx)


def test_tiny_model_overfits_a_small_batch():
    model = create_model("resnet8", 10, widths=(8, 16, 32))
    x = jax.random.normal(jax.random.key(1), (32, 16, 16, 1))
    batch = {"image": x, "label": jax.random.randint(jax.random.key(2), (32,), 0, 10)}
    tx = optax.adam(1e-2)
    step = jax.jit(partial(train_step, model=model, tx=tx))
    state = fresh_state(model, tx, x)
    for _ in range(60):
        state, metrics = step(state, batch)
    assert float(metrics["accuracy"]) == 1.0
    assert float(metrics["loss"]) < 0.05
    assert int(state.step) == 60


SYNC_BN_SCRIPT = """
import json, jax, numpy as np, optax
from functools import partial
from jax.sharding import Mesh
from resnet_jax import create_model
from resnet_jax.steps import compile_steps, create_train_state
import jax.numpy as jnp

assert jax.device_count() == 8, jax.devices()
model = create_model("resnet8", 10, widths=(4, 8, 16))
tx = optax.sgd(0.1, momentum=0.9)
rng = np.random.default_rng(0)
batch = {"image": rng.normal(size=(32, 16, 16, 3)).astype(np.float32),
         "label": rng.integers(0, 10, 32).astype(np.int32)}

def run(devices, batch):
    mesh = Mesh(np.array(devices), ("data",))
    state = create_train_state(model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False), tx)
    train, _ = compile_steps(model, tx, mesh)
    for _ in range(2):
        state, metrics = train(state, batch)
    return jax.device_get((state.params, state.batch_stats))

def max_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

one = run(jax.devices()[:1], batch)
eight = run(jax.devices(), batch)
# What unsynchronised BN would see: each device normalising its own 4 examples.
quarter = run(jax.devices()[:1], jax.tree.map(lambda a: a[:4], batch))
print(json.dumps({"params": max_diff(one[0], eight[0]), "stats": max_diff(one[1], eight[1]),
                  "stats_local": max_diff(one[1], quarter[1])}))
"""


def test_one_step_on_8_devices_equals_the_single_device_step():
    """Batch sharded over 8 forced CPU devices: params and BN statistics equal one device's (BN is synchronised)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SYNC_BN_SCRIPT], env=env, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    diffs = json.loads(out.stdout.strip().splitlines()[-1])
    assert diffs["params"] < 1e-5 and diffs["stats"] < 1e-5, diffs
    assert diffs["stats_local"] > 1e-3, diffs  # per-device statistics would have been visibly different


def keras_seed_lr(epoch: int) -> float:
    """The Keras seed's lr_schedule, as written there (epoch is 0-based)."""
    lr = 1e-3
    if epoch > 180:
        lr *= 0.5e-3
    elif epoch > 160:
        lr *= 1e-3
    elif epoch > 120:
        lr *= 1e-2
    elif epoch > 80:
        lr *= 1e-1
    return lr


@pytest.mark.parametrize("recipe", ["v1", "v2"])
def test_keras_recipe_schedule_equals_the_seeds_lr_schedule(recipe):
    from experiments.keras_cifar10 import get_config

    c = get_config(recipe)
    steps_per_epoch = 50_000 // c.batch_size
    schedule = optim.make_schedule(c.schedule, c.optimizer.learning_rate, steps_per_epoch, 200 * steps_per_epoch)
    for epoch in range(200):
        for step in (epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch - 1):  # first and last step of the epoch
            assert math.isclose(float(schedule(step)), keras_seed_lr(epoch), rel_tol=1e-5), (epoch, step)


def test_paper_schedule_milestones_and_resnet110_warmup():
    from experiments.cifar10_paper import get_config

    for model, warm in (("resnet56", False), ("resnet110", True)):
        c = get_config(model)
        schedule = optim.make_schedule(c.schedule, c.optimizer.learning_rate, 351, c.num_steps)
        expected = {0: 0.01 if warm else 0.1, 399: 0.01 if warm else 0.1, 400: 0.1, 31_999: 0.1, 32_000: 0.01,
                    47_999: 0.01, 48_000: 0.001, 63_999: 0.001}
        for step, lr in expected.items():
            assert math.isclose(float(schedule(step)), lr, rel_tol=1e-5), (model, step)
        assert c.num_steps == 64_000 and c.batch_size == 128 and c.data.val_size == 5000


def test_cosine_schedule_warms_up_then_decays_to_zero():
    c = optim.schedule_config()
    c.update(name="cosine", warmup=1.0)
    schedule = optim.make_schedule(c, 0.1, steps_per_epoch=10, total_steps=100)
    values = np.array([float(schedule(s)) for s in range(101)])
    assert values[0] == 0.0 and math.isclose(values[10], 0.1, rel_tol=1e-6)
    assert np.all(np.diff(values[:11]) > 0) and np.all(np.diff(values[10:]) <= 0) and values[100] < 1e-8


def test_weight_decay_reaches_kernels_only_unless_asked():
    params = {"conv": {"kernel": jnp.ones((3, 3, 1, 2))}, "bn": {"scale": jnp.ones(2), "bias": jnp.ones(2)}}
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    for decay_all, expect_bn in ((False, 0.0), (True, -0.01 * 0.1)):
        c = optim.optimizer_config()
        c.update(name="sgd", momentum=0.0, weight_decay=0.1, decay_norm_and_bias=decay_all)
        tx = optim.make_optimizer(c, optax.constant_schedule(0.01))
        updates, _ = tx.update(zero_grads, tx.init(params), params)
        np.testing.assert_allclose(updates["conv"]["kernel"], -0.01 * 0.1)  # lr * wd * w
        np.testing.assert_allclose(updates["bn"]["scale"], expect_bn)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_scalar_parameters_learn_at_the_scaled_rate(name):
    """Fixup's reference code trains its scalar biases and multipliers at 1/10 of the rate of the other weights."""
    params = {"block": {"kernel": jnp.ones((3, 3)), "bias1a": jnp.ones(()), "scale": jnp.ones(())}}
    grads = jax.tree.map(lambda p: 0.5 * jnp.ones_like(p), params)

    def updates(scale):
        c = optim.optimizer_config()
        c.update(name=name, weight_decay=0.0, scalar_lr_scale=scale,
                 weight_decay_mode="decoupled" if name == "adamw" else "l2")
        tx = optim.make_optimizer(c, optax.constant_schedule(0.01))
        state = tx.init(params)
        for _ in range(3):  # momentum / moments over a few steps
            out, state = tx.update(grads, state, params)
        return out

    base, scaled = updates(1.0), updates(0.1)
    np.testing.assert_allclose(scaled["block"]["kernel"], base["block"]["kernel"])
    for scalar in ("bias1a", "scale"):
        np.testing.assert_allclose(scaled["block"][scalar], 0.1 * base["block"][scalar], rtol=1e-6)
        assert base["block"][scalar] != 0
    c = optim.optimizer_config()
    c.scalar_lr_scale = 0.0
    with pytest.raises(ValueError, match=r"scalar_lr_scale=0.0 must be finite and > 0"):
        optim.make_optimizer(c, optax.constant_schedule(0.1))


def test_incompatible_optimizer_options_are_refused():
    c = optim.optimizer_config()
    c.update(name="sgd", weight_decay_mode="decoupled")
    with pytest.raises(ValueError, match="decoupled weight decay is AdamW's"):
        optim.make_optimizer(c, optax.constant_schedule(0.1))
    c.update(name="lion", weight_decay_mode="l2")
    with pytest.raises(ValueError, match="unknown optimizer 'lion'"):
        optim.make_optimizer(c, optax.constant_schedule(0.1))


def test_config_mismatches_fail_before_compiling(learnable_idx_dir):
    with pytest.raises(ValueError, match="model.num_classes=5 but fashion_mnist has 10 classes"):
        setup(tiny_config(learnable_idx_dir, model=dict(TINY, num_classes=5)))
    c = tiny_config(learnable_idx_dir, best_metric="val/accuracy")
    c.data.val_size = 0
    with pytest.raises(ValueError,
                       match="best_metric='val/accuracy' is not a metric of this run: choose one of test/loss"):
        setup(c)
    with pytest.raises(ValueError, match="plateau.monitor='val/acc': choose one of val/loss"):
        setup(tiny_config(learnable_idx_dir, plateau=dict(default_config().plateau, enabled=True, monitor="val/acc")))


def test_metric_direction_for_best_checkpoint_and_plateau():
    assert higher_is_better("val/accuracy") and higher_is_better("test/top5")
    assert not higher_is_better("val/loss") and not higher_is_better("train_epoch/loss")


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    model, tx = create_model("resnet8", 10, widths=(4, 8, 16)), optax.sgd(0.1, 0.9)
    state = fresh_state(model, tx, jnp.ones((1, 16, 16, 1))).replace(step=jnp.asarray(7, jnp.int32))
    checkpoints = Checkpoints(tmp_path)
    checkpoints.save(state, {"epoch": 3, "best": 0.5}, value=0.5)
    checkpoints.close()
    template = fresh_state(model, tx, jnp.ones((1, 16, 16, 1)))
    for which in ("latest", "best"):
        restored, info = Checkpoints(tmp_path).restore(template, which)
        chex.assert_trees_all_equal(restored, state)
        assert info == {"epoch": 3, "best": 0.5}
    # A model built for 3-channel input cannot take this checkpoint: the error names the stem kernel.
    other = fresh_state(model, tx, jnp.ones((1, 16, 16, 3)))
    with pytest.raises(CheckpointMismatchError, match=r"stem_conv.*\(3, 3, 1, 4\) vs model \(3, 3, 3, 4\)"):
        Checkpoints(tmp_path).restore(other)


def test_workdir_with_another_config_is_kept_unless_asked(tmp_path, learnable_idx_dir):
    workdir = tmp_path / "run"
    save_config(workdir, tiny_config(learnable_idx_dir))
    (workdir / "precious.txt").write_text("results")
    changed = tiny_config(learnable_idx_dir, batch_size=64)
    with pytest.raises(ValueError, match="different config .*batch_size"):
        check_workdir(workdir, changed, overwrite=False)
    assert (workdir / "precious.txt").exists()
    check_workdir(workdir, changed, overwrite=True)
    save_config(workdir, changed)
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(moved) == 1 and (moved[0] / "precious.txt").read_text() == "results"
    assert json.loads((workdir / "config.json").read_text())["batch_size"] == 64


def test_interrupted_mid_epoch_and_resumed_run_equals_an_uninterrupted_one(tmp_path, learnable_idx_dir,
                                                                           train_until_a_checkpoint):
    # 1.5 epochs of 8 steps; evaluations and checkpoints every 5 steps (and at the last step)
    config = tiny_config(learnable_idx_dir, num_steps=12, checkpoint_every_steps=5, eval_every_steps=5)
    full = train_and_evaluate(config, tmp_path / "full")

    train_until_a_checkpoint(config, tmp_path / "resumed")  # dies right after the checkpoint of step 5
    assert Checkpoints(tmp_path / "resumed").latest_step() == 5
    resumed = train_and_evaluate(config, tmp_path / "resumed")
    assert train_and_evaluate(config, tmp_path / "resumed") == resumed  # a finished run: nothing to do

    assert full == resumed  # the last evaluation and the epoch's train means (carried over the mid-epoch checkpoint)
    run = setup(config)
    template = init_state(run.model, run.tx, run.pipeline.image_shape, config.seed, run.mesh)
    final = {}
    for name in ("full", "resumed"):
        checkpoints = Checkpoints(tmp_path / name)
        final[name], _ = checkpoints.restore(template)
        checkpoints.close()
    chex.assert_trees_all_equal(final["full"], final["resumed"])
    assert int(final["full"].step) == 12
    events_full, events_resumed = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "resumed")
    assert [e["step"] for e in events_resumed] == [e["step"] for e in events_full]  # no duplicated events
    epochs = lambda events: [e for e in events if "train_epoch/loss" in e]  # noqa: E731
    assert epochs(events_resumed) == epochs(events_full)  # epoch 1's train means carried over the checkpoint of step 5
    # Every step is in some train log (the window is read at every log, epoch-end and checkpoint step), and each
    # epoch has its record.
    assert [e["step"] for e in events_full if "train/loss" in e] == [3, 5, 6, 8, 9, 10, 12]
    assert [e["step"] for e in events_full if "train_epoch/loss" in e] == [8, 12]
    assert [e["step"] for e in events_full if "val/loss" in e] == [5, 10, 12]
    assert events_resumed[-1]["test/accuracy"] == events_full[-1]["test/accuracy"]
    # It learned the task (two classes, chance 0.5) and wrote the figure and both checkpoints.
    assert full["test/accuracy"] > 0.9
    for name in ("curves.png", "config.json", "checkpoints", "tensorboard"):
        assert (tmp_path / "full" / name).exists(), name
    # the 3 latest, the best among them
    assert sorted(int(p.name) for p in (tmp_path / "full" / "checkpoints").iterdir()) == [5, 10, 12]


def run_cli(*args, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", *args], env=env, capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


def test_cli_trains_writes_records_and_evaluates(tmp_path, learnable_idx_dir):
    workdir = tmp_path / "cli"
    out = run_cli(
        "resnet_jax.train", "--config", "experiments/quickstart.py", "--workdir", str(workdir),
        f"--config.data.path={learnable_idx_dir}", "--config.data.val_size=64", "--config.model.widths=(4,8,16)",
        "--config.num_epochs=1", "--config.batch_size=32", "--config.diagnostics_every_steps=4",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "epoch 1/1" in out.stdout
    events = read_metrics(workdir)
    assert {"train/loss", "lr", "images_per_sec"} <= set(next(e for e in events if "train/loss" in e))
    assert {"val/accuracy", "test/accuracy", "train_epoch/loss"} <= set(events[-1])
    diagnosed = [e for e in events if "diag/grad_norm/stage1_block1" in e]
    assert [e["step"] for e in diagnosed] == [0, 4]  # every 4 steps of the 8-step epoch, before the step
    assert all(e["diag/grad_norm/stem"] > 0 and e["diag/act_norm/head"] > 0 for e in diagnosed)
    # The quickstart's warm-up starts at a rate of 0, so the first step moves nothing; the step at 4 does.
    assert diagnosed[0]["diag/update_ratio/head"] == 0 and diagnosed[1]["diag/update_ratio/head"] > 0
    assert (workdir / "curves.png").stat().st_size > 10_000
    assert any((workdir / "checkpoints").iterdir())

    out = run_cli("resnet_jax.evaluate", "--workdir", str(workdir), "--checkpoint", "latest", "--split", "test")
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert math.isclose(result["test/accuracy"], events[-1]["test/accuracy"], rel_tol=1e-6) and result["epoch"] == 1.0


def test_cli_rejects_unknown_keys_naming_the_nearest_and_bad_values_before_anything(tmp_path):
    workdir = tmp_path / "run"
    out = run_cli("resnet_jax.train", "--config", "experiments/quickstart.py", "--workdir", str(workdir),
                  "--config.lerning_rate=0.1", "--config.model.widths=(4,8,16)", "--config.optimizer.nesterv=False")
    assert out.returncode == 2, out.stderr[-3000:]
    assert "--config.lerning_rate: no such key (did you mean --config.optimizer.learning_rate" in out.stderr
    assert "--config.optimizer.nesterv: no such key (did you mean --config.optimizer.nesterov" in out.stderr
    assert "AttributeError" not in out.stderr and "Traceback" not in out.stderr
    assert not workdir.exists()
    out = run_cli("resnet_jax.train", "--config", "experiments/quickstart.py", "--workdir", str(workdir),
                  "--config.log_every_steps=0", "--config.checkpoint_keep=0")
    assert out.returncode == 2, out.stderr[-3000:]
    assert "error: invalid config:\n  log_every_steps=0: must be an integer >= 1\n  checkpoint_keep=0" in out.stderr
    assert "Traceback" not in out.stderr and not workdir.exists()
