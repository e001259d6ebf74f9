"""TF-free tfds builders for the catalog's standard image datasets, from their raw files.

tensorflow-datasets' own builders for these datasets need TensorFlow to prepare them (they
read their downloads with ``tf.io.gfile`` and store images with the ``Image`` feature, which
encodes PNGs with TensorFlow). These builders read the datasets' published raw files with
the standard library (``gzip``, ``zipfile``, ``tarfile``) and numpy, and store uint8
``Tensor`` images (zlib-compressed) and ``ClassLabel`` labels, written as ``array_record``
and read back through tfds' ``data_source`` API, none of which needs TensorFlow.

==========================  ==========================  ==============  =================
builder                     catalog name                image           train / test
==========================  ==========================  ==============  =================
``jaxfl_mnist``             ``mnist``                   [28, 28, 1]     60,000 / 10,000
``jaxfl_fashion_mnist``     ``fashion_mnist``           [28, 28, 1]     60,000 / 10,000
``jaxfl_emnist_balanced``   ``emnist`` (balanced)       [28, 28, 1]     112,800 / 18,800
``jaxfl_cifar10``           ``cifar10``                 [32, 32, 3]     50,000 / 10,000
==========================  ==========================  ==============  =================

The raw files (:data:`SOURCES`: address, size, sha256; the values tensorflow-datasets
4.9.10 records for its own builders of these datasets):

* MNIST, Fashion-MNIST: four ``idx`` files, gzip-compressed:
  ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``. An ``idx`` file is two zero bytes,
  a type byte (``0x08``: unsigned bytes), the number of dimensions ``d``, ``d`` big-endian
  uint32 sizes, then the values in row-major order: images ``[N, 28, 28]``, labels ``[N]``.
* EMNIST: NIST's ``gzip.zip`` (562 MB, every EMNIST split) holding
  ``gzip/emnist-balanced-{train,test}-{images-idx3,labels-idx1}-ubyte.gz`` in the same
  ``idx`` format. The 47 balanced classes: 0-9 the digits, 10-35 the capitals A-Z, 36-46
  the lower-case a b d e f g h n q r t (letters whose two cases look alike are one class).
  NIST stores every image transposed (each row of the 28x28 array is a column of the
  character); the builder keeps them so, as tfds' own ``emnist`` builder does, and
  :mod:`jaxfl.data.catalog` swaps the two image axes to turn them upright.
* CIFAR-10: ``cifar-10-binary.tar.gz`` holding ``cifar-10-batches-bin/data_batch_1.bin``
  ... ``data_batch_5.bin`` (train, 10,000 records each, in that order) and
  ``test_batch.bin``. A record is 3,073 bytes: the label (0-9: airplane, automobile,
  bird, cat, deer, dog, frog, horse, ship, truck), then the 32x32 image channel by channel
  (1,024 red, 1,024 green, 1,024 blue bytes, each row-major), stored here as HWC.

Every example is keyed by its position in its split's raw files, as tfds' own builders key
theirs, so the records come back in the same (hashed) order and the catalog's arrays equal
those read from data prepared by tfds' own builders.

Raw files are kept under ``<data_dir>/downloads/<catalog name>/`` (:func:`download_folder`;
MNIST and Fashion-MNIST share file names). Files copied there by hand are used without the
network, after their sha256 is checked (:func:`jaxfl.data.download.fetch`).
"""

from __future__ import annotations

import gzip
import os
import struct
import tarfile
import zipfile
from typing import IO, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from jaxfl.data.download import RawFile, fetch

_MNIST = "https://storage.googleapis.com/cvdf-datasets/mnist/"
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

SOURCES: dict[str, dict[str, RawFile]] = {
    "mnist": {
        "train_images": RawFile(
            _MNIST + "train-images-idx3-ubyte.gz", 9912422,
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        "train_labels": RawFile(
            _MNIST + "train-labels-idx1-ubyte.gz", 28881,
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
        "test_images": RawFile(
            _MNIST + "t10k-images-idx3-ubyte.gz", 1648877,
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        "test_labels": RawFile(
            _MNIST + "t10k-labels-idx1-ubyte.gz", 4542,
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    },
    "fashion_mnist": {
        "train_images": RawFile(
            _FASHION + "train-images-idx3-ubyte.gz", 26421880,
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
        "train_labels": RawFile(
            _FASHION + "train-labels-idx1-ubyte.gz", 29515,
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
        "test_images": RawFile(
            _FASHION + "t10k-images-idx3-ubyte.gz", 4422102,
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
        "test_labels": RawFile(
            _FASHION + "t10k-labels-idx1-ubyte.gz", 5148,
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    },
    "emnist": {
        "archive": RawFile(
            "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip", 561753746,
            "fb9bb67e33772a9cc0b895e4ecf36d2cf35be8b709693c3564cea2a019fcda8e"),
    },
    "cifar10": {
        "archive": RawFile(
            "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", 170052171,
            "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"),
    },
}
"""Catalog name -> the raw files its builder reads, by role."""

EMNIST_MEMBER = "gzip/emnist-balanced-{split}-{kind}-ubyte.gz"
"""Path inside EMNIST's ``gzip.zip``; ``kind`` is ``images-idx3`` or ``labels-idx1``."""
CIFAR10_MEMBERS = {
    "train": [f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)],
    "test": ["cifar-10-batches-bin/test_batch.bin"],
}
"""Paths inside ``cifar-10-binary.tar.gz``, per split, in example order."""
CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                  "ship", "truck")
FASHION_MNIST_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                        "Shirt", "Sneaker", "Bag", "Ankle boot")


def download_folder(data_dir: str | os.PathLike[str], name: str) -> str:
  """Where the raw files of catalog dataset ``name`` are kept under ``data_dir``."""
  return os.path.join(os.fspath(data_dir), "downloads", name)


def missing_files(name: str, data_dir: str | os.PathLike[str]) -> list[str]:
  """The raw files of ``name`` not yet under :func:`download_folder` (not checked)."""
  folder = download_folder(data_dir, name)
  return [raw.filename for raw in SOURCES[name].values()
          if not os.path.exists(os.path.join(folder, raw.filename))]


def read_idx(f: IO[bytes], what: str = "idx data") -> np.ndarray:
  """Parse one uncompressed ``idx`` stream of unsigned bytes (see the module docstring).

  Raises:
    ValueError: not an unsigned-byte ``idx`` stream, or fewer values than its header
      says (``what`` names the stream in the message).
  """
  header = f.read(4)
  if len(header) != 4 or header[:3] != b"\0\0\x08":
    raise ValueError(f"{what}: not an idx file of unsigned bytes (header {header!r})")
  ndim = header[3]
  shape = struct.unpack(f">{ndim}I", f.read(4 * ndim))
  data = f.read()
  if len(data) != int(np.prod(shape)):
    raise ValueError(f"{what}: {len(data)} values, its header says {shape}")
  return np.frombuffer(data, np.uint8).reshape(shape)


def read_idx_pair(images: IO[bytes], labels: IO[bytes], what: str
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Two gzip-compressed ``idx`` streams -> ``(images [N, 28, 28, 1] uint8, labels [N])``."""
  with gzip.GzipFile(fileobj=images) as g:
    x = read_idx(g, f"{what} images")
  with gzip.GzipFile(fileobj=labels) as g:
    y = read_idx(g, f"{what} labels")
  if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
    raise ValueError(f"{what}: images {x.shape} and labels {y.shape} do not pair up")
  return x[..., None], y


def load_mnist_files(files: dict[str, str], split: str) -> tuple[np.ndarray, np.ndarray]:
  """MNIST or Fashion-MNIST ``split`` from its four ``.gz`` files (paths by role)."""
  with open(files[f"{split}_images"], "rb") as xi, open(files[f"{split}_labels"], "rb") as yi:
    return read_idx_pair(xi, yi, files[f"{split}_images"])


def load_emnist_archive(path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """EMNIST balanced ``split`` from NIST's ``gzip.zip``, images as stored (transposed)."""
  with zipfile.ZipFile(path) as z:
    members = [EMNIST_MEMBER.format(split=split, kind=k) for k in ("images-idx3", "labels-idx1")]
    with z.open(members[0]) as xi, z.open(members[1]) as yi:
      return read_idx_pair(xi, yi, f"{path}:{members[0]}")


def load_cifar10_archive(path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """CIFAR-10 ``split`` from ``cifar-10-binary.tar.gz``: images ``[N, 32, 32, 3]`` (HWC)."""
  wanted = CIFAR10_MEMBERS[split]
  found: dict[str, bytes] = {}
  with tarfile.open(path, "r:gz") as tar:
    for member in tar:  # One pass: seeking back in a gzip stream decompresses it again.
      if member.name in wanted:
        found[member.name] = tar.extractfile(member).read()
  missing = [m for m in wanted if m not in found]
  if missing:
    raise ValueError(f"{path}: no {missing[0]} inside")
  records = np.frombuffer(b"".join(found[m] for m in wanted), np.uint8)
  if records.size % 3073:
    raise ValueError(f"{path}: {split} batches of {records.size} bytes, not 3,073-byte records")
  records = records.reshape(-1, 3073)
  images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), records[:, 0]


class _RawImageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A catalog image dataset built from its raw files (:data:`SOURCES`)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {
      "1.0.0": "Initial release: the published raw files as uint8 Tensor images (zlib).",
  }
  SOURCE: ClassVar[str]  # The catalog name: the key of SOURCES.
  SHAPE: ClassVar[tuple[int, int, int]] = (28, 28, 1)
  NUM_CLASSES: ClassVar[int] = 10
  LABEL_NAMES: ClassVar[tuple[str, ...] | None] = None
  DESCRIPTION: ClassVar[str]
  HOMEPAGE: ClassVar[str]

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo(builder=self, ...): no metadata folder next to this module.
    label = (tfds.features.ClassLabel(names=list(self.LABEL_NAMES)) if self.LABEL_NAMES
             else tfds.features.ClassLabel(num_classes=self.NUM_CLASSES))
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=self.SHAPE, dtype=np.uint8,
                                          encoding=tfds.features.Encoding.ZLIB),
            "label": label,
        }),
        supervised_keys=("image", "label"),
        homepage=self.HOMEPAGE,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Fetch (or find) the raw files, then one generator per split."""
    folder = os.path.join(os.fspath(dl_manager.download_dir), self.SOURCE)
    files = {role: fetch(raw, folder) for role, raw in SOURCES[self.SOURCE].items()}
    return {split: self._generate_examples(files, split) for split in ("train", "test")}

  def _generate_examples(self, files: dict[str, str], split: str):
    """Yields ``(position in the split's raw files, example)``; reads the split lazily."""
    images, labels = self._load(files, split)
    for i in range(len(labels)):
      yield i, {"image": images[i], "label": int(labels[i])}

  def _load(self, files: dict[str, str], split: str) -> tuple[np.ndarray, np.ndarray]:
    return load_mnist_files(files, split)


class JaxflMnist(_RawImageBuilder):
  """MNIST handwritten digits from the four published idx files."""

  SOURCE = "mnist"
  DESCRIPTION = "MNIST handwritten digits (28x28 grey levels), from the published idx files."
  HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"


class JaxflFashionMnist(_RawImageBuilder):
  """Fashion-MNIST (Zalando article images) from the four published idx files."""

  SOURCE = "fashion_mnist"
  LABEL_NAMES = FASHION_MNIST_LABELS
  DESCRIPTION = "Fashion-MNIST: Zalando article images (28x28 grey levels), 10 classes."
  HOMEPAGE = "https://github.com/zalandoresearch/fashion-mnist"


class JaxflEmnistBalanced(_RawImageBuilder):
  """EMNIST balanced (47 classes), transposed as NIST stores it, from ``gzip.zip``."""

  SOURCE = "emnist"
  NUM_CLASSES = 47
  DESCRIPTION = ("EMNIST balanced: 47 classes of handwritten digits and letters (28x28), "
                 "images transposed as NIST stores them.")
  HOMEPAGE = "https://www.nist.gov/itl/products-and-services/emnist-dataset"

  def _load(self, files, split):
    return load_emnist_archive(files["archive"], split)


class JaxflCifar10(_RawImageBuilder):
  """CIFAR-10 from the binary version's tarball."""

  SOURCE = "cifar10"
  SHAPE = (32, 32, 3)
  LABEL_NAMES = CIFAR10_LABELS
  DESCRIPTION = "CIFAR-10: 32x32 colour images in 10 classes."
  HOMEPAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"

  def _load(self, files, split):
    return load_cifar10_archive(files["archive"], split)


BUILDERS: dict[str, type[_RawImageBuilder]] = {
    b.SOURCE: b for b in (JaxflMnist, JaxflFashionMnist, JaxflEmnistBalanced, JaxflCifar10)}
"""Catalog name -> its builder class."""
