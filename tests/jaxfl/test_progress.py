"""jaxfl.progress: ticks from inside jitted, vmapped, scanned programs reach the host."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfl import progress


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
