"""Non-finite losses and gradients: detected inside the jitted step, acted on when the loop next reads the device.

`guard` runs inside the train step: when the loss, a gradient or the new parameters/BN statistics are not all finite,
the step keeps the previous state (only the step counter moves on) and reports `nonfinite = 1` with its metrics.
Nothing extra crosses to the host: the loop reads the flags with the other metrics at its sync points (log,
evaluation and checkpoint steps), so no non-finite value is ever saved. Then `check` applies `config.nonfinite`:
'stop' ends the run with NonFiniteError (exit code EXIT_CODE) naming the step and the last good checkpoint; 'skip'
goes on, and the skipped steps are counted in the logs (`train/nonfinite_steps`, `train_epoch/nonfinite_steps`).
"""

from typing import Any

import jax
import jax.numpy as jnp

MODES = ("stop", "skip")
EXIT_CODE = 3


class NonFiniteError(RuntimeError):
    """The run met a non-finite loss or gradient with nonfinite='stop'; nothing after the last checkpoint was kept."""


def all_finite(*trees: Any) -> jax.Array:
    """True when every element of every array in `trees` is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(trees)]))


def guard(new_state: Any, old_state: Any, *checked: Any) -> tuple[Any, jax.Array]:
    """(new_state if `checked` and the new params/BN statistics are all finite else old_state with the new step,
    the float flag 1.0 where the step was not applied)."""
    finite = all_finite(new_state.params, new_state.batch_stats, *checked)
    kept = old_state.replace(step=new_state.step)
    state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, kept)
    return state, 1.0 - finite.astype(jnp.float32)


def check(nonfinite_steps: list[int], mode: str, last_checkpoint: str) -> None:
    """Raise NonFiniteError in 'stop' mode if a step of the window was not finite; 'skip' lets the run go on."""
    if nonfinite_steps and mode == "stop":
        raise NonFiniteError(
            f"the loss or a gradient was not finite at step {nonfinite_steps[0]} "
            f"({len(nonfinite_steps)} such step(s) up to step {nonfinite_steps[-1]}): the run stopped and saved nothing "
            f"after it. The last good checkpoint is {last_checkpoint}. Lower the learning rate (or add warm-up), or set "
            "nonfinite='skip' to skip such steps, then re-run the same command to resume from that checkpoint."
        )
