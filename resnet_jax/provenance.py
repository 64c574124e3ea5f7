"""Where, when and with what a figure was measured: recorded beside every committed result."""

import datetime
import functools
import importlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jax

ROOT = Path(__file__).resolve().parents[1]
COMMIT_ENV = "RESNET_JAX_COMMIT"  # the commit of a copied working tree without .git (a GPU machine's copy)


def git_commit() -> str:
    """Short HEAD, with '+dirty' when tracked files differ from it; outside a git checkout, $RESNET_JAX_COMMIT or
    'unknown'."""
    git = lambda *cmd: subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    commit = git("rev-parse", "--short", "HEAD") if shutil.which("git") else ""
    if not commit:
        return os.environ.get(COMMIT_ENV) or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "-uno") else "")


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor())


@functools.cache
def nvidia_gpus() -> dict[str, Any] | None:
    """GPU names, memory, driver and the driver's CUDA version from nvidia-smi; None where there is none."""
    if not shutil.which("nvidia-smi"):
        return None
    query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
    try:
        rows = subprocess.run(query, capture_output=True, text=True, timeout=30, check=True).stdout.strip().splitlines()
        header = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return {"error": f"nvidia-smi failed: {e}"}
    # strict=False: a row of unexpected shape is recorded as far as it goes rather than failing the run's record
    gpus = [dict(zip(("name", "memory", "driver"), (f.strip() for f in row.split(",")), strict=False)) for row in rows]
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", header)
    return {"gpus": gpus, "driver": gpus[0]["driver"] if gpus else None, "cuda_driver_api": cuda and cuda[1]}


def provenance() -> dict[str, Any]:
    """Date (UTC), commit, accelerator (with driver and CUDA on NVIDIA GPUs) and CPU, and the numerical stack's
    versions."""
    device = jax.devices()[0]
    versions = {m: importlib.import_module(m).__version__ for m in ("jax", "jaxlib", "flax", "optax")}
    plugins = {d.metadata["Name"]: d.version for d in importlib.metadata.distributions()
               if (d.metadata["Name"] or "").startswith(("jax-cuda", "jax_cuda"))}
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "device": f"{jax.device_count()} x {device.device_kind} ({device.platform})",
        "cpu": f"{cpu_model()}, {os.cpu_count()} cores",
        "load_average_1m": round(os.getloadavg()[0], 2),
        "versions": {"python": platform.python_version(), **versions, **plugins},
        **({"nvidia": nvidia_gpus()} if nvidia_gpus() else {}),
    }


def device_slug() -> str:
    """The first device for result file names: 'nvidia-h200' (a GPU; '-x8' for 8 of them), 'amd-epyc-2cpu' (a CPU)."""
    slug = lambda text: "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split()[:4])  # noqa: E731
    device = jax.devices()[0]
    if device.platform == "cpu":
        return (slug(cpu_model()) or "cpu") + f"-{os.cpu_count()}cpu"
    return slug(device.device_kind) + (f"-x{jax.device_count()}" if jax.device_count() > 1 else "")


def write_record(record: dict[str, Any], folder: Path, name: str, *details: str) -> Path:
    """Write a result record to <folder>/<name>-<day of record['date']>[-<detail>...].json, the one naming of the
    benchmarks' results, and print where."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ("-".join([name, record["date"][:10], *details]) + ".json")
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    return path
