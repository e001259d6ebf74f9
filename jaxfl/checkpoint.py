"""Checkpoints of a whole simulation state with orbax-checkpoint.

The state (server parameters, optimizer and aggregator state, root key, round,
simulated clock) is one pytree; restoring it into a template of the same structure
and continuing gives bit-identical results to a run that never stopped, because
every random key is derived from the root key and the round number.

A checkpoint can be damaged on disk (a job killed while the file system flushed, a full
disk, a bad copy). Orbax then raises on restore -- or, for a garbled value file, restores
wrong numbers without a word (measured with orbax-checkpoint 0.12.8: the zstd chunks carry
no checksum). So every save records a SHA-256 of the state's bytes in the checkpoint's
metadata, and :meth:`Checkpointer.restore_latest` falls back past any checkpoint that fails
to restore or to match it, moving it aside (``<round>.unreadable``, which orbax ignores) so
the round can be saved again.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import os
import sys
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

_DIGEST = "state_sha256"  # custom-metadata keys: the bytes' hash, and their shapes' and dtypes'
_SPEC = "state_spec_sha256"


class UnreadableCheckpoint(RuntimeError):
  """A saved round that cannot be restored, or whose values do not match their checksum."""

  def __init__(self, round_: int, why: str):
    super().__init__(f"the checkpoint of round {round_} is unreadable ({why})")
    self.round, self.why = round_, why


class Restored(NamedTuple):
  """What :meth:`Checkpointer.restore_latest` found.

  Attributes:
    round: the round restored, or None when no checkpoint was readable (or none exists).
    state: the restored state (None with ``round``).
    unreadable: ``(round, why, moved_to)`` for each newer checkpoint skipped, newest first.
  """

  round: int | None
  state: Any
  unreadable: tuple[tuple[int, str, str], ...] = ()


def _host(leaf):
  """A leaf as the bytes it is saved as (a typed PRNG key as its key data)."""
  if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
    return jax.random.key_data(leaf)
  return leaf


def _signature(leaf) -> bytes:
  leaf = _host(leaf)
  dtype = np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
  return f"{dtype.str}{tuple(np.shape(leaf))};".encode()


def spec_digest(tree) -> str:
  """SHA-256 of a state's leaf dtypes and shapes (no values read): which state it is."""
  return hashlib.sha256(b"".join(map(_signature, jax.tree.leaves(tree)))).hexdigest()


def fingerprint(tree) -> dict[str, str]:
  """What a save records: SHA-256 of the state's leaves (dtype, shape and bytes) and
  :func:`spec_digest`. Without the values' hash when a leaf is sharded over processes
  (each sees only its part): such a state restores unverified."""
  values = hashlib.sha256()
  for leaf in jax.tree.leaves(tree):
    if not getattr(leaf, "is_fully_addressable", True):
      return {_SPEC: spec_digest(tree)}
    x = np.ascontiguousarray(np.asarray(_host(leaf)))
    values.update(_signature(x))
    values.update(x.reshape(-1).view(np.uint8))
  return {_DIGEST: values.hexdigest(), _SPEC: spec_digest(tree)}


def _why(e: BaseException) -> str:
  """An exception as a short phrase: orbax's errors embed whole TensorStore specs."""
  first = (str(e).strip().splitlines() or [""])[0]
  for tail in (" See full TensorStore details", " [tensorstore_spec"):
    first = first.split(tail, 1)[0]
  text = f"{type(e).__name__}: {first}" if first else type(e).__name__
  return text if len(text) <= 120 else text[:117] + "..."


def _orbax_leftover(unraisable) -> bool:
  """Whether an unraisable exception is what a failed orbax read leaves behind: one of its
  read coroutines, collected unfinished, or TensorStore calling back into the event loop
  orbax has since closed."""
  obj, exc = unraisable.object, unraisable.exc_value
  if inspect.iscoroutine(obj):
    return f"{os.sep}orbax{os.sep}" in obj.cr_code.co_filename
  return obj is None and isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


class _WithoutOrbaxLeftovers:
  """``sys.unraisablehook`` minus :func:`_orbax_leftover`: those tracebacks (one per array
  of a damaged checkpoint, printed whenever Python collects them, long after the read)
  would bury the one line of :func:`jaxfl.loop.run_rounds` that says what happened."""

  def __init__(self, hook):
    self.hook = hook

  def __call__(self, unraisable) -> None:
    if not _orbax_leftover(unraisable):
      self.hook(unraisable)


def _mute_orbax_leftovers() -> None:
  """Filter the leftovers of failed reads out of ``sys.unraisablehook`` from now on (kept:
  they outlive the read, held by TensorStore's threads; everything else still reaches the
  hook). Filtering beats collecting them on the spot: a full ``gc.collect()`` costs time in
  proportion to the whole heap, on every restore."""
  if not isinstance(sys.unraisablehook, _WithoutOrbaxLeftovers):
    sys.unraisablehook = _WithoutOrbaxLeftovers(sys.unraisablehook)


@contextlib.contextmanager
def _quietly():
  """Orbax's absl warnings from its metadata readers off, for a damaged checkpoint; the one
  line of :func:`jaxfl.loop.run_rounds` says what happened instead."""
  loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
  levels = [lg.level for lg in loggers]
  for lg in loggers:
    lg.setLevel(logging.CRITICAL + 1)
  try:
    yield
  finally:
    for lg, level in zip(loggers, levels):
      lg.setLevel(level)


class Checkpointer:
  """Save a state pytree every ``every`` rounds; restore the latest readable one.

  Args:
    directory: where checkpoints live (one sub-folder per saved round).
    every: save interval in rounds (``save`` ignores other rounds).
    max_to_keep: newest checkpoints kept on disk.
  """

  def __init__(self, directory: str | os.PathLike, *, every: int, max_to_keep: int = 2):
    self.every = every
    self.directory = os.path.abspath(directory)
    with _quietly():  # a damaged round's metadata is reported once, by restore_latest
      self._manager = ocp.CheckpointManager(
          self.directory,
          # The interval is applied in `save` (orbax's default policy would also save the
          # first round it sees, off the interval).
          options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                               enable_async_checkpointing=False),
      )

  def due(self, round_: int) -> bool:
    """Whether round ``round_`` falls on the save interval."""
    return round_ % self.every == 0

  def save(self, round_: int, state, *, force: bool = False) -> bool:
    """Save ``state`` as round ``round_`` if it falls on the interval (or ``force``)."""
    if not (force or self.due(round_)) or round_ == self.latest_round():
      return False
    return self._manager.save(round_, args=ocp.args.StandardSave(state), force=True,
                              custom_metadata=fingerprint(state))

  def latest_round(self) -> int | None:
    return self._manager.latest_step()

  def restore(self, template, round_: int | None = None):
    """The state saved at ``round_`` (default: the latest readable one, see
    :meth:`restore_latest`), with ``template``'s structure.

    Returns ``None`` when there is no (readable) checkpoint.

    Raises:
      UnreadableCheckpoint: the checkpoint of an explicit ``round_`` is damaged.
    """
    if round_ is None:
      return self.restore_latest(template).state
    return self._restore(template, round_)

  def restore_latest(self, template) -> Restored:
    """The newest checkpoint that restores and matches its checksum, with ``template``'s
    structure; each newer one is moved aside to ``<round>.unreadable`` and named in
    :attr:`Restored.unreadable`, so a resumed run saves those rounds again.

    A checkpoint whose recorded dtypes and shapes are not ``template``'s is another state
    (the code changed), not a damaged one: its restore error is raised as it is, and
    nothing is moved.
    """
    unreadable = []
    for round_ in sorted(self._manager.all_steps(), reverse=True):
      why = None
      with _quietly():
        try:
          state = self._restore(template, round_)
        except UnreadableCheckpoint as e:
          why = e.why
      if why is None:
        return Restored(round_, state, tuple(unreadable))
      unreadable.append((round_, why, self._set_aside(round_)))
    return Restored(None, None, tuple(unreadable))

  def _recorded(self, round_: int) -> dict:
    """The fingerprint saved with a round (empty: saved before checksums, or unreadable)."""
    try:
      with _quietly():  # orbax warns that it reads no item handlers: it needs none here
        return dict(self._manager.metadata(round_).custom_metadata or {})
    except Exception:  # noqa: BLE001 -- damaged metadata: the values may still be intact
      return {}

  def _restore(self, template, round_: int):
    _mute_orbax_leftovers()
    recorded = self._recorded(round_)
    # Only a checkpoint recorded as this template's state (or recorded before checksums)
    # is judged damaged when it fails.
    spec = spec_digest(template)
    ours = recorded.get(_SPEC, spec) == spec
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    try:
      state = self._manager.restore(round_, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax and TensorStore raise many kinds on damaged files
      if not ours:
        raise
      raise UnreadableCheckpoint(round_, _why(e)) from e
    digest = recorded.get(_DIGEST)
    if ours and digest is not None and fingerprint(state).get(_DIGEST, digest) != digest:
      raise UnreadableCheckpoint(round_, "its values do not match the checksum saved with them")
    return state

  def _set_aside(self, round_: int) -> str:
    """Move a damaged round's folder to ``<round>.unreadable`` (not a step name to orbax:
    never restored, never counted by ``max_to_keep``); kept for whoever wants to look."""
    source = os.path.join(self.directory, str(round_))
    target, n = f"{source}.unreadable", 1
    while os.path.exists(target):
      n += 1
      target = f"{source}.unreadable{n}"
    with contextlib.suppress(FileNotFoundError):  # another process of the run moved it first
      os.rename(source, target)
    with _quietly():
      self._manager.reload()
    return target

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
