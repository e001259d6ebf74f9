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
call, as a new call's first tick is not ahead of the last call's. The sink runs on
XLA's callback thread; keep it short and thread-safe.

Compilation: JAX writes no executable holding a host callback to its persistent
compilation cache (jax 0.10: "Not writing persistent cache entry ... because it uses
host callbacks"), so a program with ticks compiles again in every process, a relaunch
included. ``JAXFL_PROGRESS_TICKS=0`` in the environment (:func:`ticks_enabled`, read
when a program is traced) leaves ticks out: such programs report nothing until they
return and a stop request waits for the running call to end, but they compile once per
machine. The values computed are the same either way.

Stopping: after :func:`request_stop` (e.g. from a SIGINT handler), the next tick of any
running program raises :class:`Stopped` inside the callback, which ends the XLA call
there (measured on CPU: a 200-step scan stopped at its 4th tick) instead of after its
last step; the caller sees a runtime error and asks :func:`stop_requested` whether that
was the reason. Nothing the program computed is returned: a caller keeps only results
of calls that ended.

Ctrl-C: inside :func:`stop_on_signals`, SIGINT (and SIGTERM) request a stop instead of
raising ``KeyboardInterrupt``. Python runs a signal handler only when the main thread
next runs Python code, which a thread blocked in a long XLA call does not; so the block
also has the C-level handler write each signal to a pipe
(``signal.set_wakeup_fd``), which every tick reads. The first signal requests the stop,
within one tick of any running program; later ones are ignored, with a line each (a
second Ctrl-C never aborts the process mid-write). Loops between calls (e.g.
:func:`jaxfl.loop.run_rounds`) ask :func:`stop_requested` and raise :class:`Interrupted`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

Sink = Callable[[int, int], None]
ENV_TICKS = "JAXFL_PROGRESS_TICKS"  # "0": programs traced without ticks

_lock = threading.Lock()
_sinks: list[list] = []  # a stack of [sink, last done reported]
_stop = threading.Event()


class Stopped(Exception):
  """Raised by a tick after :func:`request_stop`: the program's call ends there."""


class _WithoutStops(logging.Filter):
  """JAX logs every exception a debug callback raises, traceback and all; a tick's
  :class:`Stopped` is the stop working, not an error."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.exc_info and isinstance(record.exc_info[1], Stopped))


logging.getLogger("jax._src.debugging").addFilter(_WithoutStops())


class Interrupted(Exception):
  """A run stopped on request (Ctrl-C) where what it finished is kept: relaunching the
  same command resumes it. ``signum``: the signal that asked, if one did."""

  def __init__(self, message: str, signum: int | None = None):
    super().__init__(message)
    self.signum = signum


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
  if ticks_enabled():
    jax.debug.callback(_dispatch, done, np.int32(total), after)


def ticks_enabled() -> bool:
  """Whether :func:`tick` puts its callback into the program being traced: unless
  ``$JAXFL_PROGRESS_TICKS`` is ``0`` (see the module docstring on compilation)."""
  return os.environ.get(ENV_TICKS, "1") != "0"


@contextlib.contextmanager
def stops_as_interrupted(what: str) -> Iterator[None]:
  """Around host code that runs programs: an error raised because a stop was requested
  (a tick's :class:`Stopped`, surfacing as JAX's runtime error) becomes
  :class:`Interrupted`, and JAX's effect tokens are settled, so that neither the next
  program nor JAX's exit handler raises the stop again."""
  try:
    yield
  except Interrupted:
    raise
  except Exception as e:
    if not stop_requested():
      raise
    _settle_effects()
    raise Interrupted(f"{what} stopped", first_signal()) from e


def _settle_effects() -> None:
  from jax._src import dispatch  # no public API drops a failed effect token

  try:
    jax.effects_barrier()
  except Exception:  # noqa: BLE001 -- the stopped call's token: its error is the stop
    dispatch.runtime_tokens.clear()


def tick_every(step, every: int, total: int, after=None) -> None:
  """:func:`tick` ``(step + 1, total)`` after every ``every``-th of ``total`` steps and after
  the last; ``step`` is the 0-based index of the step just computed (a scan's
  ``jnp.arange`` counter: unbatched under vmap, so the condition is one branch, not both).

  Args:
    every: steps between two ticks (static, >= 1).
  """
  if not isinstance(every, int) or isinstance(every, bool) or every < 1:
    raise ValueError(f"every: expected a positive integer, got {every!r}")
  due = jnp.logical_or((step + 1) % every == 0, step + 1 == total)
  jax.lax.cond(due, lambda: tick(step + 1, total, after=after), lambda: None)


def _dispatch(done, total, after=None) -> None:
  del after  # only a dependency
  if _signals.pipe is not None:
    _drain_signals()  # the main thread may be blocked in this very call
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


class _Signals:
  """The state of an open :func:`stop_on_signals` block."""

  def __init__(self):
    self.lock = threading.Lock()
    self.pipe: int | None = None  # read end of the wakeup pipe
    self.watched: frozenset[int] = frozenset()
    self.seen: list[int] = []
    self.say: Callable[[str], None] = print


_signals = _Signals()


def _drain_signals() -> None:
  """Read the signals the C-level handler wrote to the wakeup pipe: the first requests a
  stop, each later one is ignored with a line. Runs in the main thread (the Python
  handler) or in XLA's callback thread (a tick), whichever reads the pipe first."""
  s = _signals
  with s.lock:
    if s.pipe is None:
      return
    try:
      got = os.read(s.pipe, 64)
    except (BlockingIOError, OSError):  # nothing written yet (or the block just closed)
      return
    for signum in got:
      if signum not in s.watched:
        continue
      s.seen.append(signum)
      name = signal.Signals(signum).name
      if len(s.seen) == 1:
        request_stop()
        s.say(f"{name}: stopping at the next step of the work in progress; what is finished "
              "is kept (another Ctrl-C is ignored)")
      else:
        s.say(f"{name} ignored: already stopping")


def first_signal() -> int | None:
  """The signal that requested the stop in the open :func:`stop_on_signals` block."""
  return _signals.seen[0] if _signals.seen else None


@contextlib.contextmanager
def stop_on_signals(signals=(signal.SIGINT, signal.SIGTERM),
                    say: Callable[[str], None] | None = None, *,
                    ignore_after_stop: bool = False) -> Iterator[None]:
  """Within the block, ``signals`` request a stop (:func:`request_stop`) instead of their
  default action; the first one prints a line through ``say`` (default: stderr), later
  ones a line each and nothing else. On exit the handlers are restored and the stop is
  cleared; with ``ignore_after_stop``, once a stop was requested the signals are ignored
  from then on instead (a program about to exit: another Ctrl-C during its shutdown must
  not abort it). Main thread only (Python's rule for signal handlers).

  A caller turns the stop into :class:`Interrupted` where it keeps what was finished,
  and :func:`first_signal` says which signal it was (e.g. for exit code 128 + signum).
  """
  if threading.current_thread() is not threading.main_thread():
    raise RuntimeError("stop_on_signals: signal handlers can only be set in the main thread")
  s = _signals
  if s.pipe is not None:
    raise RuntimeError("stop_on_signals: a block is already open")
  read, write = os.pipe()
  os.set_blocking(read, False)
  os.set_blocking(write, False)
  with s.lock:
    s.pipe, s.watched, s.seen = read, frozenset(int(x) for x in signals), []
    s.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
  clear_stop()
  old_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
  old = {x: signal.signal(x, lambda *_: _drain_signals()) for x in signals}
  try:
    yield
  finally:
    for x, handler in old.items():
      signal.signal(x, signal.SIG_IGN if ignore_after_stop and s.seen else handler)
    signal.set_wakeup_fd(old_fd)
    with s.lock:
      s.pipe = None
    os.close(read)
    os.close(write)
    clear_stop()
