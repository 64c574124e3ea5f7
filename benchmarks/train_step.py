"""Training throughput of one SGD step, resnet_jax (jax.jit) vs the same network in PyTorch, on CPU or GPU.

    python benchmarks/train_step.py [--model resnet20|resnet56|resnet50] [--batch-size 128] [--image-size 32]
                                    [--dtype float32|bfloat16] [--device cpu|cuda] [--channels-last] [--repeats 10]
                                    [--steps-per-repeat 5] [--no-compile] [--compile-timeout 180] [--no-check]
                                    [--xla-cpu-before]

A step is forward, cross-entropy, backward, SGD with momentum 0.9 and L2 weight decay 1e-4 on conv and
dense kernels (the repo's default recipe), and the BatchNorm running-statistics update, on one fixed
random float32 batch (no input pipeline). Both frameworks run in this one process, their repeats
interleaved, so machine noise hits both alike; we report median images/s and the ratio JAX/PyTorch.
The first step (tracing, compilation) is timed separately. CIFAR ResNets run against the twin in
benchmarks/torch_resnet.py, ImageNet ResNets (resnet18 ... resnet152) against torchvision's (the same v1.5
layout). bfloat16 is JAX's compute dtype with float32 parameters, and torch.autocast(bfloat16) in PyTorch.
Before timing, the script checks the parameter counts and, for CIFAR models, copies the Flax weights into the
torch model and checks that eval outputs and two training steps agree. Run as a script, it sets
OMP_WAIT_POLICY=PASSIVE unless already set (see benchmarks/README.md).

--xla-cpu-before also times JAX as it was before resnet_jax.xla_cpu (lax's conv, XLA's default compiler options),
interleaved with the others, for the before/after ratios to PyTorch of one run.

Importable: `measure_jax_train_step('resnet20', 128, steps=20)` returns JAX images/s; `benchmark_case(Case(...),
...)` times one case in every framework variant, as the GPU campaign (benchmarks/campaign/gpu_campaign.py) does.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import signal
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from resnet_jax import create_model, optim, xla_cpu
from resnet_jax.models import model_spec
from resnet_jax.provenance import device_slug, provenance, write_record
from resnet_jax.summary import count_params
from resnet_jax.config import DTYPES
from resnet_jax.steps import create_train_state, train_step

if TYPE_CHECKING:  # torch is imported where used, so that the JAX half of this file runs without it
    import torch

RESULTS = Path(__file__).parent / "results"
# He et al. 2015 Table 6 (0.27M, 0.85M) and torchvision's resnet18 / resnet50.
EXPECTED_PARAMS = {"resnet20": 269_722, "resnet56": 853_018, "resnet18": 11_689_512, "resnet50": 25_557_032}
LEARNING_RATE, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 1e-4
NUM_CLASSES = 10  # CIFAR models; ImageNet models have 1000
JAX_BEFORE = "jax (jit), before xla_cpu"  # --xla-cpu-before's runner: lax's conv, XLA's default compiler options
# Dense peak FLOP/s per GPU from NVIDIA's datasheets (SXM unless named), by device kind; leads, not measurements.
# float32 work runs on the TF32 tensor cores by default in both frameworks (JAX's DEFAULT precision, cuDNN's
# allow_tf32), so float32 cases are measured against the TF32 peak.
DATASHEET_PEAK_FLOPS = {
    "H100 PCIe": {"bfloat16": 756e12, "float32": 378e12},
    "H100": {"bfloat16": 989e12, "float32": 495e12},
    "H200": {"bfloat16": 989e12, "float32": 495e12},
    "A100": {"bfloat16": 312e12, "float32": 156e12},
}


@dataclass(frozen=True)
class Case:
    """One configuration, the same in both frameworks: network, batch, square image size, compute dtype."""

    model: str
    batch_size: int
    image_size: int = 32
    dtype: str = "float32"  # 'float32' | 'bfloat16' (JAX: compute dtype, float32 params; PyTorch: autocast)

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES if model_spec(self.model)["stem"] == "cifar" else 1000

    @property
    def name(self) -> str:
        return f"{self.model} {self.image_size}x{self.image_size} b{self.batch_size} {self.dtype}"


@dataclass(frozen=True)
class TorchVariant:
    """How PyTorch runs the step: eager or with the model under torch.compile, NCHW or channels_last."""

    compile: bool = False
    channels_last: bool = False

    @property
    def name(self) -> str:
        return f"pytorch {'compile' if self.compile else 'eager'}{', channels_last' if self.channels_last else ''}"


@dataclass
class Runner:
    """One framework's training step, warmed up: `run(n)` does n steps and returns the seconds taken."""

    name: str
    first_step_s: float  # the first step, including tracing and compilation
    run: Callable[[int], float]
    step_s: float  # one step, from the settling steps after the first: sizes the timed repeats
    compile_s: float | None = None  # JAX: lower + compile; torch.compile: its first step
    peak_memory_bytes: int | None = None
    memory_measure: str = ""
    flops_per_image: float | None = None  # XLA's count for the training step (JAX runner only)


def random_batch(case: Case, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """NHWC float32 images and int32 labels, the same for every framework."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((case.batch_size, case.image_size, case.image_size, 3), dtype=np.float32)
    return images, rng.integers(0, case.num_classes, case.batch_size).astype(np.int32)


# ---- JAX ------------------------------------------------------------------------------------------


def jax_optimizer() -> optax.GradientTransformation:
    """SGD with momentum and L2 weight decay on kernels only (resnet_jax.optim's default recipe)."""
    config = optim.optimizer_config()
    config.update(name="sgd", learning_rate=LEARNING_RATE, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    return optim.make_optimizer(config, optax.constant_schedule(LEARNING_RATE))


def jax_step_fn(
    model_name: str, num_classes: int = NUM_CLASSES, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
    plain_conv: bool = False, xla_default_options: bool = False,
) -> tuple[Any, Callable, optax.GradientTransformation]:
    """The Flax model, resnet_jax.train.train_step jitted with the state donated (and resnet_jax.xla_cpu's compiler
    options, as train.compile_steps does), and its optimizer. plain_conv: nn.Conv (lax.conv_general_dilated) instead of
    the model's default conv; xla_default_options: XLA's own defaults (both: the step before resnet_jax.xla_cpu)."""
    overrides = {"conv": nn.Conv} if plain_conv else {}
    model = create_model(model_name, num_classes, dtype=dtype, param_dtype=param_dtype, **overrides)
    tx = jax_optimizer()
    options = None if xla_default_options else xla_cpu.compiler_options(jax.devices()[0].platform)
    return model, jax.jit(partial(train_step, model=model, tx=tx), donate_argnums=0, compiler_options=options), tx


def xla_flops(lowered: jax.stages.Lowered) -> float | None:
    """XLA's FLOP count of a lowered computation (before optimisation, so fusions and library calls hide nothing);
    None, with a warning, where this JAX gives none."""
    try:
        cost = lowered.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return float(cost["flops"])
    except Exception as e:  # noqa: BLE001 - the count only feeds the utilisation figures, which then read null
        print(f"warning: no XLA FLOP count ({failure(e)}): no FLOP utilisation for this case", flush=True)
        return None


def make_jax_runner(case: Case, seed: int = 0, name: str = "jax (jit)", **variant: bool) -> Runner:
    """resnet_jax's train_step, jitted and donated, compiled ahead of time for a fixed random batch on the default
    device.

    Its memory is XLA's buffer assignment for the step: arguments (state, batch) + outputs not aliased to them +
    temporaries.
    variant: jax_step_fn's plain_conv / xla_default_options.
    """
    model, step, tx = jax_step_fn(case.model, case.num_classes, DTYPES[case.dtype], **variant)
    images, labels = random_batch(case, seed)
    batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
    state = create_train_state(jax.jit(partial(model.init, train=False))(jax.random.key(seed), batch["image"][:1]), tx)

    t0 = time.perf_counter()
    lowered = step.lower(state, batch)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    state, _ = compiled(state, batch)
    jax.block_until_ready(state)
    first = time.perf_counter() - t0
    memory = compiled.memory_analysis()

    def run(n: int) -> float:
        nonlocal state
        t0 = time.perf_counter()
        for _ in range(n):
            state, _ = compiled(state, batch)
        jax.block_until_ready(state)
        return time.perf_counter() - t0

    flops = xla_flops(lowered)
    footprint = None if memory is None else (memory.argument_size_in_bytes + memory.output_size_in_bytes
                                             - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
    return Runner(name, first, run, step_s=run(2) / 2, compile_s=compile_s,  # the 2 steps settle caches
                  peak_memory_bytes=footprint, memory_measure="XLA buffer assignment: arguments + unaliased outputs + "
                  "temporaries" if memory is not None else "not measured: XLA gave no memory analysis",
                  flops_per_image=flops / case.batch_size if flops else None)


def measure_jax_train_step(model_name: str = "resnet20", batch_size: int = 128, steps: int = 20) -> float:
    """Images/s of resnet_jax's jitted, donated train_step on a fixed batch (compilation excluded)."""
    runner = make_jax_runner(Case(model_name, batch_size))
    return steps * batch_size / runner.run(steps)


def matmul_flops(dtype: str, n: int, repeats: int = 10) -> float:
    """FLOP/s of an n x n by n x n matrix product in JAX at the default precision on random data, median of repeats."""
    a, b = (jax.random.normal(jax.random.key(i), (n, n), DTYPES[dtype]) for i in (1, 2))
    product = jax.jit(jnp.matmul)
    product(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        product(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def datasheet_peak(device_kind: str, dtype: str) -> float | None:
    """The DATASHEET_PEAK_FLOPS entry whose name is in `device_kind` (first match), for `dtype`; None if unknown."""
    return next((peaks[dtype] for name, peaks in DATASHEET_PEAK_FLOPS.items() if name in device_kind), None)


# ---- PyTorch --------------------------------------------------------------------------------------


def torch_twin() -> ModuleType:
    """benchmarks/torch_resnet.py, imported on first use so the JAX half of this file needs no torch."""
    return importlib.import_module(f"{__package__}.torch_resnet" if __package__ else "torch_resnet")


def torch_model(case: Case) -> torch.nn.Module:
    """The PyTorch network of the case: our twin for CIFAR ResNets, torchvision's for ImageNet ones (both untrained)."""
    if case.num_classes == NUM_CLASSES:
        return torch_twin().create_model(case.model, case.num_classes)
    import torchvision

    return torchvision.models.get_model(case.model, weights=None, num_classes=case.num_classes)


def torch_optimizer(model: torch.nn.Module) -> torch.optim.SGD:
    """torch's SGD with the same recipe: momentum 0.9, weight decay 1e-4 on conv/linear weights only."""
    import torch

    kernels = [p for p in model.parameters() if p.ndim > 1]
    others = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": kernels, "weight_decay": WEIGHT_DECAY}, {"params": others, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=LEARNING_RATE, momentum=MOMENTUM)


def torch_train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, images: torch.Tensor,
                     labels: torch.Tensor, autocast: Any = None) -> torch.Tensor:
    """Forward (under torch.autocast to `autocast`, a dtype, if given), cross-entropy, backward, SGD update.

    The BN running statistics are updated in the forward.
    """
    import torch
    import torch.nn.functional as F

    opt.zero_grad(set_to_none=True)
    with torch.autocast(images.device.type, dtype=autocast, enabled=autocast is not None):
        loss = F.cross_entropy(model(images), labels)
    loss.backward()
    opt.step()
    return loss


def torch_settings() -> dict[str, Any]:
    """cuDNN's autotuner on (fixed shapes: PyTorch's usual setting for speed), and the precision flags in force."""
    import torch

    torch.backends.cudnn.benchmark = True
    return {"threads": torch.get_num_threads(), "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}


def make_torch_runner(case: Case, variant: TorchVariant = TorchVariant(), device: str = "cpu",
                      compile_timeout_s: float | None = 180.0, seed: int = 0) -> Runner:
    """PyTorch's step for the case in the variant on `device`; raises TimeLimitExceeded past compile_timeout_s.

    On CUDA its memory is the caching allocator's peak over the first three steps, less what was allocated before.
    """
    import torch

    torch.manual_seed(seed)
    dev = torch.device(device)
    layout = torch.channels_last if variant.channels_last else torch.contiguous_format
    model = torch_model(case).to(dev, memory_format=layout).train()
    opt = torch_optimizer(model)
    images, labels = random_batch(case, seed)
    x = to_nchw(images).to(dev).contiguous(memory_format=layout)
    y = torch.from_numpy(labels.astype(np.int64)).to(dev)
    forward = torch.compile(model) if variant.compile else model
    autocast = torch.bfloat16 if case.dtype == "bfloat16" else None
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats()
        allocated_before = torch.cuda.memory_allocated()

    t0 = time.perf_counter()
    with time_limit(compile_timeout_s if variant.compile else None):
        torch_train_step(forward, opt, x, y, autocast)
        sync()
    first = time.perf_counter() - t0

    def run(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            torch_train_step(forward, opt, x, y, autocast)
        sync()
        return time.perf_counter() - t0

    step_s = run(2) / 2
    memory = dict(peak_memory_bytes=torch.cuda.max_memory_allocated() - allocated_before,
                  memory_measure="torch.cuda.max_memory_allocated over the first 3 steps, less what was allocated "
                                 "before"
                  ) if cuda else dict(memory_measure="not measured: torch keeps allocator statistics on CUDA only")
    return Runner(variant.name, first, run, step_s=step_s, compile_s=first if variant.compile else None, **memory)


class TimeLimitExceeded(BaseException):
    """Raised by time_limit; a BaseException, so library code catching Exception (or OSError) lets it through."""


class time_limit:
    """Raise TimeLimitExceeded in the main thread after `seconds` (None: no limit), via SIGALRM."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds

    def __enter__(self) -> None:
        if self.seconds is not None:
            signal.signal(signal.SIGALRM, self._expire)
            signal.setitimer(signal.ITIMER_REAL, max(self.seconds, 1e-3))

    def __exit__(self, *exc) -> None:
        if self.seconds is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def _expire(self, *_) -> None:
        raise TimeLimitExceeded(f"gave up after {self.seconds:.0f} s")


def failure(e: BaseException) -> str:
    """'ExceptionType: first line of the message' of the root cause (torch wraps it), for a record."""
    while e.__cause__ is not None:
        e = e.__cause__
    first_line = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first_line}"[:300]


# ---- Checks ---------------------------------------------------------------------------------------


def check_param_counts(case: Case) -> dict[str, Any]:
    """Trainable parameters of the Flax model, of its torch counterpart, and the paper's (torchvision's) count."""
    model = create_model(case.model, case.num_classes)
    variables = jax.eval_shape(partial(model.init, train=False), jax.random.key(0),
                               jnp.zeros((1, case.image_size, case.image_size, 3)))
    flax_count = count_params(variables["params"])
    torch_count = sum(p.numel() for p in torch_model(case).parameters())
    expected = EXPECTED_PARAMS.get(case.model)
    ok = flax_count == torch_count and expected in (None, flax_count)
    return {"jax": flax_count, "pytorch": torch_count, "expected": expected, "ok": ok}


def check_equivalence(model_name: str, batch_size: int = 32, seed: int = 0) -> dict[str, Any]:
    """Copy Flax weights (BN randomised) into the torch twin and compare the two frameworks' computations.

    float32: eval-mode logits. float64 (rounding out of the way, so a real difference would show):
    eval logits, the losses of two training steps, and every parameter and BN statistic after them.
    Figures are max |difference| / max(1, max |value|) over a tensor (over all tensors for the state).
    """
    import torch

    twin = torch_twin()
    images, labels = random_batch(Case(model_name, batch_size), seed + 1)
    y = torch.from_numpy(labels.astype(np.int64))
    model = create_model(model_name, NUM_CLASSES)
    variables = randomise_norms(model.init(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)), train=False), seed)
    tmodel = twin.create_model(model_name, NUM_CLASSES)
    twin.load_flax_variables(tmodel, variables)
    with torch.no_grad():
        ours = model.apply(variables, images, train=False)
        diffs = {"float32_eval_logits": rel_diff(ours, tmodel.eval()(to_nchw(images)))}

    with jax.enable_x64(True):
        model, step, tx = jax_step_fn(model_name, dtype=jnp.float64, param_dtype=jnp.float64)
        variables = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), variables)
        initial = jax.device_get(variables)  # the train step donates (deletes) the arrays it is given
        tmodel = tmodel.double()
        x = to_nchw(images).double()
        with torch.no_grad():
            ours = model.apply(variables, images.astype(np.float64), train=False)
            diffs["float64_eval_logits"] = rel_diff(ours, tmodel(x))
        sizes = bn_elements_per_channel(tmodel.train(), x)
        state, opt = create_train_state(variables, tx), torch_optimizer(tmodel)
        batch = {"image": jnp.asarray(images, jnp.float64), "label": jnp.asarray(labels)}
        for i in (1, 2):
            state, metrics = step(state, batch)
            diffs[f"float64_step{i}_loss"] = rel_diff(metrics["loss"], torch_train_step(tmodel, opt, x, y).detach())
        ours = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    theirs = tmodel.state_dict()
    worst = 0.0
    for key, path in twin.flax_to_torch_names(tmodel).items():
        value = theirs[key].numpy()
        if key.endswith("running_var"):
            value = biased_running_var(value, get_path(initial, path), sizes[key.rsplit(".", 1)[0]], 2)
        worst = max(worst, rel_diff(twin.flax_to_torch_layout(np.asarray(get_path(ours, path))), value))
    diffs["float64_step2_params_and_bn_stats"] = worst
    tolerances = {k: 1e-4 if k.startswith("float32") else 1e-6 for k in diffs}
    ok = all(diffs[k] <= tolerances[k] for k in diffs)
    return {"max_rel_diff": diffs, "tolerance": tolerances, "batch_size": batch_size, "ok": ok}


def to_nchw(images: np.ndarray) -> torch.Tensor:
    """NHWC numpy images as an NCHW torch tensor."""
    import torch

    return torch.from_numpy(images.transpose(0, 3, 1, 2).copy())


def bn_elements_per_channel(model: torch.nn.Module, x: torch.Tensor) -> dict[str, int]:
    """For each BatchNorm2d of `model` (by name), how many values per channel its batch statistics average."""
    import torch

    sizes, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):

            def hook(m, args, out, name=name):
                sizes[name] = args[0].numel() // args[0].shape[1]

            hooks.append(module.register_forward_hook(hook))
    training = model.training
    with torch.no_grad():
        model.eval()(x)
    model.train(training)
    for hook in hooks:
        hook.remove()
    return sizes


def biased_running_var(after: np.ndarray, before: np.ndarray, n: int, steps: int, decay: float = 0.9) -> np.ndarray:
    """torch's running_var after `steps` updates, redone with the biased batch variances that Flax uses.

    ra_k = decay^k ra_0 + sum_i w_i v_i * n/(n-1) in torch (unbiased), without the n/(n-1) in Flax.
    """
    base = decay**steps * before
    return base + (after - base) * (n - 1) / n


def randomise_norms(variables: dict, seed: int) -> dict:
    """BN scale/bias and running statistics drawn at random, so the eval check exercises every tensor."""
    rng = np.random.default_rng(seed)
    draw = {
        "scale": lambda s: rng.uniform(0.5, 1.5, s),
        "bias": lambda s: rng.normal(0, 0.1, s),
        "mean": lambda s: rng.normal(0, 0.1, s),
        "var": lambda s: rng.uniform(0.5, 1.5, s),
    }

    def visit(path, leaf):
        name = path[-1].key
        is_norm = any("norm" in p.key.lower() for p in path)
        return jnp.asarray(draw[name](leaf.shape), jnp.float32) if is_norm and name in draw else leaf

    return jax.tree_util.tree_map_with_path(visit, variables)


def get_path(tree: dict, path: tuple[str, ...]) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def rel_diff(a: Any, b: Any) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(a)))))


# ---- The benchmark --------------------------------------------------------------------------------


def interleave(runners: list[Runner], batch_size: int, repeats: int, steps: dict[str, int],
               deadline: float | None = None) -> tuple[dict[str, list[float]], list[float]]:
    """Images/s of every runner in every repeat (runners take turns, in rotating order), and the 1-min load average.

    A repeat is steps[name] steps of each runner. Past `deadline` (a time.perf_counter() value) no further repeat
    starts; the first always runs.
    """
    rates: dict[str, list[float]] = {r.name: [] for r in runners}
    load: list[float] = []
    for i in range(repeats):
        if i and deadline is not None and time.perf_counter() > deadline:
            break
        for runner in runners[i % len(runners):] + runners[: i % len(runners)]:
            rates[runner.name].append(steps[runner.name] * batch_size / runner.run(steps[runner.name]))
        load.append(os.getloadavg()[0])
        print(f"  repeat {i + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items())
              + f" images/s; load average {load[-1]:.1f}", flush=True)
    return rates, load


def summarise(runners: list[Runner], rates: dict[str, list[float]], steps: dict[str, int], batch_size: int,
              peaks: dict[str, float]) -> tuple[dict, dict]:
    """Per-runner medians, memory, compile time and FLOP utilisation against each of `peaks`; the ratios JAX / each
    PyTorch variant. Prints them as a table. The FLOPs per image are XLA's count of the JAX step, for every runner."""
    flops = runners[0].flops_per_image
    results = {}
    for r in runners:
        median = statistics.median(rates[r.name])
        results[r.name] = {
            "images_per_sec_median": median, "step_ms_median": 1000 * batch_size / median,
            "images_per_sec_repeats": rates[r.name], "steps_per_repeat": steps[r.name],
            "first_step_s": r.first_step_s, "compile_s": r.compile_s,
            "peak_memory_bytes": r.peak_memory_bytes, "memory_measure": r.memory_measure,
            "model_flops_utilisation": {k: median * flops / peak for k, peak in peaks.items()} if flops else None,
        }

    def ratio(a, b):
        return {"of_medians": statistics.median(rates[a]) / statistics.median(rates[b]),
                "median_per_repeat": statistics.median([x / y for x, y in zip(rates[a], rates[b], strict=True)])}

    ratios = {f"jax / {r.name}": ratio(runners[0].name, r.name) for r in runners[1:]}
    if JAX_BEFORE in rates:  # --xla-cpu-before: its ratios to PyTorch too
        ratios |= {f"{JAX_BEFORE} / {r.name}": ratio(JAX_BEFORE, r.name)
                   for r in runners if not r.name.startswith("jax")}
    print(f"\n{'framework':<32}{'images/s (median)':>19}{'min-max':>18}{'step ms':>9}{'first step (s)':>16}"
          f"{'peak MiB':>10}")
    for name, res in results.items():
        spread = f"{min(rates[name]):.0f}-{max(rates[name]):.0f}"
        memory = f"{res['peak_memory_bytes'] / 2**20:.0f}" if res["peak_memory_bytes"] is not None else "-"
        print(f"{name:<32}{res['images_per_sec_median']:>19.1f}{spread:>18}{res['step_ms_median']:>9.2f}"
              f"{res['first_step_s']:>16.1f}{memory:>10}")
    for name, ratio in ratios.items():
        print(f"{name}: {ratio['of_medians']:.2f}x (ratio of medians), "
              f"{ratio['median_per_repeat']:.2f}x (median of per-repeat ratios)")
    return results, ratios


def benchmark_case(case: Case, device: str, variants: list[TorchVariant], *, repeats: int,
                   steps_per_repeat: int | None = None, repeat_s: float = 0.3, deadline: float | None = None,
                   compile_timeout_s: float = 180.0, min_compile_s: float = 0.0, peaks: dict[str, float] | None = None,
                   skipped: dict[str, str] | None = None, xla_cpu_before: bool = False) -> dict[str, Any]:
    """Time JAX and each PyTorch variant on the case, interleaved, and return the case's record.
    xla_cpu_before: JAX as before resnet_jax.xla_cpu is timed too (lax's conv, XLA's default options).

    Each repeat runs `steps_per_repeat` steps, or as many as take about `repeat_s` seconds (from the settling steps).
    A variant that fails to build, that would start past `deadline`, or a torch.compile one with less than
    `min_compile_s` left before it, is left out with its reason under 'skipped', beside the reasons the caller gives.
    """
    start = time.perf_counter()
    skipped = dict(skipped or {})
    params = check_param_counts(case)
    print(f"{case.name}: parameters jax {params['jax']:,}, pytorch {params['pytorch']:,}, expected "
          f"{params['expected'] or '?'}: {'OK' if params['ok'] else 'MISMATCH'}", flush=True)
    runners = [make_jax_runner(case)]
    if xla_cpu_before:
        runners.append(make_jax_runner(case, name=JAX_BEFORE, plain_conv=True, xla_default_options=True))
    for variant in variants:
        left = None if deadline is None else deadline - time.perf_counter()
        if left is not None and left <= (min_compile_s if variant.compile else 0):
            skipped[variant.name] = f"not run: {max(left, 0):.0f} s of the part's time budget left"
            continue
        try:
            runners.append(make_torch_runner(case, variant, device, min(compile_timeout_s, left or compile_timeout_s)))
        except (Exception, TimeLimitExceeded) as e:  # noqa: BLE001 - a variant that cannot run is reported, not fatal
            skipped[variant.name] = failure(e)
    for r in runners:
        print(f"first step of {r.name}: {r.first_step_s:.1f} s", flush=True)
    for name, reason in skipped.items():
        print(f"{name}: skipped ({reason})", flush=True)
    steps = {r.name: steps_per_repeat or max(1, math.ceil(repeat_s / r.step_s)) for r in runners}
    rates, load = interleave(runners, case.batch_size, repeats, steps, deadline)
    results, ratios = summarise(runners, rates, steps, case.batch_size, peaks or {})
    return {"case": asdict(case) | {"num_classes": case.num_classes,
                                    "image_shape": [case.image_size, case.image_size, 3]},
            "param_counts": params, "train_flops_per_image": runners[0].flops_per_image,
            "flops_source": "XLA cost analysis of the JAX train step before optimisation (forward, backward, update)",
            "repeats": len(load), "load_average_per_repeat": load, "results": results, "ratios": ratios,
            "skipped": skipped, "seconds": time.perf_counter() - start}


def environment() -> dict[str, Any]:
    """Where and with what the benchmark ran (torch's settings included)."""
    import torch

    env = provenance()
    env["versions"]["torch"] = torch.__version__
    return {**env, "torch_settings": torch_settings(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


STEP = (f"forward, cross-entropy, backward, SGD lr {LEARNING_RATE} momentum {MOMENTUM} + L2 {WEIGHT_DECAY} on kernels, "
        "BN running stats; one fixed batch; JAX: jax.jit(train_step, donate_argnums=0); PyTorch: torch.compile(model) "
        "when listed, torch.autocast(bfloat16) for bfloat16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20", help="a CIFAR ResNet (resnet20, resnet56, any resnet<6n+2>) "
                        "or an ImageNet one (resnet18, resnet50, ...)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where both frameworks run")
    parser.add_argument("--channels-last", action="store_true", help="also time PyTorch in channels_last")
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats per framework, interleaved")
    parser.add_argument("--steps-per-repeat", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--compile-timeout", type=float, default=180.0,
                        help="give up on torch.compile after this many s")
    parser.add_argument("--no-check", action="store_true", help="skip the Flax-vs-torch output equivalence check")
    parser.add_argument("--xla-cpu-before", action="store_true",
                        help="also time JAX as before resnet_jax.xla_cpu: lax's conv and XLA's default compiler "
                             "options")
    args = parser.parse_args()

    if args.device == "cpu":
        jax.config.update("jax_platforms", "cpu")  # both frameworks on the host CPU
    import torch

    torch.set_num_threads(os.cpu_count())
    env = environment()
    case = Case(args.model, args.batch_size, args.image_size, args.dtype)
    print(f"{case.name} on {env['device']} ({env['cpu']}); jax {jax.__version__}, torch {torch.__version__}, "
          f"commit {env['commit']}")
    equivalence = None
    if not args.no_check and case.num_classes == NUM_CLASSES:  # the weight copy exists for the CIFAR twin only
        equivalence = check_equivalence(args.model)
        print(f"outputs ({'OK' if equivalence['ok'] else 'MISMATCH'}), max relative differences: "
              + ", ".join(f"{k} {v:.1e}" for k, v in equivalence["max_rel_diff"].items()), flush=True)
    layouts = [False, True] if args.channels_last else [False]
    variants = [TorchVariant(compile, layout)
                for compile in [False] + [True] * (not args.no_compile) for layout in layouts]
    skipped = {"pytorch compile": "--no-compile"} if args.no_compile else None
    record = benchmark_case(case, args.device, variants, repeats=args.repeats, steps_per_repeat=args.steps_per_repeat,
                            compile_timeout_s=args.compile_timeout, skipped=skipped, xla_cpu_before=args.xla_cpu_before)
    record = {**env, "benchmark": "train_step", "step": STEP, "equivalence": equivalence, **record}
    dtype = [] if case.dtype == "float32" else [case.dtype]
    write_record(record, RESULTS, "train_step", device_slug(), args.model, f"b{args.batch_size}", *dtype)


if __name__ == "__main__":
    # On a shared CPU, OpenMP's default spin-waiting makes torch collapse (38 vs ~210 images/s measured here
    # for resnet20 at load 3 on 2 cores); passive waiting lets it degrade as JAX's thread pool does.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with tempfile.TemporaryDirectory(prefix="torchinductor-", ignore_cleanup_errors=True) as cache:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", cache)  # a cold cache: compile time as a first run sees it
        main()
