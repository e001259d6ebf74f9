"""The launcher: bad input ends with one line naming the field, exit 2, nothing written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sweeps import launch, report

CONFIG = "sweeps/configs/fedavg.py:quick"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def at_root(monkeypatch):
  monkeypatch.chdir(ROOT)


@pytest.mark.parametrize("args,field", [
    (["--config", "sweeps/configs/nope.py"], "--config"),
    (["--config", "sweeps/configs/fedavg.py:bogus"], "variant"),
    ([f"--config={CONFIG}", "--config.num_clients=0"], "num_clients"),
    ([f"--config={CONFIG}", "--config.num_clients=-3"], "num_clients"),
    ([f"--config={CONFIG}", "--config.alpha=0"], "alpha"),
    ([f"--config={CONFIG}", "--config.alpha=-0.5"], "alpha"),
    ([f"--config={CONFIG}", "--config.num_clients=5000"], "num_clients"),
    ([f"--config={CONFIG}", "--config.dataset=imagenet"], "dataset"),
    ([f"--config={CONFIG}", "--config.client_lr=-0.1"], "client_lr"),
    ([f"--config={CONFIG}", "--config.server_lr=-1"], "server_lr"),
    ([f"--config={CONFIG}", "--config.experiment=nope"], "experiment"),
    ([f"--config={CONFIG}", "--config.no_such_field=1"], "no_such_field"),
    ([f"--config={CONFIG}", "--config.num_clients=abc"], "num_clients"),
    ([f"--config={CONFIG}", "--config.clients_per_round=30"], "clients_per_round"),
    ([f"--config={CONFIG}", "--backend=mars"], "--backend"),
    ([f"--config={CONFIG}", "--config.compute_median=0"], "compute_median"),
    ([f"--config={CONFIG}", "--config.client_lr=inf"], "client_lr"),
    ([f"--config={CONFIG}", "--config.min_client_size=0"], "min_client_size"),
    ([f"--config={CONFIG}", "--config.data_dir=README.md"], "data_dir"),
    ([f"--config={CONFIG}", "--config.experiment=bench_fl"], "experiment"),
    ([f"--config={CONFIG}", "--config.num_devices=-1"], "num_devices"),
    (["--config=README.md"], "--config"),
    (["--config=sweeps/configs/bench_fl.py:quick", "--config.num_clients=0"], "num_clients"),
    (["--config=sweeps/configs/bench_fl.py:quick", "--config.partition=dirichlet",
      "--config.alpha=0.0001"], "alpha"),
    (["--config=sweeps/configs/prism.py", "--config.slots=sorted"], "slots"),
    (["--config=sweeps/configs/prism.py", "--config.data_dir=README.md"], "data_dir"),
    (["--config=sweeps/configs/prism.py", "--config.denoiser.heads=3"], "denoiser.heads"),
    (["--config=sweeps/configs/prism.py", "--config.tokens.sigma=-1"], "tokens.sigma"),
    ([f"--config={CONFIG}", "--config.local_epochs=0"], "local_epochs"),
    ([f"--config={CONFIG}", "--config.availability_high=nan"], "availability_high"),
    (["--config=sweeps/configs/bench_shapes.py", "--config.ddim_steps=500"], "ddim_steps"),
    # Values that would run and make the experiment meaningless.
    ([f"--config={CONFIG}", "--config.client_lr=0"], "client_lr"),
    ([f"--config={CONFIG}", "--config.server_lr=0"], "server_lr"),
    ([f"--config={CONFIG}", "--config.batch_size=5000"], "batch_size"),
    (["--config=sweeps/configs/air_fedga.py", "--config.batch_size=5000"], "batch_size"),
    (["--config=sweeps/configs/prism.py", "--config.batch_size=4001"], "batch_size"),
    (["--config=sweeps/configs/cocodc.py", "--config.batch_size=1025"], "batch_size"),
    (["--config=sweeps/configs/fedlora.py", "--config.batch_size=1000000"], "batch_size"),
    ([], "--config"),
])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, args, field):
  workdir = tmp_path / "runs"
  code = launch.main(["launch", *args, f"--workdir={workdir}"])
  err = capsys.readouterr().err.strip()
  assert code == 2
  assert len(err.splitlines()) == 1, err
  assert err.startswith("error: ") and field in err and "expected" in err, err
  assert not workdir.exists()


@pytest.mark.parametrize("args,message", [
    (["--config.num_seed=2"],
     "--config.num_seed: expected a field of the config (see --help --config=FILE); "
     "did you mean --config.num_seeds?"),
    (["--config.nope.x=1"],  # no close field: no suggestion
     "--config.nope.x: expected a field of the config (see --help --config=FILE)"),
])
def test_a_misspelt_override_names_its_key_and_the_likely_field(tmp_path, capsys, args,
                                                                  message):
  assert launch.main(["launch", f"--config={CONFIG}", *args, f"--workdir={tmp_path}"]) == 2
  assert capsys.readouterr().err == f"error: {message}\n"


def test_a_misspelt_block_field_keeps_the_blocks_path(tmp_path, capsys):
  args = ["--config=sweeps/configs/prism.py", "--config.denoiser.widht=3"]
  assert launch.main(["launch", *args, f"--workdir={tmp_path}"]) == 2
  assert capsys.readouterr().err.endswith("did you mean --config.denoiser.width?\n")


def test_an_unknown_variant_is_reported_as_the_variant(tmp_path, capsys):
  assert launch.main(["launch", "--config=sweeps/configs/fedavg.py:bogus"]) == 2
  assert capsys.readouterr().err == (
      "error: variant: expected one of ['quick', 'full'], got 'bogus' "
      "(in --config=sweeps/configs/fedavg.py:bogus)\n")


def test_help_lists_the_flags_and_the_configs_fields(tmp_path, capsys):
  assert launch.main(["launch", "--help"]) == 0
  out = capsys.readouterr().out
  for flag in ("--workdir", "--backend", "--sweep", "--print_config", "--ray.address",
               "--slurm.partition"):
    assert flag in out, flag
  assert "give --config=FILE[:variant] as well" in out
  assert launch.main(["launch", "--help", "--config=sweeps/configs/prism.py:full"]) == 0
  out = capsys.readouterr().out
  assert "fields of sweeps/configs/prism.py:full" in out
  # Every leaf, block fields by their path, with the variant's values.
  assert "  --config.num_train=2000\n" in out and "  --config.denoiser.kind='set'\n" in out
  assert not list(tmp_path.iterdir())


def test_print_config_prints_the_resolved_config_and_runs_nothing(tmp_path, capsys):
  from sweeps.results import config_hash

  workdir = tmp_path / "runs"
  args = ["launch", f"--config={CONFIG}", "--config.num_rounds=7", "--print_config",
          f"--workdir={workdir}"]
  assert launch.main(args) == 0
  out = capsys.readouterr().out
  head, *body = out.splitlines()
  fv = launch._define_flags(args)
  fv(args)
  assert head == f"# {CONFIG}, config hash {config_hash(fv.config)}"
  assert "num_rounds: 7" in body and "client_lr: 0.05" in body
  assert not workdir.exists()
  # Still validated: a bad value is the usual one-line error.
  assert launch.main([*args, "--config.num_rounds=0"]) == 2
  assert "config.num_rounds: expected" in capsys.readouterr().err


def test_workdir_that_is_a_file(tmp_path, capsys):
  path = tmp_path / "file"
  path.write_text("x")
  assert launch.main(["launch", f"--config={CONFIG}", f"--workdir={path}"]) == 2
  assert capsys.readouterr().err.startswith("error: --workdir: expected a directory")


def test_more_clients_than_samples_names_the_limit(tmp_path, capsys):
  code = launch.main(["launch", f"--config={CONFIG}", "--config.num_clients=5000",
                      "--config.clients_per_round=10", f"--workdir={tmp_path / 'w'}"])
  assert code == 2
  # digits' training split less the 20% of each class held out for validation
  assert "at most 1151" in capsys.readouterr().err


@pytest.mark.slow
def test_subprocess_exit_code_and_no_traceback(tmp_path):
  workdir = tmp_path / "runs"
  proc = subprocess.run([sys.executable, "-m", "sweeps.launch", f"--config={CONFIG}",
                         "--config.alpha=-1", f"--workdir={workdir}"],
                        capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "error: config.alpha: expected a positive finite number, got -1.0"]
  assert "Traceback" not in proc.stdout + proc.stderr
  assert not workdir.exists()


@pytest.mark.slow
def test_fedavg_quick_end_to_end(tmp_path, user_xla):
  """The README's main command, seed 0 and one tuning seed only (the suite's time budget):
  the claim holds.

  All five seeds and both tuning seeds run in `python -m sweeps.reproduce --quick`
  (REPRODUCTION.md).
  """
  workdir = tmp_path / "runs"
  proc = subprocess.run([sys.executable, "-m", "sweeps.launch", f"--config={CONFIG}",
                         "--config.num_seeds=1", "--config.num_tuning_seeds=1",
                         f"--workdir={workdir}"], capture_output=True,
                        text=True, cwd=ROOT, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "[fedavg seeds 0 (one vmapped call)] done" in proc.stdout
  out = Path(report.latest_report(str(workdir), "fedavg"))
  assert out.name.startswith("quick,num_seeds=1,num_tuning_seeds=1-")
  doc = json.loads((out / "claims.json").read_text())
  assert doc["experiment"] == "fedavg" and doc["variant"] == "quick"
  assert doc["seeds"] == [0]
  (claim,) = doc["claims"]
  assert claim["id"] == "accuracy_vs_centralized"
  assert len(claim["per_seed"]["fedavg"]) == 1
  # The quick run's accuracies are measured, not assumed; the digits MLP reaches > 90%.
  assert claim["baseline_value"] > 90.0 and claim["value"] > 85.0
  assert claim["holds"] == (claim["value"] >= claim["baseline_value"] - 3.0)
  assert claim["holds"], "FedAvg fell more than 3 points behind centralized training"
  for name in ("report.md", "accuracy.png"):
    assert (out / name).exists()
  assert (workdir / "results.sqlite").exists()


@pytest.mark.slow
def test_persistent_compilation_cache_under_the_cache_dir(tmp_path):
  """The launcher points JAX's compilation cache at $JAXFL_CACHE_DIR/xla, unless told not to
  or given an explicit JAX_COMPILATION_CACHE_DIR (one process: its JAX config is its own)."""
  code = """
import os, jax
from sweeps.launch import _use_compilation_cache
seen = []
for enabled, explicit in ((True, ""), (False, ""), (True, "/elsewhere")):
  jax.config.update("jax_compilation_cache_dir", explicit or None)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = explicit
  _use_compilation_cache(enabled)
  seen.append(str(jax.config.jax_compilation_cache_dir))
print(",".join(seen))
"""
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env["JAXFL_CACHE_DIR"] = str(tmp_path)
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True, cwd=ROOT).stdout.strip()
  assert out.split(",") == [str(tmp_path / "xla"), "None", "/elsewhere"]
