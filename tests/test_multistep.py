"""K steps per compiled call give the run of one step per call; streamed batches are prefetched in order."""

import types

import chex
import numpy as np
import pytest

from resnet_jax import multistep
from resnet_jax.checkpoints import Checkpoints
from resnet_jax.config import ConfigError, default_config
from resnet_jax.metrics import read_metrics
from resnet_jax.train import init_state, setup, train_and_evaluate


def config_for(idx_dir, **overrides):
    """16 steps an epoch; syncs after steps 8 (log), 12 (checkpoint), 16 (log, epoch), 24 (the end); diagnostics
    before steps 0 and 12."""
    c = default_config()
    c.model.update(name="resnet8", widths=(4, 8, 16))
    c.data.update(name="fashion_mnist", source="idx", path=str(idx_dir), val_size=64, image_size=16, augment="crop_flip")
    c.update(batch_size=16, num_steps=24, log_every_steps=8, checkpoint_every_steps=12, diagnostics_every_steps=12)
    c.optimizer.update(name="sgd", learning_rate=0.05, weight_decay=5e-4)
    c.schedule.update(name="cosine", warmup=0.25)
    c.update(overrides)
    return c


def final_state(config, workdir):
    run = setup(config)
    template = init_state(run.model, run.tx, run.plateau_tx, run.pipeline.image_shape, config.seed, run.mesh)
    checkpoints = Checkpoints(workdir)
    state, _ = checkpoints.restore(template)
    checkpoints.close()
    return state


def records(workdir):
    """metrics.jsonl without the timing, the one field that may differ."""
    return [{k: v for k, v in e.items() if k != "images_per_sec"} for e in read_metrics(workdir)]


class Interrupted(Exception):
    pass


def test_eight_steps_per_call_equal_one_step_per_call_also_resumed_mid_epoch(tmp_path, learnable_idx_dir, monkeypatch):
    one = train_and_evaluate(config_for(learnable_idx_dir, steps_per_call=1), tmp_path / "k1")
    eight_config = config_for(learnable_idx_dir, steps_per_call=8)
    lengths = []
    original_run = multistep.Steps.run
    with monkeypatch.context() as m:
        m.setattr(multistep.Steps, "run", lambda self, state, n: (lengths.append(n), original_run(self, state, n))[1])
        eight = train_and_evaluate(eight_config, tmp_path / "k8")
    # 8 steps a call where no sync point intervenes (steps 17-24), else one (a diagnosed step is one too).
    assert lengths == [1] * 16 + [8], lengths

    original_save = Checkpoints.save

    def save_then_die(self, state, info, value=None):
        original_save(self, state, info, value)
        self.close()
        raise Interrupted

    with monkeypatch.context() as m:
        m.setattr(Checkpoints, "save", save_then_die)
        with pytest.raises(Interrupted):
            train_and_evaluate(eight_config, tmp_path / "k8-resumed")  # stops after the checkpoint of step 12
    assert Checkpoints(tmp_path / "k8-resumed").latest_step() == 12
    resumed = train_and_evaluate(eight_config, tmp_path / "k8-resumed")

    assert one == eight == resumed  # the last evaluation, the epoch's train means
    reference = records(tmp_path / "k1")
    assert [e["step"] for e in reference if "train/loss" in e] == [8, 12, 16, 24]
    assert [e["step"] for e in reference if any(k.startswith("diag/") for k in e)] == [0, 12]
    assert records(tmp_path / "k8") == reference
    assert records(tmp_path / "k8-resumed") == reference
    final = {name: final_state(eight_config, tmp_path / name) for name in ("k1", "k8", "k8-resumed")}
    assert int(final["k1"].step) == 24
    chex.assert_trees_all_equal(final["k1"], final["k8"])
    chex.assert_trees_all_equal(final["k1"], final["k8-resumed"])
    assert one["test/accuracy"] > 0.9  # it learned (two classes, chance 0.5)


def test_call_length_ends_a_call_at_the_first_stop():
    stops = {3, 10, 11, 19}.__contains__
    assert [multistep.call_length(s, 8, stops) for s in (0, 2, 3, 9, 10, 11)] == [1, 1, 1, 1, 1, 8]
    assert [multistep.call_length(s, 4, stops) for s in (3, 6, 7, 15)] == [4, 4, 1, 4]
    assert multistep.call_length(5, 1, stops) == 1


def test_prefetch_yields_the_same_batches_in_order_with_two_in_flight(learnable_idx_dir):
    config = config_for(learnable_idx_dir)
    pipeline = setup(config).pipeline
    requested = []

    def batches():
        for i, batch in enumerate(pipeline.train_batches(1)):
            requested.append(i)
            yield batch

    fetched = multistep.prefetch(batches())
    first = next(fetched)
    assert requested == [0, 1, 2]  # the one yielded and two in flight
    rest = list(fetched)
    expected = list(pipeline.train_batches(1))
    assert len(rest) + 1 == len(expected) == pipeline.steps_per_epoch
    for got, want in zip([first, *rest], expected):
        assert got["image"].sharding == want["image"].sharding
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])
    assert list(multistep.prefetch(iter(range(5)), 2)) == list(range(5))
    assert list(multistep.prefetch(iter([]), 2)) == []


def test_bad_steps_per_call_is_refused_naming_the_fix(tmp_path):
    config = default_config()
    config.steps_per_call = 0
    with pytest.raises(ConfigError, match=r"steps_per_call=0: must be an integer >= 1"):
        train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    streamed = types.SimpleNamespace(origin="tfds fashion_mnist, streamed", train_batches=lambda *a, **k: iter([]))
    with pytest.raises(ValueError, match=r"steps_per_call=8 .* the data is tfds fashion_mnist, streamed: set "
                                         r"steps_per_call=1 .* or data.in_memory=True"):
        multistep.check(8, streamed)
    multistep.check(1, streamed)
