"""Prepare catalog datasets under a data directory: ``python -m jaxfl.data.prepare``.

::

  python -m jaxfl.data.prepare fashion_mnist emnist cifar10 --data_dir DIR

downloads each dataset's published raw files into ``DIR/downloads/NAME/`` (checked
against their sha256; files already there are used without the network, a broken
download resumes), builds them with :mod:`jaxfl.data.raw` (no TensorFlow) into ``DIR``
as ``array_record``, and prints one line per dataset with its split sizes. Afterwards
``jaxfl.data.load_dataset(NAME, data_dir=DIR)`` reads it offline. ``--data_dir``
defaults to ``$JAXFL_DATA_DIR``, else ``~/.cache/jaxfl/tfds``. A dataset already
prepared there is left as it is. ``digits`` is accepted too (built from scikit-learn's
bundled data, no network).

Bad input (an unknown name, a ``--data_dir`` that is not a writable directory, an
unknown flag) stops with one line naming the field, exit code 2, before anything is
written; a download that fails or does not match its sha256 stops with one line naming
the file, exit code 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from jaxfl.data import catalog
from jaxfl.data.download import DownloadError
from jaxfl.errors import ConfigError


class _OneLineParser(argparse.ArgumentParser):
  """argparse, with its errors as one line (no usage block) and exit code 2."""

  def error(self, message: str):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def prepare(names: Sequence[str], data_dir: str | os.PathLike[str] | None = None
            ) -> dict[str, dict[str, int]]:
  """Prepare the catalog datasets ``names`` under ``data_dir`` (see the module docstring).

  Returns:
    ``{name: {split: number of examples}}``.

  Raises:
    ConfigError: an unknown name (field ``dataset``, checked for every name before any
      is prepared) or an unusable ``data_dir`` (field ``data_dir``).
    jaxfl.data.download.DownloadError: a raw file failed to download or to verify.
  """
  for name in names:
    if not isinstance(name, str) or name not in catalog.DATASETS:
      raise ConfigError("dataset", f"one of {list(catalog.DATASETS)}", name)
  data_dir = catalog.default_data_dir() if data_dir is None else data_dir
  if not isinstance(data_dir, (str, os.PathLike)) or not os.fspath(data_dir):
    raise ConfigError("data_dir", "a directory path", data_dir)
  data_dir = os.path.expanduser(os.fspath(data_dir))
  if os.path.exists(data_dir) and not os.path.isdir(data_dir):
    raise ConfigError("data_dir", "a directory (an existing file is not)", data_dir)
  sizes = {}
  for name in dict.fromkeys(names):  # Each once, in the order given.
    with catalog.data_dir_errors(data_dir):
      if name == "digits":
        ds = catalog.load_dataset(name, data_dir=data_dir)
        sizes[name] = {"train": len(ds.y_train), "test": len(ds.y_test)}
        continue
      builder = catalog.catalog_builder(name, data_dir, download=True)
    sizes[name] = {split: int(builder.info.splits[split].num_examples)
                   for split in ("train", "test")}
  return sizes


def main(argv: Sequence[str] | None = None) -> int:
  """The command line; returns its exit code."""
  parser = _OneLineParser(
      prog="python -m jaxfl.data.prepare",
      description="Download and build catalog datasets (no TensorFlow) for offline use.")
  parser.add_argument("dataset", nargs="+", metavar="NAME",
                      help=f"datasets to prepare, among {list(catalog.DATASETS)}")
  parser.add_argument("--data_dir", default=None,
                      help="where datasets are prepared and read (default: $JAXFL_DATA_DIR "
                      "or ~/.cache/jaxfl/tfds)")
  args = parser.parse_args(argv)
  data_dir = args.data_dir if args.data_dir is not None else catalog.default_data_dir()
  try:
    sizes = prepare(args.dataset, data_dir)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except DownloadError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  for name, splits in sizes.items():
    counts = ", ".join(f"{n:,} {split}" for split, n in splits.items())
    print(f"{name}: {counts} under {os.path.abspath(os.path.expanduser(data_dir))}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
