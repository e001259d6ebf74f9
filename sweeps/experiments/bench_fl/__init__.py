"""Benchmark: client-samples per second of a federated round through the client-axis runtime.

Measured in one process, after compilation (``warmup`` calls, then ``repeats`` timed
calls ending in ``jax.block_until_ready``; medians reported), on K clients x
``local_steps`` steps x ``batch_size`` samples of an MLP on the digits task:

(i)   ``runtime``: one FedAvg round through :class:`jaxfl.algorithms.FedAvg`'s
      ``jit_round`` (client-axis runtime, all K clients participating);
(ii)  ``centralized``: the same model trained on the same number of samples in
      sequence, ``K * local_steps`` steps of ``batch_size`` on one client holding all
      the training data (:func:`jaxfl.local.make_local_train`, jitted);
(iii) ``client_loop``: the same round as a Python loop over clients, each calling a
      jitted one-client ``local_train``, then a jitted weighted mean and server update
      (the per-client pattern of fedjax / Flower);
(iv)  FLOP utilisation: FLOP/s of (i) (analytic matmul FLOPs, :func:`mlp_train_flops`;
      XLA's cost analysis reported beside it) over the FLOP/s of a large float32
      matmul timed in the same process, interleaved with the rounds;
(v)   ``plain_vmap``: the round written by hand, with no jaxfl runtime (a ``jax.vmap``
      over clients of a ``lax.scan`` of SGD steps, weighted mean, update);
(vi)  time per client-step of (i) as K grows (``scaling_clients``), on synthetic
      clients of ``scaling_samples_per_client`` samples drawn with replacement from
      the training set (digits has fewer samples than 512 clients need).

(i), (iii) and (v) do the same work: from the same parameters and round key they
compute the same new parameters (tests check it to 1e-5), because each client
visits its samples in the order :func:`jaxfl.local.visiting_order` draws from
``fold_in(k_train, client_id)`` exactly as ``FedAvg.round`` does.

To time one round repeatedly the same input state is passed to every call (a round
is a pure function), so every timed call does identical work.

All measurements of a repeat are interleaved call by call (round-robin over the
methods), so a change in machine load during the run hits all of them alike and
the ratios stay meaningful on a shared machine.
"""

from sweeps.experiments.bench_fl.programs import (
    client_keys,
    compiled_flops,
    make_centralized,
    make_client_loop_round,
    make_fedavg,
    make_plain_vmap_round,
    mlp_train_flops,
    split_clients,
)
from sweeps.experiments.bench_fl.report import report
from sweeps.experiments.bench_fl.run import (
    METHODS,
    environment,
    execute,
    prepare,
    rounds,
    run_specs,
    validate,
)

__all__ = ["METHODS", "client_keys", "compiled_flops", "environment", "execute",
           "make_centralized", "make_client_loop_round", "make_fedavg", "make_plain_vmap_round",
           "mlp_train_flops", "prepare", "report", "rounds", "run_specs", "split_clients",
           "validate"]
