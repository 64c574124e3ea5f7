"""Multi-process runs: one JAX process per host (or per accelerator), with `jax.distributed` as the engine.

    # two plain hosts: the same command on each, with its own --process_id
    python -m resnet_jax.train ... --coordinator_address=10.0.0.1:1234 --num_processes=2 --process_id=0
    # Slurm (srun), Open MPI (mpirun), Cloud TPU pod slices: JAX detects the coordinator, count and id
    python -m resnet_jax.train ... --distributed

The flags are `jax.distributed.initialize`'s arguments under their own names. Every process runs the same program
and takes the same decisions: metrics come from all-reduced sums, the same bits everywhere, and what depends on
files is decided (or done) by process 0 and shared (`run_on_lead`). Only process 0 writes logs, metrics, figures
and reports, while orbax writes checkpoints from every process, so the workdir must be on a filesystem that every
host sees (`check_shared`).
"""

import argparse
import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import flags
from jax.experimental import multihost_utils


@dataclasses.dataclass(frozen=True)
class Settings:
    """How this process joins a multi-process run; a single-process run when nothing is set."""

    distributed: bool = False
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None
    cluster_detection_method: str | None = None
    initialization_timeout: int = 300
    heartbeat_timeout_seconds: int = 60
    shutdown_timeout_seconds: int = 120

    @property
    def enabled(self) -> bool:
        explicit = (self.coordinator_address, self.num_processes, self.process_id, self.local_device_ids,
                    self.cluster_detection_method)
        return self.distributed or any(v is not None for v in explicit)


HELP = {
    "distributed": "join a multi-process run via jax.distributed.initialize(); without the flags below JAX detects "
                   "Slurm (srun), Open MPI (mpirun) and Cloud TPU pod slices (any flag below implies --distributed)",
    "coordinator_address": "HOST:PORT at which process 0 serves the coordinator; the same on every process",
    "num_processes": "number of processes in the run",
    "process_id": "this process's id, 0 .. num_processes - 1 (process 0 is the coordinator and writes the records)",
    "local_device_ids": "comma-separated ids of the local accelerators this process uses (default: all)",
    "cluster_detection_method": "force one of JAX's cluster detectors, e.g. 'mpi4py' (opt-in) or 'slurm'",
    "initialization_timeout": "seconds to wait for every process to join",
    "heartbeat_timeout_seconds": "seconds without a heartbeat after which a process counts as lost and the run stops",
    "shutdown_timeout_seconds": "seconds a finished process waits for the others to finish",
}
NO_CLUSTER = (
    "JAX detects Slurm (srun sets SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID), "
    "Open MPI (mpirun sets OMPI_MCA_orte_hnp_uri), Cloud TPU pod slices and Kubernetes Jobs (with the kubernetes "
    "package), and other MPIs with --cluster_detection_method=mpi4py. On plain hosts pass, on every process, "
    "--coordinator_address=HOST:PORT (process 0's address) --num_processes=N --process_id=I."
)
MIN_THREADS_PER_CPU_DEVICE = 2
KINDS = {"distributed": bool, "coordinator_address": str, "num_processes": int, "process_id": int,
         "local_device_ids": list, "cluster_detection_method": str, "initialization_timeout": int,
         "heartbeat_timeout_seconds": int, "shutdown_timeout_seconds": int}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The Settings as absl flags (train's command line), named as jax.distributed.initialize's arguments."""
    define = {bool: flags.DEFINE_bool, str: flags.DEFINE_string, int: flags.DEFINE_integer, list: flags.DEFINE_list}
    for name, kind in KINDS.items():
        define[kind](name, getattr(Settings(), name), HELP[name], flag_values=flag_values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The Settings as argparse arguments (evaluate's command line), the same names as define_flags'."""
    for name, kind in KINDS.items():
        options = {"action": argparse.BooleanOptionalAction} if kind is bool else {"type": int if kind is int else str}
        parser.add_argument(f"--{name}", default=getattr(Settings(), name), help=HELP[name], **options)


def settings_from(parsed: Any) -> Settings:
    """Settings from parsed absl FLAGS or an argparse Namespace (both carry the Settings' field names)."""
    values = {f.name: getattr(parsed, f.name) for f in dataclasses.fields(Settings)}
    ids = values["local_device_ids"]
    if isinstance(ids, str):
        ids = ids.split(",")
    if ids:
        try:
            values["local_device_ids"] = tuple(int(i) for i in ids)
        except ValueError:
            raise ValueError(f"--local_device_ids={','.join(ids)}: give comma-separated integers, e.g. 0,1") from None
    else:
        values["local_device_ids"] = None
    return Settings(**values)


def validate(s: Settings) -> None:
    """Refuse impossible settings with the fix in the message, before anything starts."""
    for name in ("initialization_timeout", "heartbeat_timeout_seconds", "shutdown_timeout_seconds"):
        if getattr(s, name) <= 0:
            raise ValueError(f"--{name}={getattr(s, name)}: give a positive number of seconds")
    if s.num_processes is not None and s.num_processes < 1:
        raise ValueError(f"--num_processes={s.num_processes}: a run has at least 1 process")
    if s.process_id is not None and not (0 <= s.process_id < (s.num_processes or sys.maxsize)):
        raise ValueError(f"--process_id={s.process_id}: give 0 .. num_processes - 1"
                         + (f" = {s.num_processes - 1}" if s.num_processes else ""))
    if s.coordinator_address is not None:
        host, _, port = s.coordinator_address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--coordinator_address={s.coordinator_address!r}: give HOST:PORT, e.g. 10.0.0.1:1234 "
                             "(process 0's address and a free port, the same on every process)")
    if s.local_device_ids is not None and min(s.local_device_ids) < 0:
        raise ValueError(f"--local_device_ids={s.local_device_ids}: device ids are >= 0")


def initialize(s: Settings) -> None:
    """Join the run's other processes, if `s` asks for a multi-process run; call it before any other JAX call."""
    validate(s)
    ensure_cpu_client_threads()  # one process with several CPU devices needs it too
    if not s.enabled:
        return
    if jax.config.jax_cpu_collectives_implementation is None:  # CPU devices talk across processes with gloo
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=s.coordinator_address, num_processes=s.num_processes, process_id=s.process_id,
            local_device_ids=list(s.local_device_ids) if s.local_device_ids else None,
            cluster_detection_method=s.cluster_detection_method, initialization_timeout=s.initialization_timeout,
            heartbeat_timeout_seconds=s.heartbeat_timeout_seconds, shutdown_timeout_seconds=s.shutdown_timeout_seconds)
    except ValueError as e:  # a value was neither given nor detected (the given ones are valid: validate())
        raise ValueError(f"cannot start a multi-process run: no cluster detected and not every flag given "
                         f"(jax.distributed: {e}). {NO_CLUSTER}") from e


def ensure_cpu_client_threads() -> None:
    """Give XLA's CPU client at least 2 threads per local CPU device, or a multi-device CPU run can deadlock.

    XLA:CPU sizes its client thread pool max(cores, local devices). A multi-device launch blocks one pool thread per
    device while that device already has 32 computations queued, and a running collective holds one pool thread per
    device waiting for its peers (gloo across processes, XLA's rendezvous within one: seen as "only 3 of 4 threads
    arrived" in a 1-process x 4-device run): with fewer than 2 threads per device, both wait for each other as soon as
    32 computations are queued, as an evaluation loop does. PJRT_NPROC, read when the CPU client is created, sets it.
    """
    env = os.environ.get("PJRT_NPROC") or os.environ.get("NPROC") or ""
    threads = int(env) if env.isdigit() else len(os.sched_getaffinity(0))
    needed = MIN_THREADS_PER_CPU_DEVICE * local_cpu_device_count()
    if threads < needed:
        os.environ["PJRT_NPROC"] = str(needed)


def local_cpu_device_count() -> int:
    """The number of CPU devices this process's CPU client will have (jax_num_cpu_devices, else XLA_FLAGS)."""
    if jax.config.jax_num_cpu_devices >= 0:
        return jax.config.jax_num_cpu_devices
    forced = re.findall(r"--xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", ""))
    return int(forced[-1]) if forced else 1


def is_lead() -> bool:
    """Process 0 writes the records (logs, metrics, figures, reports) and takes the file-system decisions."""
    return jax.process_index() == 0


def quiet_followers() -> None:
    """Only process 0 prints: the others' stdout is discarded (their warnings and errors still reach stderr)."""
    if not is_lead():
        # not a `with`: the replacement stdout has to stay open for the rest of the process
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115


def _from_lead(value: Any) -> Any:
    """`value` (JSON-serialisable) as process 0 has it, on every process. Two small collectives; all must call it."""
    if jax.process_count() == 1:
        return value
    data = json.dumps(value).encode() if is_lead() else b""
    size = int(multihost_utils.broadcast_one_to_all(np.int32(len(data))))
    buffer = np.zeros(1 << max(10, (size - 1).bit_length()), np.uint8)  # a few sizes, so a few compiles
    buffer[:len(data)] = np.frombuffer(data, np.uint8)
    return json.loads(bytes(multihost_utils.broadcast_one_to_all(buffer)[:size]))


def run_on_lead(fn: Callable[..., Any], *args: Any, errors: tuple[type[Exception], ...] = ()) -> Any:
    """fn(*args) run on process 0 alone (file-system work: reads that decide, moves), its JSON-serialisable result
    returned on every process. The others wait for it; if it raises, every process raises: an error of a class in
    `errors` as that class with process 0's message, any other as a RuntimeError naming it."""
    if jax.process_count() == 1:
        return fn(*args)
    outcome = None
    if is_lead():
        try:
            outcome = {"value": fn(*args)}
        except Exception as e:  # shared first, then raised as it is on process 0
            _from_lead({"error": type(e).__name__, "message": str(e)})
            raise
    outcome = _from_lead(outcome)
    if "error" in outcome:
        kinds = {kind.__name__: kind for kind in errors}
        if outcome["error"] in kinds:
            raise kinds[outcome["error"]](outcome["message"])
        raise RuntimeError(f"process 0 failed with {outcome['error']}: {outcome['message']}")
    return outcome["value"]


class NotSharedError(ValueError):
    """A process does not see the files process 0 wrote: the workdir is not on a filesystem that all hosts share."""


def check_shared(path: Path) -> None:
    """Every process must see `path`, which process 0 has just written: a workdir on a filesystem that all hosts
    share. Every process calls it after process 0's write."""
    if jax.process_count() == 1:
        return
    multihost_utils.sync_global_devices("resnet_jax.distributed.check_shared")  # process 0 has written it
    seen = multihost_utils.process_allgather(np.int32(Path(path).exists()))
    missing = [i for i, ok in enumerate(seen) if not ok]
    if missing:
        raise NotSharedError(f"process(es) {missing} do not see {path}, which process 0 wrote: in a multi-process "
                             "run the workdir must be on a filesystem that every host mounts at the same path (NFS, "
                             "GCS FUSE, ...); orbax writes the checkpoints from every process")
