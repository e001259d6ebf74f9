"""Progress of a sweep and of its runs: tqdm bars on a terminal, plain lines elsewhere.

One :class:`Progress` per sweep counts finished runs; :meth:`Progress.run` opens a
:class:`RunProgress` per run that counts rounds and shows simulated time and the
metrics the caller reports::

  with Progress(len(runs), desc="fedavg/quick") as progress:
    for seed in seeds:
      with progress.run(f"seed {seed}", c.num_rounds) as run:
        ...
        run.update(done, sim_time=t, acc=accuracy)  # absolute round, not an increment
        run.log("a line that does not break the bars")

Two modes, chosen by ``interactive`` (default: whether the stream is a terminal):

* **interactive**: a tqdm bar for the sweep (runs) and one per open run (rounds, with
  ``acc 0.943 | sim 38.5 s`` as postfix); :meth:`RunProgress.log` goes through
  ``tqdm.write`` so lines appear above the bars. The postfix keeps the last reported
  value of every metric, so a run updated every round but evaluated every ten still
  shows its latest accuracy. A closed run's bar disappears and leaves one summary line.
* **plain** (CI, files, notebooks): one line per reported update, flushed at once, no
  carriage returns or ANSI codes. Everything but the ``wall`` fields is deterministic::

    fedavg/quick: runs 0/3
    fedavg/quick [seed 0] round 10/100 | acc 0.943 | sim 38.5 s | wall 2.1 s
    fedavg/quick: runs 1/3 | [seed 0] done at round 100/100 | wall 20.4 s

  Throttling rule: ``update(k)`` prints a line when ``k`` is a multiple of ``every``
  (default 1: every update) or ``k`` is the run's last round. A line shows only the
  metrics passed to that ``update`` call, so no stale value is printed as current.
  From a run's second update on, the ``wall`` field adds the rate since the first update
  and the time left at that rate (``wall 4.2 s, 2.5 rounds/s, eta 16 s``).

:meth:`RunProgress.log` (also the instance itself, which is callable) fits the
existing ``log=print`` callbacks, e.g. ``run_rounds(..., log=run)``.
"""

from __future__ import annotations

import io
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from tqdm import tqdm

from jaxfl.progress import Interrupted


def _check_count(value: Any, field: str, *, minimum: int) -> int:
  """Return ``value`` as an int, or raise ValueError naming ``field``."""
  # bool is an int subclass; `run(name, True)` is a bug, not one round.
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    raise ValueError(f"{field}: expected {what}, got {value!r}")
  return int(value)


def _is_terminal(stream: TextIO) -> bool:
  """Whether bars can be drawn on ``stream``: a terminal with a known, non-zero width."""
  try:
    if not stream.isatty():
      return False
  except (AttributeError, ValueError, OSError):  # no isatty, or a closed/detached stream
    return False
  try:
    # A pseudo-terminal can report 0 columns (e.g. `script`, some CI runners); tqdm then
    # draws nothing at all, so plain lines are the only visible output.
    return os.get_terminal_size(stream.fileno()).columns > 0
  except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
    return True  # a terminal of unknown size (e.g. a wrapper without fileno): tqdm copes


def format_value(value: float) -> str:
  """A metric value in at most four significant digits (``0.943``, ``1.235e+04``)."""
  if isinstance(value, int) and not isinstance(value, bool):
    return str(value)
  value = float(value)
  return str(value) if not math.isfinite(value) else f"{value:.4g}"


def format_metrics(metrics: dict[str, float], sim_time: float | None) -> str:
  """``acc 0.943 | sim 38.5 s``: the metrics in the caller's order, then simulated time."""
  parts = [f"{name} {format_value(v)}" for name, v in metrics.items()]
  if sim_time is not None:
    parts.append(f"sim {float(sim_time):.1f} s")
  return " | ".join(parts)


class Progress:
  """Progress of one sweep: how many of its runs have finished.

  Args:
    total_runs: runs in the sweep, counting those already finished (see ``done``).
    desc: what the sweep is, e.g. ``"fedavg/quick"``; starts every plain line and
      labels the sweep bar.
    done: runs already finished before this launch (a resumed sweep skips them).
    stream: where output goes; ``None`` means ``sys.stdout`` at construction time.
    interactive: tqdm bars (True) or plain lines (False); ``None`` means bars exactly
      when ``stream`` is a terminal (and not one that reports zero columns).
    every: in plain mode, a run prints a line for round ``k`` only when ``k`` is a
      multiple of ``every`` or the run's last round.
    min_interval_s: in interactive mode, the least time between two redraws of a bar
      (tqdm's ``mininterval``); 0 redraws at every update.
    clock: seconds from an arbitrary origin, for the ``wall`` fields (injectable so
      tests can make plain output fully deterministic).

  Raises:
    ValueError: naming the field, if ``total_runs`` or ``every`` is not a positive
      integer, ``done`` is not between 0 and ``total_runs``, or ``min_interval_s``
      is negative.
  """

  def __init__(self, total_runs: int, *, desc: str, done: int = 0, stream: TextIO | None = None,
               interactive: bool | None = None, every: int = 1, min_interval_s: float = 0.1,
               clock: Callable[[], float] = time.monotonic):
    self.total_runs = _check_count(total_runs, "total_runs", minimum=1)
    self.done = _check_count(done, "done", minimum=0)
    if self.done > self.total_runs:
      raise ValueError(f"done: expected at most total_runs={self.total_runs}, got {done!r}")
    self.every = _check_count(every, "every", minimum=1)
    if not (isinstance(min_interval_s, (int, float)) and min_interval_s >= 0):
      raise ValueError(f"min_interval_s: expected a non-negative number, got {min_interval_s!r}")
    self.desc = desc
    self.failed = 0
    self.stream = sys.stdout if stream is None else stream
    self.interactive = _is_terminal(self.stream) if interactive is None else bool(interactive)
    self.min_interval_s = float(min_interval_s)
    self.clock = clock
    self.closed = False
    self._start = clock()
    self._open: list[RunProgress] = []
    # Runs may report from several threads (e.g. callbacks of a parallel backend);
    # one lock keeps counts consistent and lines whole.
    self._lock = threading.RLock()
    self._bar: tqdm | None = None
    if self.interactive:
      self._bar = tqdm(total=self.total_runs, initial=self.done, desc=desc, unit="run",
                       file=self.stream, dynamic_ncols=True, leave=True,
                       mininterval=self.min_interval_s)
    else:
      already = f" ({self.done} already done)" if self.done else ""
      self._line(f"{desc}: runs {self.done}/{self.total_runs}{already}")

  def run(self, name: str, total_rounds: int, *, initial: int = 0, runs: int = 1,
          unit: str = "round") -> RunProgress:
    """Open the progress of one run; close it (or leave its ``with`` block) when it ends.

    Args:
      name: the run within the sweep, e.g. ``"seed 0"``.
      total_rounds: rounds of the whole run (not of what is left after a resume).
      initial: rounds already done, e.g. restored from a checkpoint.
      runs: how many of the sweep's runs this one stands for (several seeds computed
        in one vmapped call).
      unit: what a run counts (``"round"``; a family call counts its logged ``"row"``s).

    Raises:
      ValueError: naming the field, for a non-positive ``total_rounds`` or an
        ``initial`` outside ``[0, total_rounds]``.
      RuntimeError: if the sweep's progress is closed.
    """
    with self._lock:
      if self.closed:
        raise RuntimeError(f"{self.desc}: progress is closed; cannot start run {name!r}")
      runs = _check_count(runs, "runs", minimum=1)
      if self.done + runs > self.total_runs:
        raise ValueError(f"runs: expected at most the {self.total_runs - self.done} runs left, "
                         f"got {runs!r}")
      run = RunProgress(self, name, total_rounds, initial=initial, unit=unit)
      run.runs = runs
      self._open.append(run)
      return run

  def log(self, message: str) -> None:
    """Write one line without breaking the bars."""
    with self._lock:
      self._line(message)

  __call__ = log

  def close(self) -> None:
    """End the sweep's progress; idempotent.

    Runs still open are closed without counting them as finished (they did not end).
    """
    with self._lock:
      if self.closed:
        return
      for run in list(self._open):
        run._discard()
      self.closed = True
      if self._bar is not None:
        self._bar.close()
      else:
        self.stream.flush()

  def __enter__(self) -> Progress:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def _line(self, message: str) -> None:
    if self.interactive:
      tqdm.write(message, file=self.stream)
    else:
      self.stream.write(message + "\n")
      self.stream.flush()  # CI logs and tailed files should show progress as it happens

  def _wall(self) -> str:
    return f"wall {self.clock() - self._start:.1f} s"

  def _finish(self, run: RunProgress, failed: bool) -> None:
    """Count ``run`` as finished (successfully or not) and report it."""
    self.done += run.runs
    self.failed += run.runs if failed else 0
    self._open.remove(run)
    outcome = "failed" if failed else "done"
    what = f"[{run.name}] {outcome} at {run.unit} {run.round}/{run.total_rounds}"
    failures = f" ({self.failed} failed)" if self.failed else ""
    if self._bar is not None:
      # The run's bar vanishes (leave=False); this line is what stays on screen.
      shown = format_metrics(run._shown, run._sim_time)
      self._line(f"{self.desc} {what}" + (f" | {shown}" if shown else ""))
      if self.failed:
        self._bar.set_postfix_str(f"failed {self.failed}", refresh=False)
      self._bar.update(run.runs)
    else:
      self._line(f"{self.desc}: runs {self.done}/{self.total_runs}{failures} | {what} | "
                 f"{self._wall()}")


class RunProgress:
  """Progress of one run of a sweep; made by :meth:`Progress.run`, not directly.

  Callable: ``run(message)`` is ``run.log(message)``, so it can be passed as a
  ``log=print`` style callback.
  """

  def __init__(self, sweep: Progress, name: str, total_rounds: int, *, initial: int = 0,
               unit: str = "round"):
    self.sweep = sweep
    self.name = name
    self.total_rounds = _check_count(total_rounds, "total_rounds", minimum=1)
    self.round = _check_count(initial, "initial", minimum=0)
    if self.round > self.total_rounds:
      raise ValueError(f"initial: expected at most total_rounds={self.total_rounds}, "
                       f"got {initial!r}")
    self.closed = False
    self.runs = 1  # of the sweep's runs (Progress.run sets it)
    self.unit = unit
    self._start = sweep.clock()
    self._sim_time: float | None = None
    self._shown: dict[str, float] = {}  # last value of every metric (the bar's postfix)
    self._first: tuple[float, int] | None = None  # (wall, round) of the first progress
    self._bar: tqdm | None = None
    if sweep.interactive:
      # leave=False: with several bars on screen, a finished one left behind would sit
      # between live bars; the sweep writes a summary line instead.
      self._bar = tqdm(total=self.total_rounds, initial=self.round, desc=name, unit=unit,
                       file=sweep.stream, dynamic_ncols=True, leave=False,
                       mininterval=sweep.min_interval_s)

  def update(self, round: int, *, sim_time: float | None = None, **metrics: float) -> None:
    """Report that ``round`` rounds of the run are done (absolute, not an increment).

    Args:
      round: rounds done so far, between 0 and ``total_rounds``; it may go back (a
        run restarted from an earlier checkpoint).
      sim_time: simulated seconds so far, shown as ``sim 38.5 s``.
      **metrics: named values shown in the given order, e.g. ``acc=0.943``;
        ``None`` values are left out.

    Raises:
      ValueError: if ``round`` is outside ``[0, total_rounds]``.
      RuntimeError: if the run is closed.
    """
    round = _check_count(round, "round", minimum=0)
    if round > self.total_rounds:
      raise ValueError(f"round: expected at most total_rounds={self.total_rounds}, got {round}")
    metrics = {k: v for k, v in metrics.items() if v is not None}
    with self.sweep._lock:
      if self.closed:
        raise RuntimeError(f"{self.sweep.desc} [{self.name}]: run progress is closed")
      previous, self.round = self.round, round
      if sim_time is not None:
        self._sim_time = float(sim_time)
      self._shown.update(metrics)
      if self._bar is not None:
        self._bar.set_postfix_str(format_metrics(self._shown, self._sim_time), refresh=False)
        if round >= previous:
          self._bar.update(round - previous)  # tqdm throttles redraws to min_interval_s
        else:
          self._bar.n = round
          self._bar.refresh()
      elif round % self.sweep.every == 0 or round == self.total_rounds:
        shown = format_metrics(metrics, sim_time)
        self.sweep._line(f"{self.sweep.desc} [{self.name}] {self.unit} {round}/{self.total_rounds}"
                         + (f" | {shown}" if shown else "") + self._timing(round))

  def _timing(self, round: int) -> str:
    """``| wall 2.1 s``, and once two updates apart: ``, 3.1 rounds/s, eta 12 s`` (the rate
    since the first update, so a compile before it does not count)."""
    now = self.sweep.clock()
    text = f" | wall {now - self._start:.1f} s"
    if self._first is None:
      if round > 0:
        self._first = (now, round)
      return text
    t0, r0 = self._first
    if round > r0 and now > t0 and round < self.total_rounds:
      rate = (round - r0) / (now - t0)
      text += f", {rate:.3g} {self.unit}s/s, eta {(self.total_rounds - round) / rate:.0f} s"
    return text

  def log(self, message: str) -> None:
    """Write one line without breaking the bars (``tqdm.write`` when interactive)."""
    self.sweep.log(message)

  __call__ = log

  def close(self, *, failed: bool = False) -> None:
    """Mark the run finished in the sweep's count; idempotent.

    Args:
      failed: the run ended with an error; it still counts as finished, and the sweep
        reports how many failed.
    """
    with self.sweep._lock:
      if self.closed:
        return
      self.closed = True
      if self._bar is not None:
        self._bar.close()
      self.sweep._finish(self, failed)

  def _discard(self) -> None:
    """Close without counting the run as finished (its sweep closed under it)."""
    self.closed = True
    if self._bar is not None:
      self._bar.close()
    self.sweep._open.remove(self)

  def __enter__(self) -> RunProgress:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    # An exception ends the run as failed; an interrupt (KeyboardInterrupt, or a stop
    # requested by Ctrl-C) leaves it unfinished, like a killed sweep: not counted at all.
    if exc_type is not None and (not issubclass(exc_type, Exception)
                                 or issubclass(exc_type, Interrupted)):
      with self.sweep._lock:
        if not self.closed:
          self._discard()
      return
    self.close(failed=exc_type is not None)
