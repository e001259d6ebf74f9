"""``jaxfl_stdlib_text``: the Python standard library's source as a text corpus.

Real text that is on every machine, needs no network and falls naturally into
domains: the ``.py`` files of the running interpreter's standard library
(``sysconfig.get_paths()['stdlib']``). A domain is a top-level package
(``'asyncio'``, ``'email'``, ...) or ``'toplevel'``, the bucket of single
top-level modules (``argparse.py``, ``typing.py``, ...). Domains become non-IID
federated clients (:data:`CLIENT_DOMAINS`) and held-out general domains
(:data:`GENERAL_DOMAINS`) on which forgetting is measured.

Files: every ``.py`` file under the stdlib directory except those under a
directory named ``site-packages``, ``dist-packages``, ``test``, ``tests``,
``idle_test`` or ``__pycache__``; except ``_sysconfigdata*.py`` (the build
machine's compiler flags and paths, not shared source); except empty files and
files that are not valid UTF-8 (none in CPython 3.11-3.13).

:data:`DOMAINS` is fixed so experiments name the same domains everywhere: the
packages that exist in CPython 3.11, 3.12 and 3.13 *and* in Debian's split
``python3.x`` packages, with at least ~48 KB of source and at least three
non-empty files each. Hence no ``tkinter``/``idlelib``/``turtledemo`` (separate
Debian packages), no ``lib2to3``/``distutils`` (removed in 3.13/3.12), no
``pydoc_data``/``collections``/``xmlrpc`` (one or two files carry almost all
their bytes, so a file-level split leaves no useful held-out part), no
``zipfile``/``pathlib`` (packages only since 3.12/3.13). Texts change a little
between Python versions; the domain list does not. A domain with no files on an
unusual install is skipped by :func:`load_corpus` with a warning (an error only
if too few domains remain).

Split (deterministic, per domain, whole files): the domain's files are ordered
by the SHA-256 of their relative path; walking that order, a file goes to
``validation`` if it keeps the validation bytes within
:data:`MAX_VALIDATION_FRACTION` of the domain's bytes, until they reach
:data:`VALIDATION_FRACTION`; everything else is ``train``. So every domain has
held-out files and never loses more than a quarter of its text. Which files go
where depends on paths and sizes only, so it can shift slightly between Python
versions, as the texts do.

Records (one per file, keyed by its relative path): ``text`` the file's UTF-8
bytes (``uint8 [n]``), ``domain`` a ``ClassLabel`` over :data:`DOMAINS` and
``path`` the ``/``-separated path relative to the stdlib directory. The builder
uses only features that need no TensorFlow and is written as ``array_record``.
It has one config per Python minor version (``py3_11``, ...), so a data
directory shared by interpreters of different versions keeps their corpora
apart.

Tokens are bytes (:class:`ByteTokenizer`, vocabulary 258: bytes 0-255, then
:data:`EOS_ID` = 256 ends a document and :data:`BOS_ID` = 257 may start a
prompt). :func:`load_corpus` joins each domain's files, in path order, into one
``int32`` stream per split, each file followed by ``EOS_ID``.
:func:`sample_windows` draws random training windows from a stream,
:func:`eval_windows` cuts fixed evaluation windows, and :func:`client_domains` /
:func:`client_streams` give federated clients their data.

Example:

>>> tok = ByteTokenizer()
>>> ids = tok.encode("héllo", eos=True)
>>> ids.tolist()
[104, 195, 169, 108, 108, 111, 256]
>>> tok.decode(ids)
'héllo'
>>> client_domains(2, domains=("json", "email", "http"))  # doctest: +NORMALIZE_WHITESPACE
(ClientShard(domain='json', shard=0, num_shards=1),
 ClientShard(domain='email', shard=0, num_shards=1))
>>> [c.domain for c in client_domains(4, domains=("json", "email"))]
['json', 'json', 'email', 'email']
"""

from __future__ import annotations

import functools
import hashlib
import numbers
import os
import sys
import sysconfig
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

from jaxfl.data.catalog import data_dir_errors, default_data_dir, quiet_tfds
from jaxfl.errors import ConfigError
from jaxfl.local import ClientData

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

MIN_DOMAINS = 12
""":func:`load_corpus` fails if fewer requested domains than this (or than were
requested, if fewer were) have files on this interpreter."""

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

# Building must never reach for the network (see catalog._OFFLINE).
_OFFLINE = tfds.download.DownloadConfig(try_download_gcs=False)


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


# --- batching -------------------------------------------------------------------


def _positive_int(value, field: str) -> int:
  if not isinstance(value, numbers.Integral) or isinstance(value, bool) or (
      value < 1):
    raise ConfigError(field, "an int >= 1", value)
  return int(value)


@functools.partial(jax.jit, static_argnames=("batch_size", "seq_len"))
def sample_windows(tokens: jax.Array, key: jax.Array, batch_size: int,
                   seq_len: int) -> tuple[jax.Array, jax.Array]:
  """``batch_size`` random contiguous windows of ``tokens`` (uniform starts).

  Jitted with ``batch_size`` and ``seq_len`` static; pass ``tokens`` as a
  device array (``jnp.asarray`` once) so it is not copied on every call.

  Args:
    tokens: ``int [N]`` stream, ``N >= seq_len + 1``.
    key: PRNG key.
    batch_size: windows to draw (with replacement).
    seq_len: window length ``T``.

  Returns:
    ``(inputs, targets)``, ``int32 [batch_size, seq_len]`` each, with
    ``targets[:, t] == inputs[:, t + 1]``: both are
    ``tokens[s : s + T + 1]`` for a start ``s`` in ``[0, N - T - 1]``, minus
    its last or first token.

  Raises:
    ConfigError: ``tokens`` not 1-D or shorter than ``seq_len + 1`` (field
      ``tokens``); bad ``batch_size``/``seq_len``.
  """
  batch_size = _positive_int(batch_size, "batch_size")
  seq_len = _positive_int(seq_len, "seq_len")
  if tokens.ndim != 1 or tokens.shape[0] < seq_len + 1:
    raise ConfigError(
        "tokens", f"a 1-D stream of at least seq_len + 1 = {seq_len + 1}"
        " tokens", f"shape {tokens.shape}")
  starts = jax.random.randint(
      key, (batch_size, 1), 0, tokens.shape[0] - seq_len)
  windows = tokens[starts + jnp.arange(seq_len + 1)[None, :]].astype(jnp.int32)
  return windows[:, :-1], windows[:, 1:]


def eval_windows(tokens, seq_len: int, max_windows: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Fixed evaluation windows: every target token scored at most once.

  Window ``k`` is ``tokens[k*T : k*T + T + 1]`` (inputs without its last token,
  targets without its first), so the targets of different windows never
  overlap. With more than ``max_windows`` of them, ``max_windows`` evenly
  spaced ones are kept (first and last included), so long streams are sampled
  across all their files rather than at the start.

  >>> x, y = eval_windows(np.arange(10), 3)
  >>> x.tolist(), y.tolist()
  ([[0, 1, 2], [3, 4, 5], [6, 7, 8]], [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
  >>> eval_windows(np.arange(10), 3, max_windows=2)[0].tolist()
  [[0, 1, 2], [6, 7, 8]]

  Args:
    tokens: ``int [N]`` stream, ``N >= seq_len + 1``.
    seq_len: window length ``T``.
    max_windows: keep at most this many windows; ``None`` keeps all
      ``(N - 1) // T``.

  Returns:
    ``(inputs, targets)``, numpy ``int32 [W, seq_len]`` each.

  Raises:
    ConfigError: ``tokens`` not 1-D or too short (field ``tokens``); bad
      ``seq_len``/``max_windows``.
  """
  seq_len = _positive_int(seq_len, "seq_len")
  tokens = np.asarray(tokens)
  if tokens.ndim != 1 or tokens.shape[0] < seq_len + 1:
    raise ConfigError(
        "tokens", f"a 1-D stream of at least seq_len + 1 = {seq_len + 1}"
        " tokens", f"shape {tokens.shape}")
  num = (tokens.shape[0] - 1) // seq_len
  index = np.arange(num)
  if max_windows is not None:
    max_windows = _positive_int(max_windows, "max_windows")
    if num > max_windows:
      index = np.round(np.linspace(0, num - 1, max_windows)).astype(np.int64)
  rows = index[:, None] * seq_len + np.arange(seq_len + 1)
  windows = tokens[rows].astype(np.int32)
  return windows[:, :-1], windows[:, 1:]


# --- federated clients ----------------------------------------------------------


class ClientShard(NamedTuple):
  """A client's data: contiguous shard ``shard`` of ``num_shards`` of a domain."""

  domain: str
  shard: int
  num_shards: int


def client_domains(num_clients: int, *,
                   domains: Sequence[str] = CLIENT_DOMAINS
                   ) -> tuple[ClientShard, ...]:
  """Which domain (and which shard of it) each client gets.

  With ``num_clients <= len(domains)``, client ``i`` gets all of
  ``domains[i]``; the remaining domains are unused. With more clients, every
  domain is cut into contiguous shards: ``num_clients // len(domains)`` each,
  one more for the first ``num_clients % len(domains)`` domains, clients listed
  domain by domain. Clients are thus non-IID by construction; clients sharing a
  domain differ only in which files (parts) they hold.

  Args:
    num_clients: number of clients.
    domains: the domains to use, in order; defaults to :data:`CLIENT_DOMAINS`,
      which excludes the held-out :data:`GENERAL_DOMAINS`.

  Returns:
    One :class:`ClientShard` per client.

  Raises:
    ConfigError: bad ``num_clients`` or ``domains``.
  """
  num_clients = _positive_int(num_clients, "num_clients")
  domains = _check_domains(domains)
  if num_clients <= len(domains):
    return tuple(ClientShard(d, 0, 1) for d in domains[:num_clients])
  base, extra = divmod(num_clients, len(domains))
  out = []
  for j, d in enumerate(domains):
    n = base + (j < extra)
    out.extend(ClientShard(d, s, n) for s in range(n))
  return tuple(out)


def shard_stream(tokens, shard: int, num_shards: int) -> np.ndarray:
  """Contiguous part ``shard`` of ``num_shards`` near-equal parts of a stream."""
  tokens = np.asarray(tokens)
  num_shards = _positive_int(num_shards, "num_shards")
  if not isinstance(shard, numbers.Integral) or not 0 <= shard < num_shards:
    raise ConfigError("shard", f"an int in [0, {num_shards})", shard)
  bounds = np.linspace(0, tokens.shape[0], num_shards + 1).round().astype(int)
  return tokens[bounds[shard]:bounds[shard + 1]]


def client_streams(corpus: Corpus, num_clients: int, *, split: str = "train",
                   domains: Sequence[str] = CLIENT_DOMAINS
                   ) -> list[np.ndarray]:
  """Each client's token stream, per :func:`client_domains`.

  Args:
    corpus: a loaded :class:`Corpus` holding ``domains``.
    num_clients: number of clients.
    split: ``'train'`` or ``'validation'``.
    domains: as in :func:`client_domains`.

  Returns:
    ``num_clients`` ``int32`` streams (views into the corpus).

  Raises:
    ConfigError: bad ``split``; a domain not in ``corpus`` (field ``domains``).
  """
  if split not in SPLITS:
    raise ConfigError("split", f"one of {list(SPLITS)}", split)
  shards = client_domains(num_clients, domains=domains)
  absent = sorted({c.domain for c in shards} - set(corpus.domains))
  if absent:
    raise ConfigError("domains", f"domains loaded in the corpus "
                      f"{list(corpus.domains)}", absent)
  streams = getattr(corpus, split)
  return [shard_stream(streams[c.domain], c.shard, c.num_shards)
          for c in shards]


def client_windows(corpus: Corpus, num_clients: int, seq_len: int, windows_per_client: int, *,
                   equal: bool = False, domains: Sequence[str] = CLIENT_DOMAINS) -> ClientData:
  """Each client's training windows (:func:`client_streams`, :func:`eval_windows`), stacked.

  Clients with fewer windows are zero-padded to the longest and carry their counts
  (:class:`jaxfl.local.ClientData`); with ``equal`` every client is cut to the shortest
  instead (for workers that draw batches uniformly from a full array).

  Returns:
    numpy ``ClientData``: ``x``, ``y`` ``int32 [num_clients, n, seq_len]``, ``count [N]``.
  """
  streams = client_streams(corpus, num_clients, domains=domains)
  xs, ys = zip(*(eval_windows(s, seq_len, windows_per_client) for s in streams), strict=True)
  if equal:
    n = min(len(x) for x in xs)
    return ClientData(np.stack([x[:n] for x in xs]), np.stack([y[:n] for y in ys]),
                      np.full([num_clients], n, np.int32))
  n_max = max(len(x) for x in xs)
  pad = lambda a: np.pad(a, [(0, n_max - len(a)), (0, 0)])
  return ClientData(np.stack([pad(x) for x in xs]), np.stack([pad(y) for y in ys]),
                    np.array([len(x) for x in xs], np.int32))


def domain_windows(corpus: Corpus, domains: Sequence[str], seq_len: int,
                   windows_per_domain: int, *, split: str = "validation"
                   ) -> tuple[np.ndarray, np.ndarray]:
  """``(inputs, targets)``: :func:`eval_windows` of each domain's ``split`` stream, concatenated
  in the order of ``domains`` (held-out text of the clients' domains, or of general ones)."""
  if split not in SPLITS:
    raise ConfigError("split", f"one of {list(SPLITS)}", split)
  parts = [eval_windows(getattr(corpus, split)[d], seq_len, windows_per_domain)
           for d in domains]
  return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
