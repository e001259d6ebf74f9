"""Data: tfds builders and loaders (no network at run time) and non-IID partitioners."""

from jaxfl.data import partition
from jaxfl.data.catalog import DATASETS, Dataset, default_data_dir, load_dataset

__all__ = ["DATASETS", "Dataset", "default_data_dir", "load_dataset", "partition"]
