"""Tests for jaxfl.data.digits and jaxfl.data.catalog (no network, no TF)."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from sklearn.datasets import load_digits

from jaxfl.data import catalog, digits
from jaxfl.errors import ConfigError

# (shape of one image, num_classes) of the tfds catalog datasets.
_CATALOG_SPECS = {
    "mnist": ((28, 28, 1), 10),
    "fashion_mnist": ((28, 28, 1), 10),
    "emnist": ((28, 28, 1), 47),
    "cifar10": ((32, 32, 3), 10),
}


@pytest.fixture
def no_prepare(monkeypatch):
  """Make any tfds download/prepare call fail the test."""

  def forbidden(self, *args, **kwargs):
    raise AssertionError(f"download_and_prepare called for {self.name}")

  monkeypatch.setattr(
      tfds.core.DatasetBuilder, "download_and_prepare", forbidden
  )


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def digits_ds(digits_dir):
  return catalog.load_dataset("digits", data_dir=digits_dir)


def test_datasets_list():
  assert catalog.DATASETS == (
      "cifar10", "digits", "emnist", "fashion_mnist", "mnist"
  )


# --- digits -----------------------------------------------------------------


def test_digits_sizes_shapes_dtypes(digits_ds):
  ds = digits_ds
  assert ds.name == "digits"
  assert ds.num_classes == 10
  assert ds.groups_train is None
  assert ds.x_train.shape == (1438, 8, 8)
  assert ds.x_test.shape == (359, 8, 8)
  assert (digits.NUM_TRAIN, digits.NUM_TEST) == (1438, 359)
  assert len(ds.x_train) + len(ds.x_test) == 1797
  assert ds.y_train.shape == (1438,) and ds.y_test.shape == (359,)
  assert ds.x_train.dtype == ds.x_test.dtype == np.float32
  assert ds.y_train.dtype == ds.y_test.dtype == np.int32
  for x in (ds.x_train, ds.x_test):
    assert x.min() == 0.0 and x.max() == 1.0


def test_digits_split_is_stratified(digits_ds):
  sk_counts = np.bincount(load_digits().target, minlength=10)
  train_counts = np.bincount(digits_ds.y_train, minlength=10)
  test_counts = np.bincount(digits_ds.y_test, minlength=10)
  assert train_counts.min() >= 139 and test_counts.min() >= 34
  np.testing.assert_array_equal(train_counts + test_counts, sk_counts)
  np.testing.assert_array_equal(test_counts, np.round(0.2 * sk_counts))
  assert test_counts.tolist() == [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]


def test_digits_bit_identical_to_sklearn(digits_ds):
  sk = load_digits()
  rows = digits.split_indices(sk.target)
  assert np.intersect1d(rows["train"], rows["test"]).size == 0
  np.testing.assert_array_equal(
      np.union1d(rows["train"], rows["test"]), np.arange(1797)
  )
  for split in ("train", "test"):
    x = getattr(digits_ds, f"x_{split}")
    y = getattr(digits_ds, f"y_{split}")
    # k / 16 is exact in float32, so equality (not closeness) must hold.
    np.testing.assert_array_equal(x, sk.images[rows[split]] / 16.0)
    np.testing.assert_array_equal(y, sk.target[rows[split]])


def test_digits_split_ignores_global_rng():
  labels = load_digits().target
  np.random.seed(123)
  a = digits.split_indices(labels)
  np.random.seed(456)
  np.random.rand(10)
  b = digits.split_indices(labels)
  for split in ("train", "test"):
    np.testing.assert_array_equal(a[split], b[split])
  assert a["test"].size == 359


def test_digits_second_load_reads_cache(digits_ds, digits_dir, no_prepare):
  version_dir = os.path.join(digits_dir, "jaxfl_digits", "1.0.0")
  files = sorted(os.listdir(version_dir))
  assert "dataset_info.json" in files
  assert [f for f in files if ".array_record" in f] == [
      "jaxfl_digits-test.array_record-00000-of-00001",
      "jaxfl_digits-train.array_record-00000-of-00001",
  ]
  # no_prepare: a rebuild would fail, so this load can only come from files.
  again = catalog.load_dataset("digits", data_dir=digits_dir)
  for a, b in zip(digits_ds, again):
    if isinstance(a, np.ndarray):
      np.testing.assert_array_equal(a, b)
    else:
      assert a == b


def test_default_data_dir(monkeypatch, tmp_path):
  monkeypatch.delenv(catalog.ENV_DATA_DIR, raising=False)
  assert catalog.default_data_dir() == os.path.join(
      os.path.expanduser("~"), ".cache", "jaxfl", "tfds"
  )
  monkeypatch.setenv(catalog.ENV_DATA_DIR, str(tmp_path))
  assert catalog.default_data_dir() == str(tmp_path)
  ds = catalog.load_dataset("digits")
  assert ds.x_train.shape == (1438, 8, 8)
  assert os.path.isdir(tmp_path / "jaxfl_digits" / "1.0.0")


# --- standard catalog datasets (built from raw files: test_raw.py) ---------------


@pytest.mark.parametrize("name", sorted(_CATALOG_SPECS))
def test_catalog_mock_data(name, monkeypatch, tmp_path, no_prepare):
  shape, num_classes = _CATALOG_SPECS[name]
  # mock_data serves examples but leaves is_prepared() reading the (empty)
  # disk, so say the data is there, as it would be after download=True.
  monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
  with tfds.testing.mock_data(num_examples=24):
    ds = catalog.load_dataset(name, data_dir=str(tmp_path))
  assert ds.name == name
  assert ds.num_classes == num_classes
  assert ds.groups_train is None
  for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
    assert x.shape == (24, *shape)
    assert x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert x.max() > 0.5  # Random uint8 pixels, so not all dark.
    assert y.shape == (24,) and y.dtype == np.int32
    assert y.min() >= 0 and y.max() < num_classes


def _png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


@pytest.mark.parametrize(
    "name,tfds_name,builder_cls",
    [("mnist", "mnist", tfds.image_classification.MNIST),
     ("emnist", "emnist/balanced", tfds.image_classification.EMNIST)],
)
def test_catalog_reads_prepared_array_record(
    name, tfds_name, builder_cls, monkeypatch, tmp_path
):
  """Data prepared by tfds' own builders (PNG images) is still read, offline."""
  n_train, n_test = 40, 12
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(n_train + n_test, 28, 28), dtype=np.uint8)
  # Pixel [0, 0] carries the row id: tfds stores records in hashed order.
  images[:, 0, 0] = np.arange(n_train + n_test)
  images[:, 27, 27] = 255
  labels = rng.integers(0, 10, size=n_train + n_test)

  def fake_split_generators(self, dl_manager):
    del self, dl_manager
    # PNG bytes, not arrays: tfds encodes arrays with TensorFlow.
    def gen(rows):
      for i in rows:
        yield int(i), {"image": _png(images[i]), "label": int(labels[i])}

    return {"train": gen(range(n_train)),
            "test": gen(range(n_train, n_train + n_test))}

  monkeypatch.setattr(builder_cls, "_split_generators", fake_split_generators)
  builder = tfds.builder(
      tfds_name, data_dir=str(tmp_path), file_format="array_record"
  )
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False)
  )
  monkeypatch.setattr(
      tfds.core.DatasetBuilder, "download_and_prepare",
      lambda *a, **k: pytest.fail("must read, not prepare"),
  )
  ds = catalog.load_dataset(name, data_dir=str(tmp_path))
  assert ds.num_classes == (10 if name == "mnist" else 47)
  train_rows = np.arange(n_train)
  test_rows = np.arange(n_train, n_train + n_test)
  for x, y, rows in ((ds.x_train, ds.y_train, train_rows),
                     (ds.x_test, ds.y_test, test_rows)):
    assert x.shape == (rows.size, 28, 28, 1) and x.dtype == np.float32
    if name == "emnist":
      x = np.swapaxes(x, 1, 2)  # catalog turns tfds' transposed EMNIST upright.
    ids = np.rint(x[:, 0, 0, 0] * 255).astype(int)
    np.testing.assert_array_equal(np.sort(ids), rows)
    order = np.argsort(ids)
    np.testing.assert_array_equal(
        x[order, :, :, 0], images[rows].astype(np.float32) / np.float32(255)
    )
    np.testing.assert_array_equal(y[order], labels[rows])
    assert y.dtype == np.int32


@pytest.mark.parametrize("name", sorted(_CATALOG_SPECS))
def test_missing_data_without_download_fails_fast(name, tmp_path, no_prepare):
  with pytest.raises(ConfigError) as err:
    catalog.load_dataset(name, data_dir=str(tmp_path), download=False)
  assert err.value.field == "dataset"
  assert "download=True" in err.value.expected
  # One line naming the command that prepares it there.
  assert f"`python -m jaxfl.data.prepare {name} --data_dir {tmp_path}`" in err.value.expected
  assert "\n" not in str(err.value)
  assert err.value.got == name
  assert os.listdir(tmp_path) == []  # Nothing written either.


@pytest.mark.parametrize("name", ["imagenet", "MNIST", "", None])
def test_unknown_name(name, tmp_path):
  with pytest.raises(ConfigError) as err:
    catalog.load_dataset(name, data_dir=str(tmp_path))
  assert err.value.field == "dataset"
  assert err.value.got == name
  assert err.value.expected == (
      "one of ['cifar10', 'digits', 'emnist', 'fashion_mnist', 'mnist']"
  )


def test_bad_argument_types(tmp_path):
  with pytest.raises(ConfigError) as err:
    catalog.load_dataset("digits", data_dir=3)
  assert err.value.field == "data_dir"
  with pytest.raises(ConfigError) as err:
    catalog.load_dataset("mnist", data_dir=str(tmp_path), download="yes")
  assert err.value.field == "download"


def test_building_the_embedded_data_prints_nothing(tmp_path, capfd):
  """No tfds progress bars, "Downloading and preparing" lines or absl warnings on a first run."""
  ds = catalog.load_dataset("digits", data_dir=str(tmp_path))
  assert len(ds.y_train) == 1438
  out, err = capfd.readouterr()
  assert out == "" and err == ""


def test_an_unwritable_data_dir_names_the_field(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a folder")
  with pytest.raises(ConfigError, match="data_dir: expected a directory that can be created"):
    catalog.load_dataset("digits", data_dir=str(blocker / "tfds"))


def test_validation_split_is_stratified_disjoint_and_seeded(digits_dir):
  ds = catalog.load_dataset("digits", data_dir=digits_dir, validation=0.2, seed=3)
  full = catalog.load_dataset("digits", data_dir=digits_dir)
  counts = np.bincount(full.y_train, minlength=10)
  # round(0.2 * n_c) of every class held out; the rest stays in order; test untouched.
  np.testing.assert_array_equal(np.bincount(ds.y_val, minlength=10),
                                np.round(0.2 * counts).astype(int))
  assert len(ds.y_train) + len(ds.y_val) == len(full.y_train) == 1438
  np.testing.assert_array_equal(ds.x_test, full.x_test)
  # Every training row is in exactly one of the two splits.
  rows = lambda x: {r.tobytes() for r in x.reshape(len(x), -1)}
  assert rows(ds.x_train) | rows(ds.x_val) == rows(full.x_train)
  assert not rows(ds.x_train) & rows(ds.x_val)
  again = catalog.load_dataset("digits", data_dir=digits_dir, validation=0.2, seed=3)
  other = catalog.load_dataset("digits", data_dir=digits_dir, validation=0.2, seed=4)
  np.testing.assert_array_equal(again.x_val, ds.x_val)
  assert rows(other.x_val) != rows(ds.x_val)
  with pytest.raises(ConfigError) as e:
    catalog.load_dataset("digits", data_dir=digits_dir, validation=1.0)
  assert e.value.field == "validation"
  with pytest.raises(ValueError, match="already has"):
    catalog.split_validation(ds, 0.1, 0)
