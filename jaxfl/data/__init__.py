"""Data: tfds builders and loaders (no network at run time) and non-IID partitioners."""

from jaxfl.data import corpus, partition
from jaxfl.data.catalog import DATASETS, Dataset, default_data_dir, load_dataset, split_validation
from jaxfl.data.corpus import ByteTokenizer, Corpus, load_corpus

__all__ = ["DATASETS", "ByteTokenizer", "Corpus", "Dataset", "corpus", "default_data_dir",
           "load_corpus", "load_dataset", "partition", "split_validation"]
