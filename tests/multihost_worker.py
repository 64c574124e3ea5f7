"""Several runs in one interpreter per process (a process start costs ~10 s on a small machine).

    python tests/multihost_worker.py '{"settings": {...}, "runs": [{"overrides": {...}, "workdir": "..."}, ...],
                                       "evaluate": "<workdir>"}'

Joins the run (distributed.Settings), trains the quickstart config with each run's overrides in its workdir (a
ValueError is that run's outcome), evaluates the latest checkpoint of "evaluate", and prints
`RESULT {"runs": [<record> or {"error": <message>}, ...], "evaluated": ...}`.
"""

import json
import sys

import ml_collections


def quickstart_with(overrides: dict) -> ml_collections.ConfigDict:
    """experiments/quickstart.py with {'data.path': ..., ...} applied, as --config.<key>=<value> would."""
    from experiments.quickstart import get_config

    config = get_config()
    config.update_from_flattened_dict({k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    return config


def main(args: dict) -> None:
    from resnet_jax import distributed

    distributed.initialize(distributed.Settings(**args["settings"]))
    from resnet_jax.evaluate import evaluate_run
    from resnet_jax.loop import train_and_evaluate

    out = {"runs": []}
    for run in args["runs"]:
        try:
            out["runs"].append(train_and_evaluate(quickstart_with(run["overrides"]), run["workdir"]))
        except ValueError as e:
            out["runs"].append({"error": str(e)})
    if args.get("evaluate"):
        out["evaluated"] = evaluate_run(args["evaluate"], "latest", ("val", "test"))
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
