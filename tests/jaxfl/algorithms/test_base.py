"""Every algorithm follows one protocol: init, a pure round, driven by scan_rounds and
run_rounds alike.

Table-driven over the algorithms: each conforms, a vmapped ``scan_rounds`` over two seeds
equals a host loop of ``jit_round`` per seed, and ``run_rounds`` stopped after 2 rounds and
resumed from its checkpoint ends bit-identical to a run that never stopped.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxfl.algorithms import (
  AirFedGA,
  Algorithm,
  DiLoCo,
  FedAvg,
  FederatedPEFT,
  PEFTInputs,
  StreamingDiLoCo,
  check_algorithm,
  server_optimizer,
)
from jaxfl.algorithms import grouped_async as ga
from jaxfl.checkpoint import Checkpointer
from jaxfl.local import ClientData, softmax_cross_entropy
from jaxfl.loop import run_rounds, scan_rounds
from jaxfl.models import MLP, functional, lora
from jaxfl.models import transformer as T
from jaxfl.sim import Comm, uniform_profiles

ROUNDS = 4


def linear_loss(w, x, y):
  return jnp.mean((x @ w["a"] + w["b"] - y) ** 2)


def linear_case():
  x = jax.random.normal(jax.random.key(0), (4, 8, 3))
  y = x @ jnp.array([1.0, -2.0, 0.5]) + jnp.arange(4.0)[:, None]
  return {"a": jnp.zeros(3), "b": jnp.zeros(())}, ClientData(x, y, jnp.full([4], 8, jnp.int32))


def mlp_case():
  rng = np.random.default_rng(0)
  apply_fn, abstract = functional(nnx.eval_shape(lambda: MLP(6, (8,), 3, rngs=nnx.Rngs(0))))
  params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), abstract)
  counts = np.array([5, 12, 8, 12])
  x = rng.normal(size=(4, 12, 6)).astype(np.float32)
  y = rng.integers(0, 3, (4, 12)).astype(np.int32)
  return apply_fn, params, ClientData(jnp.asarray(x), jnp.asarray(y), jnp.asarray(counts))


def fedavg():
  apply_fn, params, clients = mlp_case()
  alg = FedAvg(softmax_cross_entropy(apply_fn), optax.sgd(0.1), server_optimizer("fedadam", 0.03),
               batch_size=4, clients_per_round=2, local_steps=2, profiles=uniform_profiles(4))
  return alg, params, clients


def fedpeft():
  cfg = T.LMConfig(num_layers=1, d_model=8, num_heads=1, d_ff=8, max_len=8).with_lora(2)
  fed = FederatedPEFT(cfg, lora.is_lora_path, optax.adam(1e-2), batch_size=2,
                      clients_per_round=2, local_steps=1)
  trainable, frozen = fed.split(T.init(cfg, jax.random.key(0)))
  tokens = jax.random.randint(jax.random.key(1), (2, 3, 7), 0, 256)
  clients = ClientData(tokens[..., :-1], tokens[..., 1:], jnp.full([2], 3, jnp.int32))
  return fed, trainable, PEFTInputs(clients, frozen, uniform_profiles(2))


def diloco():
  params, data = linear_case()
  alg = DiLoCo(linear_loss, optax.adamw(1e-2), optax.sgd(0.7, momentum=0.9, nesterov=True),
               num_workers=4, inner_steps=3, batch_size=4)
  return alg, params, data


def streaming(mode):
  def build():
    params, data = linear_case()
    alg = StreamingDiLoCo(linear_loss, optax.adamw(1e-2),
                          optax.sgd(0.7, momentum=0.9, nesterov=True), num_workers=4,
                          inner_steps=4, batch_size=4, labels={"a": 0, "b": 1}, num_fragments=2,
                          overlap=1, mode=mode)
    return alg, params, data
  return build


def air_fedga():
  apply_fn, params, clients = mlp_case()
  members = jnp.asarray([[0, 1], [2, 3]], jnp.int32)
  compute = jnp.asarray([1.0, 1.0, 3.0, 3.0])
  rounds, events = ga.bounds(np.asarray(compute), [[np.array([0, 1]), np.array([2, 3])]],
                             t_max=6.0, jitter_low=0.9)
  alg = AirFedGA(loss_fn=softmax_cross_entropy(apply_fn), learning_rate=0.1, batch_size=4,
                 local_steps=2, comm=Comm(bandwidth_hz=1e4, bits_per_param=8.0, noise_var=0.1),
                 members=members, compute_time=compute, path_gain=jnp.linspace(0.3, 1.0, 4),
                 t_max=6.0, jitter=(0.9, 1.1), rounds=rounds, events=events)
  assert events >= ROUNDS
  return alg, params, clients


CASES = {"fedavg": fedavg, "fedpeft": fedpeft, "diloco": diloco,
         "streaming": streaming("streaming"), "cocodc": streaming("cocodc"),
         "air_fedga": air_fedga}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
  return request.param, *CASES[request.param]()


def assert_bit_identical(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def test_conforms(case):
  _, alg, _, _ = case
  assert isinstance(alg, Algorithm)
  check_algorithm(alg)


@pytest.mark.slow
def test_vmapped_scan_over_seeds_equals_a_host_loop_per_seed(case):
  name, alg, params, inputs = case
  keys = jax.random.split(jax.random.PRNGKey(7), 2)

  def scan(key):
    state, metrics, _ = scan_rounds(alg, alg.init(params, key), inputs, num_rounds=ROUNDS)
    return state, metrics

  states, metrics = jax.device_get(jax.jit(jax.vmap(scan))(keys))
  init = jax.jit(alg.init)  # one compile, not one per eager op
  for i in range(2):
    state = init(params, keys[i])
    for r in range(ROUNDS):
      state, m = alg.jit_round(state, inputs)
      loss = np.asarray(m.loss) if hasattr(m, "loss") else None
      if loss is not None:  # every round's metrics come out of the scan, stacked
        np.testing.assert_allclose(np.asarray(metrics.loss)[i, r], loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(states), jax.tree.leaves(state), strict=True):
      a = a[i]
      np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                 rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_run_rounds_resumes_bit_identical(case, tmp_path):
  _, alg, params, inputs = case
  init = jax.jit(alg.init)
  fresh = lambda: jax.device_put(init(params, jax.random.PRNGKey(3)), jax.devices()[0])
  with Checkpointer(tmp_path / "a", every=2) as ckpt:
    full, _ = run_rounds(alg, fresh(), inputs, num_rounds=ROUNDS, checkpointer=ckpt, log=None)
  with Checkpointer(tmp_path / "b", every=2) as ckpt:
    run_rounds(alg, fresh(), inputs, num_rounds=2, checkpointer=ckpt, log=None)
  lines = []
  with Checkpointer(tmp_path / "b", every=2) as ckpt:
    resumed, _ = run_rounds(alg, fresh(), inputs, num_rounds=ROUNDS, checkpointer=ckpt,
                            log=lines.append)
  assert lines == ["resumed at round 2"]
  assert_bit_identical(resumed, full)


def test_not_an_algorithm_is_named():
  with pytest.raises(TypeError, match="lacks round"):
    check_algorithm(type("Half", (), {"init": lambda self, p, k: p})())
