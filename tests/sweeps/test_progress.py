"""Sweep and run progress: plain lines off a terminal, tqdm bars on one."""

from __future__ import annotations

import io
import os
import re
import struct

import pytest

from sweeps.progress import Progress, RunProgress, format_metrics, format_value


class FakeClock:
  """A clock that advances one second per reading, so ``wall`` fields are deterministic."""

  def __init__(self):
    self.t = 0.0

  def __call__(self) -> float:
    self.t += 1.0
    return self.t


def plain(total_runs=2, **kwargs) -> tuple[Progress, io.StringIO]:
  stream = io.StringIO()
  progress = Progress(total_runs, desc="fedavg/quick", stream=stream, interactive=False,
                      clock=FakeClock(), **kwargs)
  return progress, stream


def lines(stream: io.StringIO) -> list[str]:
  return stream.getvalue().splitlines()


def assert_plain(text: str) -> None:
  assert "\r" not in text and "\x1b" not in text


def test_plain_one_line_per_update_with_round_sim_time_and_metrics():
  progress, stream = plain()
  run = progress.run("seed 0", 100)
  run.update(10, sim_time=38.5, acc=0.94312, loss=1.25)
  run.update(20, sim_time=77.04, acc=0.95)
  out = lines(stream)
  assert out[0] == "fedavg/quick: runs 0/2"
  assert out[1].startswith("fedavg/quick [seed 0] round 10/100 | acc 0.9431 | loss 1.25 | "
                           "sim 38.5 s | wall ")
  assert out[2].startswith("fedavg/quick [seed 0] round 20/100 | acc 0.95 | sim 77.0 s | wall ")
  assert len(out) == 3
  assert_plain(stream.getvalue())


def test_plain_output_is_deterministic_apart_from_wall_fields():
  def sweep(clock_step: float) -> str:
    stream = io.StringIO()
    t = [0.0]

    def clock():
      t[0] += clock_step
      return t[0]

    with Progress(2, desc="s", stream=stream, interactive=False, clock=clock) as progress:
      for seed in range(2):
        with progress.run(f"seed {seed}", 3) as run:
          for k in range(1, 4):
            run.update(k, sim_time=1.5 * k, acc=0.1 * k)
    return re.sub(r"wall [\d.]+ s(, [\d.]+ rounds/s, eta \d+ s)?", "wall T", stream.getvalue())

  assert sweep(0.25) == sweep(7.0)


def test_rate_and_eta_count_from_the_first_update():
  """One second per clock reading (FakeClock): the first update at round 10 (after a
  compile, say) starts the rate; at round 30, 20 rounds in 1 s: 20 rounds/s, 70 rounds
  (3.5 s) left."""
  progress, stream = plain()
  run = progress.run("seed 0", 100)
  for k in (10, 30, 100):
    run.update(k)
  out = lines(stream)
  assert out[1].endswith("round 10/100 | wall 1.0 s")
  assert out[2].endswith("round 30/100 | wall 2.0 s, 20 rounds/s, eta 4 s")
  assert out[3].endswith("round 100/100 | wall 3.0 s")  # done: no estimate


def test_plain_throttles_to_every_n_rounds_and_the_last_round():
  progress, stream = plain(every=10)
  run = progress.run("seed 0", 25)
  for k in range(1, 26):
    run.update(k, sim_time=float(k))
  rounds = [re.search(r"round (\d+)/25", ln).group(1) for ln in lines(stream)[1:]]
  assert rounds == ["10", "20", "25"]


def test_plain_line_shows_only_the_metrics_of_its_update():
  progress, stream = plain()
  run = progress.run("seed 0", 4)
  run.update(1, sim_time=1.0, acc=0.5)
  run.update(2, sim_time=2.0)  # no evaluation this round: no stale accuracy printed
  run.update(3, acc=None, loss=0.25)
  out = lines(stream)
  assert "acc" in out[1] and "acc" not in out[2] and "sim" not in out[3]
  assert "loss 0.25" in out[3]


def test_sweep_line_counts_runs_done():
  progress, stream = plain(total_runs=3)
  for seed in range(2):
    progress.run(f"seed {seed}", 5).close()
  out = lines(stream)
  assert out[1].startswith("fedavg/quick: runs 1/3 | [seed 0] done at round 0/5 | wall ")
  assert out[2].startswith("fedavg/quick: runs 2/3 | [seed 1] done at round 0/5 | wall ")
  assert progress.done == 2


def test_a_run_standing_for_several_counts_them_all():
  progress, stream = plain(total_runs=5)
  with progress.run("fedavg seeds 0,1,2 (one vmapped call)", 1, runs=3) as run:
    run.update(1)
  assert progress.done == 3
  assert lines(stream)[-1].startswith("fedavg/quick: runs 3/5 | [fedavg seeds 0,1,2")
  with pytest.raises(FloatingPointError), progress.run("b", 1, runs=2):
    raise FloatingPointError
  assert (progress.done, progress.failed) == (5, 2)


def test_resumed_sweep_counts_runs_already_done():
  progress, stream = plain(total_runs=4, done=3)
  assert lines(stream)[0] == "fedavg/quick: runs 3/4 (3 already done)"
  with progress.run("seed 3", 10, initial=6) as run:
    run.update(10)
  assert lines(stream)[-1].startswith("fedavg/quick: runs 4/4 | [seed 3] done at round 10/10")


def test_context_manager_marks_runs_done_and_failed():
  progress, stream = plain(total_runs=3)
  with progress.run("seed 0", 2) as run:
    run.update(2, acc=1.0)
  with pytest.raises(FloatingPointError), progress.run("seed 1", 2) as run:
    run.update(1)
    raise FloatingPointError("diverged")
  assert (progress.done, progress.failed) == (2, 1)
  assert run.closed
  last = lines(stream)[-1]
  assert last.startswith("fedavg/quick: runs 2/3 (1 failed) | [seed 1] failed at round 1/2")


def test_interrupted_run_is_not_counted():
  progress, _ = plain()
  with pytest.raises(KeyboardInterrupt), progress.run("seed 0", 2):
    raise KeyboardInterrupt
  assert progress.done == 0


def test_closing_is_idempotent():
  progress, stream = plain()
  run = progress.run("seed 0", 3)
  run.close()
  run.close()
  assert progress.done == 1
  progress.close()
  progress.close()
  assert len(lines(stream)) == 2
  with pytest.raises(RuntimeError, match="closed"):
    run.update(1)
  with pytest.raises(RuntimeError, match="closed"):
    progress.run("seed 1", 3)


def test_closing_the_sweep_discards_open_runs():
  progress, _ = plain()
  run = progress.run("seed 0", 3)
  progress.close()
  assert run.closed and progress.done == 0
  run.close()  # still idempotent: a discarded run is not counted afterwards
  assert progress.done == 0


def test_run_progress_is_a_log_callback():
  progress, stream = plain()
  run = progress.run("seed 0", 3)
  assert isinstance(run, RunProgress)
  log = run
  log("[seed 0] resumed at round 2")
  run.log("second")
  progress.log("sweep-level")
  assert lines(stream)[1:] == ["[seed 0] resumed at round 2", "second", "sweep-level"]


@pytest.mark.parametrize("make,field", [
    (lambda: Progress(0, desc="x", stream=io.StringIO()), "total_runs"),
    (lambda: Progress(-2, desc="x", stream=io.StringIO()), "total_runs"),
    (lambda: Progress(2.0, desc="x", stream=io.StringIO()), "total_runs"),
    (lambda: Progress(True, desc="x", stream=io.StringIO()), "total_runs"),
    (lambda: Progress(2, desc="x", done=3, stream=io.StringIO()), "done"),
    (lambda: Progress(2, desc="x", done=-1, stream=io.StringIO()), "done"),
    (lambda: Progress(2, desc="x", every=0, stream=io.StringIO()), "every"),
    (lambda: Progress(2, desc="x", min_interval_s=-1, stream=io.StringIO()), "min_interval_s"),
    (lambda: Progress(2, desc="x", stream=io.StringIO()).run("r", 0), "total_rounds"),
    (lambda: Progress(2, desc="x", stream=io.StringIO()).run("r", -5), "total_rounds"),
    (lambda: Progress(2, desc="x", stream=io.StringIO()).run("r", 5, initial=6), "initial"),
    (lambda: Progress(2, desc="x", stream=io.StringIO()).run("r", 5).update(6), "round"),
    (lambda: Progress(2, desc="x", stream=io.StringIO()).run("r", 5, runs=0), "runs"),
    (lambda: Progress(2, desc="x", stream=io.StringIO()).run("r", 5, runs=3), "runs"),
    (lambda: Progress(2, desc="x", stream=io.StringIO()).run("r", 5).update(-1), "round"),
])
def test_bad_arguments_raise_value_error_naming_the_field(make, field):
  with pytest.raises(ValueError, match=rf"^{field}: expected"):
    make()


def test_interactive_mode_draws_tqdm_bars_with_metric_postfix():
  stream = io.StringIO()
  with Progress(2, desc="fedavg/quick", stream=stream, interactive=True,
                min_interval_s=0) as progress, progress.run("seed 0", 100) as run:
    run.update(10, sim_time=38.5, acc=0.943)
    run.update(11, sim_time=42.0)  # the postfix keeps the last accuracy
    run.log("a line above the bars")
  out = stream.getvalue()
  assert "fedavg/quick" in out and "seed 0" in out
  assert "acc 0.943 | sim 38.5 s" in out
  assert "acc 0.943 | sim 42.0 s" in out
  assert "11/100" in out and "1/2" in out
  assert "a line above the bars\n" in out
  assert "\r" in out  # tqdm redraws in place
  assert "fedavg/quick [seed 0] done at round 11/100 | acc 0.943 | sim 42.0 s" in out


def test_interactive_defaults_to_whether_the_stream_is_a_terminal():
  class Terminal(io.StringIO):
    def isatty(self):
      return True

  assert not Progress(1, desc="x", stream=io.StringIO()).interactive
  bars = Progress(1, desc="x", stream=Terminal())
  assert bars.interactive
  bars.close()


def test_a_zero_width_terminal_gets_plain_lines():
  """tqdm draws nothing on a pseudo-terminal of 0 columns (e.g. `script`, some CI)."""
  fcntl = pytest.importorskip("fcntl")
  termios = pytest.importorskip("termios")
  master, replica = os.openpty()
  try:
    with os.fdopen(replica, "w", closefd=False) as stream:
      fcntl.ioctl(replica, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 0, 0, 0))
      assert not Progress(1, desc="x", stream=stream).interactive
      fcntl.ioctl(replica, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
      bars = Progress(1, desc="x", stream=stream)
      assert bars.interactive
      bars.close()
  finally:
    os.close(master)
    os.close(replica)


def test_format_value():
  assert format_value(0.943) == "0.943"
  assert format_value(0.94312) == "0.9431"
  assert format_value(12) == "12"
  assert format_value(12345.6) == "1.235e+04"
  assert format_value(float("nan")) == "nan"
  assert format_metrics({"acc": 0.943}, 38.5) == "acc 0.943 | sim 38.5 s"
  assert format_metrics({}, None) == ""
