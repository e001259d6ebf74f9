"""FedQuad's plan (reconstruction, arXiv 2506.01001): feasible and efficient (depth, int8
blocks) pairs from memory measured from JAX, the greedy choice under the round budget, and
uniform-depth LoRA as the baseline."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxfl.errors import ConfigError
from jaxfl.models import transformer as T
from jaxfl.peft.memory import depth_footprint
from jaxfl.planners import fedquad
from jaxfl.sim.devices import device_tiers

# Three tiny blocks (h = 32): 9 (d, q) pairs to measure, ~0.08 s each.
CFG = T.LMConfig(num_layers=3, d_model=32, num_heads=2, d_ff=128, max_len=16).with_lora(4)
L = 3


@pytest.fixture(scope="module")
def model():
  return fedquad.cost_model(CFG, batch_size=4, seq_len=16, local_steps=2)


@pytest.fixture(scope="module")
def tiers(model):
  return fedquad.memory_tiers(model)  # 35%, 60%, 100%


def test_memory_is_measured_grows_with_depth_and_falls_with_int8_blocks(model):
  m = model.memory
  assert m.shape == (L + 1, L + 1)
  assert np.isinf(m[0]).all() and all(np.isinf(m[d, d + 1:]).all() for d in range(L))
  for d in range(1, L + 1):
    for q in range(d + 1):
      fp = depth_footprint(CFG, d, q, batch_size=4, seq_len=16)
      assert m[d, q] == fp.device_bytes == fp.frozen_bytes + fp.total_bytes
      assert fp.frozen_bytes + fp.trainable_bytes == model.param_bytes
    assert (np.diff(m[d, : d + 1]) < 0).all()  # each int8 block stores less
    if d < L:
      assert (m[d + 1, : d + 1] > m[d, : d + 1]).all()  # each tuned block stores more
  # An int8 block keeps only its input, one byte per float plus a float32 scale per row
  # (4 x 16 rows of 32): 2,304 bytes, against ~300 kB of LN outputs, attention
  # probabilities, MLP activations... of a block stored in full.
  act = lambda d, q: depth_footprint(CFG, d, q, batch_size=4, seq_len=16).activation_bytes
  assert act(2, 2) - act(1, 1) == 4 * 16 * (32 + 4) == 2304
  assert act(2, 0) - act(1, 0) > 100 * 2304
  # Cached: the same object again, whether defaults are spelled out or not.
  assert depth_footprint(CFG, 2, 1, batch_size=4, seq_len=16) is depth_footprint(
      CFG, 2, 1, batch_size=4, seq_len=16, bits=8, optimizer="adam")


def test_lora_bytes_and_shapes_come_from_the_model(model):
  assert model.costs.lora_bytes == 4 * 4 * (3 * 64 + 160)  # r (in + out) floats per block
  fp1, fp3 = (depth_footprint(CFG, d, 0, batch_size=4, seq_len=16) for d in (1, 3))
  assert fp3.trainable_bytes - fp1.trainable_bytes == 2 * model.costs.lora_bytes
  assert model.costs.forward == 29440.0 and model.costs.tokens == 64


def test_the_weakest_tier_cannot_fit_all_layer_lora_without_quantization(model, tiers):
  m1, m3 = model.memory[1, 0], model.memory[L, 0]
  np.testing.assert_array_equal(tiers, np.floor(m1 + np.array([0.35, 0.6, 1.0]) * (m3 - m1)))
  assert model.memory[1, 0] <= tiers[0] < model.memory[L, 0]  # FedIT is infeasible there
  assert tiers[2] == model.memory[L, 0]
  assert fedquad.feasible_configs(model, tiers[0]) == [(1, 0), (2, 1), (3, 2)]
  assert fedquad.feasible_configs(model, tiers[1]) == [(1, 0), (2, 0), (3, 1)]
  assert fedquad.feasible_configs(model, tiers[2]) == [(1, 0), (2, 0), (3, 0)]


@settings(max_examples=30, deadline=None)
@given(budget=st.floats(3e5, 2e6))
def test_feasible_pairs_take_the_least_int8_blocks_that_fit(model, budget):
  pairs = fedquad.feasible_configs(model, budget)
  assert len({d for d, _ in pairs}) == len(pairs)  # one per depth: larger q dominated
  for d, q in pairs:
    assert model.memory[d, q] <= budget
    assert q == 0 or model.memory[d, q - 1] > budget
  fits = {d for d in range(1, L + 1) if (model.memory[d, : d + 1] <= budget).any()}
  assert {d for d, _ in pairs} == fits


def test_dominated_pairs_are_dropped(model, tiers):
  times = np.full((L + 1, L + 1), math.inf)
  for d in range(1, L + 1):
    times[d, : d + 1] = 10.0 - d + np.arange(d + 1)  # made up: deeper is faster
  # 60% tier: (1, 0) is dominated by (2, 0), as deep-or-deeper, as quantized, faster.
  assert fedquad.feasible_configs(model, tiers[1], times) == [(2, 0), (3, 1)]
  real = model.times(device_tiers((1,), speed=(1e9,), memory=tiers[1:2], uplink=(1e6,)))[0]
  assert fedquad.feasible_configs(model, tiers[1], real) == [(1, 0), (2, 0), (3, 1)]


def devices_of(tiers, speed, uplink, counts=(2, 2, 2)):
  return device_tiers(counts, speed=speed, memory=tiers, uplink=uplink)


def test_the_low_memory_fast_tier_goes_deeper_with_quantization(model, tiers):
  """Weak-memory devices that compute fast: all-layer LoRA, two of its three blocks int8,
  within the time the slow strong devices need at depth 1; uniform-depth LoRA gives everyone
  depth 1."""
  devices = devices_of(tiers, speed=(8e9, 2e9, 1e9), uplink=(1e7, 1e7, 1e6))
  p = fedquad.plan(devices, model)
  assert p.depth.tolist() == [3, 3, 3, 3, 1, 1]
  assert p.quantized.tolist() == [2, 2, 1, 1, 0, 0]
  u = fedquad.uniform_depth(devices, model)
  assert u.depth == 1  # all that the weak tier fits unquantized
  assert p.round_time == pytest.approx(u.round_time)  # the slow tier's depth-1 round, both
  times = model.times(devices)
  assert p.budget == p.round_time == times[:, 1, 0].max()  # T*: each one's cheapest is (1, 0)


@settings(max_examples=25, deadline=None)
@given(speed=st.lists(st.floats(1e8, 1e10), min_size=3, max_size=3),
       uplink=st.lists(st.floats(1e5, 1e8), min_size=3, max_size=3),
       weak=st.floats(0.0, 0.95), eps=st.sampled_from([0.0, 0.1]))
def test_every_choice_fits_and_the_round_is_no_slower_than_uniform_depth(model, speed, uplink,
                                                                        weak, eps):
  tiers = fedquad.memory_tiers(model, (weak, 0.8, 1.0))
  devices = devices_of(tiers, speed, uplink)
  times = model.times(devices)
  p = fedquad.plan(devices, model, eps=eps)
  u = fedquad.uniform_depth(devices, model)
  for i, (d, q) in enumerate(zip(p.depth, p.quantized)):
    assert model.memory[d, q] <= devices.memory[i]  # fits its measured memory
    assert q == 0 or model.memory[d, q - 1] > devices.memory[i]  # the least int8 that fits
    assert p.times[i] == times[i, d, q] <= p.budget * (1 + eps)
  t_star = max(min(times[i, d, q] for d, q in fedquad.feasible_configs(
      model, devices.memory[i])) for i in range(6))
  assert p.budget == t_star and p.round_time == max(p.times)
  if eps == 0:
    assert p.round_time <= u.round_time * (1 + 1e-12)
  # With uniform depth's own round as the budget: as fast, and at least as deep everywhere.
  b = fedquad.plan(devices, model, budget=u.round_time)
  assert b.round_time <= u.round_time * (1 + 1e-12)
  assert (b.depth >= u.depth).all()
  # Without a time limit the weakest tier trains deeper than it fits unquantized.
  deepest = fedquad.plan(devices, model, budget=math.inf)
  unquantized = max(d for d in range(1, L + 1) if model.memory[d, 0] <= tiers[0])
  assert (deepest.depth[:2] == L).all() and unquantized < L and (deepest.quantized[:2] > 0).all()


@settings(max_examples=20, deadline=None)
@given(speed=st.lists(st.floats(1e8, 1e10), min_size=3, max_size=3),
       kappa=st.floats(0.5, 8.0))
def test_raising_the_budget_never_lowers_progress_per_second(model, tiers, speed, kappa):
  devices = devices_of(tiers, speed, (1e6, 1e6, 1e6))
  rate = lambda p: np.mean(1 - np.exp(-p.depth / kappa)) / p.round_time
  base = fedquad.plan(devices, model)
  raised = fedquad.plan(devices, model, search=True, kappa=kappa)
  assert raised.budget >= base.budget
  assert rate(raised) >= rate(base) * (1 - 1e-12)
  for i, (d, q) in enumerate(zip(raised.depth, raised.quantized)):
    assert model.memory[d, q] <= devices.memory[i]


def test_infeasible_and_bad_input_is_one_line_naming_the_field(model, tiers):
  least = model.memory[1:].min()
  assert least == model.memory[1, 1]  # depth 1 with its block int8
  small = device_tiers((1, 1), speed=(1e9, 1e9), memory=(least - 1, tiers[2]),
                       uplink=(1e6, 1e6))
  with pytest.raises(ConfigError, match=r"^memory: .*device 0") as e:
    fedquad.plan(small, model)
  assert "\n" not in str(e.value)
  quant_only = device_tiers((1,), speed=(1e9,), memory=(model.memory[1, 1],), uplink=(1e6,))
  assert fedquad.plan(quant_only, model).quantized.tolist() == [1]
  with pytest.raises(ConfigError, match=r"^memory: .*uniform-depth"):
    fedquad.uniform_depth(quant_only, model)
  devices = devices_of(tiers, (1e9,) * 3, (1e6,) * 3)
  t_star = fedquad.plan(devices, model).budget
  for kwargs, field in ((dict(budget=0.5 * t_star), "budget"), (dict(eps=-0.1), "eps"),
                        (dict(kappa=0.0), "kappa"), (dict(weights=np.ones(2)), "weights")):
    with pytest.raises(ConfigError, match=f"^{field}: "):
      fedquad.plan(devices, model, **kwargs)
  with pytest.raises(ConfigError, match="^fractions: "):
    fedquad.memory_tiers(model, (0.5, -0.1))
  with pytest.raises(ConfigError, match="^lora_rank: "):
    fedquad.cost_model(CFG.with_lora(0), batch_size=4, seq_len=16)
  with pytest.raises(ConfigError, match="^seq_len: "):
    fedquad.cost_model(CFG, batch_size=4, seq_len=17)
  with pytest.raises(ConfigError, match="^local_steps: "):
    fedquad.cost_model(CFG, batch_size=4, seq_len=16, local_steps=0)
  with pytest.raises(ConfigError, match="^optimizer: "):
    depth_footprint(CFG, 1, 0, batch_size=4, seq_len=16, optimizer="lion")
