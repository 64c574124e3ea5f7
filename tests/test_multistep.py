"""K steps per compiled call give the run of one step per call; streamed batches are prefetched in order."""

import itertools
import types

import chex
import numpy as np
import pytest
from jax._src.array import ArrayImpl

from resnet_jax import multistep
from resnet_jax.checkpoints import Checkpoints
from resnet_jax.config import ConfigError, default_config
from resnet_jax.metrics import read_metrics
from resnet_jax.loop import setup, train_and_evaluate
from resnet_jax.steps import compile_steps, init_state


def config_for(idx_dir, **overrides):
    """16 steps an epoch; syncs after steps 8 (log), 12 (checkpoint), 16 (log, epoch), 24 (the end); diagnostics
    before steps 0 and 12."""
    c = default_config()
    c.model.update(name="resnet8", widths=(4, 8, 16))
    c.data.update(name="fashion_mnist", source="idx", path=str(idx_dir), val_size=64, image_size=16,
                  augment=("crop", "flip"))
    c.update(batch_size=16, num_steps=24, log_every_steps=8, checkpoint_every_steps=12, diagnostics_every_steps=12)
    c.optimizer.update(name="sgd", learning_rate=0.05, weight_decay=5e-4)
    c.schedule.update(name="cosine", warmup=0.25)
    c.update(overrides)
    return c


def final_state(config, workdir):
    run = setup(config)
    template = init_state(run.model, run.tx, run.pipeline.image_shape, config.seed, run.mesh)
    checkpoints = Checkpoints(workdir)
    state, _ = checkpoints.restore(template)
    checkpoints.close()
    return state


def records(workdir):
    """metrics.jsonl without the timing, the one field that may differ."""
    return [{k: v for k, v in e.items() if k != "images_per_sec"} for e in read_metrics(workdir)]


@pytest.fixture
def device_reads(monkeypatch):
    """A list whose length counts the values fetched from the device: float(x), int(x), jax.device_get(x), ...

    Every such read goes through jax.Array's `_value` (a private hook of JAX's ArrayImpl; np.asarray of a CPU array
    takes the buffer protocol instead and is not seen)."""
    reads = []
    value = ArrayImpl._value
    monkeypatch.setattr(ArrayImpl, "_value", property(lambda self: (reads.append(1), value.fget(self))[1]))
    return reads


def steps_with_reads(calls: list[tuple[int, int]]) -> set[int]:
    """The steps at which a call found the device read since the previous call; calls: (steps, reads before it)."""
    starts = itertools.accumulate([n for n, _ in calls], initial=0)
    # strict=False: calls[1:] is one shorter, so the last call (with no call after it) pairs with nothing
    return {step for step, (_, before), (_, after) in zip(list(starts)[1:], calls, calls[1:], strict=False)
            if after > before}


def test_eight_steps_per_call_equal_one_step_per_call_and_resume_exactly_mid_epoch(
        tmp_path, learnable_idx_dir, monkeypatch, device_reads, train_until_a_checkpoint):
    calls = []  # (steps in the call, device reads before it)
    original_run = multistep.Steps.run
    monkeypatch.setattr(multistep.Steps, "run",
                        lambda self, state, n: (calls.append((n, len(device_reads))), original_run(self, state, n))[1])
    one = train_and_evaluate(config_for(learnable_idx_dir, steps_per_call=1), tmp_path / "k1")
    # The loop reads the device only at its sync points (after steps 8, 12, 16) and after a diagnosed step (0, 12):
    # a call finds the device read since the call before only at steps 1, 8, 12, 13 and 16.
    assert [n for n, _ in calls] == [1] * 24
    assert steps_with_reads(calls) == {1, 8, 12, 13, 16}
    calls.clear()
    eight_config = config_for(learnable_idx_dir, steps_per_call=8)
    eight = train_and_evaluate(eight_config, tmp_path / "k8")
    # 8 steps a call where no sync point intervenes (steps 17-24), else the longest power of two before the next
    # one; a diagnosed step runs alone. The device is read where it is with K=1.
    assert [n for n, _ in calls] == [1, 4, 2, 1, 4, 1, 2, 1, 8], calls
    assert steps_with_reads(calls) == {1, 8, 12, 13, 16}

    train_until_a_checkpoint(eight_config, tmp_path / "k8-resumed")  # stops after the checkpoint of step 12
    assert Checkpoints(tmp_path / "k8-resumed").latest_step() == 12
    resumed = train_and_evaluate(eight_config, tmp_path / "k8-resumed")

    final = {name: final_state(eight_config, tmp_path / name) for name in ("k1", "k8", "k8-resumed")}
    assert int(final["k1"].step) == int(final["k8"].step) == 24
    # Resumed mid-epoch with K=8: bit for bit the uninterrupted K=8 run.
    assert resumed == eight
    assert records(tmp_path / "k8-resumed") == records(tmp_path / "k8")
    chex.assert_trees_all_equal(final["k8-resumed"], final["k8"])
    # K=8 against K=1: the same steps, batches and records, to float32 rounding (XLA compiles the step in a loop).
    reference, fused = records(tmp_path / "k1"), records(tmp_path / "k8")
    assert [e["step"] for e in reference if "train/loss" in e] == [8, 12, 16, 24]
    assert [e["step"] for e in reference if any(k.startswith("diag/") for k in e)] == [0, 12]
    assert [sorted(e) for e in fused] == [sorted(e) for e in reference]
    for got, want in zip(fused, reference, strict=True):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6), want["step"]
    assert eight == pytest.approx(one, rel=1e-4, abs=1e-6)
    chex.assert_trees_all_close(final["k8"], final["k1"], rtol=2e-3, atol=5e-5)
    assert one["test/accuracy"] > 0.9  # it learned (two classes, chance 0.5)


@pytest.fixture(scope="module")
def tiny_run(learnable_idx_dir):
    return setup(config_for(learnable_idx_dir))


def test_a_call_trains_on_the_pipelines_batches_in_order(tiny_run):
    """K steps in one call are the steps on train_batches(epoch, start), to float32 rounding."""
    run = tiny_run
    fresh = lambda: init_state(run.model, run.tx, run.pipeline.image_shape, 0, run.mesh)  # noqa: E731
    train_fn, _ = compile_steps(run.model, run.tx, run.mesh)
    state, losses = fresh(), []
    for batch in itertools.islice(run.pipeline.train_batches(1, start_step=3), 4):
        state, metrics = train_fn(state, batch)
        losses.append(float(metrics["loss"]))
    steps = multistep.Steps(train_fn, run.pipeline, 4, run.mesh)
    first = run.pipeline.steps_per_epoch + 3  # epoch 1, its step 3
    assert next(steps.calls(first, first + 4, lambda s: False)) == (first, 4)
    fused, metrics = steps.run(fresh(), 4)
    np.testing.assert_allclose(metrics["loss"], losses, rtol=1e-5)
    chex.assert_trees_all_close(fused.params, state.params, rtol=1e-4, atol=1e-6)
    assert int(fused.step) == 4


def test_call_length_ends_a_call_at_the_first_stop():
    stops = {3, 10, 11, 19, 30}.__contains__
    assert [multistep.call_length(s, 8, stops) for s in (0, 2, 3, 9, 10, 11, 22, 23)] == [2, 1, 4, 1, 1, 8, 8, 4]
    assert [multistep.call_length(s, 6, stops) for s in (5, 4, 24)] == [4, 6, 6]
    assert multistep.call_length(5, 1, stops) == 1


def test_prefetch_yields_the_same_batches_in_order_with_two_in_flight(tiny_run):
    pipeline = tiny_run.pipeline
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
    for got, want in zip([first, *rest], expected, strict=True):
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
