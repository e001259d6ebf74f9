"""Fixtures for the data tests: no network, and small mock raw files in the real formats.

``raw_kit.mock(name)`` writes a few dozen examples of catalog dataset ``name`` as its
published files would hold them (MNIST/Fashion-MNIST: four gzip-compressed idx files;
EMNIST: NIST's ``gzip.zip`` layout, images transposed; CIFAR-10: the binary tarball, CHW
records) and points :data:`jaxfl.data.raw.SOURCES` at them through ``file://`` addresses
with their own sizes and sha256, so the real download code serves them.
"""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import urllib.request
import zipfile
from typing import NamedTuple

import numpy as np
import pytest

from jaxfl.data import download, raw

# Known pixels: an example's id sits at [0, 0] (records come back in hashed order) and a
# marker at MARK, with MARK's mirror image dark, so any transpose or flip shows.
MARK, MIRROR = (3, 20), (20, 3)
CIFAR_MARK_RGB = (255, 0, 128)
SIZES = {"mnist": (30, 10), "fashion_mnist": (30, 10), "emnist": (36, 12), "cifar10": (10, 4)}
NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10, "emnist": 47, "cifar10": 10}


class Mock(NamedTuple):
  """What the catalog must give for a mock: uint8 upright images in HWC, labels."""

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  published: dict[str, str]  # role -> the mock published file
  stored: dict[str, np.ndarray]  # split -> images as the raw files store them


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
  """Any download other than a ``file://`` one fails the test."""
  real = urllib.request.urlopen

  def guarded(request, *args, **kwargs):
    url = request.full_url if isinstance(request, urllib.request.Request) else request
    if not url.startswith("file://"):
      raise AssertionError(f"network access in a test: {url}")
    return real(request, *args, **kwargs)

  monkeypatch.setattr(urllib.request, "urlopen", guarded)


def idx_bytes(values: np.ndarray) -> bytes:
  """``values`` (uint8) as an uncompressed idx file."""
  header = b"\0\0\x08" + bytes([values.ndim]) + struct.pack(f">{values.ndim}I", *values.shape)
  return header + np.ascontiguousarray(values, np.uint8).tobytes()


def mock_images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
  """``n`` upright uint8 images with their id at [0, 0] and the marker at MARK."""
  x = np.random.default_rng(seed).integers(1, 255, size=(n, *shape), dtype=np.uint8)
  x[:, 0, 0, ...] = 0
  x[:, 0, 0, 0] = np.arange(n)
  x[:, MARK[0], MARK[1]] = CIFAR_MARK_RGB if shape[-1] == 3 else 255
  x[:, MIRROR[0], MIRROR[1]] = 0
  return x


def _write_cifar(folder, xs, ys) -> str:
  records = {}
  x_train, x_test = xs
  y_train, y_test = ys
  per_batch = len(y_train) // 5
  for b in range(5):
    rows = slice(b * per_batch, (b + 1) * per_batch)
    records[f"data_batch_{b + 1}.bin"] = (x_train[rows], y_train[rows])
  records["test_batch.bin"] = (x_test, y_test)
  path = folder / "cifar-10-binary.tar.gz"
  with tarfile.open(path, "w:gz") as tar:
    def add(name, data):
      info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))

    add("batches.meta.txt", "\n".join(raw.CIFAR10_LABELS).encode())
    for name in ("test_batch.bin", *(f"data_batch_{b}.bin" for b in range(1, 6))):
      x, y = records[name]
      chw = x.transpose(0, 3, 1, 2).reshape(len(y), 3072)
      add(name, np.concatenate([y[:, None].astype(np.uint8), chw], axis=1).tobytes())
  return str(path)


def write_mock(name: str, folder) -> Mock:
  """Write mock raw files of ``name`` under ``folder`` with the published file names."""
  n_train, n_test = SIZES[name]
  shape = (32, 32, 3) if name == "cifar10" else (28, 28, 1)
  seed = sorted(SIZES).index(name)
  x = mock_images(n_train + n_test, shape, seed)
  y = np.random.default_rng(seed + 10).integers(0, NUM_CLASSES[name], n_train + n_test)
  y = y.astype(np.uint8)
  xs, ys = (x[:n_train], x[n_train:]), (y[:n_train], y[n_train:])
  folder.mkdir(parents=True, exist_ok=True)
  stored = dict(zip(("train", "test"), xs))
  if name == "cifar10":
    published = {"archive": _write_cifar(folder, xs, ys)}
  else:
    if name == "emnist":  # NIST stores each image transposed.
      stored = {s: v.transpose(0, 2, 1, 3) for s, v in stored.items()}
    blobs = {}
    for i, split in enumerate(("train", "test")):
      blobs[(split, "images-idx3")] = gzip.compress(idx_bytes(stored[split][..., 0]))
      blobs[(split, "labels-idx1")] = gzip.compress(idx_bytes(ys[i]))
    if name == "emnist":
      path = folder / "gzip.zip"
      with zipfile.ZipFile(path, "w") as z:
        for (split, kind), blob in blobs.items():
          z.writestr(raw.EMNIST_MEMBER.format(split=split, kind=kind), blob)
        # Another EMNIST split in the same archive, which must not be read.
        z.writestr("gzip/emnist-digits-train-images-idx3-ubyte.gz",
                   gzip.compress(idx_bytes(np.zeros((3, 28, 28), np.uint8))))
      published = {"archive": str(path)}
    else:
      published = {}
      for role, real in raw.SOURCES[name].items():
        split, what = role.split("_")
        kind = "images-idx3" if what == "images" else "labels-idx1"
        path = folder / real.filename
        path.write_bytes(blobs[(split, kind)])
        published[role] = str(path)
  return Mock(xs[0], ys[0].astype(np.int32), xs[1], ys[1].astype(np.int32), published, stored)


def serve(monkeypatch, name: str, published: dict[str, str], **replace) -> None:
  """Point ``raw.SOURCES[name]`` at ``published`` files (``file://``, their own checksums;
  ``replace``: fields to override, e.g. a wrong ``sha256``)."""
  files = {}
  for role, path in published.items():
    with open(path, "rb") as f:
      size = len(f.read())
    files[role] = download.RawFile(f"file://{path}", size, download.sha256_of(path))._replace(
        **replace)
  monkeypatch.setitem(raw.SOURCES, name, files)


class RawKit:
  """The mock raw files of one test (the ``raw_kit`` fixture)."""

  MARK, MIRROR, SIZES, NUM_CLASSES = MARK, MIRROR, SIZES, NUM_CLASSES

  def __init__(self, tmp_path, monkeypatch):
    self._tmp_path, self._monkeypatch = tmp_path, monkeypatch

  def write(self, name: str, folder) -> Mock:
    """Mock raw files of ``name`` under ``folder``, not served."""
    return write_mock(name, folder)

  def serve(self, name: str, published: dict[str, str], **replace) -> None:
    """Serve ``published`` as ``name``'s raw files (see :func:`serve`)."""
    serve(self._monkeypatch, name, published, **replace)

  def mock(self, name: str) -> Mock:
    """Mock raw files of ``name``, served without network."""
    mock = write_mock(name, self._tmp_path / "published" / name)
    self.serve(name, mock.published)
    return mock


@pytest.fixture
def raw_kit(tmp_path, monkeypatch) -> RawKit:
  """Mock raw files in the published formats, served through ``file://`` addresses."""
  return RawKit(tmp_path, monkeypatch)
