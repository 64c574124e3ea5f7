"""Shared fixtures: small MNIST-format files the tests write themselves."""

import gzip
import struct

import numpy as np
import pytest


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
