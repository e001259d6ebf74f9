"""Fetching a dataset's published raw files: download once, verify, keep.

:func:`fetch` puts one :class:`RawFile` (its address, size in bytes and sha256) into a
download folder and returns its path. A file already there is used as it is, after its
size and sha256 are checked, so files copied in by hand serve a machine with no network.
A missing one is downloaded with the standard library (``urllib``; no TensorFlow, no
third-party client) to ``<name>.part`` and renamed to ``<name>`` only once its sha256 is
right, so a half-written file never passes for a whole one. An interrupted download is
resumed: the next call asks the server for the rest of ``<name>.part`` (an HTTP ``Range``
request) and starts afresh when the server does not honour it.

A wrong size or sha256 raises :class:`DownloadError` naming the file; so does a network
failure (no connection, an HTTP error, a timeout). Errors of the local disk stay
``OSError``. Processes that prepare the same files at once (sweep workers on a fresh
machine) take turns through :func:`exclusive`.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import sys
import urllib.error
import urllib.request
from typing import NamedTuple

try:
  import fcntl
except ImportError:  # Not POSIX: no lock between processes.
  fcntl = None

# Seconds a connection or a single read may stall before the download fails.
TIMEOUT_S = 60.0
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
  """A raw file could not be downloaded, or its size or sha256 is not the published one."""


class RawFile(NamedTuple):
  """One published file: where it lives, how many bytes it has and their sha256 (hex)."""

  url: str
  size: int
  sha256: str

  @property
  def filename(self) -> str:
    """The last component of the address (the name the file is kept under)."""
    return self.url.rstrip("/").rsplit("/", 1)[-1]


def sha256_of(path: str | os.PathLike[str]) -> str:
  """The hex sha256 of the file at ``path``, read in 1 MiB chunks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


def mismatch(path: str | os.PathLike[str], raw: RawFile) -> str | None:
  """Why the file at ``path`` is not ``raw`` (its size, else its sha256), or ``None``."""
  size = os.path.getsize(path)
  if size != raw.size:
    return f"{size} bytes, expected {raw.size}"
  digest = sha256_of(path)
  if digest != raw.sha256:
    return f"sha256 {digest}, expected {raw.sha256}"
  return None


@contextlib.contextmanager
def exclusive(lock_path: str | os.PathLike[str]):
  """Hold an exclusive lock on ``lock_path`` (created, with its folder): one process at a
  time, the others wait. Where the OS has no ``fcntl`` (not POSIX), no lock is taken."""
  os.makedirs(os.path.dirname(os.fspath(lock_path)) or ".", exist_ok=True)
  with open(lock_path, "a") as f:
    if fcntl is not None:
      fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      if fcntl is not None:
        fcntl.flock(f, fcntl.LOCK_UN)


def fetch(raw: RawFile, folder: str | os.PathLike[str]) -> str:
  """Return the path of ``raw`` under ``folder``, downloading it first if it is missing.

  Args:
    raw: the file to fetch.
    folder: the download folder (created if missing).

  Returns:
    ``folder/raw.filename``, a file with ``raw``'s size and sha256.

  Raises:
    DownloadError: the file in ``folder`` (kept: it may be a copy made by hand) or the
      downloaded one (removed, so that the next call downloads it afresh) has the wrong
      size or sha256; or the download failed (its ``.part`` is kept for a resume).
  """
  folder = os.fspath(folder)
  path = os.path.join(folder, raw.filename)
  if os.path.exists(path):
    why = mismatch(path, raw)
    if why is not None:
      raise DownloadError(f"{path}: {why} (the file published at {raw.url}); remove it to "
                          "download it again")
    return path
  os.makedirs(folder, exist_ok=True)
  part = path + ".part"
  _download(raw, part)
  why = mismatch(part, raw)
  if why is not None:
    os.remove(part)
    raise DownloadError(f"{path}: the download from {raw.url} has {why}; it was removed, "
                        "run the command again to download it afresh")
  os.replace(part, path)
  return path


def _download(raw: RawFile, part: str) -> None:
  """Download ``raw.url`` into ``part``, continuing a partial ``part`` where possible."""
  have = os.path.getsize(part) if os.path.exists(part) else 0
  if have >= raw.size:
    return  # Complete (or too long): the caller's check decides.
  request = urllib.request.Request(raw.url, headers={"Range": f"bytes={have}-"} if have else {})
  where = f" from byte {have:,}" if have else ""
  print(f"downloading {raw.url} ({raw.size / 1e6:.1f} MB){where} -> {part}", file=sys.stderr,
        flush=True)
  try:
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
      # 206: the server sends the rest; anything else is the whole file again.
      resumed = bool(have) and getattr(response, "status", None) == 206
      with open(part, "ab" if resumed else "wb") as f:
        shutil.copyfileobj(response, f, _CHUNK)
  except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as e:
    # An HTTP error says its code; a connection error its cause.
    reason = e if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)
    raise DownloadError(f"downloading {raw.url} failed ({reason}); run the command again to "
                        f"resume {part}") from e
