"""python -m sweeps.reproduce: the claims table, the comparison with an earlier reproduction,
and its bad-input errors. (The launches themselves are the launcher's, tested in
test_launch.py; here the launch step is replaced by claims.json files already in place.)"""

import json
import os
import sys

import pytest

from sweeps import claims, reproduce
from sweeps.results import ResultsDB, results_path


def doc(experiment="fedavg", **claim):
  base = dict(id="acc", kind="reproduction", statement="s", paper="p", method="fedavg",
              value=94.5, holds=True,
              baseline="centralized", baseline_value=96.0, per_seed={"fedavg": [94.0, 95.0]})
  return {"experiment": experiment, "variant": "quick", "claims": [{**base, **claim}]}


def write_report(workdir, d, name="quick-0123abcd"):
  """What a launch leaves: ``d`` as the claims.json of a report folder it registered."""
  out = os.path.join(d["experiment"], name)
  os.makedirs(os.path.join(workdir, out), exist_ok=True)
  with open(os.path.join(workdir, out, "claims.json"), "w") as f:
    json.dump(d, f)
  with ResultsDB(results_path(workdir)) as db:
    db.register_report(d["experiment"], "0123abcd0123abcd", out)


def test_table_rows_name_the_baseline_or_the_threshold_and_kinds_count_apart():
  threshold = doc("bench_fl", baseline=None, value=None, holds=False, threshold=1.5)
  del threshold["claims"][0]["baseline"]
  rows = reproduce.table([doc(), threshold]).splitlines()
  assert rows[2] == "| fedavg (quick) | s | p | fedavg: 94.5 | centralized: 96 | yes |"
  assert rows[3] == "| bench_fl (quick) | s | p | fedavg: null | threshold 1.5 | **no** |"
  check = doc("fedlora", kind="check", id="params")
  assert len(reproduce.table([doc(), check], "check").splitlines()) == 3  # header + 1 row
  assert "fedlora" in reproduce.table([doc(), check], "check")
  assert claims.counts([doc(), threshold, check]) == \
      "1 of 2 reproductions hold; 1 of 1 checks hold"


def test_compare_is_bit_equal_only_when_every_number_is_the_same_float():
  same = reproduce.compare([doc()], [doc()]).splitlines()[2]
  assert same == "| fedavg (quick) | acc | yes -> yes | 94.5 -> 94.5 | bit-equal |"
  # One per-seed value moves by one float32 ulp at 95: still reported.
  moved = doc(per_seed={"fedavg": [94.0, 95.0 + 2 ** -17]})
  row = reproduce.compare([moved], [doc()]).splitlines()[2]
  assert row.endswith(f"| 1 of 4 numbers differ, by at most {2 ** -17 / (95 + 2 ** -17):.1e} |")
  # A value that became missing (a target never reached) is an infinite difference.
  gone = reproduce.compare([doc(value=None, holds=False)], [doc()]).splitlines()[2]
  assert "yes -> no | 94.5 -> null | 1 of 4 numbers differ, by at most inf |" in gone
  assert reproduce._difference(doc(value=None)["claims"][0],
                               doc(value=None)["claims"][0]) == "bit-equal"
  new = reproduce.compare([doc(id="new")], [doc()]).splitlines()[2]
  assert new.endswith("| new | - -> yes | - -> 94.5 | not in the reference |")


def test_main_tabulates_and_compares_the_claims_in_place(tmp_path, monkeypatch, capsys):
  now, before = tmp_path / "runs", tmp_path / "before"
  for root, d in ((now, doc(per_seed={"fedavg": [94.0, 95.5]})), (before, doc())):
    write_report(str(root), d)
  launched = []
  monkeypatch.setattr(reproduce, "launch", lambda cmd, cwd: launched.append(cmd) or 0)
  code = reproduce.main(["--quick", "--only", "fedavg", "--workdir", str(now),
                         "--compare", str(before)])
  assert code == 0
  assert launched[0][-2:] == [f"--config={reproduce.configs.FOLDER}/fedavg.py:quick",
                              f"--workdir={now}"]
  out = capsys.readouterr().out
  assert "1 of 1 reproductions hold; 0 of 0 checks hold" in out
  assert f"0/1 claims bit-equal to {before}'s" in out
  text = (now / "REPRODUCTION.md").read_text()
  assert "## Reproductions" in text and "## Checks" in text
  gap = 0.5 / 95.5
  assert f"| acc | yes -> yes | 94.5 -> 94.5 | 1 of 4 numbers differ, by at most {gap:.1e} |" \
      in text


def test_seed_reaches_every_launch_and_the_title(tmp_path, monkeypatch):
  write_report(str(tmp_path), doc())
  launched = []
  monkeypatch.setattr(reproduce, "launch", lambda cmd, cwd: launched.append(cmd) or 0)
  assert reproduce.main(["--quick", "--only", "fedavg", "--seed", "100",
                         "--workdir", str(tmp_path)]) == 0
  assert launched[0][-1] == "--config.seed=100"
  text = (tmp_path / "REPRODUCTION.md").read_text()
  assert text.startswith("# Reproduction (quick variants, base seed 100)")
  assert "`python -m sweeps.reproduce --quick --seed 100`" in text


def test_a_relative_workdir_is_the_callers(tmp_path, monkeypatch, capsys):
  """The launches run in the repository root; --workdir is resolved where the user is."""
  monkeypatch.chdir(tmp_path)
  launched = []

  def call(cmd, cwd):  # the launch writes where it was told to
    launched.append(cmd)
    write_report(cmd[-1].removeprefix("--workdir="), doc())
    return 0

  monkeypatch.setattr(reproduce, "launch", call)
  assert reproduce.main(["--quick", "--only", "fedavg", "--workdir", "rel"]) == 0
  assert launched[0][-1] == f"--workdir={tmp_path / 'rel'}"
  assert "Failed to run" not in (tmp_path / "rel" / "REPRODUCTION.md").read_text()


def test_help_says_which_variants_run_by_default(capsys):
  with pytest.raises(SystemExit):
    reproduce.main(["--help"])
  out = " ".join(capsys.readouterr().out.split())
  assert "without it, the full variants" in out and "relative to this directory" in out


@pytest.mark.parametrize("args,field", [(["--only", "nope"], "--only"),
                                        (["--compare", "/no/such/dir"], "--compare")])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, field):
  code = reproduce.main([*args, "--workdir", str(tmp_path / "runs")])
  err = capsys.readouterr().err.strip()
  assert code == 2 and len(err.splitlines()) == 1
  assert err.startswith(f"error: {field}: expected")
  assert not (tmp_path / "runs").exists()


class _Child:
  """A launch as ``subprocess.Popen`` gives it: its wait is interrupted by ``ctrl_c``
  Ctrl-Cs (KeyboardInterrupt in the parent), then it ends with ``code``."""

  def __init__(self, ctrl_c, code):
    self.ctrl_c, self.code, self.waits, self.killed = ctrl_c, code, 0, False

  def __call__(self, cmd, cwd):
    self.cmd = cmd
    return self

  def wait(self):
    self.waits += 1
    if self.waits <= self.ctrl_c:
      raise KeyboardInterrupt
    return self.code

  def kill(self):
    self.killed = True


@pytest.mark.parametrize("ctrl_c", [1, 2])
def test_ctrl_c_waits_for_the_launch_to_stop_itself_then_exits_130(tmp_path, monkeypatch,
                                                                  capsys, ctrl_c):
  child = _Child(ctrl_c, code=130)
  monkeypatch.setattr(reproduce.subprocess, "Popen", child)
  code = reproduce.main(["--quick", "--only", "fedavg,prism", "--workdir", str(tmp_path)])
  assert code == 130 and not child.killed and child.waits == ctrl_c + 1
  assert capsys.readouterr().err.strip() == "interrupted; relaunch the same command to resume"
  assert child.cmd[-1] == f"--workdir={tmp_path}"  # fedavg's; prism never launched
  assert not (tmp_path / "REPRODUCTION.md").exists()


def test_a_launch_returns_its_exit_code():
  assert reproduce.launch([sys.executable, "-c", "raise SystemExit(3)"], reproduce.ROOT) == 3
