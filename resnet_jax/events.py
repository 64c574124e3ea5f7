"""TensorBoard event files written without TensorFlow (flax.metrics.tensorboard imports TensorFlow).

tensorboard's own record framing and protos, which need only protobuf: the GPU image has tensorboard but no TF.
"""

import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter


class ScalarWriter:
    """Scalars as TensorBoard events in <logdir>/events.out.tfevents.<time>.<host>.<pid> (appended to, never
    overwritten); each write is flushed, so TensorBoard shows a run while it trains."""

    def __init__(self, logdir: str | Path):
        logdir = Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        # not a `with`: the file lives as long as the writer, and RecordWriter.close (in `close`) closes it
        self._records = RecordWriter(open(logdir / name, "ab"))  # noqa: SIM115
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
        self._write(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)))

    def _write(self, event: event_pb2.Event) -> None:
        self._records.write(event.SerializeToString())
        self._records.flush()

    def close(self) -> None:
        self._records.close()
