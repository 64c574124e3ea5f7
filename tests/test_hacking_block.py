"""docs/hacking.md, a new block: a config file defines and registers it, names it, and the CLI trains it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from resnet_jax.checkpoints import Checkpoints
from resnet_jax.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]

# The whole change: this file. No edit of resnet_jax is needed.
SCALED_BLOCK_CONFIG = '''
import flax.linen as nn

from experiments.quickstart import get_config as quickstart
from resnet_jax import models


class ScaledBasicBlock(models.PostActBlock):
    """A basic block whose residual branch is scaled by a learnable scalar that starts at 0 (SkipInit)."""

    @nn.compact
    def __call__(self, x):
        y = self.act(self.norm()(self.conv(self.filters, (3, 3), self.strides)(x)))
        y = self.norm()(self.conv(self.filters, (3, 3))(y))
        y = y * self.param("branch_scale", nn.initializers.zeros, ())
        return self.act(y + models.post_activation_shortcut(self, x, self.filters) if self.residual else y)


models.register_block("scaled_basic", post=ScaledBasicBlock)


def get_config():
    c = quickstart()
    c.model.update(block="scaled_basic", widths=(4, 8, 16))
    c.batch_size, c.num_epochs = 32, 1
    return c
'''


def test_a_block_registered_in_a_config_file_trains_through_the_cli(tmp_path, learnable_idx_dir):
    config, workdir = tmp_path / "scaled_block.py", tmp_path / "run"
    config.write_text(SCALED_BLOCK_CONFIG)
    out = subprocess.run(
        [sys.executable, "-m", "resnet_jax.train", "--config", str(config), "--workdir", str(workdir),
         f"--config.data.path={learnable_idx_dir}", "--config.data.val_size=64"],
        env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "test/accuracy" in read_metrics(workdir)[-1]  # the run trained, evaluated and finished
    checkpoints = Checkpoints(workdir, read_only=True)
    try:
        blocks = ("stage1_block1", "stage2_block1", "stage3_block1")
        scalar = jax.ShapeDtypeStruct((), jnp.float32)
        saved = checkpoints.restore_variables({"params": {b: {"branch_scale": scalar} for b in blocks}}, "latest")
    finally:
        checkpoints.close()
    assert all(float(saved["params"][b]["branch_scale"]) != 0 for b in blocks)  # the new parameter was trained

    evaluate = [sys.executable, "-m", "resnet_jax.evaluate", "--workdir", str(workdir), "--checkpoint", "latest"]
    unregistered = subprocess.run(evaluate, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert unregistered.returncode != 0 and "scaled_basic" in unregistered.stderr  # names the unknown block
    evaluated = subprocess.run([*evaluate, "--config", str(config)], capture_output=True, text=True, cwd=ROOT,
                               timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    accuracy = json.loads(evaluated.stdout.splitlines()[-1])["test/accuracy"]
    assert accuracy == pytest.approx(read_metrics(workdir)[-1]["test/accuracy"], abs=1e-6)
