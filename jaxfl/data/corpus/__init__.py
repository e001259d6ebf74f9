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

Modules: :mod:`~jaxfl.data.corpus.text` (constants, tokenizer, files and split),
:mod:`~jaxfl.data.corpus.loading` (the tfds builder, :func:`load_corpus`) and
:mod:`~jaxfl.data.corpus.windows` (windows and clients); all names are re-exported here.

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

from jaxfl.data.corpus.loading import MIN_DOMAINS, Corpus, JaxflStdlibText, load_corpus
from jaxfl.data.corpus.text import (
    BOS_ID,
    CLIENT_DOMAINS,
    DOMAINS,
    EOS_ID,
    GENERAL_DOMAINS,
    MAX_VALIDATION_FRACTION,
    MIN_TRAIN_BYTES,
    MIN_VALIDATION_BYTES,
    NAME,
    SPLITS,
    TOPLEVEL,
    VALIDATION_FRACTION,
    VOCAB_SIZE,
    ByteTokenizer,
    SourceFile,
    config_name,
    list_source_files,
    split_files,
    stdlib_dir,
)
from jaxfl.data.corpus.windows import (
    ClientShard,
    client_domains,
    client_streams,
    client_windows,
    domain_windows,
    eval_windows,
    sample_windows,
    shard_stream,
)

__all__ = [
    "BOS_ID", "CLIENT_DOMAINS", "DOMAINS", "EOS_ID", "GENERAL_DOMAINS", "MAX_VALIDATION_FRACTION",
    "MIN_DOMAINS", "MIN_TRAIN_BYTES", "MIN_VALIDATION_BYTES", "NAME", "SPLITS", "TOPLEVEL",
    "VALIDATION_FRACTION", "VOCAB_SIZE", "ByteTokenizer", "ClientShard", "Corpus",
    "JaxflStdlibText", "SourceFile", "client_domains", "client_streams", "client_windows",
    "config_name", "domain_windows", "eval_windows", "list_source_files", "load_corpus",
    "sample_windows", "shard_stream", "split_files", "stdlib_dir",
]
