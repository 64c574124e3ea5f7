"""The GPU campaign without a GPU: its tiny CPU preset end to end, its budgets, its epoch sizing, and the
resnet50 / torchvision pairing that only the GPU preset times."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from benchmarks.campaign import gpu_campaign

ROOT = Path(__file__).resolve().parents[1]


def only(folder: Path, pattern: str) -> Path:
    [path] = folder.glob(pattern)
    return path


@pytest.fixture(scope="module")
def tiny_campaign(tmp_path_factory, learnable_idx_dir):
    """bash benchmarks/campaign/gpu_campaign.sh OUT --tiny, every part, on the tiny learnable IDX files:
    (OUT, pack, stdout)."""
    out = tmp_path_factory.mktemp("campaign") / "out"
    pack = out.parent / "campaign.tar.gz"
    env = dict(os.environ, PYTHON=sys.executable, CAMPAIGN_SITE=str(out.parent / "site"))
    done = subprocess.run(["bash", "benchmarks/campaign/gpu_campaign.sh", str(out), "--tiny",
                           "--data", str(learnable_idx_dir), "--pack", str(pack)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return out, pack, done.stdout


def test_tiny_campaign_runs_every_part_and_indexes_it(tiny_campaign):
    out, _, stdout = tiny_campaign
    results = out / "benchmarks" / "results"
    index = json.loads(only(results, "campaign-*.json").read_text())
    assert list(index["parts"]) == list(gpu_campaign.PARTS)
    assert all(part["status"] == "done" for part in index["parts"].values()), index["parts"]
    assert index["preset"] == "tiny" and index["commit"] and index["device"] and "--xla_backend" in index["xla_flags"]
    assert "| accuracy | done |" in only(results, "campaign-*.md").read_text() and "| ablation | done |" in stdout
    for name in ("smoke", "train_step", "input_pipeline"):
        record = json.loads(only(results, f"{name}-*.json").read_text())
        assert record["status"] == "done", name
        assert {"date", "commit", "device", "versions", "budget_s"} <= record.keys(), name
        assert only(results, f"{name}-*.md").read_text().startswith("# "), name


def test_tiny_smoke_records_each_test(tiny_campaign):
    record = json.loads(only(tiny_campaign[0] / "benchmarks" / "results", "smoke-*.json").read_text())
    assert record["exit_code"] == 0 and record["counts"] == {"PASSED": 1} and record["failures"] == []
    [test] = record["tests"]
    assert "test_parameter_counts_match_papers_and_torchvision[resnet20" in test


def test_tiny_speed_times_jax_and_pytorch_and_says_why_compile_is_skipped(tiny_campaign):
    record = json.loads(only(tiny_campaign[0] / "benchmarks" / "results", "train_step-*.json").read_text())
    [case] = record["cases"]
    assert case["case"]["dtype"] == "bfloat16" and case["param_counts"]["ok"]
    assert set(case["results"]) == {"jax (jit)", "pytorch eager", "pytorch eager, channels_last"}
    jax_result = case["results"]["jax (jit)"]
    assert jax_result["images_per_sec_median"] > 0 and jax_result["compile_s"] > 0
    assert jax_result["peak_memory_bytes"] > 0
    assert jax_result["model_flops_utilisation"]["measured matmul"] > 0 and case["train_flops_per_image"] > 0
    assert case["ratios"]["jax / pytorch eager"]["of_medians"] > 0
    assert "not run on CPU" in case["skipped"]["pytorch compile, channels_last"]
    assert record["peak_flops"]["datasheet"]["bfloat16"] is None  # no datasheet peak for a CPU: no MFU against one
    assert "datasheet" not in jax_result["model_flops_utilisation"]


def test_tiny_speed_sweeps_steps_per_call(tiny_campaign):
    record = json.loads(only(tiny_campaign[0] / "benchmarks" / "results", "steps_per_call-*.json").read_text())
    [case] = record["cases"]
    assert record["status"] == "done" and case["model"] == "resnet8" and case["steps_per_call"] == 8
    assert set(case["images_per_sec_median"]) == {"K=1", "K=8"}
    assert all(rate > 0 for rate in case["images_per_sec_median"].values()) and case["over_k1"]["K=1"] == 1


def test_tiny_pipeline_compares_fed_and_resident_steps(tiny_campaign):
    record = json.loads(only(tiny_campaign[0] / "benchmarks" / "results", "input_pipeline-*.json").read_text())
    case = record["cases"][gpu_campaign.RECIPE_CASE]
    assert case["fed_over_resident"] > 0 and isinstance(case["meets_target"], bool)
    assert len(case["images_per_sec_repeats"]["pipeline"]) == len(case["images_per_sec_repeats"]["resident"]) == 2


def test_tiny_accuracy_trains_the_planned_epochs_and_times_them(tiny_campaign):
    dest = tiny_campaign[0] / "experiments" / "results" / "fashion_mnist_gpu"
    record = json.loads((dest / "result.json").read_text())
    assert record["status"] == "done" and record["epochs_done"] == record["planned_epochs"] == 2
    assert record["probe"]["source"].startswith("benchmarks/results/input_pipeline-")  # the pipeline part's measurement
    assert record["final_test_accuracy"] > 0.9  # the tiny data is two classes of dark and bright noise
    walls = [e["wall_s"] for e in record["epochs"]]
    assert walls == sorted(walls) and record["time_to_target_s"] in walls and record["wall_s"] >= walls[-1]
    assert (dest / "metrics.jsonl").exists() and (dest / "curves.png").exists()
    assert "Final test accuracy: **" in (dest / "report.md").read_text()


def test_tiny_ablation_reports_plain_and_residual(tiny_campaign):
    dest = tiny_campaign[0] / "experiments" / "results" / "ablation_gpu"
    record = json.loads((dest / "campaign.json").read_text())
    assert record["status"] == "done" and record["exit_codes"] == [0]
    assert record["cells"] == {name: {"done": True, "seconds": pytest.approx(record["cells"][name]["seconds"])}
                               for name in ("plain8-seed0", "resnet8-seed0")}
    summary = json.loads((dest / "summary.json").read_text())
    assert {c["name"] for c in summary["cells"]} == {"plain8-seed0", "resnet8-seed0"}
    assert (dest / "figure6.png").exists() and "| resnet8 |" in (dest / "report.md").read_text()


def test_tiny_lab_runs_every_instrument_on_the_ablations_nets(tiny_campaign):
    dest = tiny_campaign[0] / "experiments" / "results" / "lab_gpu"
    record = json.loads((dest / "campaign.json").read_text())
    assert record["status"] == "done" and list(record["steps"]) == [
        "signal at init", "shattered gradients", "signal trained", "lesion", "landscape resnet8"]
    assert all(step["status"] == "done" for step in record["steps"].values()), record["steps"]
    assert "runs/ablation_gpu/resnet8-seed0" in record["steps"]["lesion"]["command"]  # the ablation part's nets
    signal = json.loads((dest / "signal_trained" / "signal.json").read_text())
    assert [net["label"] for net in signal["nets"]] == ["plain8-seed0 (trained)", "resnet8-seed0 (trained)"]
    lesion = json.loads((dest / "lesion" / "lesion.json").read_text())
    assert [net["label"] for net in lesion["nets"]] == ["resnet8-seed0", "plain8-seed0"]
    assert all(len(net["single"]) == 3 and net["ks"] == [0, 1, 2] for net in lesion["nets"])
    landscape = np.load(dest / "landscape" / "resnet8_landscape.npz")
    assert landscape["loss_2d"].shape == (3, 3) and np.isfinite(landscape["loss_2d"]).all()
    shattered = json.loads((dest / "shattered" / "shattered.json").read_text())
    assert set(shattered["nets"]) == {"plain8", "resnet8"}


def test_lab_steps_that_need_the_ablations_nets_say_so_when_they_are_missing(tmp_path):
    out = gpu_campaign.Output(tmp_path, None)
    steps = gpu_campaign.lab_steps(out, tiny=False, data=Path("/data"))
    why = {name: reason for name, _, reason in steps}
    assert why["signal at init"] == why["shattered gradients"] == ""
    assert why["lesion"].startswith("not run: the ablation part did not train resnet56-seed0, plain56-seed0")
    assert "--points 51" in " ".join(dict((n, c) for n, c, _ in steps)["landscape resnet56"])


def test_the_pack_holds_the_results_but_not_the_runs(tiny_campaign):
    out, pack, _ = tiny_campaign
    with tarfile.open(pack) as tar:
        names = set(tar.getnames())
    written = {str(p.relative_to(out)) for p in out.rglob("*")
               if p.is_file() and "runs" not in p.relative_to(out).parts}
    assert written and written <= names and not any(n.startswith("runs") for n in names)


def test_parts_past_their_budget_stop_and_still_write_their_records(tmp_path, learnable_idx_dir, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # main() adds the tiny flag; restored after
    code = gpu_campaign.main([str(tmp_path), "--tiny", "--data", str(learnable_idx_dir), "--parts", "smoke,speed",
                              "--budgets", "smoke=0,speed=0"])
    assert code == 0
    results = tmp_path / "benchmarks" / "results"
    smoke = json.loads(only(results, "smoke-*.json").read_text())
    assert smoke["status"] == "stopped at the budget" and smoke["exit_code"] is None  # pytest was stopped
    speed = json.loads(only(results, "train_step-*.json").read_text())
    assert [c["error"] for c in speed["cases"]] == ["not run: the part's time budget was spent"]
    with pytest.raises(SystemExit):
        gpu_campaign.main([str(tmp_path), "--tiny", "--data", str(learnable_idx_dir), "--parts", "smoke,speeed"])


def test_epochs_are_sized_to_the_budget():
    config = gpu_campaign.load_experiment("fashion_mnist_gpu").get_config()  # 40 epochs of batch 512
    probe = {"images_per_sec_median": {"pipeline": 51_200.0}, "steps_per_epoch": 100, "split_sizes": {"train": 51_200,
             "test": 15_360}, "setup_s": 4.0, "first_step_s": 6.0}
    # An epoch: 100 steps of 512 at 51,200 images/s (1 s) + 15,360 test images at a third of a step's cost (0.1 s);
    # the start: 10 s + 1.5 x 10 s. With 100 s: (0.9 x 100 - 25) / 1.1 = 59 epochs -> the recipe's 40.
    assert gpu_campaign.plan_epochs(config, probe, 100.0) == 40
    assert gpu_campaign.plan_epochs(config, probe, 50.0) == 18  # (45 - 25) / 1.1
    assert gpu_campaign.plan_epochs(config, probe, 10.0) == 1  # never fewer than one


def test_resnet50_has_torchvisions_parameter_count():
    import train_step  # benchmarks/, which benchmarks.campaign.gpu_campaign puts on sys.path

    counts = train_step.check_param_counts(train_step.Case("resnet50", 2, 64, "bfloat16"))
    assert counts == {"jax": 25_557_032, "pytorch": 25_557_032, "expected": 25_557_032, "ok": True}


def test_a_benchmark_record_is_written_under_its_name_day_and_details(tmp_path, capsys):
    from resnet_jax.provenance import write_record

    record = {"benchmark": "train_step", "date": "2026-12-03T02:40:00+00:00", "results": [{"images_per_sec": 1.5}]}
    path = write_record(record, tmp_path / "results", "train_step", "amd-epyc-2cpu", "resnet20", "b128")
    assert path == tmp_path / "results" / "train_step-2026-12-03-amd-epyc-2cpu-resnet20-b128.json"
    assert json.loads(path.read_text()) == record and f"wrote {path}" in capsys.readouterr().out
    assert write_record(record, tmp_path / "results", "input_pipeline").name == "input_pipeline-2026-12-03.json"
