"""source='cifar': the CIFAR-10/100 python archives (cifar-10-python.tar.gz, extracted or not).

Nothing read is executed: the pickles are unpickled with only numpy's array constructors allowed.
"""

import contextlib
import io
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from resnet_jax.data.sources.common import DataError, check_labels, check_path, register_source

# name -> (folder in the archive, archive file, train members, test members, meta member, label key, names key)
CIFAR = {
    "cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz", [f"data_batch_{i}" for i in range(1, 6)],
                ["test_batch"], "batches.meta", b"labels", b"label_names"),
    "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz", ["train"], ["test"], "meta",
                 b"fine_labels", b"fine_label_names"),
}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"

# The only globals a CIFAR pickle may name: numpy's array and dtype constructors (numpy 1 and 2 module paths; the
# protocol-5 form too). Dicts, lists, bytes, strings and numbers need no global.
CIFAR_PICKLE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
})


def validate(config: ml_collections.ConfigDict) -> None:
    """data.name must be cifar10 or cifar100 and data.path exist (the archive or a directory holding it)."""
    if config.name not in CIFAR:
        raise DataError(f"source='cifar' reads {' or '.join(CIFAR)}, not {config.name!r}")
    if not config.path:
        folder, archive = CIFAR[config.name][:2]
        raise DataError(f"source='cifar' needs path=DIR holding {folder}/ or {archive} (from {CIFAR_URL}{archive})")
    check_path(config)


class _CifarUnpickler(pickle.Unpickler):
    """Builds dicts, lists, bytes, strings, numbers and numpy arrays; refuses every other global before looking it
    up, so a crafted pickle cannot call anything (os.system, eval, ...)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in CIFAR_PICKLE_GLOBALS:
            raise _RefusedGlobal(f"{module}.{name}")
        return super().find_class(module, name)


class _RefusedGlobal(pickle.UnpicklingError):
    """A global that CIFAR pickles never name; the message is its dotted name."""


def _unpickle(raw: bytes, where: str, archive: str) -> Any:
    try:
        return _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _RefusedGlobal as e:
        raise DataError(f"{where} is not a CIFAR batch: its pickle names {e}, which CIFAR archives never hold, and "
                        "was refused without running anything (only dicts, lists, bytes, numbers and numpy arrays are "
                        f"read). Use the archive from {CIFAR_URL}{archive}") from None
    except Exception as e:  # a truncated or garbled pickle fails in many ways
        raise DataError(f"{where} is not a complete CIFAR pickle ({type(e).__name__}: {e}); "
                        f"download {CIFAR_URL}{archive} again") from e


def read(config: ml_collections.ConfigDict):
    """train and test of a CIFAR-10/100 python archive, extracted or not, with its class names."""
    folder, archive, train, test, meta, label_key, names_key = CIFAR[config.name]
    with _cifar_files(Path(config.path), folder, archive, meta) as (found, read_member):
        def load(member):
            where = f"{found}{'/' if found.is_dir() else ':'}{member}"
            return where, _unpickle(read_member(member), where, archive)

        where, meta_dict = load(meta)
        names = meta_dict.get(names_key) if isinstance(meta_dict, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, bytes) for n in names):
            raise DataError(f"{where} holds no list of class names under {names_key!r}: not a {config.name} archive")
        splits = {}
        for split, members in (("train", train), ("test", test)):
            batches = [_cifar_batch(*load(m), label_key, len(names)) for m in members]
            splits[split] = (np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches]))
    return splits, [n.decode() for n in names], f"CIFAR python archive {found}"


def _cifar_batch(where: str, batch: Any, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 images and int32 labels of one unpickled batch, checked for what CIFAR batches hold."""
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        keys = list(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataError(f"{where} is not a CIFAR batch: expected a dict with b'data' and {label_key!r}, got {keys}")
    data, labels = batch[b"data"], np.asarray(batch[label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        described = f"{data.shape} {data.dtype}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{where}: b'data' is {described}, expected (N, 3072) uint8 rows of 32x32x3 pixels")
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: {label_key!r} holds {labels.shape} {labels.dtype} labels for {len(data)} images")
    check_labels(labels, num_classes, where, "the archive is corrupt or of another dataset: download it again")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # rows are channel-major: 1024 R, 1024 G, 1024 B
    return np.ascontiguousarray(images), labels.astype(np.int32)


@contextlib.contextmanager
def _cifar_files(root: Path, folder: str, archive: str, meta: str):
    """(what was found, member name -> bytes) for the extracted folder or the .tar.gz, whichever is there."""
    for candidate in (root / folder, root, root / archive):
        if candidate.is_dir() and (candidate / meta).is_file():
            def member_bytes(member, candidate=candidate):
                if not (candidate / member).is_file():
                    raise DataError(f"{candidate} has no {member}: the archive is incomplete; extract "
                                    f"{CIFAR_URL}{archive} again")
                return (candidate / member).read_bytes()

            yield candidate, member_bytes
            return
        if candidate.is_file():
            with _open_tar(candidate, archive) as tar:
                def member_bytes(member, tar=tar, candidate=candidate):
                    try:
                        return tar.extractfile(f"{folder}/{member}").read()
                    except KeyError:
                        raise DataError(f"{candidate} has no {folder}/{member}: not a complete "
                                        f"{archive}; download it again") from None
                    except (OSError, EOFError, tarfile.TarError, zlib.error) as e:
                        raise DataError(f"{candidate} could not be read at {folder}/{member} ({type(e).__name__}: "
                                        f"{e}): truncated or corrupt; download {CIFAR_URL}{archive} again") from e

                yield candidate, member_bytes
            return
    raise DataError(f"CIFAR files not found: looked for {root / folder / meta}, {root / meta} and {root / archive}. "
                    f"Download {CIFAR_URL}{archive} and pass path=DIR holding it (or its extracted folder).")


def _open_tar(path: Path, archive: str) -> tarfile.TarFile:
    try:
        return tarfile.open(path)
    except (OSError, EOFError, tarfile.TarError, zlib.error) as e:
        raise DataError(f"{path} is not a readable tar archive ({type(e).__name__}: {e}; a truncated "
                        f"or wrong download?): download {CIFAR_URL}{archive} again") from e


register_source("cifar", read, validate=validate, description="a CIFAR python archive")
