"""``jaxfl_digits``: scikit-learn's bundled handwritten digits as a tfds dataset.

The data is ``sklearn.datasets.load_digits``: 1,797 real 8x8 grey-level images of
the digits 0-9 (UCI "Optical Recognition of Handwritten Digits", test part),
shipped inside the scikit-learn wheel. Building therefore needs no network, which
makes this the embedded default dataset of :mod:`jaxfl.data.catalog`.

Split (deterministic, stratified by class): within each class the rows are
permuted by ``numpy.random.default_rng(SPLIT_SEED)`` and the first
``round(TEST_FRACTION * class_size)`` go to ``test``. With the sklearn data this
gives ``train`` = 1,438 and ``test`` = 359 examples (every class in both).

Features: ``image`` float32 ``[8, 8]`` in ``[0, 1]`` (pixel counts 0-16 divided
by 16, exact in float32), ``label`` in ``0..9`` and ``index``, the example's row
in ``load_digits`` (so it can be traced back to its source).

The builder uses only features that need no TensorFlow (``Tensor``,
``ClassLabel``, ``Scalar``) and should be written as ``array_record``:
``JaxflDigits(data_dir=..., file_format='array_record')``.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

NAME = "jaxfl_digits"
NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8)
TEST_FRACTION = 0.2
SPLIT_SEED = 0
# Documented split sizes; the tests check that split_indices() reproduces them.
NUM_TRAIN = 1438
NUM_TEST = 359
# sklearn stores pixel counts 0..16 (4x4 blocks of a 32x32 bitmap).
_PIXEL_MAX = 16.0


def load_source() -> tuple[np.ndarray, np.ndarray]:
  """Return sklearn's digits as ``(images, labels)``.

  Returns:
    ``images`` float32 ``[1797, 8, 8]`` in ``[0, 1]`` and ``labels`` int32
    ``[1797]``, in ``load_digits`` row order.
  """
  # Imported here: sklearn is only needed when building, not when reading.
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

  digits = load_digits()
  images = (digits.images / _PIXEL_MAX).astype(np.float32)
  return images, digits.target.astype(np.int32)


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
  """Deterministic stratified train/test split of ``labels``' rows.

  Args:
    labels: int class labels, one per source row.

  Returns:
    ``{'train': rows, 'test': rows}``, each sorted ascending; disjoint and
    together covering every row.
  """
  # A private Generator, not numpy's global state: the split must not depend on
  # whatever else seeded or consumed the global RNG.
  rng = np.random.default_rng(SPLIT_SEED)
  test = []
  for c in range(NUM_CLASSES):
    rows = np.flatnonzero(labels == c)
    num_test = int(round(TEST_FRACTION * rows.size))
    test.append(rng.permutation(rows)[:num_test])
  test = np.sort(np.concatenate(test))
  train = np.setdiff1d(np.arange(labels.size), test)
  return {"train": train, "test": test}


class JaxflDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 handwritten digits (no download needed)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": (
          "Initial release: sklearn load_digits, pixels / 16 as float32 [8, 8],"
          f" stratified split ({NUM_TRAIN} train / {NUM_TEST} test, seed"
          f" {SPLIT_SEED})."
      ),
  }

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo(builder=self, ...): outside an installed package tfds cannot
    # find a metadata folder next to the module, so pass everything explicitly.
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "8x8 handwritten digits bundled with scikit-learn"
            " (sklearn.datasets.load_digits), scaled to [0, 1]."
        ),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.float32),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            "index": tfds.features.Scalar(dtype=np.int32),
        }),
        supervised_keys=("image", "label"),
        homepage=(
            "https://archive.ics.uci.edu/dataset/80/"
            "optical+recognition+of+handwritten+digits"
        ),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """One generator per split over the in-memory sklearn arrays."""
    del dl_manager  # Nothing to download: the data ships with scikit-learn.
    images, labels = load_source()
    rows = split_indices(labels)
    return {
        split: self._generate_examples(images, labels, idx)
        for split, idx in rows.items()
    }

  def _generate_examples(
      self, images: np.ndarray, labels: np.ndarray, rows: np.ndarray
  ):
    """Yields ``(key, example)`` for source rows ``rows``; the key is the row."""
    for i in rows:
      i = int(i)
      yield i, {"image": images[i], "label": int(labels[i]), "index": i}
