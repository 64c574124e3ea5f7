"""Datasets and the on-device input pipeline: `make_pipeline(config, batch_size, mesh, seed)` is the training loop's
one view of the data; `load_dataset(config)` reads a dataset into host memory; `validate_config(config)` checks a
data config before anything is read; `python -m resnet_jax.data` shows one. Local files need no TensorFlow.

Extend it by registering: `register_source(name, read, ...)` (resnet_jax/data/sources) for a new data format,
`register_augmentation(name, fn)` (resnet_jax/data/augment.py) for a new augmentation.
"""

from resnet_jax.data.augment import register_augmentation
from resnet_jax.data.config import default_config, upgrade_data, validate_config
from resnet_jax.data.pipeline import Pipeline, make_pipeline
from resnet_jax.data.sources import DataError, Dataset, load_dataset, register_source

__all__ = ["DataError", "Dataset", "Pipeline", "default_config", "load_dataset", "make_pipeline",
           "register_augmentation", "register_source", "upgrade_data", "validate_config"]
