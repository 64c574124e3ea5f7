"""Ablation runner and report: grid and partition, skip/resume, mean ± std, the observed sentence, one real tiny grid."""

import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import pytest
from flax import struct

from resnet_jax.checkpoints import Checkpoints
from resnet_jax.workdir import check_workdir, save_config
from scripts import ablation
from scripts.ablation import Cell

CPU_EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "ablation_cpu.py"


def cpu_config(model: str = "resnet20"):
    return ablation.load_experiment(CPU_EXPERIMENT).get_config(model)


def test_grid_covers_every_cell_and_workers_share_it_without_overlap():
    cells = ablation.grid(["plain", "residual"], [8, 20, 56], [0, 1])
    assert len({c.name for c in cells}) == 12
    assert cells[:2] == [Cell("plain", 8, 0), Cell("residual", 8, 0)]  # seed-major
    assert {c.model for c in cells} == {"plain8", "resnet8", "plain20", "resnet20", "plain56", "resnet56"}
    for workers in (1, 2, 3, 5, 12, 13):
        shares = [ablation.partition(cells, workers, i) for i in range(workers)]
        assert sorted(c for share in shares for c in share) == sorted(cells)  # covering, and disjoint
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    with pytest.raises(ValueError, match="worker-index"):
        ablation.partition(cells, 2, 2)


def test_cell_config_sets_model_seed_and_overrides():
    overrides = ablation.parse_overrides(["num_steps=5", "data.path=/data/fm", "schedule.boundaries=(2, 4)"])
    assert overrides == {"num_steps": 5, "data.path": "/data/fm", "schedule.boundaries": (2, 4)}
    config = ablation.cell_config(cpu_config, Cell("plain", 56, 1), overrides)
    assert (config.model.name, config.seed, config.num_steps, config.data.path) == ("plain56", 1, 5, "/data/fm")
    assert ablation.cell_config(cpu_config, Cell("residual", 20, 0), {}).model.name == "resnet20"


class FakeState(struct.PyTreeNode):
    step: Any
    params: Any


def write_events(workdir: Path, train_accuracy: float, test_accuracy: float, steps: int = 100) -> None:
    """metrics.jsonl of a run of `steps` steps (50 per epoch) whose accuracies rise linearly to the given ones."""
    events = [{"step": 0, "epoch": 0.0, "diag/grad_norm/stage1_block10": 1.0, "diag/grad_norm/stage1_block2": 2.0,
               "diag/grad_norm/stem": 3.0, "diag/grad_norm/head": 4.0}]
    for step in range(10, steps + 1, 10):
        events.append({"step": step, "epoch": step / 50, "train/accuracy": train_accuracy * step / steps})
        if step % 50 == 0:
            events.append({"step": step, "epoch": step / 50, "train_epoch/accuracy": train_accuracy * step / steps,
                           "test/accuracy": test_accuracy * step / steps})
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


def fake_run(root: Path, cell: Cell, train_accuracy: float, test_accuracy: float) -> None:
    """A finished cell as the runner leaves it: config.json, metrics.jsonl and ablation.json."""
    workdir = root / cell.name
    save_config(workdir, ablation.cell_config(cpu_config, cell, {}))
    write_events(workdir, train_accuracy, test_accuracy)
    status = {"done": True, "seconds": 10.0, "params": 1000 * cell.depth, "command": "python scripts/ablation.py run",
              "device": "1 x cpu (cpu)", "cpu": "AMD EPYC, 2 cores", "commit": "abc123", "date": "2026-01-01T00:00:00+00:00",
              "load_average_1m": 2.0, "attempts": 1}
    ablation.write_status(workdir, status)


class Preempted(Exception):
    pass


def test_finished_cells_are_skipped_and_unfinished_ones_resumed(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_train(config, workdir, overwrite=False):
        calls.append((config.model.name, config.seed, Path(workdir)))
        check_workdir(Path(workdir), config, overwrite)
        save_config(Path(workdir), config)
        if config.model.name == "plain20" and len(calls) < 4:
            raise Preempted  # the first attempt at plain20 dies before it finishes
        write_events(Path(workdir), 0.9, 0.8)
        checkpoints = Checkpoints(workdir)
        checkpoints.save(FakeState(jnp.asarray(100), {"conv": {"kernel": jnp.ones((3, 3, 2, 4))}}), {})
        checkpoints.close()
        return {"test/accuracy": 0.8}

    monkeypatch.setattr(ablation, "train_and_evaluate", fake_train)
    cells = ablation.grid(["plain", "residual"], [8, 20], [0])
    with pytest.raises(Preempted):
        ablation.run_grid(cpu_config, cells, tmp_path)
    assert [c[0] for c in calls] == ["plain8", "resnet8", "plain20"]
    status = ablation.read_status(tmp_path / "plain20-seed0")
    assert status["attempts"] == 1 and not status.get("done")

    ablation.run_grid(cpu_config, cells, tmp_path)
    out = capsys.readouterr().out
    assert [c[:2] for c in calls[3:]] == [("plain20", 0), ("resnet20", 0)]  # done cells were not trained again
    assert calls[3][2] == calls[2][2] == tmp_path / "plain20-seed0"  # resumed in the same workdir
    assert "plain8-seed0 (plain8, seed 0): skipped" in out and "plain20-seed0 (plain20, seed 0): resumed" in out
    assert "residual20-seed0 (resnet20, seed 0): started" in out
    status = ablation.read_status(tmp_path / "plain20-seed0")
    assert status["attempts"] == 2 and status["done"] and status["params"] == 3 * 3 * 2 * 4

    ablation.run_grid(cpu_config, cells, tmp_path)
    assert len(calls) == 5  # everything done: nothing trains
    with pytest.raises(ValueError, match="finished run with another config"):
        ablation.run_grid(cpu_config, cells, tmp_path, {"num_steps": 7})


def test_report_means_stds_figures_and_files(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    for cell, train, test in ((Cell("plain", 8, 0), 0.90, 0.80), (Cell("plain", 8, 1), 0.92, 0.84),
                              (Cell("residual", 8, 0), 0.91, 0.85), (Cell("residual", 8, 1), 0.93, 0.85)):
        fake_run(runs, cell, train, test)
    summary = ablation.write_report(runs, out, "python scripts/ablation.py report", copy_metrics=True)

    plain = summary["table"]["plain"][8]
    assert plain["train"] == pytest.approx((9.0, 2**0.5))  # errors 10 and 8: mean 9, sample std sqrt(2)
    assert plain["test"] == pytest.approx((18.0, 8**0.5))  # errors 20 and 16
    assert summary["table"]["residual"][8]["test"] == pytest.approx((15.0, 0.0))
    report = (out / "report.md").read_text()
    assert "| plain8 | 8 | 8,000 | 9.00 ± 1.41 | 18.00 ± 2.83 | 0, 1 | 10 |" in report
    assert "python scripts/ablation.py run" in report and "1 x cpu (cpu); host CPU AMD EPYC, 2 cores" in report and "abc123" in report
    for figure in ("figure6.png", "gradient_norms.png"):
        assert (out / figure).stat().st_size > 20_000, figure
    assert (out / "records" / "plain8-seed1" / "metrics.jsonl").exists()
    # The copies are enough to build the same report again.
    again = ablation.write_report(out / "records", tmp_path / "again", "python scripts/ablation.py report")
    assert again["table"] == summary["table"]


def observed(tmp_path: Path, plain56_train: float, residual56_train: float) -> str:
    for cell, train in ((Cell("plain", 8, 0), 0.90), (Cell("plain", 56, 0), plain56_train),
                        (Cell("residual", 8, 0), 0.90), (Cell("residual", 56, 0), residual56_train)):
        fake_run(tmp_path / "runs", cell, train, 0.85)
    ablation.write_report(tmp_path / "runs", tmp_path / "out", "report")
    text = (tmp_path / "out" / "report.md").read_text()
    return text[text.index("## What we observed"):]


def test_observed_sentences_follow_the_numbers(tmp_path):
    degraded = observed(tmp_path / "a", plain56_train=0.80, residual56_train=0.95)
    assert "plain56 ends with higher training error than plain8 (20.00% vs 10.00%)" in degraded
    assert "the deeper plain net trains worse" in degraded and "the deeper residual net trains better" in degraded
    assert "degradation effect is reproduced" in degraded and "plain +10.00 points, residual -5.00 points" in degraded
    assert "resnet56 ends with lower training error than plain56" in degraded

    flipped = observed(tmp_path / "b", plain56_train=0.95, residual56_train=0.80)
    assert "plain56 ends with lower training error than plain8 (5.00% vs 10.00%)" in flipped
    assert "the deeper plain net does not (yet) train worse" in flipped
    assert "degradation effect is not reproduced" in flipped

    both = observed(tmp_path / "c", plain56_train=0.80, residual56_train=0.85)
    assert "here even the deeper residual net trains worse" in both and "degradation effect is partly reproduced" in both


def test_a_real_tiny_grid_end_to_end(tmp_path, learnable_idx_dir):
    def tiny(model):
        c = cpu_config(model)
        c.model.widths = (4, 8, 16)
        c.data.update(path=str(learnable_idx_dir), val_size=64, train_subset=0, image_size=0)
        c.update(batch_size=32, num_steps=8, log_every_steps=4, diagnostics_every_steps=0)
        c.schedule.boundaries = (4, 6)
        return c

    ablation.run_grid(tiny, [Cell("residual", 8, 0)], tmp_path / "runs", command="test")
    summary = ablation.write_report(tmp_path / "runs", tmp_path / "out", "test")
    [cell] = summary["cells"]
    assert cell["name"] == "residual8-seed0" and cell["steps"] == 8 and cell["params"] == 4934
    assert (tmp_path / "out" / "figure6.png").exists() and "resnet8 | 8 | 4,934 |" in (tmp_path / "out" / "report.md").read_text()
