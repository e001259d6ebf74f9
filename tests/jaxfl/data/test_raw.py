"""Tests for jaxfl.data.raw and jaxfl.data.download: the standard datasets built from mock
raw files in their published formats (no network, no TensorFlow)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import threading
import urllib.request

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxfl.data import catalog, download, raw
from jaxfl.errors import ConfigError

NAMES = ["cifar10", "emnist", "fashion_mnist", "mnist"]


def _by_id(x: np.ndarray) -> np.ndarray:
  """Row order that sorts a split by the id each mock image carries at [0, 0, 0]."""
  return np.argsort(np.rint(x[:, 0, 0, 0] * 255).astype(int))


def _unit(x: np.ndarray) -> np.ndarray:
  return x.astype(np.float32) / np.float32(255)


@pytest.mark.parametrize("name", NAMES)
def test_download_true_builds_from_the_raw_files(name, raw_kit, tmp_path):
  mock = raw_kit.mock(name)
  data_dir = str(tmp_path / "tfds")
  ds = catalog.load_dataset(name, data_dir=data_dir, download=True)
  assert ds.num_classes == raw_kit.NUM_CLASSES[name]
  shape = (32, 32, 3) if name == "cifar10" else (28, 28, 1)
  for x, y, want_x, want_y in ((ds.x_train, ds.y_train, mock.x_train, mock.y_train),
                               (ds.x_test, ds.y_test, mock.x_test, mock.y_test)):
    assert x.shape == (len(want_y), *shape) and x.dtype == np.float32
    assert y.shape == (len(want_y),) and y.dtype == np.int32
    order = _by_id(x)
    np.testing.assert_array_equal(np.rint(x[order, 0, 0, 0] * 255), want_x[:, 0, 0, 0])
    # Upright (EMNIST transposed back) and HWC (CIFAR's CHW records turned).
    np.testing.assert_array_equal(x[order], _unit(want_x))
    np.testing.assert_array_equal(y[order], want_y)
    (r, c), (mr, mc) = raw_kit.MARK, raw_kit.MIRROR
    if name == "cifar10":  # The marker's (R, G, B) at its place, not spread over rows.
      np.testing.assert_array_equal(x[:, r, c], np.tile(_unit(np.array([255, 0, 128])),
                                                         (len(y), 1)))
    else:
      assert (x[:, r, c, 0] == 1).all() and (x[:, mr, mc, 0] == 0).all()
  assert (len(ds.y_train), len(ds.y_test)) == raw_kit.SIZES[name]
  # The raw files are kept, whole, under downloads/<name>/; no .part is left.
  folder = os.path.join(data_dir, "downloads", name)
  assert sorted(os.listdir(folder)) == sorted(os.path.basename(p)
                                              for p in mock.published.values())
  builder = raw.BUILDERS[name](data_dir=data_dir, file_format="array_record")
  assert builder.is_prepared() and builder.name.startswith("jaxfl_")


@pytest.mark.parametrize("name", NAMES)
def test_builder_stores_uint8_tensors_as_the_raw_files_hold_them(name, raw_kit, tmp_path):
  """EMNIST stays transposed, as tfds' own emnist builder yields it; the catalog turns it."""
  mock = raw_kit.mock(name)
  builder = raw.BUILDERS[name](data_dir=str(tmp_path / "tfds"), file_format="array_record")
  builder.download_and_prepare(download_config=catalog._OFFLINE)
  image = builder.info.features["image"]
  assert isinstance(image, tfds.features.Tensor) and image.np_dtype == np.uint8
  assert isinstance(builder.info.features["label"], tfds.features.ClassLabel)
  for split in ("train", "test"):
    source = builder.as_data_source(split=split)
    assert len(source) == len(mock.stored[split])
    got = np.stack([source[i]["image"] for i in range(len(source))])
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got[np.argsort(got[:, 0, 0, 0])], mock.stored[split])


@pytest.mark.parametrize("name,tfds_name,builder_cls", [
    ("mnist", "mnist", tfds.image_classification.MNIST),
    ("emnist", "emnist/balanced", tfds.image_classification.EMNIST)])
def test_same_arrays_in_the_same_order_as_tfds_own_builder(name, tfds_name, builder_cls,
                                                           raw_kit, tmp_path, monkeypatch):
  mock = raw_kit.mock(name)
  ours = catalog.load_dataset(name, data_dir=str(tmp_path / "ours"), download=True)

  def png(image):
    buf = io.BytesIO()
    Image.fromarray(image[..., 0]).save(buf, format="PNG")
    return buf.getvalue()

  def fake_split_generators(self, dl_manager):
    # What tfds' generator yields (key = position, image as stored), as PNG bytes.
    def gen(split, labels):
      for i, image in enumerate(mock.stored[split]):
        yield i, {"image": png(image), "label": int(labels[i])}

    return {"train": gen("train", mock.y_train), "test": gen("test", mock.y_test)}

  monkeypatch.setattr(builder_cls, "_split_generators", fake_split_generators)
  tfds.builder(tfds_name, data_dir=str(tmp_path / "tfds"),
               file_format="array_record").download_and_prepare(
                   download_config=catalog._OFFLINE)
  theirs = catalog.load_dataset(name, data_dir=str(tmp_path / "tfds"))
  ids = np.rint(ours.x_train[:, 0, 0, 0] * 255)
  assert (np.diff(ids) < 0).any()  # Hashed, not the files' order: the same hash, then.
  for field in ("x_train", "y_train", "x_test", "y_test", "num_classes"):
    np.testing.assert_array_equal(getattr(ours, field), getattr(theirs, field))


def test_prepared_data_is_read_offline(raw_kit, tmp_path, monkeypatch):
  raw_kit.mock("mnist")
  data_dir = str(tmp_path / "tfds")
  first = catalog.load_dataset("mnist", data_dir=data_dir, download=True)
  shutil.rmtree(os.path.join(data_dir, "downloads"))
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                      lambda *a, **k: pytest.fail("must read, not prepare"))
  again = catalog.load_dataset("mnist", data_dir=data_dir)
  np.testing.assert_array_equal(first.x_train, again.x_train)


def test_raw_files_copied_by_hand_build_without_network(raw_kit, tmp_path, monkeypatch):
  mock = raw_kit.write("cifar10", tmp_path / "usb")
  data_dir = tmp_path / "tfds"
  (data_dir / "downloads" / "cifar10").mkdir(parents=True)
  shutil.copy(mock.published["archive"], data_dir / "downloads" / "cifar10")
  raw_kit.serve("cifar10", mock.published)  # The right checksums...
  monkeypatch.setattr(urllib.request, "urlopen",  # ...and no download.
                      lambda *a, **k: pytest.fail("network access"))
  ds = catalog.load_dataset("cifar10", data_dir=str(data_dir), download=False)
  assert len(ds.y_train) == raw_kit.SIZES["cifar10"][0]


@pytest.mark.parametrize("field,value", [("sha256", "0" * 64), ("size", 12345)])
def test_a_download_with_the_wrong_checksum_is_refused(field, value, raw_kit, tmp_path):
  mock = raw_kit.write("emnist", tmp_path / "published")
  raw_kit.serve("emnist", mock.published, **{field: value})
  data_dir = tmp_path / "tfds"
  with pytest.raises(download.DownloadError) as err:
    catalog.load_dataset("emnist", data_dir=str(data_dir), download=True)
  message = str(err.value)
  assert "\n" not in message
  assert str(data_dir / "downloads" / "emnist" / "gzip.zip") in message
  assert ("expected " + ("0" * 64 if field == "sha256" else "12345")) in message
  assert os.listdir(data_dir / "downloads" / "emnist") == []  # The bad download is removed.
  assert not raw.JaxflEmnistBalanced(data_dir=str(data_dir)).is_prepared()


def test_a_corrupt_file_in_the_download_folder_is_refused_and_kept(raw_kit, tmp_path):
  raw_kit.mock("fashion_mnist")
  folder = tmp_path / "tfds" / "downloads" / "fashion_mnist"
  folder.mkdir(parents=True)
  (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not the labels")
  with pytest.raises(download.DownloadError, match="t10k-labels-idx1-ubyte.gz: 14 bytes"):
    catalog.load_dataset("fashion_mnist", data_dir=str(tmp_path / "tfds"), download=True)
  assert (folder / "t10k-labels-idx1-ubyte.gz").read_bytes() == b"not the labels"


class _Response(io.BytesIO):
  def __init__(self, data: bytes, status: int):
    super().__init__(data)
    self.status = status


@pytest.mark.parametrize("status", [206, 200])
def test_an_interrupted_download_resumes(status, tmp_path, monkeypatch):
  data = bytes(range(256)) * 40
  target = download.RawFile("https://example.org/x/blob.bin", len(data),
                            hashlib.sha256(data).hexdigest())
  (tmp_path / "blob.bin.part").write_bytes(data[:1000])
  asked = []

  def fake_urlopen(request, timeout):
    asked.append(request.get_header("Range"))
    # 206: the server sends the rest; 200: it ignores the range and sends everything.
    return _Response(data[1000:] if status == 206 else data, status)

  monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
  path = download.fetch(target, tmp_path)
  assert asked == ["bytes=1000-"]
  with open(path, "rb") as f:
    assert f.read() == data
  assert os.listdir(tmp_path) == ["blob.bin"]
  assert download.fetch(target, tmp_path) == path and len(asked) == 1  # Kept, not fetched.


def test_a_network_failure_is_one_line_and_keeps_the_part(tmp_path, monkeypatch):
  def offline(request, timeout):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

  monkeypatch.setattr(urllib.request, "urlopen", offline)
  target = download.RawFile("https://example.org/blob.bin", 10, "0" * 64)
  (tmp_path / "blob.bin.part").write_bytes(b"12345")
  with pytest.raises(download.DownloadError) as err:
    download.fetch(target, tmp_path)
  assert str(err.value) == (
      "downloading https://example.org/blob.bin failed ([Errno -3] Temporary failure in name "
      f"resolution); run the command again to resume {tmp_path / 'blob.bin.part'}")
  assert (tmp_path / "blob.bin.part").read_bytes() == b"12345"


def test_preparing_processes_take_turns(tmp_path):
  lock = tmp_path / "downloads" / "emnist.lock"
  acquired = threading.Event()

  def other():
    with download.exclusive(lock):
      acquired.set()

  with download.exclusive(lock):
    thread = threading.Thread(target=other)
    thread.start()
    assert not acquired.wait(0.2)  # Waits while this one holds the lock...
  assert acquired.wait(5)  # ...and gets it once released.
  thread.join()


def test_missing_data_names_the_command_that_prepares_it(tmp_path):
  data_dir = str(tmp_path / "my data")
  with pytest.raises(ConfigError) as err:
    catalog.load_dataset("cifar10", data_dir=data_dir)
  assert "\n" not in str(err.value)
  assert f"run `python -m jaxfl.data.prepare cifar10 --data_dir '{data_dir}'` once" in str(
      err.value)
  assert not os.path.exists(data_dir)


def test_a_malformed_idx_file_is_named():
  with pytest.raises(ValueError, match="labels.gz: not an idx file"):
    raw.read_idx(io.BytesIO(b"\x1f\x8b\x08\x00garbage"), "labels.gz")
  with pytest.raises(ValueError, match=r"3 values, its header says \(2, 2\)"):
    raw.read_idx(io.BytesIO(b"\0\0\x08\x02\0\0\0\x02\0\0\0\x02abc"))


def test_sources_are_the_published_files():
  """The four datasets' addresses and sizes, as published (sha256 from tfds' records)."""
  assert {n: [(f.filename, f.size) for f in files.values()]
          for n, files in raw.SOURCES.items()} == {
      "mnist": [("train-images-idx3-ubyte.gz", 9912422), ("train-labels-idx1-ubyte.gz", 28881),
                ("t10k-images-idx3-ubyte.gz", 1648877), ("t10k-labels-idx1-ubyte.gz", 4542)],
      "fashion_mnist": [
          ("train-images-idx3-ubyte.gz", 26421880), ("train-labels-idx1-ubyte.gz", 29515),
          ("t10k-images-idx3-ubyte.gz", 4422102), ("t10k-labels-idx1-ubyte.gz", 5148)],
      "emnist": [("gzip.zip", 561753746)],
      "cifar10": [("cifar-10-binary.tar.gz", 170052171)],
  }
  recorded = os.path.join(os.path.dirname(tfds.__file__), "url_checksums")
  for name, files in raw.SOURCES.items():
    with open(os.path.join(recorded, f"{name}.txt")) as f:
      lines = {tuple(line.split("\t")[:3]) for line in f.read().splitlines() if line}
    for file in files.values():
      assert (file.url, str(file.size), file.sha256) in lines
