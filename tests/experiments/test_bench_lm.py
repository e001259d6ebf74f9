"""The LM throughput benchmark times equal work correctly; its outputs follow the claims contract.

Wall-clock times and speed ratios are never asserted: they depend on the machine.
"""

import io
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfl.errors import ConfigError
from jaxfl.models import lora, transformer
from sweeps import launch, report
from sweeps.configs.bench_lm import get_config
from sweeps.experiments import bench_lm
from sweeps.provenance import report_folder
from sweeps.sweep import run_sweep

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = "sweeps/configs/bench_lm.py:quick"
CLAIM_IDS = {"cache_speedup", "lora_train_speedup"}


def tiny_config(**overrides):
  """The quick config on the tiny model with tiny batches (fast to compile and run)."""
  c = get_config("quick")
  c.update(dict(model="tiny", batch_size=2, seq_len=16, decode_batch=2, prompt_len=4,
                new_tokens=8, timing_repeats=1, matmul_size=64), **overrides)
  return c


@pytest.mark.parametrize("field,value", [
    ("model", "huge"), ("seed", -1), ("num_seeds", 0), ("batch_size", 0), ("seq_len", 0),
    ("seq_len", 129), ("lora_rank", 0), ("decode_batch", 0), ("prompt_len", 0),
    ("new_tokens", 97), ("new_tokens", 0), ("warmup", 0), ("timing_repeats", 0),
    ("matmul_size", 0), ("learning_rate", float("nan")), ("min_cache_speedup", -1.0),
    ("min_cache_speedup", float("inf")), ("min_lora_train_speedup", 0.0),
    ("batch_size", True),
])
def test_validate_names_the_field(field, value):
  c = get_config("quick")  # small model: max_len 128
  c[field] = value
  with pytest.raises(ConfigError, match=field):
    bench_lm.validate(c)


def test_lengths_are_checked_against_the_chosen_model():
  bench_lm.validate(tiny_config())
  with pytest.raises(ConfigError, match="seq_len.*max_len=64"):
    bench_lm.validate(tiny_config(seq_len=65))
  with pytest.raises(ConfigError, match="new_tokens.*max_len=64"):
    bench_lm.validate(tiny_config(prompt_len=32, new_tokens=33))


def test_configs_validate():
  for variant in ("quick", "full"):
    bench_lm.validate(get_config(variant))
  with pytest.raises(ValueError, match="variant"):
    get_config("huge")


@pytest.mark.parametrize("args,field", [
    (["--config.new_tokens=200"], "new_tokens"),
    (["--config.model=huge"], "model"),
    (["--config.min_lora_train_speedup=-1"], "min_lora_train_speedup"),
    # The tiny model's context is 64: quick's 64-token windows fit, its 32 + 64 decoding not.
    (["--config.model=tiny"], "new_tokens"),
])
def test_launcher_bad_config_one_line_exit_2(tmp_path, capsys, monkeypatch, args, field):
  monkeypatch.chdir(ROOT)
  workdir = tmp_path / "runs"
  code = launch.main(["launch", f"--config={CONFIG}", *args, f"--workdir={workdir}"])
  err = capsys.readouterr().err.strip()
  assert code == 2
  assert len(err.splitlines()) == 1, err
  assert err.startswith("error: ") and field in err and "expected" in err, err
  assert not workdir.exists()


@pytest.fixture(scope="module")
def tiny_model():
  base = transformer.VARIANTS["tiny"]
  with_lora = base.with_lora(4)
  params = transformer.init(with_lora, jax.random.PRNGKey(0))
  adapters, frozen = lora.split(params, lora.path_labels(params, lora.is_lora_path))
  return base, with_lora, adapters, frozen


@pytest.fixture(scope="module")
def decoded(tiny_model):
  """``(prompt, cached, uncached)``: 24 greedy tokens after a 5-token prompt, both ways."""
  base, _, _, params = tiny_model
  prompt = jax.random.randint(jax.random.PRNGKey(1), (3, 5), 0, 256)
  cached = bench_lm.compile_program(bench_lm.make_decode(base, 24, True), params, prompt)
  uncached = bench_lm.compile_program(bench_lm.make_decode(base, 24, False), params, prompt)
  return np.asarray(prompt), np.asarray(cached()), np.asarray(uncached())


@pytest.mark.slow
def test_decoding_with_and_without_cache_is_identical(tiny_model, decoded):
  base, _, _, params = tiny_model
  prompt, a, b = decoded
  assert a.shape == (3, 29)
  np.testing.assert_array_equal(a[:, :5], prompt)
  np.testing.assert_array_equal(a, b)
  assert bench_lm.greedy_agreement(base, params, 5, a, b) == (3, 0)


@pytest.mark.slow
def test_greedy_agreement_rejects_a_real_disagreement(tiny_model, decoded, monkeypatch):
  base, _, _, params = tiny_model
  _, a, _ = decoded
  logits = transformer.apply(base, params, jnp.asarray(a[:1, :7]))[0, -1]
  top2 = np.sort(np.asarray(logits))[-2:]
  if top2[1] - top2[0] < bench_lm.TIE_GAP:
    pytest.skip("this model's step happens to be a near-tie")
  b = a.copy()
  b[0, 7:] = (a[0, 7:] + 1) % 256  # a clear argmax (random init: gaps ~0.1) overruled
  with pytest.raises(AssertionError, match="disagree at row 0, position 7"):
    bench_lm.greedy_agreement(base, params, 5, a, b)
  b = a.copy()
  b[1, 2] += 1
  with pytest.raises(AssertionError, match="prompt of row 1"):
    bench_lm.greedy_agreement(base, params, 5, a, b)
  # A divergence after a near-tie is accepted and counted (here every gap counts as one).
  monkeypatch.setattr(bench_lm.run, "TIE_GAP", math.inf)  # the module greedy_agreement reads
  b = a.copy()
  b[2, 9:] = (a[2, 9:] + 1) % 256
  assert bench_lm.greedy_agreement(base, params, 5, a, b) == (2, 1)


@pytest.mark.slow
def test_lora_step_trains_only_the_adapters_of_the_same_function(tiny_model):
  base, with_lora, adapters, frozen = tiny_model
  tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 17), 0, 258)
  x, y = tokens[:, :-1], tokens[:, 1:]
  tx = optax.adam(1e-2)
  full = bench_lm.compile_program(bench_lm.make_full_step(base, tx), frozen, tx.init(frozen), x, y)
  part = bench_lm.compile_program(bench_lm.make_partial_step(with_lora, tx), adapters,
                                  tx.init(adapters), frozen, x, y)
  full_params, _, full_loss = full()
  new_adapters, _, lora_loss = part()
  # B = 0 at init: the adapter model computes the base model's function, hence its loss.
  assert float(lora_loss) == pytest.approx(float(full_loss), abs=1e-5)
  assert jax.tree.structure(new_adapters) == jax.tree.structure(adapters)
  paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(adapters)[0]]
  assert paths and all(lora.is_lora_path(tuple(k.key for k in p)) for p in paths)
  changed = lambda a, b: max(float(jnp.max(jnp.abs(u - v)))
                             for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert changed(new_adapters, adapters) > 0  # Adam moves every trained leaf by ~lr
  assert changed(full_params, frozen) > 0
  # The frozen weights are an argument of the compiled step, not constants inside it.
  assert len(part.args) == 5 and part.args[2] is frozen
  assert part.compile_s >= 0 and part.trace_s >= 0


@pytest.mark.slow
def test_run_writes_claims_and_report_that_rebuild_from_the_database(tmp_path):
  c = tiny_config(num_seeds=2)
  doc = run_sweep(bench_lm, c, str(tmp_path), stream=io.StringIO())
  out = tmp_path / report_folder(c)
  assert json.loads((out / "claims.json").read_text()) == doc
  # Every number is in the database: the report rebuilds identically from it alone.
  (out / "claims.json").unlink()
  (out / "report.md").unlink()
  (out / "throughput.png").unlink()
  [rebuilt] = report.rebuild(str(tmp_path))
  assert json.loads((out / "claims.json").read_text()) == doc
  assert {k: v for k, v in rebuilt.items() if k != "out"} == doc
  assert doc["experiment"] == "bench_lm" and doc["variant"] == "quick"
  assert doc["seeds"] == [0, 1]
  assert {cl["id"] for cl in doc["claims"]} == CLAIM_IDS
  for cl in doc["claims"]:
    assert isinstance(cl["holds"], bool)
    assert cl["holds"] == (cl["value"] >= cl["threshold"])
    assert math.isfinite(cl["value"]) and cl["value"] > 0
    values = cl["per_seed"][cl["method"]]
    assert len(values) == 2 and all(math.isfinite(v) and v > 0 for v in values)
    for per_seed in cl["tokens_per_s"].values():
      assert len(per_seed) == 2 and all(math.isfinite(v) and v > 0 for v in per_seed)
  rep = doc["reported"]
  assert set(rep["tokens_per_s"]) == set(bench_lm.METHODS)
  for field in ("tokens_per_s", "ms_per_call", "compile_s", "trace_s"):
    assert all(math.isfinite(v) and v > 0 for v in rep[field].values()), field
  assert rep["tokens_per_call"]["lora"] == 2 * 16 and rep["tokens_per_call"]["decode_cache"] == 16
  assert math.isfinite(rep["peak_flops_per_s"]) and rep["peak_flops_per_s"] > 0
  assert math.isfinite(rep["bitfit_train_speedup"]) and rep["bitfit_train_speedup"] > 0
  # Cached and uncached greedy decoding produced the same tokens in every repeat.
  assert rep["decode_rows_identical"] == [2.0, 2.0]
  params = rep["trainable_params"]
  assert params["full_ft"] == transformer.num_params(
      transformer.init(transformer.VARIANTS["tiny"], jax.random.PRNGKey(0)))
  assert 0 < params["bitfit"] < params["lora"] < params["full_ft"]
  assert rep["backend"] == jax.default_backend()
  assert (out / "throughput.png").stat().st_size > 0
  text = (out / "report.md").read_text()
  assert "cache_speedup" in text and "lora_train_speedup" in text and "bitfit" in text
