"""Training throughput of one SGD step, resnet_jax (jax.jit) vs the same network in PyTorch, on CPU.

    python benchmarks/train_step.py [--model resnet20|resnet56] [--batch-size 128] [--repeats 10]
                                    [--steps-per-repeat 5] [--no-compile] [--compile-timeout 180] [--no-check]
                                    [--xla-cpu-defaults]

A step is forward, cross-entropy, backward, SGD with momentum 0.9 and L2 weight decay 1e-4 on conv and
dense kernels (the repo's default recipe), and the BatchNorm running-statistics update, on one fixed
random float32 batch (no input pipeline). Both frameworks run in this one process, their repeats
interleaved, so machine noise hits both alike; we report median images/s and the ratio JAX/PyTorch.
The first step (tracing, compilation) is timed separately. Before timing, the script checks the
parameter counts, copies the Flax weights into the torch model and checks that eval outputs and two
training steps agree. Run as a script, it sets OMP_WAIT_POLICY=PASSIVE unless already set (see below).

Importable: `measure_jax_train_step('resnet20', 128, steps=20)` returns JAX images/s.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import signal
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if __name__ == "__main__":
    # On a shared CPU, OpenMP's default spin-waiting makes torch collapse (38 vs ~210 images/s measured here
    # for resnet20 at load 3 on 2 cores); passive waiting lets it degrade as JAX's thread pool does. OpenMP reads
    # it when torch loads, just below.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
try:  # torch's triton must load before TensorFlow (which resnet_jax.train's data imports): the other order segfaults
    import torch._dynamo  # noqa: F401
except ImportError:
    pass
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jax import lax

from resnet_jax import create_model, optim, xla_cpu
from resnet_jax.provenance import cpu_model, provenance
from resnet_jax.summary import count_params
from resnet_jax.train import create_train_state, train_step

if TYPE_CHECKING:  # torch is imported where used, so that the JAX half of this file runs without it
    import torch

RESULTS = Path(__file__).parent / "results"
EXPECTED_PARAMS = {"resnet20": 269_722, "resnet56": 853_018}  # He et al. 2015 Table 6: 0.27M, 0.85M
LEARNING_RATE, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 1e-4
NUM_CLASSES = 10


@dataclass
class Runner:
    """One framework's training step, warmed up: `run(n)` does n steps and returns the seconds taken."""

    name: str
    first_step_s: float  # the first step, including tracing and compilation
    run: Callable[[int], float]


def random_batch(batch_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """NHWC float32 images and int32 labels, the same for every framework."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch_size, 32, 32, 3), dtype=np.float32)
    return images, rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32)


# ---- JAX ------------------------------------------------------------------------------------------


def jax_optimizer() -> optax.GradientTransformation:
    """SGD with momentum and L2 weight decay on kernels only (resnet_jax.optim's default recipe)."""
    config = optim.optimizer_config()
    config.update(name="sgd", learning_rate=LEARNING_RATE, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    return optim.make_optimizer(config, optax.constant_schedule(LEARNING_RATE))


def jax_step_fn(model_name: str, dtype: Any = jnp.float32, plain_conv: bool = False,
                xla_default_options: bool = False) -> tuple[Any, Callable, optax.GradientTransformation]:
    """The Flax model, resnet_jax.train.train_step jitted with the state donated (and resnet_jax.xla_cpu's compiler
    options, as train.compile_steps does), and its optimizer. plain_conv: lax.conv_general_dilated instead of the
    model's default conv; xla_default_options: XLA's own compiler defaults (both: the step before resnet_jax.xla_cpu)."""
    overrides = {"conv_general_dilated": lax.conv_general_dilated} if plain_conv else {}
    model = create_model(model_name, NUM_CLASSES, dtype=dtype, param_dtype=dtype, **overrides)
    options = None if xla_default_options else xla_cpu.compiler_options(jax.devices()[0].platform)
    tx = jax_optimizer()
    return model, jax.jit(partial(train_step, model=model, tx=tx), donate_argnums=0, compiler_options=options), tx


def make_jax_runner(model_name: str, batch_size: int, seed: int = 0, **variant: bool) -> Runner:
    """resnet_jax's train_step, jitted and donated, compiled by a first step on a fixed random batch.

    variant: jax_step_fn's plain_conv / xla_default_options."""
    model, step, tx = jax_step_fn(model_name, **variant)
    images, labels = random_batch(batch_size, seed)
    batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
    state = create_train_state(model.init(jax.random.key(seed), batch["image"][:1]), tx)

    t0 = time.perf_counter()
    state, _ = step(state, batch)
    jax.block_until_ready(state)
    first = time.perf_counter() - t0

    def run(n: int) -> float:
        nonlocal state
        t0 = time.perf_counter()
        for _ in range(n):
            state, _ = step(state, batch)
        jax.block_until_ready(state)
        return time.perf_counter() - t0

    run(2)  # settle allocations and caches
    return Runner("jax (jit)", first, run)


def measure_jax_train_step(model_name: str = "resnet20", batch_size: int = 128, steps: int = 20) -> float:
    """Images/s of resnet_jax's jitted, donated train_step on a fixed batch (compilation excluded)."""
    runner = make_jax_runner(model_name, batch_size)
    return steps * batch_size / runner.run(steps)


# ---- PyTorch --------------------------------------------------------------------------------------


def torch_twin() -> ModuleType:
    """benchmarks/torch_resnet.py, imported on first use so the JAX half of this file needs no torch."""
    return importlib.import_module(f"{__package__}.torch_resnet" if __package__ else "torch_resnet")


def torch_optimizer(model: torch.nn.Module) -> torch.optim.SGD:
    """torch's SGD with the same recipe: momentum 0.9, weight decay 1e-4 on conv/linear weights only."""
    import torch

    kernels = [p for p in model.parameters() if p.ndim > 1]
    others = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": kernels, "weight_decay": WEIGHT_DECAY}, {"params": others, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=LEARNING_RATE, momentum=MOMENTUM)


def torch_train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, images: torch.Tensor,
                     labels: torch.Tensor) -> torch.Tensor:
    """Forward, cross-entropy, backward, SGD update (BN running statistics update in the forward)."""
    import torch.nn.functional as F

    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    opt.step()
    return loss


def make_torch_runner(model_name: str, batch_size: int, compile: bool = False, compile_timeout_s: float = 180.0,
                      seed: int = 0) -> Runner:
    """PyTorch eager, or with the model under torch.compile (raises TimeLimitExceeded past compile_timeout_s)."""
    import torch

    torch.manual_seed(seed)
    model = torch_twin().create_model(model_name, NUM_CLASSES).train()
    opt = torch_optimizer(model)
    images, labels = random_batch(batch_size, seed)
    x, y = to_nchw(images), torch.from_numpy(labels.astype(np.int64))
    forward = torch.compile(model) if compile else model

    t0 = time.perf_counter()
    with time_limit(compile_timeout_s if compile else None):
        torch_train_step(forward, opt, x, y)
    first = time.perf_counter() - t0

    def run(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            torch_train_step(forward, opt, x, y)
        return time.perf_counter() - t0

    run(2)
    return Runner("pytorch (torch.compile)" if compile else "pytorch (eager)", first, run)


class TimeLimitExceeded(BaseException):
    """Raised by time_limit; a BaseException, so library code catching Exception (or OSError) lets it through."""


class time_limit:
    """Raise TimeLimitExceeded in the main thread after `seconds` (None: no limit), via SIGALRM."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds

    def __enter__(self) -> None:
        if self.seconds:
            signal.signal(signal.SIGALRM, self._expire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def __exit__(self, *exc) -> None:
        if self.seconds:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def _expire(self, *_) -> None:
        raise TimeLimitExceeded(f"gave up after {self.seconds:.0f} s")


# ---- Checks ---------------------------------------------------------------------------------------


def check_param_counts(model_name: str) -> dict[str, Any]:
    """Trainable parameters of the Flax model, of its torch twin, and the paper's count."""
    variables = jax.eval_shape(create_model(model_name, NUM_CLASSES).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    flax_count = count_params(variables["params"])
    torch_count = torch_twin().num_params(torch_twin().create_model(model_name, NUM_CLASSES))
    expected = EXPECTED_PARAMS.get(model_name)
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
    images, labels = random_batch(batch_size, seed + 1)
    y = torch.from_numpy(labels.astype(np.int64))
    model = create_model(model_name, NUM_CLASSES)
    variables = randomise_norms(model.init(jax.random.key(seed), jnp.zeros((1, 32, 32, 3))), seed)
    tmodel = twin.create_model(model_name, NUM_CLASSES)
    twin.load_flax_variables(tmodel, variables)
    with torch.no_grad():
        diffs = {"float32_eval_logits": rel_diff(model.apply(variables, images), tmodel.eval()(to_nchw(images)))}

    with jax.enable_x64(True):
        model, step, tx = jax_step_fn(model_name, jnp.float64)
        variables = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), variables)
        initial = jax.device_get(variables)  # the train step donates (deletes) the arrays it is given
        tmodel = tmodel.double()
        x = to_nchw(images).double()
        with torch.no_grad():
            diffs["float64_eval_logits"] = rel_diff(model.apply(variables, images.astype(np.float64)), tmodel(x))
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
            hook = lambda m, args, out, name=name: sizes.__setitem__(name, args[0].numel() // args[0].shape[1])
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


def interleave(runners: list[Runner], batch_size: int, repeats: int, steps: int) -> tuple[dict[str, list[float]], list[float]]:
    """Images/s of every runner in every repeat (runners take turns, in rotating order), and the 1-min load average."""
    rates: dict[str, list[float]] = {r.name: [] for r in runners}
    load: list[float] = []
    for i in range(repeats):
        for runner in runners[i % len(runners):] + runners[: i % len(runners)]:
            rates[runner.name].append(steps * batch_size / runner.run(steps))
        load.append(os.getloadavg()[0])
        print(f"  repeat {i + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items())
              + f" images/s; load average {load[-1]:.1f}", flush=True)
    return rates, load


def summarise(runners: list[Runner], rates: dict[str, list[float]]) -> tuple[dict, dict]:
    """Per-framework medians and the ratios JAX / each PyTorch variant; prints them as a table."""
    results = {
        r.name: {"first_step_s": r.first_step_s, "images_per_sec_median": statistics.median(rates[r.name]),
                 "images_per_sec_repeats": rates[r.name]}
        for r in runners
    }
    jax_rates = rates[runners[0].name]
    ratios = {
        f"jax / {r.name}": {
            "of_medians": statistics.median(jax_rates) / statistics.median(rates[r.name]),
            "median_per_repeat": statistics.median([a / b for a, b in zip(jax_rates, rates[r.name])]),
        }
        for r in runners[1:]
    }
    print(f"\n{'framework':<26}{'images/s (median)':>19}{'min-max':>16}{'first step (s)':>16}")
    for name, res in results.items():
        spread = f"{min(rates[name]):.0f}-{max(rates[name]):.0f}"
        print(f"{name:<26}{res['images_per_sec_median']:>19.1f}{spread:>16}{res['first_step_s']:>16.1f}")
    for name, ratio in ratios.items():
        print(f"{name}: {ratio['of_medians']:.2f}x (ratio of medians), "
              f"{ratio['median_per_repeat']:.2f}x (median of per-repeat ratios)")
    return results, ratios


def environment() -> dict[str, Any]:
    """Where and with what the benchmark ran."""
    import torch

    env = provenance()
    env["versions"].update(python=platform.python_version(), torch=torch.__version__)
    return {**env, "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def device_slug(env: dict[str, Any]) -> str:
    """'AMD EPYC', 2 CPUs -> 'amd-epyc-2cpu', for the results file name."""
    words = "".join(c if c.isalnum() else " " for c in env["cpu_model"].lower()).split()
    return "-".join(words[:4] or ["cpu"]) + f"-{env['cpu_count']}cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20", help="a CIFAR ResNet: resnet20, resnet56, any resnet<6n+2>")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats per framework, interleaved")
    parser.add_argument("--steps-per-repeat", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--compile-timeout", type=float, default=180.0, help="give up on torch.compile after this many s")
    parser.add_argument("--no-check", action="store_true", help="skip the Flax-vs-torch output equivalence check")
    parser.add_argument("--xla-cpu-defaults", action="store_true",
                        help="time JAX as before resnet_jax.xla_cpu: lax's conv and XLA's default compiler options")
    args = parser.parse_args()

    jax.config.update("jax_platforms", "cpu")  # both frameworks on the host CPU
    import torch

    torch.set_num_threads(os.cpu_count())
    env = environment()
    print(f"{args.model}, batch {args.batch_size}, float32 on {env['cpu_model']} ({env['cpu_count']} CPUs); "
          f"jax {jax.__version__}, torch {torch.__version__}, commit {env['commit']}")

    params = check_param_counts(args.model)
    print(f"parameters: jax {params['jax']:,}, pytorch {params['pytorch']:,}, expected {params['expected'] or '?'}: "
          f"{'OK' if params['ok'] else 'MISMATCH'}", flush=True)
    equivalence = None
    if not args.no_check:
        equivalence = check_equivalence(args.model)
        print(f"outputs ({'OK' if equivalence['ok'] else 'MISMATCH'}), max relative differences: "
              + ", ".join(f"{k} {v:.1e}" for k, v in equivalence["max_rel_diff"].items()), flush=True)

    before = dict(plain_conv=True, xla_default_options=True) if args.xla_cpu_defaults else {}
    runners = [make_jax_runner(args.model, args.batch_size, **before), make_torch_runner(args.model, args.batch_size)]
    compile_status = "skipped (--no-compile)"
    if not args.no_compile:
        try:
            runners.append(make_torch_runner(args.model, args.batch_size, compile=True, compile_timeout_s=args.compile_timeout))
            compile_status = "ok"
        except (Exception, TimeLimitExceeded) as e:  # noqa: BLE001 - torch.compile failed: report it, go on without
            while e.__cause__ is not None:  # torch wraps the root cause
                e = e.__cause__
            first_line = (str(e).strip().splitlines() or [""])[0]
            compile_status = f"skipped: {type(e).__name__}: {first_line}"[:300]
        print(f"torch.compile: {compile_status}", flush=True)
    for r in runners:
        print(f"first step of {r.name}: {r.first_step_s:.1f} s", flush=True)

    rates, load = interleave(runners, args.batch_size, args.repeats, args.steps_per_repeat)
    results, ratios = summarise(runners, rates)
    record = {
        **env,
        "benchmark": "train_step",
        "model": args.model,
        "batch_size": args.batch_size,
        "image_shape": [32, 32, 3],
        "dtype": "float32",
        "jax_variant": "xla_cpu_defaults" if args.xla_cpu_defaults else "resnet_jax.xla_cpu (materialised conv inputs, "
                       f"compiler options {xla_cpu.compiler_options('cpu')})",
        "repeats": args.repeats,
        "steps_per_repeat": args.steps_per_repeat,
        "step": f"forward, cross-entropy, backward, SGD lr {LEARNING_RATE} momentum {MOMENTUM} + L2 {WEIGHT_DECAY} "
                "on kernels, BN running stats; one fixed batch; JAX: jax.jit(train_step, donate_argnums=0); "
                "PyTorch: NCHW, torch.compile(model) when listed",
        "param_counts": params,
        "equivalence": equivalence,
        "torch_compile": compile_status,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_per_repeat": load,
        "results": results,
        "ratios": ratios,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "-xla-cpu-defaults" if args.xla_cpu_defaults else ""
    path = RESULTS / f"train_step-{env['date'][:10]}-{device_slug(env)}-{args.model}-b{args.batch_size}{suffix}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="torchinductor-", ignore_cleanup_errors=True) as cache:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", cache)  # a cold cache: compile time as a first run sees it
        main()
