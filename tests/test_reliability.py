"""Reliability: real signals to training subprocesses, damaged checkpoints, divergence, config validation, resumes
with cosmetic changes, and issue 10's correctness fixes (plateau min_delta, evaluate --checkpoint latest).

Most tests start from one uninterrupted reference run: experiments/quickstart.py on the tests' IDX files with a tiny
resnet8, 32 steps per epoch, 40 steps. Interrupted, damaged and resumed runs must end bit for bit where it ends.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import chex
import jax
import jax.numpy as jnp
import matplotlib.axes
import numpy as np
import optax
import pytest
from flax import struct

from resnet_jax import config as config_lib
from resnet_jax import optim, preemption
from resnet_jax.checkpoints import CheckpointError, CheckpointMismatchError, Checkpoints
from resnet_jax.evaluate import evaluate_run
from resnet_jax.metrics import MetricWriter, plot_curves, read_metrics
from resnet_jax.loop import setup, train_and_evaluate
from resnet_jax.steps import init_state
from resnet_jax.workdir import WorkdirError, check_workdir, save_config

ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 32
# val/top5 is 1.0 at both evaluations (2 of 10 classes are used), so the best checkpoint is the earlier one, step 32,
# and the latest (step 40) differs from it.
QUICK = {"data.val_size": 64, "model.widths": (4, 8, 16), "batch_size": 8, "num_steps": 40, "log_every_steps": 4,
         "best_metric": "val/top5"}
# From epoch 2 on, a learning rate of 1e29: the parameters overflow and the loss is not finite.
DIVERGE = {"schedule.name": "piecewise", "schedule.boundaries": (1.0,), "schedule.scales": (1e30,),
           "schedule.warmup": 0.0}


def quick_config(idx_dir, changes: dict | None = None):
    from experiments.quickstart import get_config

    config = get_config()
    config.update_from_flattened_dict({"data.path": str(idx_dir), **QUICK, **(changes or {})})
    return config


def quick_cli(idx_dir, workdir, changes: dict | None = None) -> list[str]:
    """The `python -m resnet_jax.train` command line of quick_config(idx_dir, changes)."""
    text = lambda v: "(" + ",".join(map(str, v)) + ",)" if isinstance(v, tuple) else str(v)  # noqa: E731
    overrides = {"data.path": str(idx_dir), **QUICK, **(changes or {})}
    return [sys.executable, "-m", "resnet_jax.train", "--config", "experiments/quickstart.py",
            "--workdir", str(workdir), *(f"--config.{k}={text(v)}" for k, v in overrides.items())]


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, env=dict(os.environ, JAX_PLATFORMS="cpu"), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_until(condition, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the training process ended first (exit {process.returncode}):\n{out[-2000:]}\n{err[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("timed out waiting for the training process")
        time.sleep(0.002)


def final_state(config, workdir, which="latest"):
    run = setup(config)
    template = init_state(run.model, run.tx, run.pipeline.image_shape, config.seed, run.mesh)
    checkpoints = Checkpoints(workdir, best_metric=run.best_metric, read_only=True)
    state, _ = checkpoints.restore(template, which)
    checkpoints.close()
    return state


def epoch_events(workdir) -> list[dict]:
    """The evaluation/epoch events (no step-level train logs, which depend on when the loop read the device)."""
    return [e for e in read_metrics(workdir) if "train_epoch/loss" in e or "val/loss" in e]


def strict_events(workdir) -> list[dict]:
    """metrics.jsonl parsed as strict JSON: a bare NaN or Infinity fails."""
    def refuse(constant):
        raise ValueError(f"bare {constant} in metrics.jsonl")

    text = (Path(workdir) / "metrics.jsonl").read_text()
    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


def assert_trained_state_finite(state) -> None:
    """Params, BN statistics and optimizer state all finite (the plateau's best_value starts at +inf by design)."""
    leaves = jax.tree.leaves((state.params, state.batch_stats, state.opt_state))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves if jnp.issubdtype(x.dtype, jnp.floating))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, learnable_idx_dir):
    workdir = tmp_path_factory.mktemp("reference") / "run"
    config = quick_config(learnable_idx_dir)
    record = train_and_evaluate(config, workdir)
    return SimpleNamespace(workdir=workdir, config=config, record=record, state=final_state(config, workdir),
                           events=epoch_events(workdir))


def assert_same_as_reference(config, workdir, record, reference) -> None:
    assert record == reference.record
    assert epoch_events(workdir) == reference.events  # both evaluations and both epochs' train means
    chex.assert_trees_all_equal(final_state(config, workdir), reference.state)


# ---- signals to a training subprocess ------------------------------------------------------------------------------


def test_sigterm_mid_epoch_saves_a_checkpoint_and_the_resumed_run_equals_an_uninterrupted_one(
        tmp_path, learnable_idx_dir, reference):
    workdir, changes = tmp_path / "run", {"log_every_steps": 1}  # cosmetic: the trajectory is the reference's
    process = start(quick_cli(learnable_idx_dir, workdir, changes))
    wait_until(lambda: len(read_metrics(workdir)) >= 2, process)  # two steps done
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    assert process.returncode == preemption.EXIT_CODE == 75, err[-3000:]
    step = int(re.search(r"SIGTERM: saved a checkpoint at step (\d+) \(epoch [\d.]+\) in \S+; re-run the same "
                         r"command to resume", out)[1])
    assert 3 <= step < STEPS_PER_EPOCH  # in the middle of the first epoch
    assert Checkpoints(workdir, read_only=True).latest_step() == step

    config = quick_config(learnable_idx_dir, changes)
    assert_same_as_reference(config, workdir, train_and_evaluate(config, workdir), reference)


def test_sigkill_during_a_checkpoint_write_resumes_from_the_previous_checkpoint(
        tmp_path, learnable_idx_dir, reference, capsys):
    workdir, changes = tmp_path / "run", {"checkpoint_every_steps": 1, "log_every_steps": 1}
    folder = workdir / "checkpoints"
    process = start(quick_cli(learnable_idx_dir, workdir, changes))

    def names():
        return [p.name for p in folder.iterdir()] if folder.exists() else []

    def writing():
        return any(n.isdigit() for n in names()) and any(".orbax-checkpoint-tmp" in n for n in names())

    while True:  # freeze the process while a write is in flight, then kill it there
        wait_until(writing, process)
        process.send_signal(signal.SIGSTOP)
        if writing():
            break
        process.send_signal(signal.SIGCONT)
    process.kill()
    process.communicate()
    unfinished = [n for n in names() if ".orbax-checkpoint-tmp" in n]
    previous = max(int(n) for n in names() if n.isdigit())
    assert unfinished and all(int(n.split(".")[0]) > previous for n in unfinished)

    # Resumed with checkpoints at epoch ends only (a cosmetic change), so no later save reuses the unfinished folder.
    config = quick_config(learnable_idx_dir, {"log_every_steps": 1})
    record = train_and_evaluate(config, workdir)
    assert f"resuming from step {previous} (epoch" in capsys.readouterr().out
    assert not [n for n in names() if ".orbax-checkpoint-tmp" in n]  # the leftover folder was removed
    assert_same_as_reference(config, workdir, record, reference)


def test_a_nonfinite_step_stops_the_run_with_exit_3_and_a_resume_may_skip_such_steps(tmp_path, learnable_idx_dir):
    workdir = tmp_path / "run"
    out = subprocess.run(quick_cli(learnable_idx_dir, workdir, DIVERGE), env=dict(os.environ, JAX_PLATFORMS="cpu"),
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 3, out.stderr[-3000:]
    message = re.search(r"error: the loss or a gradient was not finite at step (\d+) .* The last good checkpoint is "
                        r"step 32 \((\S+)\)\. Lower the learning rate", out.stderr)
    assert message and int(message[1]) > STEPS_PER_EPOCH and message[2] == str(workdir / "checkpoints" / "32")
    assert "Traceback" not in out.stderr
    assert Checkpoints(workdir, read_only=True).manager.all_steps() == [32]  # nothing saved after the divergence
    strict_events(workdir)
    config = quick_config(learnable_idx_dir, DIVERGE)
    assert_trained_state_finite(final_state(config, workdir))

    # nonfinite may change on a resume: the same run goes on, skipping the non-finite steps and counting them.
    config = quick_config(learnable_idx_dir, DIVERGE | {"nonfinite": "skip"})
    record = train_and_evaluate(config, workdir)
    events = strict_events(workdir)
    skipped = sum(e.get("train/nonfinite_steps", 0) for e in events)
    assert skipped >= 1 and record.get("train_epoch/nonfinite_steps") == skipped
    assert_trained_state_finite(final_state(config, workdir))


# ---- damaged checkpoints --------------------------------------------------------------------------------------------


def damage(step_dir: Path, how: str) -> None:
    """Damage one saved checkpoint as a failing disk, a full disk, a faulty copy or a careless user would."""
    data = max((p for p in (step_dir / "state").rglob("d/*") if p.is_file()), key=lambda p: p.stat().st_size)
    if how == "values":  # readable arrays, but not the ones saved with this info (e.g. files mixed up by a copy)
        other = step_dir.parent / str(int(step_dir.name) - 1)
        shutil.rmtree(step_dir / "state")
        shutil.copytree(other / "state", step_dir / "state")
    elif how == "garble":  # 2,000 bytes inside the array data
        raw = bytearray(data.read_bytes())
        middle = len(raw) // 2
        raw[middle:middle + 2000] = bytes(255 - b for b in raw[middle:middle + 2000])
        data.write_bytes(bytes(raw))
    elif how == "truncate":
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    elif how == "delete":
        data.unlink()
    elif how == "info":
        (step_dir / "info" / "metadata").write_text('{"epoch": ')
    elif how == "metadata":
        (step_dir / "state" / "_METADATA").write_text("garbage")


class SmallState(struct.PyTreeNode):
    step: jax.Array
    params: dict


def small_state(step: int) -> SmallState:
    return SmallState(jnp.asarray(step, jnp.int32), {"w": jnp.arange(20_000, dtype=jnp.float32) * step})


@pytest.mark.parametrize("how", ["values", "garble", "truncate", "delete", "info", "metadata"])
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's abandoned read coroutines
def test_a_damaged_latest_checkpoint_is_reported_and_the_newest_intact_one_used(tmp_path, how, capsys):
    checkpoints = Checkpoints(tmp_path, keep=3)
    for step in (1, 2, 3):
        checkpoints.save(small_state(step), {"epoch": step})
    checkpoints.close()
    damage(tmp_path / "checkpoints" / "3", how)

    checkpoints = Checkpoints(tmp_path, read_only=True)  # evaluation: falls back, moves nothing
    state, info = checkpoints.restore(small_state(0))
    assert int(state.step) == 2 and info == {"epoch": 2}
    chex.assert_trees_all_equal(state, small_state(2))
    out = capsys.readouterr().out
    assert f"the checkpoint at {tmp_path / 'checkpoints' / '3'} is incomplete or corrupt" in out
    assert "falling back to step 2, the newest intact checkpoint" in out
    if how == "values":
        assert "(its arrays do not match the digest saved with them)" in out
    assert (tmp_path / "checkpoints" / "3").exists()

    checkpoints = Checkpoints(tmp_path)  # training: the damaged one is moved aside, so step 3 can be written again
    assert int(checkpoints.restore(small_state(0))[0].step) == 2
    assert checkpoints.manager.all_steps() == [1, 2]
    assert [p.name.split("-")[0] for p in (tmp_path / "corrupt_checkpoints").iterdir()] == ["3"]
    checkpoints.save(small_state(3), {"epoch": 3})
    checkpoints.close()


def test_a_damaged_metrics_file_is_set_aside_before_orbax_opens_the_folder(tmp_path, capsys):
    checkpoints = Checkpoints(tmp_path)
    for step in (1, 2, 3):
        checkpoints.save(small_state(step), {}, value=0.5)
    checkpoints.close()
    (tmp_path / "checkpoints" / "3" / "metrics" / "metrics").write_text('{"val/accur')  # orbax would fail to open
    with pytest.raises(CheckpointError, match=r"the metrics of step\(s\) \[3\] in .* are damaged: resume the training"):
        Checkpoints(tmp_path, read_only=True)
    checkpoints = Checkpoints(tmp_path)
    assert "checkpoints/3 is incomplete or corrupt (JSONDecodeError" in capsys.readouterr().out
    assert int(checkpoints.restore(small_state(0))[0].step) == 2 and checkpoints.best() == (1, 0.5)
    assert [p.name.split("-")[0] for p in (tmp_path / "corrupt_checkpoints").iterdir()] == ["3"]


def test_damaged_bookkeeping_files_do_not_matter_when_the_arrays_pass_their_digest(tmp_path):
    checkpoints = Checkpoints(tmp_path)
    for step in (1, 2):
        checkpoints.save(small_state(step), {"epoch": step})
    checkpoints.close()
    (tmp_path / "checkpoints" / "2" / "_CHECKPOINT_METADATA").write_text('{"garb')
    (tmp_path / "checkpoints" / "2" / "commit_success.txt").unlink()
    state, info = Checkpoints(tmp_path, read_only=True).restore(small_state(0))
    chex.assert_trees_all_equal(state, small_state(2))
    assert info == {"epoch": 2}


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's abandoned read coroutines
def test_no_intact_checkpoint_is_an_error_that_moves_nothing(tmp_path):
    checkpoints = Checkpoints(tmp_path)
    for step in (1, 2):
        checkpoints.save(small_state(step), {})
    checkpoints.close()
    for step in (1, 2):
        damage(tmp_path / "checkpoints" / str(step), "garble")
    with pytest.raises(CheckpointError, match="no intact checkpoint in .*steps 2, 1 are damaged.*--overwrite"):
        Checkpoints(tmp_path).restore(small_state(0))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]


def test_garbled_bytes_in_the_latest_checkpoint_are_caught_and_training_resumes_from_the_previous_one(
        tmp_path, reference, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(reference.workdir, workdir)
    damage(workdir / "checkpoints" / "40", "garble")
    capsys.readouterr()
    latest = evaluate_run(workdir, "latest", ("val",))  # read-only: falls back, reports the checkpoint it used
    assert (latest["step"], latest["epoch"]) == (32, 1.0)
    assert "checkpoints/40 is incomplete or corrupt (" in capsys.readouterr().out

    record = train_and_evaluate(reference.config, workdir)
    out = capsys.readouterr().out
    assert "falling back to step 32" in out and "resuming from step 32 " in out
    assert len(list((workdir / "corrupt_checkpoints").iterdir())) == 1
    assert_same_as_reference(reference.config, workdir, record, reference)


def test_latest_and_best_are_kept_by_one_policy(tmp_path):
    checkpoints = Checkpoints(tmp_path, keep=2, best_metric="val/accuracy")
    for step, value in ((1, 0.5), (2, 0.9), (3, None), (4, 0.9), (5, 0.6)):
        checkpoints.save(small_state(step), {"epoch": step}, value)
    checkpoints.close()
    checkpoints = Checkpoints(tmp_path, keep=2, best_metric="val/accuracy", read_only=True)
    assert checkpoints.manager.all_steps() == [2, 4, 5]  # the 2 latest, and the best (the first of two equal values)
    assert checkpoints.best() == (2, 0.9)
    assert int(checkpoints.restore(small_state(0), "best")[0].step) == 2
    by_loss = Checkpoints(tmp_path / "loss", best_metric="val/loss")
    for step, value in ((1, 0.5), (2, 0.3), (3, 0.4)):
        by_loss.save(small_state(step), {}, value)
    by_loss.close()
    assert Checkpoints(tmp_path / "loss", best_metric="val/loss", read_only=True).best() == (2, 0.3)


def test_evaluate_latest_reports_the_latest_checkpoints_epoch_and_best_the_best_ones(reference):
    latest = evaluate_run(reference.workdir, "latest", ("val",))
    best = evaluate_run(reference.workdir, "best", ("val",))
    assert (latest["step"], latest["epoch"]) == (40, 40 / STEPS_PER_EPOCH)
    assert (best["step"], best["epoch"]) == (32, 1.0)


# ---- config: validation, unknown keys, resumes with cosmetic changes, no poisoned workdir --------------------------


@pytest.mark.parametrize("changes, message", [
    ({"log_every_steps": 0}, "log_every_steps=0: must be an integer >= 1"),
    ({"checkpoint_keep": 0}, "checkpoint_keep=0: must be an integer >= 1 (0 would leave no checkpoint"),
    ({"batch_size": 0}, "batch_size=0: must be a positive integer"),
    ({"batch_size": -8}, "batch_size=-8: must be a positive integer"),
    ({"num_epochs": -1}, "num_epochs=-1: must be an integer >= 0"),
    ({"num_epochs": 0, "num_steps": 0}, "nothing to train"),
    ({"eval_every_steps": -5}, "eval_every_steps=-5: must be an integer >= 0"),
    ({"checkpoint_every_steps": -1}, "checkpoint_every_steps=-1: must be an integer >= 0"),
    ({"label_smoothing": 1.0}, "label_smoothing=1.0: must be in [0, 1)"),
    ({"nonfinite": "ignore"}, "nonfinite='ignore': choose one of stop, skip"),
    ({"best_metric": "val/acc"}, "best_metric='val/acc': choose one of val/loss"),
    ({"plateau.enabled": True, "plateau.monitor": "loss"}, "plateau.monitor='loss': choose one of"),
    ({"plateau.enabled": True, "plateau.min_delta": 0.0}, "plateau.min_delta=0.0 must be > 0"),
    ({"plateau.factor": 2.0}, "plateau: "),
    ({"plateau.patience": -1}, "plateau.patience=-1 must be an integer >= 0"),
    ({"schedule.name": "linear"}, "unknown schedule 'linear'; choose one of constant, piecewise, cosine"),
    ({"schedule.unit": "hours"}, "unknown schedule unit 'hours'"),
    ({"schedule.name": "piecewise", "schedule.boundaries": (2.0, 1.0), "schedule.scales": (0.1, 0.1)},
     "must be >= 0 and in increasing order"),
    ({"schedule.warmup": -1.0}, "schedule.warmup=-1.0 must be >= 0"),
    ({"optimizer.name": "lion"}, "unknown optimizer 'lion'"),
    ({"optimizer.learning_rate": 0.0}, "optimizer.learning_rate=0.0 must be finite and > 0"),
    ({"optimizer.learning_rate": float("nan")}, "optimizer.learning_rate=nan must be finite and > 0"),
    ({"optimizer.momentum": 1.5}, "optimizer.momentum=1.5 must be in [0, 1)"),
    ({"optimizer.weight_decay": -1e-4}, "optimizer.weight_decay=-0.0001 must be finite and >= 0"),
    ({"model.name": "resnet7"}, "model: CIFAR ResNet depth must be 6n+2"),
    ({"model.dtype": "float8"}, "unknown model.dtype 'float8'"),
    ({"model.shortcut": "Z"}, "model: unknown shortcut 'Z'"),
    ({"model.num_classes": -3}, "model.num_classes=-3: must be >= 0"),
])
def test_every_bad_value_is_refused_before_anything_is_read_or_written(tmp_path, changes, message):
    config = quick_config(tmp_path / "no-data-here", changes)  # the data are never opened: validation comes first
    with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
        train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_all_problems_are_named_at_once():
    config = config_lib.default_config()
    config.update_from_flattened_dict({"log_every_steps": 0, "batch_size": 0, "optimizer.name": "lion",
                                       "data.train_subset": -5})
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.validate(config)
    assert all(key in str(error.value) for key in ("log_every_steps=0", "batch_size=0", "unknown optimizer 'lion'",
                                                   "data.train_subset=-5"))


def test_unknown_override_keys_name_the_nearest_valid_ones():
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.check_override_keys(["--config.optimizer.learning_rte=0.1", "--config.nosuchkey=1",
                                        "--config.log_every_step", "5"])
    text = str(error.value)
    assert "--config.optimizer.learning_rte: no such key (did you mean --config.optimizer.learning_rate" in text
    assert "--config.nosuchkey: no such key (no similar key)" in text
    assert "--config.log_every_step: no such key (did you mean --config.log_every_steps" in text
    config_lib.check_override_keys(["--config.optimizer.learning_rate=0.1", "--noconfig.model.zero_init_residual",
                                    "--config.model", "--config", "experiments/quickstart.py", "--workdir=x"])


def test_cosmetic_config_changes_do_not_block_a_resume_and_semantic_ones_are_named(tmp_path, learnable_idx_dir):
    workdir = tmp_path / "run"
    config = quick_config(learnable_idx_dir)
    save_config(workdir, config)
    cosmetic = quick_config(learnable_idx_dir, {
        "log_every_steps": 7, "checkpoint_keep": 1, "eval_every_steps": 8, "checkpoint_every_steps": 3,
        "diagnostics_every_steps": 5, "nonfinite": "skip", "data.path": str(tmp_path / "elsewhere"),
        "plateau.patience": 2})  # the plateau is disabled: its settings do not matter
    assert len(check_workdir(workdir, cosmetic, overwrite=False)) == 8
    for changes in ({"batch_size": 16}, {"plateau.enabled": True},
                    {"plateau.enabled": True, "plateau.patience": 2, "eval_every_steps": 8}):
        with pytest.raises(WorkdirError, match="different config"):
            check_workdir(workdir, quick_config(learnable_idx_dir, changes), overwrite=False)
    semantic = quick_config(learnable_idx_dir, {"batch_size": 16, "seed": 1, "log_every_steps": 7})
    with pytest.raises(WorkdirError, match=r"\(differs in: batch_size, seed\)"):
        check_workdir(workdir, semantic, overwrite=False)


@pytest.mark.parametrize("changes", [{"model.name": "resnet20"}, {"model.widths": (8, 16, 32)},
                                     {"model.name": "plain8", "model.widths": (4, 8, 8)}])
def test_a_resume_with_another_model_is_refused_naming_the_keys(tmp_path, learnable_idx_dir, changes):
    """The model is what is trained: another depth or width in the same workdir is another run, never cosmetic."""
    workdir = tmp_path / "run"
    save_config(workdir, quick_config(learnable_idx_dir))
    saved = (workdir / "config.json").read_text()
    with pytest.raises(WorkdirError, match=rf"\(differs in: {', '.join(sorted(changes))}\)"):
        check_workdir(workdir, quick_config(learnable_idx_dir, changes), overwrite=False)
    assert (workdir / "config.json").read_text() == saved  # refused before anything was written


def test_a_key_the_saved_config_lacks_counts_as_its_default(tmp_path, learnable_idx_dir):
    """A run saved before a key existed (e.g. data.num_classes) resumes unless the key is set to another value."""
    workdir = tmp_path / "run"
    save_config(workdir, quick_config(learnable_idx_dir))
    saved = json.loads((workdir / "config.json").read_text())
    del saved["data"]["num_classes"]
    (workdir / "config.json").write_text(json.dumps(saved))
    assert check_workdir(workdir, quick_config(learnable_idx_dir), overwrite=False) == []
    with pytest.raises(WorkdirError, match=r"\(differs in: data.num_classes\)"):
        check_workdir(workdir, quick_config(learnable_idx_dir, {"data.num_classes": 3}), overwrite=False)


def test_a_config_saved_before_the_model_and_augment_spellings_changed_resumes_through_the_one_upgrade(
        tmp_path, learnable_idx_dir):
    """config.json of an older resnet-jax: its model section held 12 keys with ''/0/() for "the zoo name's value" and
    data.augment was one string. config.upgrade turns it into today's form, so the same run resumes and another
    run is still refused; evaluate reads it the same way (config.from_saved)."""
    workdir = tmp_path / "run"
    config = quick_config(learnable_idx_dir)
    save_config(workdir, config)
    saved = json.loads((workdir / "config.json").read_text())
    old_model = {"name": config.model.name, "num_classes": 0, "shortcut": "", "version": "",
                 "widths": list(config.model.widths or ()), "zero_init_residual": False, "bn_momentum": 0.0,
                 "bn_epsilon": 0.0, "dtype": "float32", "head_pooling": "avg", "head_hidden": [], "head_dropout": 0.0}
    augment = "_".join(config.data.augment) or "none"
    (workdir / "config.json").write_text(json.dumps(saved | {"model": old_model,
                                                              "data": saved["data"] | {"augment": augment}}))
    assert check_workdir(workdir, config, overwrite=False) == []
    assert config_lib.from_saved((workdir / "config.json").read_text()).to_dict() == config.to_dict()
    with pytest.raises(WorkdirError, match=r"\(differs in: model.shortcut\)"):
        check_workdir(workdir, quick_config(learnable_idx_dir, {"model.shortcut": "C"}), overwrite=False)


def test_a_resume_with_cosmetic_changes_and_the_same_data_elsewhere_ends_where_the_reference_does(
        tmp_path, learnable_idx_dir, reference):
    workdir = tmp_path / "run"
    shutil.copytree(reference.workdir, workdir)
    shutil.rmtree(workdir / "checkpoints" / "40")  # as if the run had stopped after its first epoch
    (tmp_path / "moved").symlink_to(learnable_idx_dir)  # the same files, at another path
    changes = {"data.path": str(tmp_path / "moved"), "log_every_steps": 5, "checkpoint_keep": 1,
               "checkpoint_every_steps": 3}
    config = quick_config(learnable_idx_dir, changes)
    record = train_and_evaluate(config, workdir)
    assert json.loads((workdir / "config.json").read_text())["log_every_steps"] == 5
    assert_same_as_reference(config, workdir, record, reference)


def test_a_failed_first_attempt_leaves_the_workdir_as_it_was(tmp_path, learnable_idx_dir, reference, write_idx):
    workdir = tmp_path / "run"
    shutil.copytree(reference.workdir, workdir)

    def snapshot():
        return {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}

    # data.path may change on a resume, but only to the same data
    other = tmp_path / "other-data"
    other.mkdir()
    for name in os.listdir(learnable_idx_dir):
        shutil.copy(learnable_idx_dir / name, other / name)
    rng = np.random.default_rng(1)
    write_idx(other / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (200, 28, 28)).astype(np.uint8), gz=True)
    write_idx(other / "train-labels-idx1-ubyte.gz", rng.integers(0, 2, 200).astype(np.uint8), gz=True)
    before = snapshot()
    with pytest.raises(WorkdirError, match=r"are not the data this run was trained on \(split_sizes: trained on "
                                           r"\{'train': 256, 'val': 64, 'test': 100\}, now \{'train': 136"):
        train_and_evaluate(quick_config(learnable_idx_dir, {"data.path": str(other)}), workdir)
    assert snapshot() == before

    # checkpoints that do not fit the model (here: no config.json to compare with, as in a copied run)
    (workdir / "config.json").unlink()
    before = snapshot()
    with pytest.raises(CheckpointMismatchError, match="does not fit the model"):
        train_and_evaluate(quick_config(learnable_idx_dir, {"model.widths": (8, 16, 32)}), workdir)
    assert snapshot() == before and not (workdir / "config.json").exists()
    assert train_and_evaluate(reference.config, workdir) == reference.record  # the right config is not refused


# ---- correctness fixes, preemption and records, unit by unit -------------------------------------------------------


def plateau_scale(monitor: str, values: list[float]) -> float:
    config = optim.plateau_config()
    config.update(enabled=True, monitor=monitor, patience=1, factor=0.5, min_delta=1e-4)
    plateau = optim.make_plateau(config, base_lr=0.1)
    tx = optim.with_plateau(optax.sgd(0.1), plateau)
    params = {"w": jnp.ones(1)}
    opt_state = tx.init(params)
    for value in values:
        opt_state = optim.step_plateau(plateau, opt_state, monitor, value)
    updates, _ = tx.update({"w": jnp.ones(1)}, opt_state, params)  # the chain element scales the step
    np.testing.assert_allclose(updates["w"], -0.1 * optim.plateau_scale(opt_state), rtol=1e-6)
    return optim.plateau_scale(opt_state)


def test_plateau_counts_only_improvements_larger_than_min_delta():
    # A slightly *worse* accuracy is no improvement (optax's default rtol on the negated accuracy called it one).
    assert plateau_scale("val/accuracy", [0.5, 0.49996]) == 0.5
    assert plateau_scale("val/accuracy", [0.5, 0.50005]) == 0.5  # better, but by less than min_delta
    assert plateau_scale("val/accuracy", [0.5, 0.5002]) == 1.0
    assert plateau_scale("val/loss", [1.0, 1.00004]) == 0.5
    assert plateau_scale("val/loss", [1.0, 0.9998]) == 1.0


def test_signals_request_a_stop_at_the_next_step_and_the_handlers_are_restored():
    before = {s: signal.getsignal(s) for s in preemption.SIGNALS}
    for sent in preemption.SIGNALS:
        with preemption.PreemptionGuard() as guard:
            assert not guard.stop_requested(sync_point=False)
            os.kill(os.getpid(), sent)
            assert guard.stop_requested(sync_point=False) and guard.signal == sent  # one process: at once
    assert {s: signal.getsignal(s) for s in preemption.SIGNALS} == before
    with preemption.PreemptionGuard(), pytest.raises(KeyboardInterrupt):  # Ctrl-C twice: out at once
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)


def test_processes_agree_on_the_stop_at_sync_points_only(monkeypatch):
    gathered = []

    def allgather(flag):
        gathered.append(int(flag))
        return np.array([int(flag), 1])  # another process has received a signal

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(preemption.multihost_utils, "process_allgather", allgather)
    with preemption.PreemptionGuard() as guard:
        assert not guard.stop_requested(sync_point=False)  # no collective between sync points
        assert gathered == []
        assert guard.stop_requested(sync_point=True)  # stopped by the other process's signal
        assert gathered == [0]


def test_metrics_are_strict_json_and_the_curves_mark_nonfinite_epochs(tmp_path, monkeypatch):
    writer = MetricWriter(tmp_path)
    writer.write(8, 1.0, {"train_epoch/loss": 0.7, "val/loss": 0.6, "val/accuracy": 0.8})
    writer.write(16, 2.0, {"train_epoch/loss": float("nan"), "val/loss": float("inf"), "val/accuracy": 0.5})
    writer.close()
    assert strict_events(tmp_path)[1]["val/loss"] is None
    assert read_metrics(tmp_path)[1]["train_epoch/loss"] is None

    marked, original = [], matplotlib.axes.Axes.plot

    def plot(self, *args, **kwargs):
        if kwargs.get("label") == "not finite":
            marked.append(list(args[0]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
    plot_curves(tmp_path)
    assert marked == [[2.0, 2.0]]  # the loss panel: train and val were not finite in epoch 2

    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 17, "epo')  # a write cut short by a kill
    assert [e["step"] for e in read_metrics(tmp_path)] == [8, 16]
