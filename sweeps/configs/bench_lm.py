"""Benchmark: training and decoding throughput of the byte-level transformer LM.

Measured in one process, after compilation, on a randomly initialised model (throughput
does not depend on the weights' values, so no pre-trained model is needed):

* training tokens/s of one jitted Adam step, full fine-tuning (every parameter
  differentiated) vs LoRA (only the adapters differentiated; the frozen base weights are
  a jit argument);
* greedy decoding tokens/s, ``generate(use_cache=True)`` vs ``use_cache=False``;
* the XLA compile seconds of each program and the machine's float32 matmul FLOP/s.

Claims (medians over repeats, then over seeds; ratios of numbers timed in one process):

* ``cache_speedup``: KV-cache decoding is at least ``min_cache_speedup`` times faster.
* ``lora_train_speedup``: a LoRA step processes at least ``min_lora_train_speedup`` times
  the tokens/s of a full fine-tuning step.

The thresholds come from first principles (the comments below), not from measured values;
measured numbers, and why the LoRA ratio falls short on XLA:CPU at this size, are in the
README ("Language model and PEFT toolkit", "Benchmark") and in the report this config writes.

Launch:
  python -m sweeps.launch --config sweeps/configs/bench_lm.py:quick
  python -m sweeps.launch --config sweeps/configs/bench_lm.py:full --workdir /tmp/runs
"""

from __future__ import annotations

import ml_collections

from sweeps.configs import common


def get_config(variant: str = "quick") -> ml_collections.ConfigDict:
  # seed: seeds the model init and the random tokens of each repeat
  # num_seeds: repeats of the whole measurement (one run each); claims take the median
  c = common.base("bench_lm", variant, num_seeds=2, data_dir=False)

  c.model = "small"  # jaxfl.models.transformer.VARIANTS (random init)

  # Training: one Adam step on batch_size windows of seq_len tokens (inputs and targets).
  c.batch_size = 8
  c.seq_len = 64  # <= the model's max_len
  c.learning_rate = 1e-3
  c.lora_rank = 8  # adapters on the default targets (query, value, out, up) of every block

  # Decoding: greedy, decode_batch prompts of prompt_len tokens, new_tokens new tokens.
  c.decode_batch = 4
  c.prompt_len = 32
  c.new_tokens = 64  # prompt_len + new_tokens <= the model's max_len

  # Timing: warm-up calls (the first also checks cached == uncached tokens), then
  # timing_repeats timed calls per program, round-robin; the median is reported.
  c.warmup = 1
  c.timing_repeats = 5
  c.matmul_size = 2048  # float32 n x n @ n x n, 2 n^3 flops: the practical peak

  # Claim thresholds, from first principles (not from measured values).
  # Without a cache each of the N new tokens reruns the causal forward over the fixed
  # (P + N)-token buffer, N (P + N) token-positions in all; with it the prompt is encoded
  # once and each new token is one position: P + N. The dense-layer work shrinks by N (64x
  # for N=64); attention over the cache and per-step fixed costs (a step of one token per
  # sequence is latency-, not FLOP-bound, and copies the cache) eat into that, so only a
  # clear 2x is required.
  c.min_cache_speedup = 2.0
  # Full fine-tuning's backward computes, per dense layer, the input gradient and the
  # weight gradient (2 x the forward's matmul FLOPs) and Adam updates every weight; LoRA
  # keeps the input gradients (the lowest block's adapters need them) but drops the base
  # weight gradients: about 2 F instead of 3 F, at most 1.5x on the dense layers. The
  # weight-free attention matmuls, layer norms, GELU and softmax cost the same either
  # way and the adapters add a little, so a modest 1.1x is required.
  c.min_lora_train_speedup = 1.1

  if variant == "full":
    # An accelerator: bigger batches, the model's whole context, more repeats.
    c.num_seeds = 3
    c.batch_size = 64
    c.seq_len = 128
    c.decode_batch = 64
    c.new_tokens = 96
    c.warmup = 2
    c.timing_repeats = 10
    c.matmul_size = 8192
  return c
