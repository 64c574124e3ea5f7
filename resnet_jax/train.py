"""The training command: train (or resume) a configured run in a workdir.

    python -m resnet_jax.train --config experiments/quickstart.py --workdir runs/quickstart [--config.key=value ...]

The loop is resnet_jax.loop.train_and_evaluate; the steps it runs are resnet_jax.steps. Re-running the same command
in the same workdir resumes exactly. Exit codes: 0 done, 1 unusable workdir, data or checkpoints, 2 invalid config or
command line, 3 diverged, 75 preempted (re-run to resume).
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from resnet_jax import config as config_lib
from resnet_jax import data as data_lib
from resnet_jax import distributed, divergence, preemption
from resnet_jax.checkpoints import CheckpointError
from resnet_jax.loop import train_and_evaluate
from resnet_jax.workdir import WorkdirError


def main(argv: list[str]) -> None:
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
    try:
        distributed.initialize(distributed.settings_from(FLAGS))  # validates the flags first
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    distributed.quiet_followers()
    try:
        train_and_evaluate(FLAGS.config, FLAGS.workdir, overwrite=FLAGS.overwrite)
    except preemption.Preempted:
        sys.exit(preemption.EXIT_CODE)  # the message is printed; the checkpoint is written
    except divergence.NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(divergence.EXIT_CODE)
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (WorkdirError, distributed.NotSharedError, CheckpointError, data_lib.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, after refusing unknown --config.<key> overrides with the nearest valid keys."""
    try:
        config_lib.check_override_keys(argv)
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return app.parse_flags_with_usage(argv)


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    config_flags.DEFINE_config_file("config", None, "experiment config file (experiments/*.py)", lock_config=True)
    flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and figures; re-use it to resume")
    flags.DEFINE_bool("overwrite", False,
                      "if --workdir holds a run with another config, move it aside and start afresh")
    distributed.define_flags()
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main, flags_parser=parse_flags)
