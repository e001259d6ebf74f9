"""Dataset catalog: the one entry point that turns a name into numpy arrays.

``load_dataset(name)`` returns a :class:`Dataset` of whole splits as numpy arrays
(images float32 in ``[0, 1]`` in their natural shape, labels int32); models
flatten, partitioners split across clients. Everything goes through
tensorflow-datasets' random-access ``data_source`` API over ``array_record``
files, which needs no TensorFlow to *read*.

Supported names (:data:`DATASETS`):

* ``'digits'``: the embedded default, :mod:`jaxfl.data.digits` (scikit-learn's
  1,797 8x8 digits, 1,438 train / 359 test, images ``[N, 8, 8]``). Built into
  ``data_dir`` on first use from data inside the scikit-learn wheel, never from
  the network, and read from there afterwards; ``download`` is ignored.
* ``'mnist'``, ``'fashion_mnist'`` (``[N, 28, 28, 1]``, 10 classes),
  ``'emnist'`` = EMNIST balanced (``[N, 28, 28, 1]``, 47 classes, 112,800 train /
  18,800 test; the balanced split keeps the class distribution uniform and is 6x
  smaller than ``byclass``), ``'cifar10'`` (``[N, 32, 32, 3]``, 10 classes): the
  standard datasets, built by :mod:`jaxfl.data.raw` from their published raw files
  (no TensorFlow). They need the network once, to download those files (12 MB for
  MNIST, 31 MB for Fashion-MNIST, 562 MB for EMNIST, 170 MB for CIFAR-10, each
  checked against its published sha256): run ``python -m jaxfl.data.prepare NAME
  ... --data_dir DIR`` (:mod:`jaxfl.data.prepare`) or pass ``download=True``; later
  loads with the default ``download=False`` read them offline. With
  ``download=False`` and nothing prepared, :class:`~jaxfl.errors.ConfigError` is
  raised at once, naming the command that prepares it (raw files already under
  ``DIR/downloads/NAME/`` are used without the network).

Data prepared under ``data_dir`` by tensorflow-datasets' own builders (``tfds build
mnist --file_format=array_record``, which needs TensorFlow; PNG images) is still read
when this package's builders have prepared nothing there: both key examples by their
position in the raw files, so the arrays, their order included, are the same (those
PNGs are decoded with PIL, about 0.2 ms per image).

``groups_train`` (natural client ids) is ``None`` for every dataset here:
scikit-learn does not ship the digits' writer ids, and EMNIST's balanced files
carry none either (the per-writer LEAF/FEMNIST split is not among them).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shlex
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from jaxfl.data import digits as digits_lib
from jaxfl.data import download as download_lib
from jaxfl.data import raw as raw_lib
from jaxfl.errors import ConfigError, check_number

ENV_DATA_DIR = "JAXFL_DATA_DIR"
PREPARE_COMMAND = "python -m jaxfl.data.prepare"
"""The command that prepares catalog datasets (:mod:`jaxfl.data.prepare`)."""


class Dataset(NamedTuple):
  """A whole dataset in memory.

  Attributes:
    name: catalog name (one of :data:`DATASETS`).
    x_train: float32 ``[N, ...]`` features in ``[0, 1]``, natural image shape.
    y_train: int32 ``[N]`` labels in ``[0, num_classes)``.
    x_test: float32 ``[M, ...]``, like ``x_train``.
    y_test: int32 ``[M]``.
    num_classes: number of classes.
    groups_train: int32 ``[N]`` natural client ids (writers, speakers) when the
      data has them, else ``None``.
    x_val: float32 ``[V, ...]``: training samples held out for tuning and selection
      (:func:`split_validation`), or ``None`` when nothing is held out.
    y_val: int32 ``[V]``, or ``None``.
  """

  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  groups_train: np.ndarray | None
  x_val: np.ndarray | None = None
  y_val: np.ndarray | None = None


class _TfdsEntry(NamedTuple):
  tfds_name: str  # tfds' own builder, whose prepared data is still read.
  # EMNIST is stored transposed (as NIST ships it); swap back to upright.
  transposed: bool = False


_TFDS_CATALOG = {
    "mnist": _TfdsEntry("mnist"),
    "fashion_mnist": _TfdsEntry("fashion_mnist"),
    "emnist": _TfdsEntry("emnist/balanced", transposed=True),
    "cifar10": _TfdsEntry("cifar10"),
}

DATASETS: tuple[str, ...] = tuple(sorted(["digits", *_TFDS_CATALOG]))
"""Names :func:`load_dataset` accepts."""

# tfds must never reach for the network itself (raw files come through
# jaxfl.data.download). It asks GCS for a prepared copy before it looks at the
# file format, even for local builders; tfds 4.9.10 has GCS switched off
# globally, but that is a module flag we should not rely on.
_OFFLINE = tfds.download.DownloadConfig(try_download_gcs=False)


@contextlib.contextmanager
def quiet_tfds():
  """Silence tfds while it builds a dataset from local data: its progress bars, its
  bold "Downloading and preparing" / "downloaded and prepared" lines on stdout and absl's
  INFO and WARNING lines ("Variant folder ... has no dataset_info.json") are noise to a
  user on a first run."""
  from tensorflow_datasets.core.utils import tqdm_utils

  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  tqdm_utils.display_progress_bar(False)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    tqdm_utils.display_progress_bar(True)
    absl_logger.setLevel(level)


@contextlib.contextmanager
def data_dir_errors(data_dir: str | os.PathLike[str]):
  """Turn an ``OSError`` while building or reading data under ``data_dir`` (not a folder,
  no permission, a full disk) into a ConfigError naming the field ``data_dir``."""
  try:
    yield
  except OSError as e:
    raise ConfigError("data_dir", f"a directory that can be created and written ({e})",
                      os.fspath(data_dir)) from e


def default_data_dir() -> str:
  """``$JAXFL_DATA_DIR`` if set (and non-empty), else ``~/.cache/jaxfl/tfds``."""
  return os.environ.get(ENV_DATA_DIR) or os.path.join(
      os.path.expanduser("~"), ".cache", "jaxfl", "tfds"
  )


def load_dataset(
    name: str, *, data_dir: str | os.PathLike[str] | None = None,
    download: bool = False, validation: float = 0.0, seed: int = 0,
) -> Dataset:
  """Load dataset ``name`` as numpy arrays (see the module docstring).

  Args:
    name: one of :data:`DATASETS`.
    data_dir: where tfds datasets are prepared and read; defaults to
      :func:`default_data_dir`.
    download: for the standard datasets, prepare them under ``data_dir`` if
      missing (downloading their raw files once). Ignored for ``'digits'``, which is
      always built locally.
    validation: the fraction of each class's training samples held out as the
      validation split (:func:`split_validation`); ``0``: none.
    seed: the seed of that split.

  Returns:
    The :class:`Dataset`.

  Raises:
    ConfigError: unknown ``name`` (field ``dataset``); catalog data missing with
      ``download=False`` (field ``dataset``; the message names the command that
      prepares it); bad ``data_dir``/``download`` types; a ``data_dir`` that cannot
      be created or written (field ``data_dir``); ``validation`` outside ``[0, 1)``
      (field ``validation``).
    jaxfl.data.download.DownloadError: a raw file could not be downloaded, or its
      size or sha256 is not the published one (the message names the file).
  """
  if not isinstance(name, str) or name not in DATASETS:
    raise ConfigError("dataset", f"one of {list(DATASETS)}", name)
  if data_dir is None:
    data_dir = default_data_dir()
  if not isinstance(data_dir, (str, os.PathLike)):
    raise ConfigError("data_dir", "a directory path", data_dir)
  if not isinstance(download, bool):
    raise ConfigError("download", "a bool", download)
  check_number(validation, "validation", low=0)
  if validation >= 1:
    raise ConfigError("validation", "a fraction in [0, 1)", validation)
  data_dir = os.path.expanduser(os.fspath(data_dir))
  with data_dir_errors(data_dir):
    ds = _load_digits(data_dir) if name == "digits" else _load_tfds(name, data_dir, download)
  return split_validation(ds, validation, seed) if validation else ds


def split_validation(ds: Dataset, fraction: float, seed: int) -> Dataset:
  """Hold out ``round(fraction * n_c)`` training samples of every class ``c`` as the
  validation split, chosen by a generator seeded with ``seed`` (stratified, so the split
  has the training set's label mix; deterministic from the seed). The training split keeps
  the rest in its original order, and ``groups_train`` follows it.

  Hyperparameters are tuned and selected on the validation split; the test split is only
  reported on (the evaluation protocol of DESIGN.md, contract 11).

  >>> ds = Dataset("toy", np.zeros((10, 2)), np.arange(10) % 2, np.zeros((2, 2)),
  ...              np.zeros(2, np.int32), 2, None)
  >>> split = split_validation(ds, 0.4, seed=0)
  >>> len(split.y_train), sorted(split.y_val.tolist())
  (6, [0, 0, 1, 1])
  """
  if ds.x_val is not None:
    raise ValueError(f"{ds.name} already has a validation split")
  rng = np.random.default_rng([int(seed), 0x5A1])
  held = np.zeros(len(ds.y_train), bool)
  for label in np.unique(ds.y_train):
    idx = np.flatnonzero(ds.y_train == label)
    held[rng.permutation(idx)[:int(round(fraction * len(idx)))]] = True
  keep = ~held
  groups = None if ds.groups_train is None else ds.groups_train[keep]
  return ds._replace(x_train=ds.x_train[keep], y_train=ds.y_train[keep], groups_train=groups,
                     x_val=ds.x_train[held], y_val=ds.y_train[held])


def _load_digits(data_dir: str) -> Dataset:
  """Build ``jaxfl_digits`` under ``data_dir`` once, then read it back."""
  with quiet_tfds():
    builder = digits_lib.JaxflDigits(data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
      builder.download_and_prepare(download_config=_OFFLINE)
  train, test = builder.as_data_source(split=["train", "test"])
  splits = []
  for source in (train, test):
    cols = _read_all(source, ("image", "label", "index"))
    # Records come back in tfds' hashed order; sklearn's row order is stable
    # across tfds versions and makes rows traceable to load_digits.
    order = np.argsort(cols["index"], kind="stable")
    splits.append((cols["image"][order], cols["label"][order]))
  (x_train, y_train), (x_test, y_test) = splits
  return Dataset(
      name="digits",
      x_train=x_train.astype(np.float32, copy=False),
      y_train=y_train.astype(np.int32),
      x_test=x_test.astype(np.float32, copy=False),
      y_test=y_test.astype(np.int32),
      num_classes=digits_lib.NUM_CLASSES,
      groups_train=None,  # sklearn ships no writer ids.
  )


def prepare_command(names: Sequence[str], data_dir: str) -> str:
  """The shell command that prepares catalog datasets ``names`` under ``data_dir``."""
  return " ".join([PREPARE_COMMAND, *names, "--data_dir", shlex.quote(data_dir)])


def catalog_builder(name: str, data_dir: str, download: bool) -> tfds.core.DatasetBuilder:
  """The prepared builder of standard dataset ``name`` under ``data_dir``.

  This package's builder (:data:`jaxfl.data.raw.BUILDERS`) when it has prepared the
  data; else tfds' own builder when that has; else this package's builder, prepared
  now when ``download`` or when every raw file is already in its download folder.

  Raises:
    ConfigError: nothing prepared and ``download=False`` with raw files missing (field
      ``dataset``; the message names the command that prepares it). Nothing is written.
  """
  entry = _TFDS_CATALOG[name]
  with quiet_tfds():  # Its lines ("Downloading and preparing dataset Unknown size ...",
    # "Variant folder ... has no dataset_info.json") say nothing here; each real download
    # is announced on stderr by jaxfl.data.download.
    # array_record: the only random-access format tfds reads without TensorFlow.
    builder = raw_lib.BUILDERS[name](data_dir=data_dir, file_format="array_record")
    if builder.is_prepared():
      return builder
    legacy = tfds.builder(entry.tfds_name, data_dir=data_dir, file_format="array_record")
    if legacy.is_prepared():
      return legacy
    if not download and raw_lib.missing_files(name, data_dir):
      raise ConfigError(
          "dataset",
          f"{name!r} prepared under {data_dir!r}: run `{prepare_command([name], data_dir)}`"
          " once (needs the network), or pass download=True",
          name,
      )
    # One process at a time (sweep workers may start together on a fresh machine); a
    # fresh builder once the lock is ours, as another process may have prepared it.
    with download_lib.exclusive(raw_lib.download_folder(data_dir, name) + ".lock"):
      builder = raw_lib.BUILDERS[name](data_dir=data_dir, file_format="array_record")
      if not builder.is_prepared():
        builder.download_and_prepare(download_config=_OFFLINE)
  return builder


def _load_tfds(name: str, data_dir: str, download: bool) -> Dataset:
  """Read (after optionally preparing) a standard catalog dataset."""
  entry = _TFDS_CATALOG[name]
  builder = catalog_builder(name, data_dir, download)
  train, test = builder.as_data_source(split=["train", "test"])
  splits = []
  for source in (train, test):
    cols = _read_all(source, ("image", "label"))
    x = _to_unit_float(cols["image"])
    if entry.transposed:
      x = np.swapaxes(x, 1, 2)
    splits.append((np.ascontiguousarray(x), cols["label"].astype(np.int32)))
  (x_train, y_train), (x_test, y_test) = splits
  return Dataset(
      name=name,
      x_train=x_train,
      y_train=y_train,
      x_test=x_test,
      y_test=y_test,
      num_classes=int(builder.info.features["label"].num_classes),
      groups_train=None,  # No writer ids in these files.
  )


def _read_all(
    source: Sequence[Any], keys: Sequence[str]
) -> dict[str, np.ndarray]:
  """Read every record of a tfds data source and stack the ``keys`` columns."""
  # One record at a time: decoding dominates (the batched __getitems__ decodes
  # one by one too), and tfds.testing.mock_data's __getitems__ is broken.
  examples = [source[i] for i in range(len(source))]
  return {k: np.stack([np.asarray(ex[k]) for ex in examples]) for k in keys}


def _to_unit_float(images: np.ndarray) -> np.ndarray:
  """uint8 pixels -> float32 in [0, 1]."""
  if images.dtype != np.uint8:
    raise TypeError(f"expected uint8 images, got {images.dtype}")
  return images.astype(np.float32) / np.float32(255.0)
