"""Progress from inside compiled programs: a scanned, vmapped run reports its steps as
they finish, not only when the whole XLA call returns.

A program calls :func:`tick` where a unit of work ends (an evaluation interval of a
``lax.scan``); the host code that launches the program opens :func:`reporting` around the
call with a ``sink(done, total)``::

  def simulate(key):
    def chunk(state, i):
      state = ...  # every_n rounds
      progress.tick(i + 1, num_chunks, after=metrics)  # i: xs=jnp.arange(num_chunks)
      return state, metrics
    return jax.lax.scan(chunk, state0, jnp.arange(num_chunks))

  with progress.reporting(lambda done, total: print(f"{done}/{total}")):
    jax.jit(jax.vmap(simulate))(keys)

``tick`` is a ``jax.debug.callback``: it changes no value the program computes, and
without an open :func:`reporting` it does nothing. Pass a counter that does not depend
on the vmapped inputs (the scan's ``xs = jnp.arange(n)``, closed over rather than
batched): a batched counter calls the sink once per element of the batch; the
dispatcher drops a report that is not ahead of the last one, so the sink still sees each
step once. Ticks arrive in order when the steps are ordered (a scan's iterations, or an
``after`` value that depends on the previous step); open one :func:`reporting` block per
call, as a new call's first tick is not ahead of the last call's. Compiled programs
holding ticks stay in JAX's persistent compilation cache (measured: a second process
hits it). The sink runs on XLA's callback thread; keep it short and thread-safe.

Stopping: after :func:`request_stop` (e.g. from a SIGINT handler), the next tick of any
running program raises :class:`Stopped` inside the callback, which ends the XLA call
there (measured on CPU: a 200-step scan stopped at its 4th tick) instead of after its
last step; the caller sees a runtime error and asks :func:`stop_requested` whether that
was the reason. Nothing the program computed is returned: a caller keeps only results
of calls that ended.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import jax
import numpy as np

Sink = Callable[[int, int], None]

_lock = threading.Lock()
_sinks: list[list] = []  # a stack of [sink, last done reported]
_stop = threading.Event()


class Stopped(Exception):
  """Raised by a tick after :func:`request_stop`: the program's call ends there."""


def request_stop() -> None:
  """Make the next tick of every running (or later) program raise :class:`Stopped`."""
  _stop.set()


def stop_requested() -> bool:
  return _stop.is_set()


def clear_stop() -> None:
  """Let programs run to the end again (a new launch in the same process)."""
  _stop.clear()


def tick(done, total: int, after=None) -> None:
  """Report, from inside a traced program, that ``done`` of ``total`` steps are finished.

  Args:
    done: steps finished (a traced integer; see the module docstring on batching).
    total: the program's number of steps (static).
    after: a value the step computed (e.g. its evaluation): the report waits for it.
      Without one, nothing orders the callback after the step's work, and XLA may run
      it as early as its inputs allow.
  """
  if not isinstance(total, int) or isinstance(total, bool) or total < 1:
    raise ValueError(f"total: expected a positive integer, got {total!r}")
  jax.debug.callback(_dispatch, done, np.int32(total), after)


def _dispatch(done, total, after=None) -> None:
  del after  # only a dependency
  if _stop.is_set():
    raise Stopped(f"stop requested at step {int(np.max(done))} of {int(total)}")
  with _lock:
    if not _sinks:
      return
    entry = _sinks[-1]
    done = int(np.max(done))
    if done <= entry[1]:
      return
    entry[1] = done
    sink = entry[0]
  sink(done, int(total))


@contextlib.contextmanager
def reporting(sink: Sink) -> Iterator[None]:
  """Send every :func:`tick` of the programs run inside the block to ``sink(done, total)``.

  Blocks nest: the innermost sink receives the ticks. Ticks of a call still running
  when the block exits (an asynchronous dispatch not waited for) go to the enclosing
  sink, or nowhere.
  """
  entry = [sink, 0]
  with _lock:
    _sinks.append(entry)
  try:
    yield
  finally:
    with _lock:
      _sinks.remove(entry)
