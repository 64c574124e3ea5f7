"""Launch N local processes of one program on loopback, as N hosts would run it (for the multi-host tests).

    with Processes(lambda i, coordinator: [*command, f"--process_id={i}", ...], tmp_path, NPROC="2") as run:
        results = run.wait(timeout=300)   # or run.kill(1) first

Each process gets its own forced CPU devices (JAX_PLATFORMS=cpu) and any extra environment variables, stdout and
stderr in files under `logs`, and the coordinator address 127.0.0.1:<free port>. A process that outlives the test is
SIGKILLed (a multi-process JAX program catches SIGTERM for its preemption service), so a hang fails the test instead
of stalling it.
"""

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Environment a cluster scheduler sets and JAX's cluster detection reads: a test must not join a real job.
CLUSTER_ENV_PREFIXES = ("SLURM_", "OMPI_", "PMI_", "TPU_", "MEGASCALE_", "JAX_COORDINATOR", "KUBERNETES_")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_env(devices: int, **extra: str) -> dict[str, str]:
    """This environment for a CPU-only JAX process with `devices` forced devices and no cluster around it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLUSTER_ENV_PREFIXES)}
    path = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)  # this checkout's code, experiments/
    return env | {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
                  "PYTHONPATH": path} | extra


@dataclasses.dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    ended: float  # time.monotonic() when the process was seen to end


class Processes:
    """`num_processes` processes; process i runs argv(i, 'HOST:PORT of the coordinator'); `env`: extra variables."""

    def __init__(self, argv: Callable[[int, str], list[str]], logs: Path, num_processes: int = 2,
                 devices_per_process: int = 2, **env: str):
        coordinator = f"127.0.0.1:{free_port()}"
        logs.mkdir(parents=True, exist_ok=True)
        self.logs = [(logs / f"process{i}.out", logs / f"process{i}.err") for i in range(num_processes)]
        env = cpu_env(devices_per_process, **env)
        self.procs = []
        for i, (out, err) in enumerate(self.logs):
            with out.open("w") as o, err.open("w") as e:
                self.procs.append(subprocess.Popen(argv(i, coordinator), stdout=o, stderr=e, env=env, cwd=ROOT))
        self.ended: dict[int, float] = {}

    def kill(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGKILL)

    def poll(self) -> list[int | None]:
        codes = [p.poll() for p in self.procs]
        for i, code in enumerate(codes):
            if code is not None:
                self.ended.setdefault(i, time.monotonic())
        return codes

    def wait(self, timeout: float) -> list[Result]:
        """Every process's result; if one is still running after `timeout` seconds, kill all and fail."""
        deadline = time.monotonic() + timeout
        while None in self.poll():
            if time.monotonic() > deadline:
                self.kill_all()
                raise AssertionError(f"processes still running after {timeout:.0f} s (hung?):\n{self.tails()}")
            time.sleep(0.05)
        return [Result(p.returncode, out.read_text(), err.read_text(), self.ended[i])
                for i, (p, (out, err)) in enumerate(zip(self.procs, self.logs, strict=True))]

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()

    def tails(self, chars: int = 3000) -> str:
        return "\n".join(f"--- process {i} {path.suffix}:\n{path.read_text()[-chars:]}"
                         for i, paths in enumerate(self.logs) for path in paths)

    def __enter__(self) -> "Processes":
        return self

    def __exit__(self, *exc) -> None:
        self.kill_all()


def python(*args: str) -> list[str]:
    return [sys.executable, *args]
