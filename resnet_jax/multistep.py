"""How the training loop runs its steps: K per compiled call over in-memory data, else one per prefetched batch.

A small model's step can take less time on an accelerator than the host takes to dispatch it and its batch gather.
With `steps_per_call` K > 1 over in-memory data, each call is one jitted `lax.scan` over K steps, each gathering,
augmenting and normalising its own batch from the device-resident arrays and applying the train step: one dispatch
for K steps, the same batches and steps as K=1. A call never crosses a sync point (a log, evaluation, checkpoint or
diagnostics step, the epoch's end): where one is nearer than K steps, the call is shortened to the largest power of
two that reaches no further (`call_length`), so intervals, logs and mid-epoch resume are those of K=1 and a resumed
run ends bit for bit where an uninterrupted one does. Lengths are static (XLA then runs the loop without asking the
host whether to go on), so each length used compiles once: K and at most log2(K) shorter ones, fewer when K divides
the intervals. XLA compiles the step inside the loop a little differently, so K > 1 and K = 1 agree to float32
rounding (about 1e-6 after some steps), not bit for bit. XLA:CPU runs the step inside a loop many times slower than
alone (jaxlib 0.10.2, 2 cores: 12 vs 170 images/s for resnet8 at batch 32): K > 1 is for accelerators.
A preemption signal stops the run after the current call.

With K = 1 (the default), and for streamed data, each step is one train_step on the pipeline's next batch, PREFETCH
batches in flight (`prefetch`): their host reads, transfers to the mesh and on-device transforms are under way while
the step before them runs.
"""

import collections
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax import xla_cpu

PREFETCH = 2  # streamed batches prepared ahead of the one the step is given


def check(steps_per_call: int, pipeline: Any) -> None:
    """Raise ValueError if steps_per_call > 1 but `pipeline` cannot gather its own batches inside a compiled loop
    (only the in-memory pipeline can: it has train_inputs and train_batch_fn)."""
    if steps_per_call > 1 and not fusable(pipeline):
        raise ValueError(f"steps_per_call={steps_per_call} runs several steps over images held in memory, but the "
                         f"data is {pipeline.origin}: set steps_per_call=1 (streamed batches are prefetched instead), "
                         "or data.in_memory=True if the dataset fits")


def fusable(pipeline: Any) -> bool:
    """Whether a compiled loop can gather `pipeline`'s train batches itself (the in-memory pipeline's can)."""
    return hasattr(pipeline, "train_inputs") and hasattr(pipeline, "train_batch_fn")


def call_length(step: int, steps_per_call: int, stops_after: Callable[[int], bool]) -> int:
    """How many steps the call starting after `step` runs: steps_per_call, or if a step s with stops_after(s) (where
    the loop must read the device or run a step of its own) comes sooner, the largest power of two <= s - step."""
    reach = next((n for n in range(1, steps_per_call) if stops_after(step + n)), steps_per_call)
    return reach if reach == steps_per_call else 1 << (reach.bit_length() - 1)


def prefetch(batches: Iterator, size: int = PREFETCH) -> Iterator:
    """The items of `batches` in order, `size` of them requested ahead of the one yielded.

    The pipelines' batches are global arrays already on the mesh (placed with its NamedSharding); requesting them
    early puts their reading, transfer and transforms in flight while the device runs the step before.
    """
    queue = collections.deque(itertools.islice(batches, size))
    while queue:
        queue.extend(itertools.islice(batches, 1))
        yield queue.popleft()


def fused_steps(train_fn: Callable, batch_fn: Callable, mesh: jax.sharding.Mesh) -> Callable:
    """jit of (state, inputs, first, length) -> (the state after train_fn on batch_fn(*inputs, step) for steps first,
    ..., first + length - 1; their metrics stacked on a leading axis). `length` is static; the state is donated.
    A jitted train_fn is traced as the function it wraps, its compiler options (resnet_jax.xla_cpu) moved to this jit,
    the only place JAX takes them."""
    step_fn = getattr(train_fn, "__wrapped__", train_fn)

    def run(state, inputs, first, length):
        return jax.lax.scan(lambda state, step: step_fn(state, batch_fn(*inputs, step)), state,
                            first + jnp.arange(length))

    return jax.jit(run, static_argnums=3, out_shardings=NamedSharding(mesh, P()), donate_argnums=0,
                   compiler_options=xla_cpu.compiler_options(mesh.devices.flat[0].platform))


class Steps:
    """A run's training steps over its pipeline, across epochs: `calls(start, total, stops_after)` yields each compiled
    call's (first step, number of steps), and `run(state, n)` runs that call; `batch()` is the next step's batch, for
    diagnostics measured before that step runs."""

    def __init__(self, train_fn: Callable, pipeline: Any, steps_per_call: int, mesh: jax.sharding.Mesh):
        check(steps_per_call, pipeline)
        self._train_fn, self._pipeline, self._steps_per_call = train_fn, pipeline, steps_per_call
        self._fused = fused_steps(train_fn, pipeline.train_batch_fn, mesh) if steps_per_call > 1 else None

    def calls(self, start: int, total: int, stops_after: Callable[[int], bool]) -> Iterator[tuple[int, int]]:
        """(first step, length) of the calls from step `start` to `total`: a call stops short of crossing a step s
        where stops_after(s) (the loop reads the device there) and of an epoch's end."""
        spe, step = self._pipeline.steps_per_epoch, start
        while step < total:
            if step == start or step % spe == 0:
                self._start_epoch(step // spe, step % spe)
            n = call_length(step, self._steps_per_call, lambda s: stops_after(s) or s % spe == 0 or s == total)
            yield step, n
            step += n

    def _start_epoch(self, epoch: int, start: int) -> None:
        self._epoch, self._position, self._next = epoch, start, None
        if self._fused:
            self._inputs = self._pipeline.train_inputs(epoch)
        else:
            self._batches = prefetch(self._pipeline.train_batches(epoch, start_step=start))

    def batch(self) -> dict[str, jax.Array]:
        """The batch of the next step (which the next `run` trains on)."""
        if self._fused:
            return next(self._pipeline.train_batches(self._epoch, start_step=self._position))
        if self._next is None:
            self._next = next(self._batches)
        return self._next

    def run(self, state: Any, n: int) -> tuple[Any, dict]:
        """(state after the call's n steps, their metrics: stacked on a leading axis of n with steps_per_call > 1,
        else the one step's)."""
        if not self._fused:
            assert n == 1, n
            batch, self._next = self.batch(), None
            return self._train_fn(state, batch)
        state, metrics = self._fused(state, self._inputs, self._position, n)
        self._position += n
        return state, metrics
