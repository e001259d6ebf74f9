"""The FL throughput benchmark compares equal work; its outputs follow the claims contract.

Wall-clock times and speed ratios are never asserted: they depend on the machine.
"""

import io
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxfl.algorithms import FedAvg
from jaxfl.errors import ConfigError
from jaxfl.local import ClientData, softmax_cross_entropy
from jaxfl.models import MLP, functional
from sweeps import report
from sweeps.configs.bench_fl import get_config, get_sweep
from sweeps.experiments import bench_fl
from sweeps.provenance import report_folder
from sweeps.sweep import run_sweep

CLAIM_IDS = {"round_vs_centralized", "round_vs_client_loop", "time_per_client_step_growth"}


def small_config(**overrides):
  c = get_config("quick")
  c.update(dict(num_clients=6, local_steps=3, batch_size=4, client_lr=0.1), **overrides)
  return c


def ragged_clients(num_clients, seed=0):
  """Clients of 1 .. 9 samples, zero-padded as pad_clients makes them."""
  rng = np.random.default_rng(seed)
  counts = rng.integers(1, 10, num_clients)
  counts[0] = 1  # fewer samples than the batch: the batch repeats them
  n_max = counts.max()
  x = rng.normal(size=(num_clients, n_max, 4, 4)).astype(np.float32)
  y = rng.integers(0, 10, (num_clients, n_max)).astype(np.int32)
  for k, n in enumerate(counts):
    x[k, n:], y[k, n:] = 0, 0
  return ClientData(jnp.asarray(x), jnp.asarray(y), jnp.asarray(counts, jnp.int32))


def max_diff(a, b):
  return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("num_devices", [1, 2])
@pytest.mark.slow
def test_runtime_client_loop_and_plain_vmap_compute_the_same_round(num_devices):
  c = small_config(num_devices=num_devices)
  clients = ragged_clients(c.num_clients)
  apply_fn, params = functional(MLP(16, (8,), 10, rngs=nnx.Rngs(0)))
  loss_fn = softmax_cross_entropy(apply_fn)

  alg = bench_fl.make_fedavg(loss_fn, c, c.num_clients)
  state = alg.init(params, jax.random.PRNGKey(3))
  runtime_params = alg.jit_round(state, clients)[0].params

  k_train = FedAvg.round_keys(state)[1]
  loop = bench_fl.make_client_loop_round(loss_fn, c)
  loop_params, _ = loop(params, state.opt_state, bench_fl.split_clients(clients),
                        bench_fl.client_keys(k_train, c.num_clients), clients.count)
  plain_params = bench_fl.make_plain_vmap_round(apply_fn, c)(params, clients, k_train)

  assert max_diff(runtime_params, params) > 1e-3  # the round did train
  assert max_diff(loop_params, runtime_params) <= 1e-5
  assert max_diff(plain_params, runtime_params) <= 1e-5


def test_centralized_does_the_rounds_number_of_steps():
  c = small_config()
  apply_fn, params = functional(MLP(16, (8,), 10, rngs=nnx.Rngs(0)))
  clients = ragged_clients(1)
  _, metrics = bench_fl.make_centralized(softmax_cross_entropy(apply_fn), c)(
      params, jax.tree.map(lambda a: a[0], clients), jnp.int32(c.num_clients * c.local_steps),
      jax.random.PRNGKey(0))
  assert int(metrics.samples) == c.num_clients * c.local_steps * c.batch_size


def test_mlp_train_flops_by_hand():
  # 4 -> 3 -> 2: forward 2*4*3 + 2*3*2 = 36; weight gradients 36; input gradient of the
  # second layer only, 2*3*2 = 12 -> 84 per sample.
  assert bench_fl.mlp_train_flops((4, 3, 2), 5) == 84 * 5
  # The benchmark's MLP 64-128-10: 2 * 16384 + 3 * 2560 per sample.
  assert bench_fl.mlp_train_flops((64, 128, 10), 1) == 40448


def test_compiled_flops_counts_the_matmuls_of_one_step():
  x = jnp.ones((8, 16))
  w = jnp.ones((16, 4))
  flops = bench_fl.compiled_flops(jax.jit(jnp.matmul), x, w)
  if flops is not None:  # cost analysis is optional on a backend
    assert flops == pytest.approx(2 * 8 * 16 * 4, rel=0.05)


@pytest.mark.parametrize("field,value", [
    ("num_clients", 0), ("repeats", 0), ("warmup", 0), ("scaling_clients", (64, 8)),
    ("scaling_clients", ()), ("scaling_clients", (8,)), ("partition", "shards"),
    ("num_devices", 99),
    ("min_round_vs_client_loop", -1.0), ("matmul_size", 0),
])
def test_validate_names_the_field(field, value):
  c = get_config("quick")
  c[field] = value
  with pytest.raises(ConfigError, match=field):
    bench_fl.validate(c)


def test_configs_and_sweep_validate():
  for variant in ("quick", "full"):
    bench_fl.validate(get_config(variant))
  c = get_config("quick")
  for point in get_sweep():
    c.update(point)
    bench_fl.validate(c)
  with pytest.raises(ValueError, match="variant"):
    get_config("huge")


@pytest.mark.slow
def test_run_writes_claims_and_report(tmp_path):
  c = get_config("quick")
  c.update(dict(num_seeds=2, num_clients=8, num_devices=2, local_steps=2, warmup=1, repeats=1,
                matmul_size=64, scaling_clients=(4, 8), scaling_samples_per_client=8))
  doc = run_sweep(bench_fl, c, str(tmp_path), stream=io.StringIO())
  out = tmp_path / report_folder(c)
  assert json.loads((out / "claims.json").read_text()) == doc
  # Every number is in the database: the report rebuilds identically from it alone.
  (out / "claims.json").unlink()
  (out / "report.md").unlink()
  [rebuilt] = report.rebuild(str(tmp_path))
  assert json.loads((out / "claims.json").read_text()) == doc
  assert rebuilt["reported"]["devices"] == 2 and rebuilt["reported"]["backend"] == "cpu"
  assert doc["experiment"] == "bench_fl" and doc["variant"] == "quick"
  assert doc["seeds"] == [0, 1]
  assert {cl["id"] for cl in doc["claims"]} == CLAIM_IDS
  for cl in doc["claims"]:
    assert isinstance(cl["holds"], bool)
    assert math.isfinite(cl["value"]) and cl["value"] > 0
    assert len(cl["per_seed"][cl["method"]]) == 2
    assert cl["threshold"] > 0
  rep = doc["reported"]
  for key in ("runtime_overhead", "flop_utilisation", "flops_per_s", "peak_flops_per_s"):
    assert math.isfinite(rep[key]) and rep[key] > 0
  assert rep["flops_per_round_analytic"] == bench_fl.mlp_train_flops((64, 128, 10), 8 * 2 * 32)
  assert set(rep["ms_per_round"]) == set(bench_fl.METHODS)
  assert (out / "scaling.png").stat().st_size > 0
  text = (out / "report.md").read_text()
  assert "round_vs_client_loop" in text and "| 8 |" in text
