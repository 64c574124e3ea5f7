"""Non-finite losses and gradients: detected inside the jitted step, acted on when the loop next reads the device.

The train step (resnet_jax.steps) applies no step whose loss, gradients or new parameters/BN statistics are not all
finite: it keeps the previous state (only the step counter moves on) and reports `nonfinite = 1` with its metrics.
Nothing extra crosses to the host: the loop reads the flags with the other metrics at its sync points (log,
evaluation and checkpoint steps), so no non-finite value is ever saved. Then `check` applies `config.nonfinite`:
'stop' ends the run with NonFiniteError (exit code EXIT_CODE) naming the step and the last good checkpoint; 'skip'
goes on, and the skipped steps are counted in the logs (`train/nonfinite_steps`, `train_epoch/nonfinite_steps`).
"""

MODES = ("stop", "skip")
EXIT_CODE = 3


class NonFiniteError(RuntimeError):
    """The run met a non-finite loss or gradient with nonfinite='stop'; nothing after the last checkpoint was kept."""


def check(nonfinite_steps: list[int], mode: str, last_checkpoint: str) -> None:
    """Raise NonFiniteError in 'stop' mode if a step of the window was not finite; 'skip' lets the run go on."""
    if nonfinite_steps and mode == "stop":
        raise NonFiniteError(
            f"the loss or a gradient was not finite at step {nonfinite_steps[0]} "
            f"({len(nonfinite_steps)} such step(s) up to step {nonfinite_steps[-1]}): the run stopped and saved "
            f"nothing after it. The last good checkpoint is {last_checkpoint}. Lower the learning rate (or add "
            "warm-up), or set nonfinite='skip' to skip such steps, then re-run the same command to resume from that "
            "checkpoint."
        )
