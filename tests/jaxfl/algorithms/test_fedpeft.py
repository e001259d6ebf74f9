"""FederatedPEFT: FedAvg over the trainable part of the LM (FedIT and full fine-tuning)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfl.algorithms import FederatedPEFT, PEFTInputs
from jaxfl.local import ClientData
from jaxfl.models import lora
from jaxfl.models import transformer as T
from jaxfl.runtime import ClientAxis, client_mesh
from jaxfl.sim import uniform_profiles

CFG = T.VARIANTS["tiny"].with_lora(2)


def clients(num=4):
  x = jax.random.randint(jax.random.key(0), (num, 6, 9), 0, 256)
  return ClientData(x[..., :-1], x[..., 1:], jnp.full([num], 6, jnp.int32))


def run(axis, rounds=2):
  fed = FederatedPEFT(CFG, lora.is_lora_path, optax.adam(1e-2), batch_size=2,
                      clients_per_round=4, local_steps=2, axis=axis)
  trainable, frozen = fed.split(T.init(CFG, jax.random.key(0)))
  state = fed.init(trainable, jax.random.key(1))
  for _ in range(rounds):
    state, metrics = fed.jit_round(state, PEFTInputs(clients(), frozen, uniform_profiles(4)))
  return trainable, frozen, state, metrics


@pytest.mark.slow
def test_fedit_trains_only_the_adapters():
  trainable, frozen, state, metrics = run(ClientAxis())
  assert jax.tree.structure(state.params) == jax.tree.structure(trainable)
  assert {p[-1] for p, _ in lora.leaf_paths(state.params)} == {"lora_a", "lora_b"}
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params),
                                                      jax.tree.leaves(trainable)))
  assert int(metrics.participants) == 4 and np.isfinite(float(metrics.loss))


@pytest.mark.slow
def test_shard_map_round_matches_vmap():
  _, _, a, _ = run(ClientAxis())
  _, _, b, _ = run(ClientAxis(client_mesh(2)))
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(x, y, atol=1e-6, rtol=0)
