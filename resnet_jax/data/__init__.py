"""Datasets and the on-device input pipeline: `make_pipeline(config, batch_size, mesh, seed)` is the training loop's
one view of the data; `load_dataset(config)` reads a dataset into host memory; `validate_config(config)` checks a
data config before anything is read; `python -m resnet_jax.data` shows one. Local files need no TensorFlow."""

from resnet_jax.data.pipeline import Pipeline, make_pipeline
from resnet_jax.data.sources import DataError, Dataset, default_config, load_dataset, validate_config

__all__ = ["DataError", "Dataset", "Pipeline", "default_config", "load_dataset", "make_pipeline", "validate_config"]
