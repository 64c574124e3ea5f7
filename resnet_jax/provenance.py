"""Where, when and with what a figure was measured: recorded beside every committed result."""

import datetime
import importlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import jax

ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """Short HEAD, with '+dirty' when tracked files differ from it ('unknown' outside a git checkout)."""
    git = lambda *cmd: subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    commit = git("rev-parse", "--short", "HEAD")
    return (commit + ("+dirty" if git("status", "--porcelain", "-uno") else "")) if commit else "unknown"


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())


def provenance() -> dict[str, Any]:
    """Date (UTC), commit, accelerator and CPU, and the versions of the numerical stack."""
    device = jax.devices()[0]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "device": f"{jax.device_count()} x {device.device_kind} ({device.platform})",
        "cpu": f"{cpu_model()}, {os.cpu_count()} cores",
        "load_average_1m": round(os.getloadavg()[0], 2),
        "versions": {m: importlib.import_module(m).__version__ for m in ("jax", "jaxlib", "flax", "optax")},
    }
