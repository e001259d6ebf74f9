"""Benchmark: training and decoding tokens per second of the byte-level transformer LM.

Measured in one process, after compilation (the first ``warmup`` calls, then
``timing_repeats`` timed calls of each program, round-robin, each ended by
``jax.block_until_ready``; medians reported), on a randomly initialised
:mod:`jaxfl.models.transformer` model (``sweeps/configs/bench_lm.py``):

(i)   ``full_ft``: one jitted Adam step of full fine-tuning, every parameter of the
      adapter-free model differentiated;
(ii)  ``lora``: one jitted Adam step of LoRA (rank ``lora_rank`` on the default targets of
      every block): only the adapters are differentiated and updated; the frozen base
      weights are a jit *argument* (closed-over arrays would compile in as constants);
(iii) ``bitfit``: one jitted Adam step training only the bias terms of the adapter-free
      model (BitFit, Ben Zaken et al. 2021, arXiv 2106.10199), a diagnostic: its backward
      computes every input gradient and no weight gradient, like LoRA's, but has no
      adapter matmuls, so ``bitfit / full_ft`` is the speedup LoRA would get if its
      adapters cost nothing (the ceiling of ``lora / full_ft``);
(iv)  ``decode_cache``: greedy decoding with the KV cache, :func:`transformer.generate`
      with ``use_cache=True``;
(v)   ``decode_nocache``: the same decoding rerunning the full causal forward over the
      fixed buffer at each step (``use_cache=False``);
(vi)  a large float32 matmul (the machine's practical FLOP/s), timed among them.

Each program is lowered and compiled explicitly (``jit(f).lower(...).compile()``) so its
tracing and XLA compile seconds are measured, and the timed calls run that executable.
The decoded tokens of (iv) and (v) are compared on every repeat: they must be
identical, except after a float32 near-tie of the greedy argmax (the two paths sum in
different orders), which is checked on the logits and counted.

A repeat ("seed") draws its own model and tokens; its programs are compiled afresh, so
every repeat measures its own compile times. Every number is a metric of the repeat's
run, so :func:`report` rebuilds claims.json and report.md from the database alone.
"""

from sweeps.experiments.bench_lm.report import report
from sweeps.experiments.bench_lm.run import (
    METHODS,
    TIE_GAP,
    compile_program,
    execute,
    greedy_agreement,
    make_decode,
    make_full_step,
    make_partial_step,
    prepare,
    rounds,
    run_specs,
    validate,
)

__all__ = ["METHODS", "TIE_GAP", "compile_program", "execute", "greedy_agreement", "make_decode",
           "make_full_step", "make_partial_step", "prepare", "report", "rounds", "run_specs",
           "validate"]
