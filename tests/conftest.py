"""Shared fixtures: small MNIST-format files the tests write themselves; one XLA compilation cache per session."""

import gzip
import os
import shutil
import struct
import sys
import tempfile

import numpy as np
import pytest

# torch._dynamo (imported by torchvision and by torch's optimizers) loads triton, whose LLVM segfaults a process that
# already holds TensorFlow's. The tests use torch on the CPU only, where triton is never needed: hide it.
sys.modules.setdefault("triton", None)


def pytest_configure(config):
    """Compile each distinct program once per session, also across the training subprocesses the tests start.

    The tests' runs and subprocesses compile the same tiny programs again and again; JAX's persistent cache (read from
    these variables when jax is imported, and inherited by subprocesses) turns the repeats into cache hits.
    """
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        config.xla_cache = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="resnet-jax-tests-xla-")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_unconfigure(config):
    if hasattr(config, "xla_cache"):
        shutil.rmtree(config.xla_cache, ignore_errors=True)


def _write_idx(path, array, gz=False):
    raw = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


@pytest.fixture(scope="session")
def write_idx():
    """write_idx(path, uint8 array, gz=False): writes an MNIST-format IDX file."""
    return _write_idx


@pytest.fixture(scope="session")
def learnable_idx_dir(tmp_path_factory):
    """Fashion-MNIST-format files a tiny net learns in a few steps: labels 0 (dark noise) and 1 (bright noise).

    320 train images (the tests split off 64 for validation) and 100 test images (not a multiple of any batch).
    """
    root = tmp_path_factory.mktemp("learnable_idx")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 320), ("t10k", 100)):
        labels = rng.integers(0, 2, n).astype(np.uint8)
        images = (40 + 120 * labels[:, None, None] + rng.integers(0, 80, (n, 28, 28))).astype(np.uint8)
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images, gz=True)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels, gz=True)
    return root


class SimulatedPreemption(Exception):
    """A run stopped right after writing a checkpoint, as a preemption between two steps would stop it."""


@pytest.fixture
def train_until_a_checkpoint(monkeypatch):
    """train_until_a_checkpoint(config, workdir): train_and_evaluate, stopped right after its first checkpoint."""
    from resnet_jax.checkpoints import Checkpoints
    from resnet_jax.loop import train_and_evaluate

    original_save = Checkpoints.save

    def save_then_die(self, state, info, value=None):
        original_save(self, state, info, value)
        self.close()
        raise SimulatedPreemption

    def run(config, workdir):
        with monkeypatch.context() as m:
            m.setattr(Checkpoints, "save", save_then_die)
            with pytest.raises(SimulatedPreemption):
                train_and_evaluate(config, workdir)

    return run
