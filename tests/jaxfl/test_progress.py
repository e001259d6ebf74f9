"""jaxfl.progress: ticks from inside jitted, vmapped, scanned programs reach the host."""

import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfl import progress


@pytest.fixture(autouse=True)
def _ticks(ticks):
  """Every test here traces programs with their ticks (the suite leaves them out)."""


def program(batched_counter: bool = False):
  def simulate(x):
    def step(c, i):
      c = c * 1.5 + 1.0
      progress.tick((c * 0 + i + 1).astype(jnp.int32) if batched_counter else i + 1, 4,
                    after=c)
      return c, c

    return jax.lax.scan(step, x, jnp.arange(4))[1]

  return jax.jit(jax.vmap(simulate))


def test_every_step_of_a_vmapped_scan_reaches_the_sink_once_in_order():
  seen = []
  x = jnp.arange(3.0)
  plain = program()(x)
  with progress.reporting(lambda done, total: seen.append((done, total))):
    out = program()(x)
    jax.block_until_ready(out)
  assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]  # 3 runs in the batch, one call per step
  np.testing.assert_array_equal(out, plain)  # the ticks change no value


def test_a_batched_counter_is_still_one_report_per_step():
  seen = []
  with progress.reporting(lambda done, total: seen.append(done)):
    jax.block_until_ready(program(batched_counter=True)(jnp.arange(5.0)))
  assert seen == [1, 2, 3, 4]


def test_without_ticks_a_program_holds_no_callback_computes_the_same_and_is_cached(
    monkeypatch):
  """JAXFL_PROGRESS_TICKS=0: no host callback in the program, so JAX's persistent cache
  keeps it (the suite's cache folder: conftest); with ticks nothing is written there."""
  cache = os.environ["JAX_COMPILATION_CACHE_DIR"]  # shared with the other xdist workers
  entries = lambda: {f for f in os.listdir(cache) if f.startswith("jit_tick_cache_probe")} \
      if os.path.isdir(cache) else set()

  def fresh(k):  # a program no other test compiles (k is baked in as a constant)
    def step(c, i):
      c = c * k + 1.0
      progress.tick(i + 1, 2, after=c)
      return c, c

    def tick_cache_probe(x):
      return jax.lax.scan(step, x, jnp.arange(2))[1]

    return jax.jit(tick_cache_probe)

  x = jnp.arange(3.0)
  before = entries()
  with_ticks = jax.block_until_ready(fresh(1.25)(x))
  assert entries() == before  # "uses host callbacks": not written
  monkeypatch.setenv(progress.ENV_TICKS, "0")
  assert not progress.ticks_enabled()
  seen = []
  with progress.reporting(lambda done, total: seen.append(done)):
    without = jax.block_until_ready(fresh(1.25)(x))
  assert seen == [] and "callback" not in str(jax.make_jaxpr(fresh(1.25))(x))
  np.testing.assert_array_equal(without, with_ticks)
  assert len(entries() - before) == 1  # the program without ticks is cached


def test_without_a_sink_ticks_do_nothing_and_blocks_nest():
  jax.block_until_ready(program()(jnp.ones(2)))  # no sink: no error
  outer, inner = [], []
  with progress.reporting(lambda d, t: outer.append(d)):
    with progress.reporting(lambda d, t: inner.append(d)):
      jax.block_until_ready(program()(jnp.ones(2)))
    jax.block_until_ready(program()(jnp.ones(2)))
  assert inner == [1, 2, 3, 4] and outer == [1, 2, 3, 4]


@pytest.mark.parametrize("total", [0, 2.0, True])
def test_total_must_be_a_positive_int(total):
  with pytest.raises(ValueError, match="total: expected a positive integer"):
    progress.tick(1, total)


def test_a_stop_request_ends_a_running_call_at_its_next_tick():
  """The sink asks to stop at step 2 of 200: the call raises there, never reaching step 3."""
  seen = []

  def sink(done, total):
    seen.append(done)
    if done == 2:
      progress.request_stop()

  def simulate(x):
    def step(c, i):
      c = jnp.tanh(c * 1.01)
      progress.tick(i + 1, 200, after=c)
      return c, None

    return jax.lax.scan(step, x, jnp.arange(200))[0]

  try:
    # Step 2's report asks to stop; the batch's other element's tick at step 2 raises.
    with progress.reporting(sink), pytest.raises(Exception, match="requested at step 2 of 200"):
      jax.block_until_ready(jax.jit(jax.vmap(simulate))(jnp.ones((2, 4))))
    assert progress.stop_requested() and seen == [1, 2]
  finally:
    progress.clear_stop()
  assert not progress.stop_requested()
  jax.block_until_ready(jax.jit(jax.vmap(simulate))(jnp.ones((2, 4))))  # runs to the end


def long_scan(steps: int):
  def simulate(x):
    def step(c, i):
      c = jnp.tanh(c @ c * 0.01 + 1.0)
      progress.tick_every(i, 1, steps, after=c)
      return c, None

    return jax.lax.scan(step, x, jnp.arange(steps))[0]

  return jax.jit(simulate)


def test_sigint_while_the_main_thread_is_blocked_in_xla_stops_at_the_next_tick():
  """The signal arrives while the main thread waits inside the call (Python would run its
  handler only after the call): the wakeup pipe carries it to the next tick, which stops
  the call. A second SIGINT is ignored with a line; on exit the handlers are restored."""
  lines, seen = [], []

  def sink(done, total):
    seen.append(done)
    if done == 3:  # from XLA's callback thread, as a terminal's Ctrl-C would arrive
      os.kill(os.getpid(), signal.SIGINT)

  # Python's own handler (an xdist worker starts with SIGINT ignored), put back after.
  before = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    stop_twice_then_restore(lines, sink, seen)
  finally:
    signal.signal(signal.SIGINT, before)


def stop_twice_then_restore(lines, sink, seen):
  with progress.stop_on_signals(say=lines.append):
    with progress.reporting(sink), pytest.raises(Exception, match="requested at step 4 of"):
      jax.block_until_ready(long_scan(5000)(jnp.ones((8, 8))))
    assert seen == [1, 2, 3] and progress.stop_requested()
    assert progress.first_signal() == signal.SIGINT
    assert len(lines) == 1 and lines[0].startswith("SIGINT: stopping at the next step")
    os.kill(os.getpid(), signal.SIGINT)  # the second: no KeyboardInterrupt, one more line
    for _ in range(100):  # Python runs the handler at its next bytecode boundaries
      if len(lines) == 2:
        break
      time.sleep(0.01)
    assert lines[1] == "SIGINT ignored: already stopping"
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  assert not progress.stop_requested()
  with pytest.raises(KeyboardInterrupt):  # outside the block: Python's own behaviour again
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(500):  # the handler runs at one of these bytecode boundaries
      time.sleep(0.01)


def test_tick_every_reports_every_nth_step_and_the_last():
  def step(c, i):
    progress.tick_every(i, 3, 7, after=c)
    return c + 1, None

  seen = []
  with progress.reporting(lambda done, total: seen.append((done, total))):
    run = jax.jit(jax.vmap(lambda x: jax.lax.scan(step, x, jnp.arange(7))[0]))
    jax.block_until_ready(run(jnp.zeros(2)))
  assert seen == [(3, 7), (6, 7), (7, 7)]  # one report per step: the counter is unbatched
  with pytest.raises(ValueError, match="every: expected a positive integer"):
    progress.tick_every(0, 0, 7)
