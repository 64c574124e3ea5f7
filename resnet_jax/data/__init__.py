"""Datasets and the on-device input pipeline: `make_pipeline(config, batch_size, mesh, seed)` is the training loop's
one view of the data; `load_dataset(config)` reads a dataset into host memory; `python -m resnet_jax.data` shows one."""

from resnet_jax.data.pipeline import Pipeline, make_pipeline
from resnet_jax.data.sources import DataError, Dataset, default_config, load_dataset

__all__ = ["DataError", "Dataset", "Pipeline", "default_config", "load_dataset", "make_pipeline"]
