"""lm_pretrain and fedlora: config checks, the cached pre-trained model, claims from the database.

The quick variants' claims are measured by ``python -m sweeps.reproduce``; here shrunken
runs (the ``tiny`` model, a few steps) check the plumbing with numbers that follow from
the definitions.
"""

import io
import json
import os

import jax
import numpy as np
import pytest

from jaxfl.data import corpus as corpus_lib
from jaxfl.errors import ConfigError
from jaxfl.models import pretrained, transformer
from sweeps import families, report
from sweeps.configs import fedlora as fedlora_config
from sweeps.configs import lm_pretrain as pretrain_config
from sweeps.experiments import fedlora, lm_pretrain
from sweeps.provenance import report_folder
from sweeps.results import ResultsDB, results_path
from sweeps.sweep import run_sweep

TINY_PRETRAIN = dict(variant="tiny", steps=40, batch_size=8, seq_len=32, eval_every=20,
                     eval_windows=8, warmup_steps=5)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("lm")
  return {"data_dir": str(root / "tfds"), "cache_dir": str(root / "cache")}


def tiny_pretrain(dirs):
  c = pretrain_config.get_config("quick")
  c.update(dirs)
  c.pretrain.update(TINY_PRETRAIN)
  c.target_val_loss = 5.0
  return c


def tiny_fedlora(dirs, **overrides):
  c = fedlora_config.get_config("quick")
  c.update(dirs)
  c.pretrain.update(TINY_PRETRAIN)
  c.update({**dict(num_clients=4, clients_per_round=4, seq_len=32, windows_per_client=16,
                   eval_windows=4, batch_size=4, local_steps=2, num_rounds=2, eval_every=1,
                   lora_rank=2, num_seeds=1, num_tuning_seeds=1,
                   lora_lr_grid=(1e-3, 3e-1), full_lr_grid=(1e-4, 3e-2)), **overrides})
  return c


def test_configs_validate():
  for variant in ("quick", "full"):
    lm_pretrain.validate(pretrain_config.get_config(variant))
    fedlora.validate(fedlora_config.get_config(variant))
  with pytest.raises(ValueError, match="variant"):
    fedlora_config.get_config("huge")


def test_fedlora_protocol_gives_both_methods_the_same_budget():
  c = fedlora_config.get_config("quick")
  assert c.num_seeds >= 3 and c.num_tuning_seeds >= 1
  grids = {m: fedlora.lr_grid(c, m) for m in fedlora.METHODS}
  # The same number of points, each over the method's own client learning rate, and
  # centred on the value used before the protocol (3e-3 for LoRA, 5e-4 for full).
  assert [len(g) for g in grids.values()] == [3, 3]
  assert [p["client_lr"] for p in grids["fedit"]] == [1e-3, 3e-3, 1e-2]
  assert [p["client_lr"] for p in grids["full"]] == [1.7e-4, 5e-4, 1.5e-3]
  fams = {f.name: f for f in fedlora.families(c, ctx=None)}
  assert {n: len(families.tuning_runs(f, c)) for n, f in fams.items()} == {
      "fedit": 3 * c.num_tuning_seeds, "full": 3 * c.num_tuning_seeds}
  assert {r.seed for f in fams.values() for r in families.tuning_runs(f, c)} == {1000}
  assert {r.seed for f in fams.values() for r in families.reported_runs(f, c)} == {0, 1, 2}
  c.full_lr_grid = (1e-4, 5e-4)  # a smaller budget for the baseline is refused
  with pytest.raises(ConfigError) as e:
    fedlora.validate(c)
  assert e.value.field == "full_lr_grid"


@pytest.mark.parametrize("field,value,reported", [
    ("pretrain.variant", "huge", "pretrain.variant"), ("pretrain.steps", 0, "pretrain.steps"),
    ("pretrain.seq_len", 1000, "pretrain.seq_len"), ("pretrain.eval_every", 7,
                                                     "pretrain.eval_every"),
    ("target_val_loss", -1.0, "target_val_loss"), ("num_seeds", 2, "num_seeds"),
])
def test_pretrain_validate_names_the_field(field, value, reported):
  c = pretrain_config.get_config("quick")
  *parents, leaf = field.split(".")
  node = c
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(ConfigError) as e:
    lm_pretrain.validate(c)
  assert e.value.field == reported


@pytest.mark.parametrize("field,value,reported", [
    ("num_clients", 0, "num_clients"), ("clients_per_round", 20, "clients_per_round"),
    ("seq_len", 500, "seq_len"),
    ("lora_rank", 0, "lora_rank"), ("lora_lr_grid", (1e-3, -1.0, 1e-2), "lora_lr_grid"),
    ("full_lr_grid", (), "full_lr_grid"),
    ("lora_targets", ("qkv",), "lora_targets"), ("lora_targets", (), "lora_targets"),
    ("max_loss_ratio", 0.0, "max_loss_ratio"), ("local_steps", 0, "local_steps"),
])
def test_fedlora_validate_names_the_field(field, value, reported):
  c = fedlora_config.get_config("quick")
  c[field] = value
  with pytest.raises(ConfigError) as e:
    fedlora.validate(c)
  assert e.value.field == reported


@pytest.mark.slow
def test_pretrained_model_is_cached_and_reused(dirs):
  spec = lm_pretrain.spec(tiny_pretrain(dirs).pretrain)
  corpus = corpus_lib.load_corpus(dirs["data_dir"])
  logs = []
  params, meta = pretrained.load_or_pretrain(spec, corpus=corpus, root=dirs["cache_dir"],
                                             log=logs.append)
  assert any("pre-training 'tiny'" in line for line in logs)
  losses = [row["loss"] for row in meta["history"]]
  assert [row["step"] for row in meta["history"]] == [0, 20, 40]
  assert losses[-1] < losses[0] - 1.0  # from ~log(258) = 5.55 nats towards byte statistics
  again, meta2 = pretrained.load_or_pretrain(spec, corpus=corpus, root=dirs["cache_dir"],
                                             log=logs.append)
  assert sum("pre-training" in line for line in logs) == 1  # loaded, not retrained
  assert meta2 == meta
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params),
                                                   jax.tree.leaves(again)))
  # Same spec, fresh training: bit-identical (determinism); another seed: another model.
  fresh, _ = pretrained.pretrain(spec, corpus)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params),
                                                   jax.tree.leaves(fresh)))
  other = pretrained.PretrainSpec(**{**spec.__dict__, "seed": 1})
  assert other.digest() != spec.digest() and other.path() != spec.path()


@pytest.mark.slow
def test_pretrain_experiment_reports_the_cached_model(dirs, tmp_path):
  c = tiny_pretrain(dirs)
  doc = run_sweep(lm_pretrain, c, str(tmp_path), stream=io.StringIO())
  (claim,) = doc["claims"]
  spec = lm_pretrain.spec(c.pretrain)
  _, meta = pretrained.load(spec.path(dirs["cache_dir"]), spec.config)
  assert claim["value"] == pytest.approx(meta["val_loss"])
  assert claim["holds"] == (meta["val_loss"] <= c.target_val_loss)
  assert 2.5 < claim["unigram_loss"] < 4.0  # Python source: ~4.4 bits (3.1 nats) per byte
  assert os.path.exists(tmp_path / report_folder(c) / "loss.png")


def test_heldout_windows_are_disjoint_equal_and_seeded():
  class Corpus:  # a stream whose every token is its own position: windows are traceable
    validation = {"json": np.arange(1 + 10 * 8), "html": np.arange(10_000, 10_000 + 1 + 3 * 8)}

  split = fedlora.heldout_windows(Corpus, ("json", "html"), 8, 4, seed=0)
  (vx, vy), (tx, ty) = split["validation"], split["test"]
  # json: 10 windows -> 4 + 4 (max_windows); html: 3 windows -> 1 + 1 (n // 2): 5 + 5.
  assert vx.shape == tx.shape == (5, 8)
  assert not set(vy.ravel()) & set(ty.ravel())  # no target byte scored in both splits
  np.testing.assert_array_equal(vy[:, :-1], vx[:, 1:])  # next-token targets
  again = fedlora.heldout_windows(Corpus, ("json", "html"), 8, 4, seed=0)
  other = fedlora.heldout_windows(Corpus, ("json", "html"), 8, 4, seed=100)
  np.testing.assert_array_equal(again["test"][0], tx)
  assert not np.array_equal(other["test"][0], tx)


@pytest.mark.slow
def test_fedlora_claims_follow_from_the_logged_values(dirs, tmp_path):
  c = tiny_fedlora(dirs)
  doc = run_sweep(fedlora, c, str(tmp_path), stream=io.StringIO())
  claims = {cl["id"]: cl for cl in doc["claims"]}
  base = jax.eval_shape(lambda: transformer.init(transformer.VARIANTS["tiny"],
                                                 jax.random.PRNGKey(0)))
  d, f = 32, 128
  lora_params = 2 * 2 * (3 * (d + d) + (d + f))  # blocks x rank x (in + out) per target
  ratio = transformer.num_params(base) / lora_params
  assert claims["trainable_params_reduction"]["value"] == pytest.approx(ratio)
  assert claims["uplink_bytes_reduction"]["value"] == pytest.approx(ratio)  # float32 both
  # The ratios are fixed by the rank and the targets (accounting): checks, not reproductions.
  assert {k: cl["kind"] for k, cl in claims.items()} == {
      "trainable_params_reduction": "check", "uplink_bytes_reduction": "check",
      "downstream_loss_vs_full": "reproduction"}
  with ResultsDB(results_path(str(tmp_path))) as db:
    final = db.final_values("fedlora", "downstream_loss")
    uplink = db.final_values("fedlora", "uplink_bytes_per_round")
    info = {r["method"]: {k: v for k, v in r["info"].items() if k != "environment"}
            for r in db.runs("fedlora") if r["seed"] == 0}
  assert uplink["fedit"][0] == 4 * lora_params * 4  # 4 participants x float32 adapters
  assert info["fedit"] == {"trainable_params": lora_params,
                           "frozen_params": transformer.num_params(base)}
  assert info["full"] == {"trainable_params": transformer.num_params(base), "frozen_params": 0}
  loss_ratio = final["fedit"][0] / final["full"][0]
  assert claims["downstream_loss_vs_full"]["value"] == pytest.approx(loss_ratio)
  assert claims["downstream_loss_vs_full"]["holds"] == (loss_ratio <= c.max_loss_ratio)
  with open(tmp_path / report_folder(c) / "claims.json") as fh:
    written = json.load(fh)
  # Tuning: each method's 2 grid points on tuning seed 1000, ranked by the final
  # downstream loss on the validation windows; the reported run logs the kept rate.
  with ResultsDB(results_path(str(tmp_path))) as db:
    tuned = db.final_values("fedlora", "downstream_loss")
    diverged = db.final_values("fedlora", "diverged")
    chosen = db.final_values("fedlora", "client_lr")
  ctx = fedlora.prepare(c)
  md = (tmp_path / report_folder(c) / "report.md").read_text()
  for m in fedlora.METHODS:
    grid = fedlora.lr_grid(c, m)
    names = [families.point_name(m, p) for p in grid]
    loss = [np.inf if diverged.get(n, {}).get(1000) else tuned[n][1000] for n in names]
    best = grid[int(np.argmin(loss))]["client_lr"]
    assert chosen[m] == {0: pytest.approx(best)}
    row = next(line for line in md.splitlines() if line.startswith(f"| {fedlora.NAMES[m]} |"))
    assert "| 2 |" in row and f"client_lr={report.fmt(best)}" in row
  # Step 0 is the pre-trained model: a tuning run scores it on the validation windows, the
  # reported run on the (distinct) test windows.
  base_config, base = fedlora.base_model(c, ctx.corpus, log=lambda s: None)
  tuning_run = families.point_name("fedit", fedlora.lr_grid(c, "fedit")[0])
  with ResultsDB(results_path(str(tmp_path))) as db:
    start = {"validation": db.series("fedlora", tuning_run, "downstream_loss")[1000][2][0],
             "test": db.series("fedlora", "fedit", "downstream_loss")[0][2][0]}
  for split, value in start.items():
    x, y = ctx.windows[split][:2]
    expected = float(transformer.lm_metrics(base_config, base, x, y)["loss"])
    assert value == pytest.approx(expected, rel=1e-5)
  assert start["validation"] != start["test"]
  rebuilt = report.rebuild(str(tmp_path))
  assert any(r["experiment"] == "fedlora" for r in rebuilt)
  with open(tmp_path / report_folder(c) / "claims.json") as fh:
    assert json.load(fh) == written


@pytest.mark.slow
def test_fedlora_lora_starts_from_the_pretrained_function(dirs):
  c = tiny_fedlora(dirs)
  ctx = fedlora.prepare(c)
  base_config, base = fedlora.base_model(c, ctx.corpus, log=lambda s: None)
  config, params, _ = fedlora.model(c, "fedit", base_config, base, jax.random.PRNGKey(0))
  x = ctx.windows["test"][0][:4]
  np.testing.assert_allclose(transformer.apply(config, params, x),
                             transformer.apply(base_config, base, x), atol=1e-6, rtol=0)
  assert [s.domain for s in corpus_lib.client_domains(4)] == list(ctx.domains)
  assert not set(ctx.domains) & set(corpus_lib.GENERAL_DOMAINS)


@pytest.mark.slow
def test_fedlora_launch_stops_at_a_tick_on_sigint(dirs, tmp_path, sigint_launch):
  """Ctrl-C during the first vmapped call of a 2-seed run (its tuning call, 4 rounds: a
  tick after each): exit 130, the call's runs interrupted (conftest.assert_interrupted)."""
  sigint_launch(tiny_fedlora(dirs, num_seeds=2, num_rounds=4), tmp_path)
