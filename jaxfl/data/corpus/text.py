"""The corpus's text: its constants, the byte tokenizer, and the stdlib files and their split.

Which files and domains make up ``jaxfl_stdlib_text``, how they split into ``train`` and
``validation``, and how text becomes token ids; see :mod:`jaxfl.data.corpus` for the rules.
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from jaxfl.errors import ConfigError

NAME = "jaxfl_stdlib_text"

DOMAINS: tuple[str, ...] = (
    "asyncio", "concurrent", "ctypes", "email", "encodings", "html", "http",
    "importlib", "json", "logging", "multiprocessing", "re", "unittest",
    "urllib", "wsgiref", "xml", "toplevel",
)
"""Every domain of the corpus, in a fixed order (the ``ClassLabel`` names)."""

TOPLEVEL = "toplevel"
"""The domain of the single modules directly in the stdlib directory."""

GENERAL_DOMAINS: tuple[str, ...] = ("toplevel", "importlib", "unittest")
"""Held-out general domains: never given to clients; forgetting is measured on
them. ``toplevel`` mixes every topic of the stdlib; ``importlib`` and
``unittest`` are ordinary library code with no unusual vocabulary."""

CLIENT_DOMAINS: tuple[str, ...] = tuple(
    d for d in DOMAINS if d not in GENERAL_DOMAINS
)
"""The downstream domains that :func:`client_domains` hands to clients (14)."""

SPLITS: tuple[str, ...] = ("train", "validation")
VALIDATION_FRACTION = 0.1
MAX_VALIDATION_FRACTION = 0.25
# Byte counts every domain exceeds on CPython 3.11-3.13 (the tests check them).
MIN_TRAIN_BYTES = 35_000
MIN_VALIDATION_BYTES = 4_000

EOS_ID = 256
"""End of document; also the separator between files in a stream."""
BOS_ID = 257
"""Beginning of sequence, for prompts; never in corpus streams."""
VOCAB_SIZE = 258

_EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test",
     "__pycache__"}
)
_EXCLUDED_PREFIXES = ("_sysconfigdata",)


# --- tokenizer ----------------------------------------------------------------


class ByteTokenizer:
  """UTF-8 bytes as tokens, plus two special ids.

  Ids 0-255 are bytes, :data:`EOS_ID` (256) ends a document, :data:`BOS_ID`
  (257) begins a sequence; ``vocab_size`` is 258. ``decode(encode(s)) == s``
  for every ``str`` without lone surrogates. Stateless: one instance is as good
  as another.
  """

  vocab_size = VOCAB_SIZE
  eos_id = EOS_ID
  bos_id = BOS_ID

  def encode(self, text: str, *, bos: bool = False, eos: bool = False
             ) -> np.ndarray:
    """``text``'s UTF-8 bytes as ``int32`` ids, optionally framed by BOS/EOS.

    Args:
      text: the string to encode.
      bos: prepend :data:`BOS_ID`.
      eos: append :data:`EOS_ID`.

    Returns:
      ``int32 [n]`` ids.

    Raises:
      ConfigError: ``text`` is not a ``str`` (field ``text``).
    """
    if not isinstance(text, str):
      raise ConfigError("text", "a str", type(text).__name__)
    ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)
    parts = ([np.array([BOS_ID], np.int32)] if bos else []) + [ids]
    if eos:
      parts.append(np.array([EOS_ID], np.int32))
    return np.concatenate(parts) if len(parts) > 1 else ids

  def decode(self, ids) -> str:
    """The text of byte ids ``ids``; special ids are dropped.

    Args:
      ids: a 1-D sequence or array of ids in ``[0, vocab_size)``.

    Returns:
      The UTF-8 decoding of the byte ids (``errors='replace'``: a window cut
      mid-character decodes to U+FFFD there instead of failing).

    Raises:
      ConfigError: ``ids`` is not 1-D or holds an id outside the vocabulary
        (field ``ids``).
    """
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
      raise ConfigError("ids", "a 1-D array of int ids", f"shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= VOCAB_SIZE):
      raise ConfigError(
          "ids", f"ids in [0, {VOCAB_SIZE})",
          f"range [{ids.min()}, {ids.max()}]")
    data = ids[ids < 256].astype(np.uint8).tobytes()
    return data.decode("utf-8", errors="replace")


# --- source files and split -----------------------------------------------------


class SourceFile(NamedTuple):
  """One stdlib file.

  Attributes:
    path: ``/``-separated path relative to the stdlib directory.
    domain: its domain (any top-level package name, or :data:`TOPLEVEL`).
    data: the file's bytes (valid UTF-8, non-empty).
  """

  path: str
  domain: str
  data: bytes


def stdlib_dir() -> str:
  """The running interpreter's standard library directory (not a venv's)."""
  return sysconfig.get_paths()["stdlib"]


def config_name(version: tuple[int, int] | None = None) -> str:
  """The builder config for a Python ``(major, minor)``, e.g. ``'py3_11'``."""
  major, minor = version or sys.version_info[:2]
  return f"py{major}_{minor}"


def list_source_files(root: str | os.PathLike[str] | None = None,
                      domains: Sequence[str] = DOMAINS) -> list[SourceFile]:
  """The corpus files of ``domains`` under ``root``, sorted by path.

  Args:
    root: a standard library directory; defaults to :func:`stdlib_dir`.
    domains: keep only files of these domains.

  Returns:
    The :class:`SourceFile` s (see the module docstring for what is excluded).
  """
  root = os.fspath(root) if root is not None else stdlib_dir()
  keep = frozenset(domains)
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    rel_dir = os.path.relpath(dirpath, root)
    parts = [] if rel_dir == os.curdir else rel_dir.split(os.sep)
    domain = parts[0] if parts else TOPLEVEL
    if parts and parts[0] not in keep:
      dirnames[:] = []
      continue
    dirnames[:] = sorted(d for d in dirnames if d not in _EXCLUDED_DIRS)
    if domain not in keep:
      continue
    for name in sorted(filenames):
      if not name.endswith(".py") or name.startswith(_EXCLUDED_PREFIXES):
        continue
      with open(os.path.join(dirpath, name), "rb") as f:
        data = f.read()
      if not data:
        continue
      try:
        data.decode("utf-8")
      except UnicodeDecodeError:
        continue
      files.append(SourceFile("/".join([*parts, name]), domain, data))
  files.sort(key=lambda f: f.path)
  return files


def _path_hash(path: str) -> str:
  return hashlib.sha256(path.encode("utf-8")).hexdigest()


def split_files(files: Sequence[SourceFile]) -> dict[str, list[SourceFile]]:
  """Assign whole files to ``train``/``validation``, per domain.

  Args:
    files: the corpus files (any order).

  Returns:
    ``{'train': files, 'validation': files}``, each sorted by path; disjoint
    and together all of ``files``. See the module docstring for the rule.
  """
  by_domain: dict[str, list[SourceFile]] = {}
  for f in files:
    by_domain.setdefault(f.domain, []).append(f)
  validation = set()
  for domain_files in by_domain.values():
    total = sum(len(f.data) for f in domain_files)
    taken = 0
    for f in sorted(domain_files, key=lambda f: (_path_hash(f.path), f.path)):
      if taken >= VALIDATION_FRACTION * total:
        break
      if taken + len(f.data) <= MAX_VALIDATION_FRACTION * total:
        validation.add(f.path)
        taken += len(f.data)
  out = {
      "train": [f for f in files if f.path not in validation],
      "validation": [f for f in files if f.path in validation],
  }
  return {k: sorted(v, key=lambda f: f.path) for k, v in out.items()}
