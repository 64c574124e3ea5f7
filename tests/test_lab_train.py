"""The lab's model variants (docs/lab.md) train through the command line, checkpoint and resume like any model."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import chex
import pytest

from resnet_jax.checkpoints import Checkpoints
from resnet_jax.lab.common import load_run
from resnet_jax.transfer import load_init_from
from resnet_jax.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]


VARIANT_CONFIG = """
from experiments.quickstart import get_config as quickstart


def get_config():
    c = quickstart()
    c.model.update(widths=(4, 8, 16), {model})
    c.data.update(path={path!r}, val_size=64)
    c.batch_size, c.num_steps, c.checkpoint_every_steps, c.eval_every_steps = 32, 4, 2, 2
    return c
"""


# Every BN-free block, and stochastic depth per example and per batch: no batch statistics to checkpoint, scalar
# parameters, a zero classifier, a dropout rng.
@pytest.mark.parametrize("model", ["block='skipinit_basic', version='v2', stochastic_depth=0.5, "
                                   "stochastic_depth_mode='example'", "block='fixup_basic', stochastic_depth=0.5",
                                   "block='rezero_basic'", "block='fixup_bottleneck'"])
def test_each_variant_trains_through_the_cli_and_resumes(model, tmp_path, learnable_idx_dir, train_until_a_checkpoint):
    config_file, workdir = tmp_path / "variant.py", tmp_path / "run"
    config_file.write_text(VARIANT_CONFIG.format(model=model, path=str(learnable_idx_dir)))
    spec = importlib.util.spec_from_file_location("variant", config_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    train_until_a_checkpoint(module.get_config(), workdir)  # in-process, stopped right after the step-2 checkpoint
    assert Checkpoints(workdir, read_only=True).latest_step() == 2
    out = subprocess.run([sys.executable, "-m", "resnet_jax.train", "--config", str(config_file), "--workdir",
                          str(workdir)], env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    events = read_metrics(workdir)
    assert "test/accuracy" in events[-1] and events[-1]["step"] == 4  # resumed from step 2 and finished
    assert [e["step"] for e in events if "val/loss" in e] == [2, 4]  # step 2's evaluation not repeated
    if "skipinit" in model:  # a net without BatchNorm (no batch_stats) is a starting point for another run
        config = module.get_config()
        config.init_from.update(path=str(workdir), format="checkpoint", checkpoint="latest")
        run, trained = load_run(workdir, "latest")  # the whole state, restored and verified
        variables = load_init_from(config.init_from, run.model, run.pipeline.image_shape)
        assert variables["batch_stats"] == {} and set(variables["params"]) == set(trained.params) - {"head"}
        chex.assert_trees_all_equal(variables["params"], {k: v for k, v in trained.params.items() if k != "head"})
