"""Checkpoints of a whole simulation state with orbax-checkpoint.

The state (server parameters, optimizer and aggregator state, root key, round,
simulated clock) is one pytree; restoring it into a template of the same structure
and continuing gives bit-identical results to a run that never stopped, because
every random key is derived from the root key and the round number.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Save a state pytree every ``every`` rounds; restore the latest one.

  Args:
    directory: where checkpoints live (one sub-folder per saved round).
    every: save interval in rounds (``save`` ignores other rounds).
    max_to_keep: newest checkpoints kept on disk.
  """

  def __init__(self, directory: str | os.PathLike, *, every: int, max_to_keep: int = 2):
    self.every = every
    self._manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        # The interval is applied in `save` (orbax's default policy would also save the first
        # round it sees, off the interval).
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
    return self._manager.save(round_, args=ocp.args.StandardSave(state), force=True)

  def latest_round(self) -> int | None:
    return self._manager.latest_step()

  def restore(self, template, round_: int | None = None):
    """The state saved at ``round_`` (default: the latest), with ``template``'s structure.

    Returns ``None`` when there is no checkpoint.
    """
    round_ = self.latest_round() if round_ is None else round_
    if round_ is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    return self._manager.restore(round_, args=ocp.args.StandardRestore(abstract))

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
