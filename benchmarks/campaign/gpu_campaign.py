"""The GPU campaign: six parts that prove resnet-jax on a lent GPU, each within a time budget it keeps itself.

    bash benchmarks/campaign/gpu_campaign.sh OUT_DIR [--parts smoke,speed,pipeline,accuracy,ablation,lab] [--tiny]
                                             [--data DIR] [--budgets part=seconds,...] [--pack FILE.tar.gz]

  smoke     the model and training tests (bf16 included) under pytest on the accelerator
  speed     the train step, resnet-jax vs PyTorch (eager, channels_last, torch.compile; autocast for bf16) in one
            process: images/s, step time, compile time, peak memory, FLOP utilisation (benchmarks/train_step.py);
            then one vs 8 training steps per compiled call for resnet8/20 (benchmarks/steps_per_call.py)
  pipeline  the step fed by the in-memory Fashion-MNIST pipeline vs by a device-resident batch (input_pipeline.py)
  accuracy  experiments/fashion_mnist_gpu.py, its epochs sized to the budget by a measured step: test accuracy,
            wall time, time to 94%
  ablation  experiments/ablation_gpu.py: plain vs residual nets of depth 20/56/110, the report and Figure 6
  lab       the residual lab (resnet_jax.lab) at paper width: signal propagation and shattered gradients at
            initialisation; on the ablation's trained nets (same OUT_DIR), signal, lesions and 51x51 landscapes

OUT_DIR is laid out as the repository, so its results can be committed as they are: benchmarks/results/
<name>-<date>-<device>.json + .md (smoke, train_step, steps_per_call, input_pipeline, and campaign: the index of
the parts), experiments/results/{fashion_mnist_gpu,ablation_gpu,lab_gpu}/; logs/ holds the
subprocesses' output and runs/ their workdirs (checkpoints). Every part writes its record as it goes; with --pack,
every write also re-packs everything but runs/ into one .tar.gz, so a command killed at the device's limit still
returns its results.
--tiny is the CPU preset of every part (tiny nets, few steps), run by tests/test_gpu_campaign.py in CI; parts or
variants that need a GPU are left out there with the reason recorded. benchmarks/README.md has the exact commands.
"""

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[2]
# experiments.* and scripts.* as from the root; benchmarks/*.py as top-level modules
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from resnet_jax.provenance import device_slug, provenance  # noqa: E402

BUDGETS = {  # seconds per part: device commands of 5.3 and 7.7 minutes (benchmarks/README.md)
    "gpu": {"smoke": 75, "speed": 200, "pipeline": 40, "accuracy": 140, "ablation": 140, "lab": 180},
    "tiny": {"smoke": 600, "speed": 600, "pipeline": 600, "accuracy": 600, "ablation": 600, "lab": 600},  # hang caps
}
TINY_XLA_FLAGS = "--xla_backend_optimization_level=0"  # CPU compiles 3x faster: tiny runs check code, not speed
DATA = [ROOT / ".carry" / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist")]  # the first that exists
STOP_GRACE_S = 10  # a subprocess stopped at the deadline gets this long after SIGTERM before SIGKILL
SPENT = "not run: the part's time budget was spent"


def flops(x: float | None) -> str:
    """A FLOP rate for a table: TFLOP/s or GFLOP/s."""
    return "unknown" if x is None else f"{x / 1e12:.1f} TFLOP/s" if x >= 1e12 else f"{x / 1e9:.1f} GFLOP/s"


def preset(tiny: bool) -> str:
    return "tiny" if tiny else "gpu"


class Output:
    """OUT_DIR as the repository lays results out, plus logs/ and runs/; `save` writes files and re-packs."""

    def __init__(self, root: Path, pack: Path | None):
        self.root, self.pack_path = root, pack
        self.runs, self.logs = root / "runs", root / "logs"
        self.stamp = f"{time.strftime('%Y-%m-%d', time.gmtime())}-{device_slug()}"

    def result(self, name: str) -> Path:
        """benchmarks/results/<name>-<date>-<device> (add the suffix)."""
        return self.root / "benchmarks" / "results" / f"{name}-{self.stamp}"

    def experiment(self, name: str) -> Path:
        return self.root / "experiments" / "results" / name

    def log(self, name: str) -> Path:
        self.logs.mkdir(parents=True, exist_ok=True)
        return self.logs / name

    def save(self, files: dict[Path, str | dict]) -> None:
        """Write each file (a dict as indented JSON), then re-pack the results if a pack was asked for."""
        for path, content in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(content, indent=1, default=str) + "\n" if isinstance(content, dict) else content)
        self.pack()

    def pack(self) -> None:
        """Everything but runs/ into the pack file, replaced atomically."""
        if not self.pack_path:
            return
        partial = self.pack_path.with_name(self.pack_path.name + ".partial")
        with tarfile.open(partial, "w:gz") as tar:
            for child in sorted(self.root.iterdir()):
                if child != self.runs:
                    tar.add(child, arcname=child.name)
        os.replace(partial, self.pack_path)


def header(part: str, tiny: bool, deadline: float) -> dict:
    return {"part": part, "preset": preset(tiny), "budget_s": round(deadline - time.perf_counter()), **provenance()}


def table(head: list[str], rows: list[list]) -> list[str]:
    """A markdown table."""
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(map(str, r)) + " |" for r in rows]


def provenance_lines(record: dict) -> list[str]:
    nvidia = record.get("nvidia") or {}
    driver = f"; driver {nvidia['driver']}, CUDA {nvidia['cuda_driver_api']}" if nvidia.get("driver") else ""
    versions = ", ".join(f"{k} {v}" for k, v in record["versions"].items())
    return [f"- Device: {record['device']}{driver}; host {record['cpu']}", f"- Versions: {versions}",
            f"- Date {record['date']}, commit {record['commit']}; preset `{record['preset']}`, budget "
            f"{record['budget_s']} s; status: **{record['status']}**", ""]


def run_until(commands: list[list[str]], logs: list[Path], deadline: float, on_poll: Callable[[], None] = lambda: None,
              poll_s: float = 0.5) -> list[int | None]:
    """Run the commands side by side from the repository root, each into its log, until all have exited or `deadline`
    (a time.perf_counter() value) passes, then stop the rest (SIGTERM, then SIGKILL). Calls on_poll every poll_s.
    Returns the exit codes, None for a command stopped at the deadline."""
    with contextlib.ExitStack() as files:
        procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=files.enter_context(log.open("w")), stderr=subprocess.STDOUT)
                 for cmd, log in zip(commands, logs, strict=True)]
        while any(p.poll() is None for p in procs) and time.perf_counter() < deadline:
            time.sleep(poll_s)
            on_poll()
        stopped = [p for p in procs if p.poll() is None]
        for p in stopped:
            p.terminate()
        for p in stopped:
            try:
                p.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return [None if p in stopped else p.returncode for p in procs]


def load_experiment(name: str):
    from scripts.ablation import load_experiment

    return load_experiment(ROOT / "experiments" / f"{name}.py")


# ---- 1. smoke -------------------------------------------------------------------------------------------------

# pytest arguments; on the GPU the model and training tests but the CPU-only 8-device one and the CLI (the accuracy
# part runs the CLI)
SMOKE_TESTS = {
    "gpu": ["tests/test_models.py", "tests/test_train.py", "-k", "not 8_devices and not cli"],
    "tiny": ["tests/test_models.py", "-k", "parameter_counts_match_papers and resnet20"],
}
TEST_LINE = re.compile(r"^(tests/\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
FAILURE_LINE = re.compile(r"^(FAILED|ERROR) tests/")


def smoke(out: Output, deadline: float, tiny: bool, data: Path) -> str:
    """pytest on the selected tests; outcome of each test (read from -v output as it comes) and the failures."""
    cmd = [sys.executable, "-m", "pytest", *SMOKE_TESTS[preset(tiny)], "-v", "-rfE", "-p", "no:cacheprovider"]
    log, stem = out.log("smoke.log"), out.result("smoke")
    record = header("smoke", tiny, deadline) | {"status": "running", "command": shlex.join(["python", *cmd[1:]]),
                                                "log": "logs/smoke.log", "tests": {}}

    def update(status: str | None = None, code: int | None = None) -> None:
        lines = log.read_text(errors="replace").splitlines()
        tests = {m[1]: m[2] for m in map(TEST_LINE.match, lines) if m}
        if status is None and tests == record["tests"]:
            return
        record.update(tests=tests, counts=dict(Counter(tests.values())), exit_code=code,
                      failures=[line for line in lines if FAILURE_LINE.match(line)], status=status or "running")
        md = [f"# Smoke tests ({record['preset']})", "", f"`{record['command']}`", "", *provenance_lines(record)]
        md += table(["outcome", "tests"], sorted(record["counts"].items()))
        md += ["", "Failures:" if record["failures"] else "No failures.", *[f"- `{f}`" for f in record["failures"]]]
        out.save({stem.with_suffix(".json"): record, stem.with_suffix(".md"): "\n".join(md) + "\n"})

    [code] = run_until([cmd], [log], deadline, update)
    update({None: "stopped at the budget", 0: "done"}.get(code, f"done, pytest exit code {code}"), code)
    return ", ".join(f"{n} {k.lower()}" for k, n in sorted(record["counts"].items())) or "no test ran"


# ---- 2. speed -------------------------------------------------------------------------------------------------


COMPILE_LEFT_OUT = "left out of this case to fit the part's budget (about a minute of compilation per case)"
MIN_COMPILE_S = 60  # torch.compile is not started with less of the budget left


def speed_cases(tiny: bool) -> list[tuple]:
    """(case, whether torch.compile is timed), the most telling first: a part out of budget leaves out the last ones.

    torch.compile is timed where it matters most (each model once, at the paper's batch or the largest ImageNet
    batch). The steps_per_call sweep (steps_per_call_cases) follows them.
    """
    from train_step import Case

    if tiny:  # bfloat16: JAX's bf16 step and torch.autocast are the paths the GPU cases take
        return [(Case("resnet8", 8, 16, "bfloat16"), True)]
    return [(Case("resnet20", 128), True), (Case("resnet50", 256, 224, "bfloat16"), True),
            (Case("resnet20", 1024), False), (Case("resnet56", 128), True), (Case("resnet56", 1024), False),
            (Case("resnet20", 1024, dtype="bfloat16"), False), (Case("resnet56", 1024, dtype="bfloat16"), False)]


def speed(out: Output, deadline: float, tiny: bool, data: Path) -> str:
    """Each case interleaved in JAX and the PyTorch variants; peaks from the datasheet and a measured matmul."""
    record = header("speed", tiny, deadline)
    import torch

    import train_step as bench

    on_gpu = jax.devices()[0].platform == "gpu"
    if on_gpu != torch.cuda.is_available():
        raise RuntimeError(f"JAX runs on {jax.devices()[0].platform} but torch.cuda.is_available() is "
                           f"{torch.cuda.is_available()}: the comparison needs both on the same device")
    device = "cuda" if on_gpu else "cpu"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(out.runs / "torchinductor"))  # cold: compile as a first run
    torch.set_num_threads(os.cpu_count())
    eager = [bench.TorchVariant(), bench.TorchVariant(channels_last=True)]
    compiled = bench.TorchVariant(compile=True, channels_last=True)
    not_on_cpu = ("not run on CPU: Inductor's cold compile takes 40-110 s per model there "
                  "(benchmarks/train_step.py times it)")
    kind = jax.devices()[0].device_kind
    size = 8192 if on_gpu else 256
    measured = {dtype: bench.matmul_flops(dtype, size) for dtype in ("bfloat16", "float32")}
    record |= {
        "status": "running", "step": bench.STEP, "torch_device": device, "torch_settings": bench.torch_settings(),
        "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
        "peak_flops": {"datasheet": {d: bench.datasheet_peak(kind, d) for d in measured}, "measured_matmul": measured,
                       "measured_matmul_size": size},
        "variants": [v.name for v in [*eager, compiled]], "cases": []}
    record["versions"]["torch"] = torch.__version__
    stem = out.result("train_step")
    for case, with_compile in speed_cases(tiny):
        variants = eager + [compiled] * (on_gpu and with_compile)
        skipped = {} if on_gpu and with_compile else {compiled.name: COMPILE_LEFT_OUT if on_gpu else not_on_cpu}
        if time.perf_counter() > deadline:
            record["cases"].append({"case": dataclasses.asdict(case), "error": SPENT})
            continue
        peaks = {"measured matmul": measured[case.dtype]}
        if bench.datasheet_peak(kind, case.dtype):
            peaks["datasheet"] = bench.datasheet_peak(kind, case.dtype)
        try:
            result = bench.benchmark_case(case, device, variants, repeats=2 if tiny else 5,
                                          repeat_s=0.02 if tiny else 0.3, deadline=deadline,
                                          min_compile_s=MIN_COMPILE_S, peaks=peaks, skipped=skipped)
        except Exception as e:  # noqa: BLE001 - one case failing (out of memory, say) is a finding; the others run
            traceback.print_exc()
            result = {"case": dataclasses.asdict(case), "error": bench.failure(e)}
        record["cases"].append(result)
        gc.collect()
        if on_gpu:
            torch.cuda.empty_cache()
        out.save({stem.with_suffix(".json"): record, stem.with_suffix(".md"): speed_markdown(record)})
    record["status"] = "done"
    out.save({stem.with_suffix(".json"): record, stem.with_suffix(".md"): speed_markdown(record)})
    timed = f"{sum('results' in c for c in record['cases'])} of {len(record['cases'])} cases timed"
    return f"{timed}; {steps_per_call_sweep(out, deadline, tiny)}"


STEPS_PER_CALL = 8


def steps_per_call_cases(tiny: bool) -> list[tuple[str, int]]:
    """(model, batch) of the small models whose steps the host's dispatch can bound on a fast device."""
    return [("resnet8", 8)] if tiny else [("resnet8", 128), ("resnet20", 128)]


def steps_per_call_sweep(out: Output, deadline: float, tiny: bool) -> str:
    """The training loop's steps over in-memory CIFAR-shaped data, one vs STEPS_PER_CALL per compiled call
    (resnet_jax.multistep), interleaved (benchmarks/steps_per_call.py); within what is left of the speed budget."""
    from steps_per_call import cifar_shaped, measure

    record = header("speed", tiny, deadline) | {"status": "running", "steps_per_call": STEPS_PER_CALL, "cases": []}
    stem = out.result("steps_per_call")
    dataset = cifar_shaped(512 if tiny else 50_000)
    for model, batch in steps_per_call_cases(tiny):
        if time.perf_counter() > deadline:
            record["cases"].append({"model": model, "batch_size": batch, "error": SPENT})
            continue
        record["cases"].append(measure(model, batch, STEPS_PER_CALL, repeats=2 if tiny else 5,
                                       repeat_s=0.02 if tiny else 0.3, dataset=dataset, deadline=deadline))
        gc.collect()
        out.save({stem.with_suffix(".json"): record, stem.with_suffix(".md"): steps_per_call_markdown(record)})
    record["status"] = "done"
    out.save({stem.with_suffix(".json"): record, stem.with_suffix(".md"): steps_per_call_markdown(record)})
    k = f"K={STEPS_PER_CALL}"
    return "steps_per_call " + ", ".join(f"{c['model']} {c['over_k1'][k]:.2f}x" if "error" not in c else
                                         f"{c['model']} not run" for c in record["cases"])


def steps_per_call_markdown(record: dict) -> str:
    k = f"K={record['steps_per_call']}"
    md = ["# Steps per compiled call: one vs K training steps per dispatch", "", *provenance_lines(record),
          "The training loop's steps (resnet_jax.multistep) on in-memory CIFAR-shaped data with crop_flip, in "
          "interleaved repeats: `K=1` (the pipeline's jitted gather, then the jitted step), "
          f"`{k}` (one lax.scan call for {record['steps_per_call']} steps, each gathering its own batch).", ""]
    rows = [[c["model"], c["batch_size"], c["error"], "", ""] if "error" in c else
            [c["model"], c["batch_size"], *(f"{c['images_per_sec_median'][w]:,.0f}" for w in ("K=1", k)),
             f"{c['over_k1'][k]:.3f}"] for c in record["cases"]]
    return "\n".join(md + table(["model", "batch", "K=1 images/s", f"{k} images/s", f"{k} / K=1"], rows)) + "\n"


def speed_markdown(record: dict) -> str:
    peaks = record["peak_flops"]
    md = ["# Train step: resnet-jax vs PyTorch", "", *provenance_lines(record), f"Step: {record['step']}.", "",
          "Peak FLOP/s: datasheet (dense) " + ", ".join(f"{d} {flops(v)}" for d, v in peaks["datasheet"].items())
          + f"; measured ({peaks['measured_matmul_size']}^3 matmul in JAX) "
          + ", ".join(f"{d} {flops(v)}" for d, v in peaks["measured_matmul"].items())
          + ". MFU = images/s x XLA's FLOP count per image of the train step / peak.", ""]
    rows = []
    for c in record["cases"]:
        name = "{model} {image_size}px b{batch_size} {dtype}".format(**c["case"])
        if "error" in c:
            rows.append([name, "-", c["error"], "", "", "", "", "", ""])
            continue
        for framework, r in c["results"].items():
            mfu = ", ".join(f"{k} {v:.1%}" for k, v in (r["model_flops_utilisation"] or {}).items())
            memory = f"{r['peak_memory_bytes'] / 2**20:,.0f}" if r["peak_memory_bytes"] is not None else "-"
            ratio = c["ratios"].get(f"jax / {framework}", {}).get("of_medians")
            rows.append([name, framework, f"{r['images_per_sec_median']:,.0f}", f"{r['step_ms_median']:.2f}",
                         f"{r['first_step_s']:.1f}", "-" if r["compile_s"] is None else f"{r['compile_s']:.1f}", memory,
                         mfu, "" if ratio is None else f"{ratio:.2f}x"])
        rows += [[name, variant, f"skipped: {reason}", "", "", "", "", "", ""]
                 for variant, reason in c["skipped"].items()]
    md += table(["case", "framework", "images/s", "step ms", "first step s", "compile s", "peak MiB", "MFU",
                 "jax / this"], rows)
    md += ["", "Memory: JAX, XLA's buffer assignment of the step (arguments + unaliased outputs + temporaries); "
           "PyTorch, "
           "the CUDA caching allocator's peak over the first steps above what was allocated before."]
    return "\n".join(md) + "\n"


# ---- 3. input pipeline ----------------------------------------------------------------------------------------


RECIPE_CASE = "fashion_mnist_gpu recipe"  # also the accuracy part's probe, when this part ran before it in OUT_DIR


def pipeline_configs(tiny: bool, data: Path) -> dict:
    """The accuracy recipe's run, and (on the GPU) paper-width resnet20 at batch 128 in float32 on the same data."""
    recipe = load_experiment("fashion_mnist_gpu").get_config(preset(tiny))
    recipe.data.path = str(data)
    if tiny:
        return {RECIPE_CASE: recipe}
    paper = recipe.copy_and_resolve_references()
    paper.model.update(name="resnet20", widths=(), version="", shortcut="", dtype="float32")
    paper.batch_size = 128
    return {RECIPE_CASE: recipe, "resnet20 b128 float32": paper}


def pipeline(out: Output, deadline: float, tiny: bool, data: Path) -> str:
    from input_pipeline import fed_vs_resident

    record = header("pipeline", tiny, deadline) | {"status": "running", "target": "fed / resident >= 0.95", "cases": {}}
    stem = out.result("input_pipeline")
    for name, config in pipeline_configs(tiny, data).items():
        if time.perf_counter() > deadline:
            record["cases"][name] = {"error": "not run: the part's time budget was spent"}
            continue
        result = fed_vs_resident(config, repeats=2 if tiny else 5, repeat_s=0.02 if tiny else 0.5, deadline=deadline)
        record["cases"][name] = result | {"meets_target": result["fed_over_resident"] >= 0.95}
        gc.collect()
        out.save({stem.with_suffix(".json"): record, stem.with_suffix(".md"): pipeline_markdown(record)})
    record["status"] = "done"
    out.save({stem.with_suffix(".json"): record, stem.with_suffix(".md"): pipeline_markdown(record)})
    return ", ".join(f"{k}: {c['fed_over_resident']:.3f}" for k, c in record["cases"].items() if "error" not in c)


def pipeline_markdown(record: dict) -> str:
    md = ["# Input pipeline: the step fed by the pipeline vs by a device-resident batch", "", *provenance_lines(record),
          "Both feeds drive the same compiled training step (resnet_jax.train) on the same state, in interleaved "
          "repeats; the pipeline gathers, augments and normalises each batch on the device. Target: fed / resident "
          ">= 0.95.", ""]
    rows = [[name, "", c["error"], "", "", ""] if "error" in c else
            [name, f"{c['model']} {c['widths'] or ''} {c['dtype']} b{c['batch_size']}",
             f"{c['images_per_sec_median']['pipeline']:,.0f}", f"{c['images_per_sec_median']['resident']:,.0f}",
             f"{c['fed_over_resident']:.3f}", "yes" if c["meets_target"] else "no"]
            for name, c in record["cases"].items()]
    head = ["case", "run", "fed images/s", "resident images/s", "fed / resident", "within 5%"]
    return "\n".join(md + table(head, rows)) + "\n"


# ---- 4. accuracy ----------------------------------------------------------------------------------------------

TARGET, BENCHMARK = 0.94, 0.949  # time to 94% test accuracy; the Zalando benchmark's ResNet-18
IMPORT_S = 10  # a training subprocess's start before it reads data: Python, JAX and the accelerator's client


def plan_epochs(config, probe: dict, seconds_left: float) -> int:
    """The most epochs (at most the recipe's) that fit: per epoch its train steps plus a forward pass over the test
    set (a third of a train step per image), at the probe's fed rate; before them the run's start, taken as IMPORT_S
    plus 1.5x the probe's setup and first step (data, compiling the train and eval steps); 10% kept in reserve for
    checkpoints and noise."""
    rate, spe = probe["images_per_sec_median"]["pipeline"], probe["steps_per_epoch"]
    eval_images = sum(n for split, n in probe["split_sizes"].items() if split != "train")
    epoch_s = spe * config.batch_size / rate + eval_images / (3 * rate)
    start_s = IMPORT_S + 1.5 * (probe["setup_s"] + probe["first_step_s"])
    return max(1, min(config.num_epochs, int((0.9 * seconds_left - start_s) / epoch_s)))


def accuracy(out: Output, deadline: float, tiny: bool, data: Path) -> str:
    """Size the recipe's epochs to the budget from a measured step (the pipeline part's, else a fresh one), train it
    with the CLI, and follow its metrics.jsonl: each epoch's test accuracy with the wall time it appeared at."""
    from input_pipeline import fed_vs_resident

    from resnet_jax.metrics import read_metrics
    from resnet_jax.summary import count_params
    from resnet_jax.config import build_model

    experiment = "experiments/fashion_mnist_gpu.py"  # the commands run from the repository root
    config = load_experiment("fashion_mnist_gpu").get_config(preset(tiny))
    config.data.path = str(data)
    workdir, dest = out.runs / "fashion_mnist_gpu", out.experiment("fashion_mnist_gpu")
    if workdir.exists():
        raise FileExistsError(f"{workdir} exists: give the campaign a fresh OUT_DIR (a resumed run has no wall time)")
    measured = out.result("input_pipeline").with_suffix(".json")
    probe = json.loads(measured.read_text())["cases"].get(RECIPE_CASE, {}) if measured.exists() else {}
    probe_source = f"{measured.relative_to(out.root)}: {RECIPE_CASE}"
    if "images_per_sec_median" not in probe:  # the pipeline part did not measure it here: measure it now
        probe = fed_vs_resident(config, repeats=1, repeat_s=0.05 if tiny else 1.0)
        probe_source = "measured by this part"
    epochs = plan_epochs(config, probe, deadline - time.perf_counter())
    cmd = [sys.executable, "-m", "resnet_jax.train", "--config", f"{experiment}:{preset(tiny)}",
           "--workdir", str(workdir), f"--config.num_epochs={epochs}", f"--config.data.path={data}"]
    model = build_model(config.model, probe["num_classes"])
    shape = (1, *probe["image_shape"])
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jax.numpy.zeros(shape), train=False))
    params = count_params(variables["params"])
    record = header("accuracy", tiny, deadline) | {
        "status": "running", "command": shlex.join(["python", *cmd[1:]]), "recipe": "experiments/fashion_mnist_gpu.py",
        "model": f"{config.model.name} widths {tuple(model.widths)} {model.version} {model.shortcut}",
        "params": params, "recipe_epochs": config.num_epochs, "planned_epochs": epochs,
        "probe": {"source": probe_source, "fed_images_per_sec": probe["images_per_sec_median"]["pipeline"],
                  "setup_s": probe["setup_s"], "first_step_s": probe["first_step_s"]},
        "target_accuracy": TARGET, "benchmark_accuracy": BENCHMARK, "epochs": []}
    launched = time.perf_counter()

    def update(status: str = "running") -> None:
        events = read_metrics(workdir)
        evaluated = [e for e in events if "test/accuracy" in e]
        if status == "running" and len(evaluated) == len(record["epochs"]):
            return
        for e in evaluated[len(record["epochs"]):]:  # first seen now: its wall time is now, to within a poll
            record["epochs"].append({"epoch": e["epoch"], "step": e["step"], "wall_s": time.perf_counter() - launched,
                                     "test_accuracy": e["test/accuracy"], "test_loss": e["test/loss"],
                                     "train_accuracy": e.get("train_epoch/accuracy")})
        reached = [e for e in record["epochs"] if e["test_accuracy"] >= TARGET]
        rates = sorted(e["images_per_sec"] for e in events if "images_per_sec" in e)
        final = record["epochs"][-1]["test_accuracy"] if record["epochs"] else None
        record.update(status=status, final_test_accuracy=final, epochs_done=len(record["epochs"]),
                      wall_s=time.perf_counter() - launched, time_to_target_s=reached[0]["wall_s"] if reached else None,
                      beats_benchmark=final is not None and final > BENCHMARK,
                      train_images_per_sec_median=rates[len(rates) // 2] if rates else None)
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.jsonl", "config.json", "curves.png"):
            if (workdir / name).exists():
                shutil.copy(workdir / name, dest / name)
        out.save({dest / "result.json": record, dest / "report.md": accuracy_markdown(record)})

    [code] = run_until([cmd], [out.log("accuracy-train.log")], deadline, update)
    update({None: "stopped at the budget", 0: "done"}.get(code, f"failed: exit code {code} (logs/accuracy-train.log)"))
    if record["final_test_accuracy"] is None:
        return f"{record['status']}, no epoch finished"
    return (f"{record['status']}: {record['epochs_done']}/{epochs} epochs, test accuracy "
            f"{record['final_test_accuracy']:.4f} in {record['wall_s']:.0f} s")


def accuracy_markdown(record: dict) -> str:
    final = record["final_test_accuracy"]
    md = [f"# Fashion-MNIST accuracy: {record['recipe']}", "", f"`{record['command']}`", "", *provenance_lines(record),
          f"Model {record['model']}, {record['params']:,} parameters; {record['epochs_done']} of "
          f"{record['planned_epochs']} planned epochs (the recipe has {record['recipe_epochs']}; planned from a "
          f"probe of {record['probe']['fed_images_per_sec']:,.0f} training images/s).", "",
          f"- Final test accuracy: **{'-' if final is None else f'{final:.4f}'}** (the Zalando benchmark's ResNet-18: "
          f"{record['benchmark_accuracy']}; {'beaten' if record['beats_benchmark'] else 'not beaten'})",
          f"- Wall time of the training command: {record['wall_s']:.0f} s (imports, data, compilation and evaluation "
          "included)",
          f"- First epoch at or above {record['target_accuracy']:.0%} test accuracy: "
          + (f"{record['time_to_target_s']:.0f} s after the command started" if record["time_to_target_s"] else "none"),
          "- Training images/s (median of the logged windows): "
          + (f"{record['train_images_per_sec_median']:,.0f}" if record["train_images_per_sec_median"] else "-"), ""]
    md += table(["epoch", "step", "wall s", "test accuracy", "test loss", "train accuracy (epoch)"],
                [[f"{e['epoch']:.2f}", e["step"], f"{e['wall_s']:.1f}", f"{e['test_accuracy']:.4f}",
                  f"{e['test_loss']:.4f}", "-" if e["train_accuracy"] is None else f"{e['train_accuracy']:.4f}"]
                 for e in record["epochs"]])
    return "\n".join(md) + "\n"


# ---- 5. ablation ----------------------------------------------------------------------------------------------

ABLATION_WORKERS = 3  # runs at a time on the one GPU: compilation runs on the CPU cores in parallel
REPORT_RESERVE_S = 20  # the workers are stopped this long before the deadline, for the report
TINY_MODELS = ["plain8", "resnet8"]
TINY_SETS = ["model.widths=(4, 8, 16)", "batch_size=32", "num_steps=20", "log_every_steps=5",
             "schedule.boundaries=(10, 15)", "data.val_size=64"]  # plain8 and resnet8, tiny, on the test's tiny data


def ablation(out: Output, deadline: float, tiny: bool, data: Path) -> str:
    """The grid in parallel workers (scripts/ablation.py run), stopped before the deadline; then its report."""
    from scripts import ablation as ablation_script

    root, dest = out.runs / "ablation_gpu", out.experiment("ablation_gpu")
    if root.exists():
        raise FileExistsError(f"{root} exists: give the campaign a fresh OUT_DIR")
    workers = 1 if tiny else ABLATION_WORKERS
    tiny_axis = f"config={','.join(TINY_MODELS)}"
    options = (["--axis", tiny_axis] if tiny else []) + ["--set", f"data.path={data}", *(TINY_SETS if tiny else [])]
    cmds = [[sys.executable, "scripts/ablation.py", "run", "--config", "experiments/ablation_gpu.py",
             "--root", str(root), "--workers", str(workers), "--worker-index", str(i), *options]
            for i in range(workers)]
    record = header("ablation", tiny, deadline) | {
        "status": "running", "commands": [shlex.join(["python", *c[1:]]) for c in cmds], "workers": workers,
        "report": "report.md"}

    experiment = load_experiment("ablation_gpu")
    grid = ablation_script.grid(ablation_script.grid_axes(experiment, [tiny_axis] if tiny else [], None))

    def cells() -> dict:
        """Each cell's state: done (with its wall time), started, or not started."""
        states = {}
        for cell in grid:
            status = ablation_script.read_status(root / cell.name)
            started = (root / cell.name / "config.json").exists()
            states[cell.name] = ({"done": True, "seconds": status["seconds"]} if status.get("done") else
                                 {"done": False, "started": started})
        return states

    def update(status: str = "running") -> None:
        if status == "running" and cells() == record.get("cells"):
            return
        record.update(status=status, cells=cells())
        out.save({dest / "campaign.json": record})

    record["exit_codes"] = run_until(cmds, [out.log(f"ablation-worker{i}.log") for i in range(workers)],
                                     deadline - (5 if tiny else REPORT_RESERVE_S), update)
    stopped = None in record["exit_codes"]
    update("stopped at the budget" if stopped else "done" if not any(record["exit_codes"]) else
           f"failed: exit codes {record['exit_codes']} (logs/ablation-worker*.log)")
    done = [name for name, cell in record["cells"].items() if cell.get("done")]
    if done:
        command = ["python", "scripts/ablation.py", "report", "--root", str(root), "--out", str(dest), "--copy-metrics"]
        summary = ablation_script.write_report(root, dest, shlex.join(command), copy_metrics=True)
        record["table"] = summary["table"]
    out.save({dest / "campaign.json": record})
    written = ", report written" if done else ""
    return f"{record['status']}: {len(done)} of {len(record['cells'])} runs finished{written}"


# ---- 6. lab ----------------------------------------------------------------------------------------------------

LAB = {  # the nets and the instruments' sizes: paper width at 20/56/110 on 32x32 inputs; tiny nets on the tiny data
    "gpu": {"models": [f"{kind}{depth}" for depth in (20, 56, 110) for kind in ("plain", "resnet")],
            "widths": "16,32,64", "image_size": "32", "lesioned": ["resnet56", "plain56", "resnet110", "plain110"],
            "ks": "0,1,2,4,8,12,16,20,24", "draws": "5", "landscapes": ["resnet56", "plain56"], "points": "51",
            "examples": "1000", "chunk": "51", "line_points": "256", "signal_examples": "256"},
    "tiny": {"models": TINY_MODELS, "widths": "4,8,16", "image_size": "0", "lesioned": ["resnet8", "plain8"],
             "ks": "0,1,2", "draws": "2", "landscapes": ["resnet8"], "points": "3", "examples": "64", "chunk": "3",
             "line_points": "32", "signal_examples": "64"},
}


def lab_steps(out: Output, tiny: bool, data: Path) -> list[tuple[str, list[str] | None, str]]:
    """(step, command or None, why not) of the residual lab's instruments (resnet_jax.lab), cheapest first: signal
    propagation and shattered gradients of the nets at initialisation, then, on the ablation part's trained nets in
    this OUT_DIR, their signal, the lesion study and filter-normalised landscapes."""
    size, dest = LAB[preset(tiny)], out.experiment("lab_gpu")
    lab = [sys.executable, "-m", "resnet_jax.lab"]
    at_init = [arg for m in size["models"] for arg in ("--model", m)] + [
        "--widths", size["widths"], "--image-size", size["image_size"], "--data", str(data)]
    signal = [*lab, "signal", "--examples", size["signal_examples"]]
    steps = [("signal at init", [*signal, *at_init, "--out", str(dest / "signal_init")], ""),
             ("shattered gradients", [*lab, "shattered", *at_init, "--points", size["line_points"],
                                      "--out", str(dest / "shattered")], "")]

    def trained(models: list[str]) -> tuple[list[Path], str]:
        runs = [out.runs / "ablation_gpu" / f"{m}-seed0" for m in models]
        from scripts.ablation import read_status

        missing = [r.name for r in runs if not read_status(r).get("done")]
        return runs, f"not run: the ablation part did not train {', '.join(missing)} in this OUT_DIR" if missing else ""

    runs, why = trained(size["models"])
    steps.append(("signal trained", [*signal, *[a for r in runs for a in ("--workdir", str(r))],
                                     "--out", str(dest / "signal_trained")], why))
    runs, why = trained(size["lesioned"])
    steps.append(("lesion", [*lab, "lesion", *[a for r in runs for a in ("--workdir", str(r))], "--ks", size["ks"],
                             "--draws", size["draws"], "--out", str(dest / "lesion")], why))
    for model in size["landscapes"]:
        [run], why = trained([model])
        steps.append((f"landscape {model}", [*lab, "landscape", "--workdir", str(run), "--points", size["points"],
                                             "--examples", size["examples"], "--chunk", size["chunk"], "--name", model,
                                             "--out", str(dest / "landscape")], why))
    return steps


def lab(out: Output, deadline: float, tiny: bool, data: Path) -> str:
    """Each instrument of the residual lab as its own command, in turn, until the budget is spent; every step's
    command, status and wall time in experiments/results/lab_gpu/campaign.json, the instruments' own files beside."""
    dest = out.experiment("lab_gpu")
    record = header("lab", tiny, deadline) | {"status": "running", "steps": {}}
    for name, cmd, why in lab_steps(out, tiny, data):
        step = {"command": shlex.join(["python", *cmd[1:]])}
        if why or time.perf_counter() > deadline:
            step["status"] = why or SPENT
        else:
            start = time.perf_counter()
            [code] = run_until([cmd], [out.log(f"lab-{name.replace(' ', '_')}.log")], deadline)
            step |= {"status": {None: "stopped at the budget", 0: "done"}.get(code, f"failed: exit code {code}"),
                     "seconds": round(time.perf_counter() - start, 1)}
        record["steps"][name] = step
        out.save({dest / "campaign.json": record})
    landscapes = sorted((dest / "landscape").glob("*_landscape.npz"))
    if landscapes:  # every landscape in one figure, on Li et al.'s shared contour levels
        run_until([[sys.executable, "-m", "resnet_jax.lab", "landscape", "--plot", *map(str, landscapes),
                    "--out", str(dest / "landscape")]], [out.log("lab-plot.log")], time.perf_counter() + 60)
    done = [n for n, s in record["steps"].items() if s["status"] == "done"]
    record["status"] = "done" if len(done) == len(record["steps"]) else f"{len(done)} of {len(record['steps'])} done"
    out.save({dest / "campaign.json": record})
    return f"{record['status']}: {', '.join(done) or 'no instrument ran'}"


PARTS = {"smoke": smoke, "speed": speed, "pipeline": pipeline, "accuracy": accuracy, "ablation": ablation, "lab": lab}


# ---- the campaign ---------------------------------------------------------------------------------------------


def parse_budgets(text: str, tiny: bool) -> dict[str, float]:
    budgets = dict(BUDGETS[preset(tiny)])
    for item in filter(None, text.split(",")):
        part, _, seconds = item.partition("=")
        if part not in PARTS or not seconds.replace(".", "", 1).isdigit():
            raise SystemExit(f"--budgets takes part=seconds pairs with parts from {', '.join(PARTS)}; got {item!r}")
        budgets[part] = float(seconds)
    return budgets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="output folder, laid out as the repository's results")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated, in order (default {','.join(PARTS)})")
    parser.add_argument("--tiny", action="store_true", help="the CPU preset of every part (CI)")
    parser.add_argument("--data", type=Path, help="the folder of the four Fashion-MNIST IDX files (default: the first "
                        "of " + ", ".join(map(str, DATA)) + " that exists)")
    parser.add_argument("--budgets", default="", help="part=seconds,... replacing the preset's budgets")
    parser.add_argument("--pack", type=Path, help="keep a .tar.gz of the results (all but runs/) up to date here")
    args = parser.parse_args(argv)

    parts = [p for p in args.parts.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        parser.error(f"unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    budgets = parse_budgets(args.budgets, args.tiny)
    data = args.data or next((d for d in DATA if d.is_dir()), DATA[-1])
    if not all((data / f"{stem}-ubyte.gz").is_file() or (data / f"{stem}-ubyte").is_file() for stem in
               ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")):
        parser.error(f"{data} does not hold the four Fashion-MNIST IDX files: build .carry/ "
                     "(bash benchmarks/campaign/build_carry.sh) or pass --data DIR")
    if args.tiny:  # before JAX starts its backend; the subprocesses inherit it
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TINY_XLA_FLAGS}".strip()
    out = Output(args.out.absolute(), args.pack.absolute() if args.pack else None)
    out.root.mkdir(parents=True, exist_ok=True)
    command = ["benchmarks/campaign/gpu_campaign.py", *(argv if argv is not None else sys.argv[1:])]
    index = {"campaign": shlex.join(command),
             "preset": preset(args.tiny), "data": str(data), "xla_flags": os.environ.get("XLA_FLAGS"), **provenance(),
             "parts": {}}
    print(f"campaign ({index['preset']}) on {index['device']}, commit {index['commit']}: {', '.join(parts)} "
          f"({sum(budgets[p] for p in parts):.0f} s of budgets) into {out.root}", flush=True)
    for part in parts:
        print(f"\n==== {part} (budget {budgets[part]:.0f} s) ====", flush=True)
        start = time.perf_counter()
        try:
            summary, status = PARTS[part](out, start + budgets[part], args.tiny, data), "done"
        except Exception as e:  # noqa: BLE001 - a failing part is a finding: record it, go on with the next
            traceback.print_exc()
            summary, status = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"[:300], "failed"
        seconds = time.perf_counter() - start
        index["parts"][part] = {"status": status, "summary": summary, "seconds": round(seconds, 1),
                                "budget_s": budgets[part]}
        print(f"==== {part}: {status} in {seconds:.0f} s: {summary}", flush=True)
        rows = [[p, r["status"], f"{r['seconds']:.0f}", f"{r['budget_s']:.0f}", r["summary"]]
                for p, r in index["parts"].items()]
        md = [f"# GPU campaign ({index['preset']})", "", f"`{index['campaign']}`", "",
              f"- Device: {index['device']}; commit {index['commit']}; {index['date']}", "",
              *table(["part", "status", "seconds", "budget s", "summary"], rows)]
        stem = out.result("campaign")
        out.save({stem.with_suffix(".json"): index, stem.with_suffix(".md"): "\n".join(md) + "\n"})
    print("\n" + "\n".join(md[4:]), flush=True)
    return 0 if all(r["status"] == "done" for r in index["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
