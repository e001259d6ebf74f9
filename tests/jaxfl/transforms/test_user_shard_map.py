"""Every aggregator inside a user's own ``jax.shard_map`` with JAX's default ``check_vma=True``,
over the suite's 8 host CPU devices, against the answer computed in NumPy.

Two layouts: K = 16 clients, two per device and vmapped on each (axis ``('devices',
'clients')``), and K = 8, one per device (axis ``'devices'``). The outputs leave the
shard_map with ``out_specs=P()``, which ``check_vma=True`` accepts only if JAX can tell the
aggregate is the same on every device. Client 3 has weight 0 and a non-finite update.
"""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxfl.models.lora import lora_delta
from jaxfl.transforms import (
  aircomp_mean,
  delta_aggregator,
  fedit_mean,
  ffa_mean,
  flex_svd,
  stack_merge,
  weighted_mean,
)

DEVICES, CLIENTS = "devices", "clients"
D_IN, D_OUT = 4, 3  # one rank-1 adapter: the mean update has rank <= 3


def make_inputs(k):
  """Client trees (a LoRA layer with a shared A and a head), weights and channel gains."""
  rng = np.random.default_rng(k)
  a = rng.normal(size=(D_IN, 1)).astype(np.float32)
  tree = {"layer": {"kernel": rng.normal(size=(k, D_IN, D_OUT)).astype(np.float32),
                    "lora_a": np.broadcast_to(a, (k, D_IN, 1)).copy(),
                    "lora_b": rng.normal(size=(k, 1, D_OUT)).astype(np.float32)},
          "head": rng.normal(size=(k, 2)).astype(np.float32)}
  weights = rng.uniform(1.0, 3.0, k).astype(np.float32)
  weights[3] = 0.0
  tree["head"][3] = np.nan  # a weight-0 client's values must not reach the aggregate
  gains = rng.uniform(0.2, 2.0, k).astype(np.float32)
  server = jax.tree.map(lambda x: x[0] + 1.0, tree)
  return tree, weights, gains, server


def shares(weights):
  return np.asarray(weights, np.float64) / np.sum(weights)


def wmean(x, weights):
  """The weighted mean over the leading client axis, weight-0 rows dropped (may be NaN)."""
  x = np.asarray(x, np.float64)
  member = np.asarray(weights) > 0
  return np.tensordot(shares(weights)[member], x[member], axes=1)


def mean_update(tree, weights):
  """sum_k p_k A_k B_k, the exact mean adapter update."""
  a, b = tree["layer"]["lora_a"], tree["layer"]["lora_b"]
  return wmean(np.einsum("kir,kro->kio", a, b), weights)


def check_close(x, ref):
  np.testing.assert_allclose(np.asarray(x, np.float64), ref, rtol=2e-5, atol=2e-6)


def check_mean(out, tree, weights):
  check_close(out["head"], wmean(tree["head"], weights))
  check_close(out["layer"]["kernel"], wmean(tree["layer"]["kernel"], weights))


def fedit_answer(out, tree, weights, server):
  check_mean(out, tree, weights)
  for name in ("lora_a", "lora_b"):
    check_close(out["layer"][name], wmean(tree["layer"][name], weights))


def ffa_answer(out, tree, weights, server):
  check_mean(out, tree, weights)
  np.testing.assert_array_equal(out["layer"]["lora_a"], tree["layer"]["lora_a"][0])
  check_close(out["layer"]["lora_b"], wmean(tree["layer"]["lora_b"], weights))


def stack_answer(out, tree, weights, server):
  check_mean(out, tree, weights)
  k = len(weights)
  assert out["layer"]["lora_a"].shape == (D_IN, k) and out["layer"]["lora_b"].shape == (k, D_OUT)
  check_close(lora_delta(out["layer"], 1.0), mean_update(tree, weights))


def flex_answer(out, tree, weights, server):
  check_mean(out, tree, weights)
  assert out["layer"]["lora_a"].shape == (D_IN, D_OUT)
  check_close(lora_delta(out["layer"], 1.0), mean_update(tree, weights))


def delta_answer(out, tree, weights, server):
  # The clients' deltas are their trees; the aggregate delta is their weighted mean.
  for o, x in zip(jax.tree.leaves(out), jax.tree.leaves(tree), strict=True):
    check_close(o, wmean(x, weights))


def head_answer(out, tree, weights, server):
  check_close(out, wmean(tree["head"], weights))


# name: (factory of the axis name, update(tx, tree, weight, gain, server), known answer)
AGGREGATORS = {
    "weighted_mean": (weighted_mean, lambda tx, t, w, g, s: tx.update(t, tx.init(t), weight=w),
                      lambda out, t, w, s: check_mean(out, t, w)),
    "aircomp_mean": (  # no noise: the exact weighted mean, whatever the gains
        lambda names: aircomp_mean(names, noise_var=0.0),
        lambda tx, t, w, g, s: tx.update(t["head"], tx.init(t["head"]), weight=w, gain_sq=g,
                                         noise_key=jax.random.key(0)),
        head_answer),
    "fedit_mean": (fedit_mean, lambda tx, t, w, g, s: tx.update(t, tx.init(t), weight=w),
                   fedit_answer),
    "ffa_mean": (ffa_mean, lambda tx, t, w, g, s: tx.update(t, tx.init(t), weight=w),
                 ffa_answer),
    "stack_merge": (stack_merge, lambda tx, t, w, g, s: tx.update(t, tx.init(t), weight=w),
                    stack_answer),
    "flex_svd": (lambda names: flex_svd(names, rank=D_OUT),
                 lambda tx, t, w, g, s: tx.update(t, tx.init(t), weight=w), flex_answer),
    "delta_aggregator": (  # the server's tree enters replicated (P()) and unmapped
        lambda names: delta_aggregator(fedit_mean(names)),
        lambda tx, t, w, g, s: tx.update(t, tx.init(s), s, weight=w), delta_answer),
}


def in_user_shard_map(name, per_device):
  """The aggregate computed in a user's own jitted shard_map (check_vma left at its default)."""
  make, update, _ = AGGREGATORS[name]
  mesh = Mesh(np.array(jax.devices()), (DEVICES,))
  k = mesh.size * (1 if per_device else 2)
  tx = make(DEVICES if per_device else (DEVICES, CLIENTS))
  if per_device:
    def body(t, w, g, s):  # this device's one client
      return update(tx, *jax.tree.map(lambda x: x[0], (t, w, g)), s)
  else:
    body = jax.vmap(lambda t, w, g, s: update(tx, t, w, g, s), in_axes=(0, 0, 0, None),
                    axis_name=CLIENTS, out_axes=None)
  spec = P(DEVICES)
  program = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(spec, spec, spec, P()),
                                  out_specs=P()))
  inputs = make_inputs(k)
  out, state = program(*inputs)
  assert int(state.count) == 1  # the state, too, is typed the same on every device
  return out, inputs


@pytest.mark.parametrize("per_device", [False, True], ids=["vmap_in_devices", "one_per_device"])
@pytest.mark.parametrize("name", list(AGGREGATORS))
def test_aggregator_in_a_user_shard_map_with_check_vma(name, per_device):
  assert jax.device_count() == 8
  out, (tree, weights, _, server) = in_user_shard_map(name, per_device)
  AGGREGATORS[name][2](out, tree, weights, server)
