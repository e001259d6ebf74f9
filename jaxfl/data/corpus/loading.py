"""The ``jaxfl_stdlib_text`` tfds builder and :func:`load_corpus`, which reads its streams.

:func:`load_corpus` builds the dataset once under a data directory (never over the
network), then joins each domain's files into one token stream per split (a
:class:`Corpus`).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from jaxfl.data.catalog import data_dir_errors, default_data_dir, quiet_tfds
from jaxfl.data.corpus.text import (
    DOMAINS,
    EOS_ID,
    SPLITS,
    VALIDATION_FRACTION,
    SourceFile,
    config_name,
    list_source_files,
    split_files,
    stdlib_dir,
)
from jaxfl.errors import ConfigError

MIN_DOMAINS = 12
""":func:`load_corpus` fails if fewer requested domains than this (or than were
requested, if fewer were) have files on this interpreter."""

# Building must never reach for the network (see catalog._OFFLINE).
_OFFLINE = tfds.download.DownloadConfig(try_download_gcs=False)


# --- tfds builder ---------------------------------------------------------------


class JaxflStdlibText(tfds.core.GeneratorBasedBuilder):
  """The running Python's standard library source, one record per file."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": (
          f"Initial release: {len(DOMAINS)} domains, whole-file split by"
          f" path hash (~{VALIDATION_FRACTION:.0%} validation bytes per"
          " domain)."
      ),
  }
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(
          name=config_name(),
          description=f"Python {sys.version_info[0]}.{sys.version_info[1]}'s"
          " standard library.",
      )
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    # builder=self with everything explicit, as in digits.py (no metadata dir).
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "The .py files of the Python standard library (no tests), one"
            " record per file, labelled by top-level package."
        ),
        features=tfds.features.FeaturesDict({
            # Raw bytes, not Text: BYTES encoding stores them as-is (10x faster
            # to build than an int list) and decodes without TensorFlow.
            "text": tfds.features.Tensor(
                shape=(None,), dtype=np.uint8,
                encoding=tfds.features.Encoding.BYTES),
            "domain": tfds.features.ClassLabel(names=DOMAINS),
            "path": tfds.features.Text(),
        }),
        homepage="https://docs.python.org/3/library/",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Both splits from the local stdlib directory."""
    del dl_manager  # Nothing to download: the text is the interpreter's own.
    split = split_files(list_source_files())
    return {name: self._generate_examples(split[name]) for name in SPLITS}

  def _generate_examples(self, files: Sequence[SourceFile]):
    """Yields ``(path, example)`` per file."""
    for f in files:
      yield f.path, {
          "text": np.frombuffer(f.data, dtype=np.uint8),
          "domain": f.domain,
          "path": f.path,
      }


# --- loading --------------------------------------------------------------------


class Corpus(NamedTuple):
  """Token streams per domain and split.

  Attributes:
    domains: the domains loaded, in :data:`DOMAINS` order.
    train: ``{domain: int32 [n]}``: the domain's train files in path order,
      each as byte ids followed by :data:`EOS_ID`.
    validation: the same for the validation files.
    train_paths: ``{domain: paths}`` of the files in ``train``, in stream order.
    validation_paths: the same for ``validation``.
    python_version: the ``'major.minor'`` whose stdlib this is.
  """

  domains: tuple[str, ...]
  train: dict[str, np.ndarray]
  validation: dict[str, np.ndarray]
  train_paths: dict[str, tuple[str, ...]]
  validation_paths: dict[str, tuple[str, ...]]
  python_version: str


def _check_domains(domains) -> tuple[str, ...]:
  if isinstance(domains, str) or not isinstance(domains, Sequence):
    raise ConfigError("domains", f"a sequence of names from {list(DOMAINS)}",
                      domains)
  domains = tuple(domains)
  bad = [d for d in domains if d not in DOMAINS]
  if bad or not domains or len(set(domains)) != len(domains):
    raise ConfigError(
        "domains", f"distinct names from {list(DOMAINS)}", bad or domains)
  return domains


def load_corpus(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    domains: Sequence[str] = DOMAINS,
) -> Corpus:
  """Build ``jaxfl_stdlib_text`` under ``data_dir`` once, then read streams.

  Args:
    data_dir: where tfds datasets are prepared and read; defaults to
      :func:`~jaxfl.data.catalog.default_data_dir`.
    domains: the domains to load, a subset of :data:`DOMAINS`. Those with no
      train or no validation file on this interpreter are skipped with a
      warning.

  Returns:
    The :class:`Corpus`, its ``domains`` in :data:`DOMAINS` order.

  Raises:
    ConfigError: a name not in :data:`DOMAINS`, a repeated or no name (field
      ``domains``); fewer than ``min(len(domains), MIN_DOMAINS)`` domains
      present (field ``domains``); a bad ``data_dir``.
  """
  domains = _check_domains(domains)
  if data_dir is None:
    data_dir = default_data_dir()
  if not isinstance(data_dir, (str, os.PathLike)):
    raise ConfigError("data_dir", "a directory path", data_dir)
  data_dir = os.path.expanduser(os.fspath(data_dir))
  with data_dir_errors(data_dir), quiet_tfds():
    builder = JaxflStdlibText(
        data_dir=data_dir, config=config_name(), file_format="array_record")
    if not builder.is_prepared():
      builder.download_and_prepare(download_config=_OFFLINE)
  names = builder.info.features["domain"].names
  wanted = {DOMAINS.index(d) for d in domains}
  streams: dict[str, dict[str, np.ndarray]] = {}
  paths: dict[str, dict[str, tuple[str, ...]]] = {}
  sources = builder.as_data_source(split=list(SPLITS))
  for split, source in zip(SPLITS, sources):
    docs: dict[str, list[tuple[str, np.ndarray]]] = {}
    # One record at a time: see catalog._read_all.
    for i in range(len(source)):
      ex = source[i]
      label = int(ex["domain"])
      if label in wanted:
        path = ex["path"]
        path = path.decode("utf-8") if isinstance(path, bytes) else str(path)
        docs.setdefault(names[label], []).append((path, ex["text"]))
    streams[split], paths[split] = {}, {}
    for domain, items in docs.items():
      # Records come back in tfds' hashed order; path order is stable.
      items.sort(key=lambda item: item[0])
      streams[split][domain] = _join(item[1] for item in items)
      paths[split][domain] = tuple(item[0] for item in items)
  present = tuple(
      d for d in DOMAINS
      if d in domains and all(d in streams[s] for s in SPLITS))
  missing = [d for d in domains if d not in present]
  if len(present) < min(len(domains), MIN_DOMAINS):
    raise ConfigError(
        "domains",
        f"at least {min(len(domains), MIN_DOMAINS)} domains with train and"
        f" validation files in Python {_version()}'s stdlib ({stdlib_dir()});"
        f" missing: {missing}",
        list(domains))
  if missing:
    warnings.warn(
        f"jaxfl_stdlib_text: domains {missing} have no train or validation"
        f" files in Python {_version()}'s stdlib; skipped.", stacklevel=2)
  return Corpus(
      domains=present,
      train={d: streams["train"][d] for d in present},
      validation={d: streams["validation"][d] for d in present},
      train_paths={d: paths["train"][d] for d in present},
      validation_paths={d: paths["validation"][d] for d in present},
      python_version=_version(),
  )


def _version() -> str:
  return f"{sys.version_info[0]}.{sys.version_info[1]}"


def _join(texts) -> np.ndarray:
  """uint8 texts -> one int32 stream, each text followed by EOS_ID."""
  texts = list(texts)
  out = np.empty(sum(t.size for t in texts) + len(texts), dtype=np.int32)
  pos = 0
  for t in texts:
    out[pos:pos + t.size] = t
    pos += t.size
    out[pos] = EOS_ID
    pos += 1
  return out
