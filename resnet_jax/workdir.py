"""A workdir is one run: its config.json, and the rule for re-using it with a changed config.

A resume may change the keys in COSMETIC (how often it logs, evaluates, checkpoints or diagnoses, how many checkpoints
it keeps, what it does on a non-finite step, how many steps a compiled call runs, where the same data lives): they do
not change what is trained. Any other difference is refused, naming the keys, unless --overwrite moves the old run
aside. Nothing is written until every check passed (`save_config` comes last), so a failed attempt never poisons the
workdir.
"""

import json
import shutil
import time
from pathlib import Path

import ml_collections

from resnet_jax.config import from_saved

CONFIG_FILE = "config.json"
COSMETIC = ("log_every_steps", "eval_every_steps", "checkpoint_every_steps", "checkpoint_keep",
            "diagnostics_every_steps", "nonfinite", "steps_per_call", "data.path", "data.manual_dir")


class WorkdirError(ValueError):
    """The workdir holds another run; the message names the differences and the ways on."""


def config_differences(workdir: Path, config: ml_collections.ConfigDict) -> list[str]:
    """The keys in which `config` differs from the one saved in `workdir` (none if nothing is saved there).

    A key the saved config lacks (written before the key existed) counts as having its default value
    (config.from_saved).
    """
    saved = Path(workdir) / CONFIG_FILE
    if not saved.exists():
        return []
    old = _flat(json.loads(from_saved(saved.read_text()).to_json_best_effort()))
    new = _flat(json.loads(config.to_json_best_effort()))
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def cosmetic_keys(config: ml_collections.ConfigDict) -> set[str]:
    """COSMETIC, and the plateau's settings while it is disabled; less eval_every_steps when the plateau follows the
    evaluations (then it changes the training)."""
    if config.plateau.enabled:
        return set(COSMETIC) - {"eval_every_steps"}
    return set(COSMETIC) | {f"plateau.{k}" for k in config.plateau if k != "enabled"}


def check_workdir(workdir: Path, config: ml_collections.ConfigDict, overwrite: bool) -> list[str]:
    """Refuse a workdir holding a run with a semantically different config, or move it aside if `overwrite`.

    Returns the cosmetic differences, which a resume accepts. Writes nothing unless it moves the old run aside. Several
    processes: process 0 alone calls it and shares the outcome (train: distributed.run_on_lead).
    """
    differences = config_differences(workdir, config)
    semantic = [k for k in differences if k not in cosmetic_keys(config)]
    if semantic:
        if not overwrite:
            raise WorkdirError(
                f"{workdir} holds a run with a different config (differs in: {', '.join(semantic)}). "
                "Use a new --workdir, or pass --overwrite to move the old run aside and start afresh."
            )
        aside = workdir.with_name(f"{workdir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.move(workdir, aside)
        print(f"moved the previous run in {workdir} to {aside}")
        return []
    return differences


def save_config(workdir: Path, config: ml_collections.ConfigDict) -> None:
    """Write the resolved config to <workdir>/config.json (creating the workdir)."""
    workdir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(json.loads(config.to_json_best_effort()), indent=2, sort_keys=True)
    (workdir / CONFIG_FILE).write_text(text)


def data_fingerprint(pipeline) -> dict:
    """What must stay the same when data.path changes on a resume: the splits' sizes, the classes, the image shape."""
    return {"split_sizes": dict(pipeline.split_sizes), "class_names": list(pipeline.class_names),
            "image_shape": list(pipeline.image_shape)}


def check_same_data(saved: dict | None, pipeline, data_path: str) -> None:
    """Refuse to resume on data that differ from those the checkpoint was trained on."""
    current = data_fingerprint(pipeline)
    if saved is not None and saved != current:
        differ = [f"{k}: trained on {saved.get(k)}, now {current[k]}" for k in current if saved.get(k) != current[k]]
        raise WorkdirError(
            f"the data at data.path={data_path!r} are not the data this run was trained on ({'; '.join(differ)}). "
            "Point data.path at the run's data, or use a new --workdir."
        )


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v)
    return out
