"""Ablation runner and report: grid over any config axes and partition, skip/resume, mean ± std, the observed
sentences, and a real tiny grid over a new axis through the command line."""

import json
import sys
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import pytest
from flax import struct

from resnet_jax.checkpoints import Checkpoints
from resnet_jax.config import ConfigError
from resnet_jax.workdir import check_workdir, save_config
from scripts import ablation

CPU_EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "ablation_cpu.py"


def cpu_config(model: str = "resnet20"):
    return ablation.load_experiment(CPU_EXPERIMENT).get_config(model)


def model_cell(config: str, seed: int = 0) -> ablation.Cell:
    return ablation.Cell((("seed", seed), ("config", config)))


def test_grid_covers_every_cell_and_workers_share_it_without_overlap():
    experiment = ablation.load_experiment(CPU_EXPERIMENT)
    cells = ablation.grid(experiment.get_grid())
    assert len({c.name for c in cells}) == 12
    assert [c.name for c in cells[:3]] == ["plain8-seed0", "resnet8-seed0", "plain20-seed0"]  # seed-major
    assert {dict(c.axes)["config"] for c in cells} == {f"{n}{d}" for n in ("plain", "resnet") for d in (8, 20, 56)}
    for workers in (1, 2, 3, 5, 12, 13):
        shares = [ablation.partition(cells, workers, i) for i in range(workers)]
        assert sorted(c.name for share in shares for c in share) == sorted(c.name for c in cells)  # covering, disjoint
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    with pytest.raises(ValueError, match="worker-index"):
        ablation.partition(cells, 2, 2)


def test_any_config_key_is_an_axis_named_in_the_cells():
    axes = dict(map(ablation.parse_axis, ["model.zero_init_residual=true,false", "model.widths=(4, 8, 16),(8, 16, 32)",
                                          "optimizer.learning_rate=0.1,0.05"]))
    assert axes == {"model.zero_init_residual": [True, False], "model.widths": [(4, 8, 16), (8, 16, 32)],
                    "optimizer.learning_rate": [0.1, 0.05]}
    cells = ablation.grid(axes | {"seed": [3]})
    assert len(cells) == 8 and cells[0].name == "zero_init_residual=True-widths=4_8_16-learning_rate=0.1-seed3"
    config = ablation.cell_config(cpu_config, cells[-1], {"num_steps": 5})
    model, optimizer = config.model, config.optimizer
    assert (model.zero_init_residual, model.widths, optimizer.learning_rate) == (False, (8, 16, 32), 0.05)
    assert (config.seed, config.num_steps, config.model.name) == (3, 5, "resnet20")  # get_config() of the file
    # Two axes sharing a last part keep their whole keys apart; cells that would share a folder are refused.
    both = ablation.grid({"optimizer.name": ["sgd"], "schedule.name": ["cosine"]})
    assert both[0].name == "optimizer.name=sgd-schedule.name=cosine-seed0"
    with pytest.raises(ValueError, match="same name"):
        ablation.grid({"data.path": ["/a b", "/a_b"]})
    # A key that is not in the config is refused, naming the nearest keys, before anything trains.
    with pytest.raises(ConfigError, match=r"model\.zero_init_residul: no such key \(did you mean "
                                          r"--config\.model\.zero_init_residual"):
        ablation.cell_config(cpu_config, ablation.grid({"model.zero_init_residul": [True]})[0], {})


def test_the_grid_is_the_files_get_grid_updated_by_the_command_line():
    experiment = ablation.load_experiment(CPU_EXPERIMENT)
    axes = ablation.grid_axes(experiment, ["config=plain8,resnet8", "model.zero_init_residual=True,False"], "4")
    assert axes == {"config": ["plain8", "resnet8"], "seed": [4], "model.zero_init_residual": [True, False]}
    assert len(ablation.grid(axes)) == 4


def test_cell_config_sets_model_seed_and_overrides():
    overrides = ablation.parse_overrides(["num_steps=5", "data.path=/data/fm", "schedule.boundaries=(2, 4)"])
    assert overrides == {"num_steps": 5, "data.path": "/data/fm", "schedule.boundaries": (2, 4)}
    config = ablation.cell_config(cpu_config, model_cell("plain56", 1), overrides)
    assert (config.model.name, config.seed, config.num_steps, config.data.path) == ("plain56", 1, 5, "/data/fm")
    assert ablation.cell_config(cpu_config, model_cell("resnet20"), {}).model.name == "resnet20"


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


def fake_run(root: Path, cell: ablation.Cell, train_accuracy: float, test_accuracy: float) -> None:
    """A finished cell as the runner leaves it: config.json, metrics.jsonl and ablation.json."""
    workdir = root / cell.name
    config = ablation.cell_config(cpu_config, cell, {})
    save_config(workdir, config)
    write_events(workdir, train_accuracy, test_accuracy)
    depth = int(config.model.name.removeprefix("plain").removeprefix("resnet"))
    status = {"done": True, "seconds": 10.0, "params": 1000 * depth,
              "command": "python scripts/ablation.py run", "device": "1 x cpu (cpu)", "cpu": "AMD EPYC, 2 cores",
              "commit": "abc123", "date": "2026-01-01T00:00:00+00:00", "load_average_1m": 2.0, "attempts": 1,
              "axes": dict(cell.axes)}
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
    cells = ablation.grid({"config": ["plain8", "resnet8", "plain20", "resnet20"]})
    with pytest.raises(Preempted):
        ablation.run_grid(cpu_config, cells, tmp_path)
    assert [c[0] for c in calls] == ["plain8", "resnet8", "plain20"]
    status = ablation.read_status(tmp_path / "plain20-seed0")
    assert status["attempts"] == 1 and not status.get("done")

    ablation.run_grid(cpu_config, cells, tmp_path)
    out = capsys.readouterr().out
    assert [c[:2] for c in calls[3:]] == [("plain20", 0), ("resnet20", 0)]  # done cells were not trained again
    assert calls[3][2] == calls[2][2] == tmp_path / "plain20-seed0"  # resumed in the same workdir
    assert "plain8-seed0: skipped" in out and "plain20-seed0: resumed" in out and "resnet20-seed0: started" in out
    status = ablation.read_status(tmp_path / "plain20-seed0")
    assert status["attempts"] == 2 and status["done"] and status["params"] == 3 * 3 * 2 * 4
    assert status["axes"] == {"seed": 0, "config": "plain20"}  # what the report groups and names by

    ablation.run_grid(cpu_config, cells, tmp_path)
    assert len(calls) == 5  # everything done: nothing trains
    with pytest.raises(ValueError, match="finished run with another config"):
        ablation.run_grid(cpu_config, cells, tmp_path, {"num_steps": 7})


def test_report_means_stds_figures_and_files(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    for cell, train, test in ((model_cell("plain8", 0), 0.90, 0.80), (model_cell("plain8", 1), 0.92, 0.84),
                              (model_cell("resnet8", 0), 0.91, 0.85), (model_cell("resnet8", 1), 0.93, 0.85)):
        fake_run(runs, cell, train, test)
    summary = ablation.write_report(runs, out, "python scripts/ablation.py report", copy_metrics=True)

    plain, residual = summary["table"]
    assert plain["axes"] == {"config": "plain8"} and plain["seeds"] == [0, 1]
    assert plain["train"] == pytest.approx((9.0, 2**0.5))  # errors 10 and 8: mean 9, sample std sqrt(2)
    assert plain["test"] == pytest.approx((18.0, 8**0.5))  # errors 20 and 16
    assert residual["axes"] == {"config": "resnet8"} and residual["test"] == pytest.approx((15.0, 0.0))
    report = (out / "report.md").read_text()
    assert "| config | params | train error (%) | test error (%) | seeds | wall time per run (s) |" in report
    assert "| plain8 | 8,000 | 9.00 ± 1.41 | 18.00 ± 2.83 | 0, 1 | 10 |" in report
    assert "python scripts/ablation.py run" in report and "1 x cpu (cpu); host CPU AMD EPYC, 2 cores" in report
    assert "abc123" in report and "| model.name |" not in report  # it varies: not shared config
    for figure in ("figure6.png", "gradient_norms.png", "depth_sweep.png"):
        assert (out / figure).stat().st_size > 20_000, figure
    assert (out / "records" / "plain8-seed1" / "metrics.jsonl").exists()
    # The copies are enough to build the same report again.
    again = ablation.write_report(out / "records", tmp_path / "again", "python scripts/ablation.py report")
    assert again["table"] == summary["table"]


def test_variant_depth_configs_get_errors_against_depth():
    rows = [{"axes": {"config": name}, "train": (t, None), "test": (t, None)}
            for name, t in (("fixup8", 1.0), ("plain56", 2.0), ("fixup56", 3.0), ("plain8", 4.0))]
    variants = ablation.by_variant_and_depth(rows)
    assert variants == {"fixup": {8: rows[0], 56: rows[2]}, "plain": {8: rows[3], 56: rows[1]}}
    assert list(variants["plain"]) == [8, 56]  # by depth
    assert ablation.by_variant_and_depth([{"axes": {"config": "quickstart"}}]) is None
    assert ablation.by_variant_and_depth([{"axes": {"config": "plain8", "model.shortcut": "A"}}]) is None


def observed(tmp_path: Path, plain56_train: float, residual56_train: float) -> str:
    for cell, train in ((model_cell("plain8"), 0.90), (model_cell("plain56"), plain56_train),
                        (model_cell("resnet8"), 0.90), (model_cell("resnet56"), residual56_train)):
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
    assert "here even the deeper residual net trains worse" in both
    assert "degradation effect is partly reproduced" in both


TINY_EXPERIMENT = """
from experiments.quickstart import get_config as quickstart


def get_config():
    c = quickstart()
    c.model.widths = (4, 8, 16)
    c.data.update(path={path!r}, val_size=64)
    c.update(batch_size=32, num_steps=4, log_every_steps=2, diagnostics_every_steps=0)
    return c
"""


def test_a_new_axis_runs_a_real_tiny_grid_from_the_command_line_and_reports_each_cell(
        tmp_path, learnable_idx_dir, monkeypatch, capsys):
    experiment, root, out = tmp_path / "zero_init.py", tmp_path / "runs", tmp_path / "out"
    experiment.write_text(TINY_EXPERIMENT.format(path=str(learnable_idx_dir)))
    monkeypatch.setattr(sys, "argv", ["ablation.py", "run", "--config", str(experiment), "--root", str(root),
                                      "--axis", "model.zero_init_residual=true,false",
                                      "--axis", "model.name=resnet8"])  # 2 cells: each costs its compilations
    ablation.main()
    assert "2 of 2 cells" in capsys.readouterr().out
    summary = ablation.write_report(root, out, "test")

    names = {c["name"] for c in summary["cells"]}
    assert names == {"zero_init_residual=True-name=resnet8-seed0", "zero_init_residual=False-name=resnet8-seed0"}
    for name in names:
        config = json.loads((root / name / "config.json").read_text())
        model = config["model"]
        assert name == f"zero_init_residual={model['zero_init_residual']}-name={model['name']}-seed0"
    assert all(c["steps"] == 4 for c in summary["cells"])
    report = (out / "report.md").read_text()
    assert "# Ablation over model.zero_init_residual, model.name (out)" in report
    assert "| model.zero_init_residual | model.name | params |" in report
    for zero_init in (True, False):
        assert f"| {zero_init} | resnet8 | 4,934 |" in report
    # Two cells of one net and depth: not the plain-vs-residual depth grid, so no Figure 6.
    assert not (out / "figure6.png").exists() and "## What we observed" not in report

    # The grid is resumable: run again, every cell is skipped.
    ablation.main()
    assert capsys.readouterr().out.count(": skipped (done") == 2

