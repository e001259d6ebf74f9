"""The device cost model of LoRA at a depth with int8-stored blocks: FLOPs by hand, round
times, tiers and their validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxfl.errors import ConfigError
from jaxfl.models import transformer as T
from jaxfl.sim.devices import (
    QDQ_OPS,
    Devices,
    config_times,
    device_tiers,
    round_times,
    step_costs,
    step_flops,
)

# The tiny LM's block (h = 32, f = 128) at T = 16, adapters of rank 4 on query, value, out
# (32 x 32) and up (32 x 128), a batch of 4 windows: 64 tokens per step.
DIMS = [(32, 32)] * 3 + [(32, 128)]
COSTS = step_costs(num_layers=4, d_model=32, d_ff=128, vocab_size=258, seq_len=16,
                   batch_size=4, lora_rank=4, lora_dims=DIMS)


def test_block_flops_by_hand():
  adapters = 2 * 4 * (3 * (32 + 32) + (32 + 128))  # 2 r sum(in + out) = 2816
  assert adapters == 2816
  # q, k, v, out: 4 x 2 h^2; up, down: 2 x 2 h f; Q K^T and P V: 2 x 2 T h.
  assert COSTS.forward == 4 * 2 * 32 * 32 + 2 * 2 * 32 * 128 + 2 * 2 * 16 * 32 + adapters == 29440
  # Input gradients: the same dense products, attention twice (both operands are activations).
  assert COSTS.backward == 8192 + 16384 + 4 * 2 * 16 * 32 + adapters == 31488
  assert COSTS.lora_grad == adapters
  assert COSTS.requant == COSTS.forward + QDQ_OPS * 32 == 29696
  assert COSTS.head == 4 * 32 * 258 == 33024
  assert COSTS.lora_bytes == 4 * 4 * (3 * 64 + 160) == 5632
  assert COSTS.tokens == 64
  # The digest's 24 h^2 + 4 T h is the case d_ff = 4h, adapters aside.
  assert COSTS.forward - adapters == 24 * 32**2 + 4 * 16 * 32


def test_step_flops_add_up_per_block():
  n = COSTS.tokens
  assert step_flops(COSTS, 1, 0) == n * (4 * 29440 + 33024 + 31488 + 2816) == 11_845_632
  np.testing.assert_array_equal(step_flops(COSTS, 3, 2) - step_flops(COSTS, 2, 2),
                                n * (COSTS.backward + COSTS.lora_grad))
  np.testing.assert_array_equal(step_flops(COSTS, 3, 2) - step_flops(COSTS, 3, 1),
                                n * COSTS.requant)
  assert step_flops(COSTS, np.array([1, 4]), np.array([0, 4])).shape == (2,)


def test_the_forward_count_is_xlas_count_of_the_block_without_its_elementwise_work():
  """XLA's FLOP count of one compiled block forward (it counts LayerNorm, GELU, softmax and
  residual adds too) lies within 15% above the formula's matmul FLOPs."""
  cfg = T.LMConfig(num_layers=1, d_model=32, num_heads=2, d_ff=128, max_len=16).with_lora(4)
  graph, state = nnx.split(T.Block(cfg, 0, rngs=nnx.Rngs(0)))
  x = jnp.zeros((4, 16, 32))
  analysis = jax.jit(lambda s, x: nnx.merge(graph, s)(x)).lower(state, x).compile()
  analysis = analysis.cost_analysis()
  xla = (analysis[0] if isinstance(analysis, list) else analysis)["flops"]
  model = COSTS.tokens * COSTS.forward
  assert model <= xla <= 1.15 * model, (xla, model)


def test_round_time_by_hand():
  devices = device_tiers((1, 1), speed=(1e9, 4e9), memory=(1e6, 2e6), uplink=(1e6, 2e6),
                         downlink=(1e7, 1e7))
  t = round_times(devices, COSTS, 2, 1, local_steps=3)
  flops = 3 * 64 * (4 * 29440 + 33024 + 2 * (31488 + 2816) + 29696)
  up = 2 * 5632 / np.array([1e6, 2e6])
  down = 2 * 5632 / 1e7
  np.testing.assert_allclose(t, flops / np.array([1e9, 4e9]) + up + down, rtol=1e-12)
  # Downloading every block's adapters adds the (L - d) untuned ones.
  t_all = round_times(devices, COSTS, 2, 1, local_steps=3, download="all")
  np.testing.assert_allclose(t_all - t, 2 * 5632 / 1e7, rtol=1e-9)
  # Per-device configurations.
  t2 = round_times(devices, COSTS, np.array([1, 4]), np.array([0, 4]), local_steps=1)
  assert t2[0] == pytest.approx(step_flops(COSTS, 1, 0) / 1e9 + 5632 / 1e6 + 5632 / 1e7)


def test_the_downlink_defaults_to_the_uplink_the_digests_two_s_over_b():
  devices = Devices(speed=[1e20], memory=[1.0], uplink=[1e6])
  assert devices.downlink.tolist() == [1e6] and devices.tier.tolist() == [0]
  t = round_times(devices, COSTS, 3, 0, local_steps=1)
  assert t[0] == pytest.approx(2 * 3 * 5632 / 1e6, rel=1e-9)  # compute is negligible here


@settings(max_examples=40, deadline=None)
@given(speed=st.floats(1e6, 1e12), uplink=st.floats(1e3, 1e9), steps=st.integers(1, 20))
def test_round_time_grows_with_depth_and_quantized_blocks(speed, uplink, steps):
  devices = Devices(speed=[speed], memory=[1.0], uplink=[uplink])
  t = config_times(devices, COSTS, local_steps=steps)[0]
  assert t.shape == (5, 5) and np.isinf(t[0]).all() and np.isinf(t[1, 2:]).all()
  for d in range(1, 5):
    assert (np.diff(t[d, : d + 1]) > 0).all()  # more int8 blocks: one more forward each
    if d < 4:
      assert (t[d + 1, : d + 1] > t[d, : d + 1]).all()
  faster = Devices(speed=[2 * speed], memory=[1.0], uplink=[uplink])
  assert (config_times(faster, COSTS, local_steps=steps)[0][1:, 0] < t[1:, 0]).all()


def test_tiers_repeat_per_tier_values():
  d = device_tiers((2, 1, 3), speed=(1, 2, 3), memory=(10, 20, 30), uplink=(5, 5, 5))
  assert d.num_devices == 6
  assert d.tier.tolist() == [0, 0, 1, 2, 2, 2]
  assert d.speed.tolist() == [1, 1, 2, 3, 3, 3]
  assert d.memory.dtype == np.float64 and d.downlink.tolist() == [5.0] * 6


@pytest.mark.parametrize("kwargs, field", [
    (dict(counts=(0, 1)), "counts"),
    (dict(counts=()), "counts"),
    (dict(speed=(1e9, -1.0)), "speed"),
    (dict(memory=(1e6,)), "memory"),
    (dict(uplink=(1e6, float("nan"))), "uplink"),
    (dict(downlink=(0.0, 1.0)), "downlink"),
])
def test_bad_tiers_name_the_field(kwargs, field):
  args = dict(counts=(1, 1), speed=(1e9, 2e9), memory=(1e6, 2e6), uplink=(1e6, 1e6))
  with pytest.raises(ConfigError, match=f"^{field}: ") as e:
    device_tiers(**{**args, **kwargs})
  assert "\n" not in str(e.value)


def test_bad_devices_and_configurations_name_the_field():
  with pytest.raises(ConfigError, match="^tier: "):
    Devices(speed=[1.0, 2.0], memory=[1.0, 1.0], uplink=[1.0, 1.0], tier=[0])
  with pytest.raises(ConfigError, match="^memory: "):
    Devices(speed=[1.0, 2.0], memory=[1.0], uplink=[1.0, 1.0])
  devices = Devices(speed=[1.0, 2.0], memory=[1.0, 1.0], uplink=[1.0, 1.0])
  for depth, quantized, field in ((0, 0, "depth"), (5, 0, "depth"), (2, 3, "num_quantized"),
                                  (2, -1, "num_quantized"), (np.ones(3, int), 0, "depth")):
    with pytest.raises(ConfigError, match=f"^{field}: "):
      round_times(devices, COSTS, depth, quantized, local_steps=1)
  with pytest.raises(ConfigError, match="^local_steps: "):
    round_times(devices, COSTS, 1, 0, local_steps=0)
  with pytest.raises(ConfigError, match="^download: "):
    round_times(devices, COSTS, 1, 0, local_steps=1, download="some")
  with pytest.raises(ConfigError, match="^lora_dims: "):
    step_costs(num_layers=1, d_model=4, d_ff=8, vocab_size=8, seq_len=2, batch_size=1,
               lora_rank=1, lora_dims=[])
  with pytest.raises(ConfigError, match="^d_ff: "):
    step_costs(num_layers=1, d_model=4, d_ff=0, vocab_size=8, seq_len=2, batch_size=1,
               lora_rank=1, lora_dims=[(4, 4)])
