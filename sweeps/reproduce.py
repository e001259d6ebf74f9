"""Reproduce every experiment's headline claim and tabulate them.

  python -m sweeps.reproduce [--quick] [--only fedavg,bench_fl] [--workdir runs]
                            [--seed N] [--compare runs_before]

Runs each experiment config in ``sweeps/configs/`` (its ``quick`` variant with
``--quick``, else ``full``) through the launcher, one process each (so each gets a fresh
JAX runtime), then writes ``<workdir>/REPRODUCTION.md``: one row per claim with the paper's
statement, our value, the baseline's value and whether it holds. Finished runs are
skipped on a relaunch, as with the launcher. ``--seed N`` launches every experiment with
``--config.seed=N`` (its reported seeds ``N, N + 1, ...`` and tuning seeds ``N + 1000,
...``): the claims at a seed range nobody chose anything on.

``--compare`` names the workdir of an earlier reproduction (another commit's, say) and adds
a table of each claim beside the same claim there: ``bit-equal`` when every number it was
computed from (its value, the baseline's, every per-seed value) is the same float, else how
many differ and by how much at most (relative). A refactor that should not change results
is checked this way; timing benchmarks are expected to differ.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import subprocess
import sys

from sweeps import claims as claims_lib
from sweeps import configs
from sweeps.report import fmt, latest_report

_fmt = functools.partial(fmt, missing="null")  # claims.json spells a missing value null
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def table(docs: list[dict], kind: str | None = None) -> str:
  """One row per claim of ``docs`` (only those of ``kind``, if given)."""
  rows = ["| experiment | claim | paper | our value | baseline value | holds |",
          "|---|---|---|---|---|---|"]
  for doc in docs:
    for cl in doc["claims"]:
      if kind is not None and cl.get("kind") != kind:
        continue
      base = (f"{cl['baseline']}: {_fmt(cl['baseline_value'])}" if "baseline" in cl
              else f"threshold {_fmt(cl['threshold'])}")
      rows.append(f"| {doc['experiment']} ({doc['variant']}) | {cl['statement']} | {cl['paper']} | "
                  f"{cl['method']}: {_fmt(cl['value'])} | {base} | "
                  f"{claims_lib.verdict(cl)} |")
  return "\n".join(rows)


def _numbers(claim: dict) -> dict[str, float | None]:
  """The numbers a claim was computed from, by name (``per_seed.<method>[i]``)."""
  out = {k: claim.get(k) for k in ("value", "baseline_value") if k in claim}
  for method, values in claim.get("per_seed", {}).items():
    out.update({f"per_seed.{method}[{i}]": v for i, v in enumerate(values)})
  return out


def _difference(before: dict, after: dict) -> str:
  """``bit-equal``, or how many of the claim's numbers differ and the largest relative gap."""
  a, b = _numbers(before), _numbers(after)
  differ = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
  if not differ:
    return "bit-equal"
  gaps = [abs(a[k] - b[k]) / max(abs(a[k]), abs(b[k]))
          if isinstance(a.get(k), (int, float)) and isinstance(b.get(k), (int, float))
          else math.inf for k in differ]
  return f"{len(differ)} of {len(set(a) | set(b))} numbers differ, by at most {max(gaps):.1e}"


def compare(docs: list[dict], reference: list[dict]) -> str:
  """A markdown table of each claim of ``docs`` beside the same claim (experiment, variant
  and id) of ``reference``.

  >>> doc = {"experiment": "x", "variant": "quick", "claims": [
  ...     {"id": "c", "value": 1.5, "holds": True, "per_seed": {"m": [1.0, 2.0]}}]}
  >>> ref = {**doc, "claims": [{**doc["claims"][0], "per_seed": {"m": [1.0, 2.5]}}]}
  >>> print(compare([doc], [ref]).splitlines()[-1])
  | x (quick) | c | yes -> yes | 1.5 -> 1.5 | 1 of 3 numbers differ, by at most 2.0e-01 |
  """
  rows = ["| experiment | claim | holds (reference -> now) | value (reference -> now) | numbers |",
          "|---|---|---|---|---|"]
  yes = lambda cl: claims_lib.verdict(cl, no="no")
  for doc, cl, ref in _matched(docs, reference):
    where = f"| {doc['experiment']} ({doc['variant']}) | {cl['id']} |"
    if ref is None:
      rows.append(f"{where} - -> {yes(cl)} | - -> {_fmt(cl['value'])} | not in the reference |")
      continue
    rows.append(f"{where} {yes(ref)} -> {yes(cl)} | {_fmt(ref['value'])} -> "
                f"{_fmt(cl['value'])} | {_difference(ref, cl)} |")
  return "\n".join(rows)


def _matched(docs: list[dict], reference: list[dict]):
  """``(doc, claim, the reference's same claim or None)`` for every claim of ``docs``."""
  known = {(d["experiment"], d["variant"], cl["id"]): cl for d in reference for cl in d["claims"]}
  for doc in docs:
    for cl in doc["claims"]:
      yield doc, cl, known.get((doc["experiment"], doc["variant"], cl["id"]))


def _reference_docs(workdir: str, names: list[str]) -> list[dict]:
  docs = []
  for name in names:
    folder = latest_report(workdir, name)
    path = folder and os.path.join(folder, "claims.json")
    if path and os.path.exists(path):
      with open(path) as f:
        docs.append(json.load(f))
  return docs


def launch(cmd: list[str], cwd: str) -> int:
  """Run one launch and return its exit code. On Ctrl-C the terminal has sent SIGINT to the
  launch too, which stops at its next step, marks its runs interrupted and exits 130: wait
  for that (``subprocess.call`` would SIGKILL it), then raise KeyboardInterrupt."""
  proc = subprocess.Popen(cmd, cwd=cwd)
  interrupted = False
  while True:
    try:
      code = proc.wait()
      break
    except KeyboardInterrupt:  # a later Ctrl-C: the launch ignores it too, and is stopping
      interrupted = True
  if interrupted:
    raise KeyboardInterrupt
  return code


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m sweeps.reproduce",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="the quick variants (minutes on a CPU); without it, the full "
                      "variants (accelerator scale, catalog datasets)")
  parser.add_argument("--only", default="",
                      help=f"comma-separated experiment names (default: all of {configs.names()})")
  parser.add_argument("--workdir", default="runs",
                      help="where results and REPRODUCTION.md go (relative to this directory)")
  parser.add_argument("--seed", type=int, default=None,
                      help="every experiment's base seed (default: each config's own, 0)")
  parser.add_argument("--compare", default="",
                      help="an earlier reproduction's workdir to compare every claim with")
  args = parser.parse_args(argv)
  # The launches run from the repository root: paths are the caller's, made absolute.
  args.workdir = os.path.abspath(args.workdir)
  args.compare = os.path.abspath(args.compare) if args.compare else ""
  names = configs.names()
  only = [n for n in args.only.split(",") if n]
  unknown = [n for n in only if n not in names]
  if unknown:
    print(f"error: --only: expected names among {names}, got {unknown}", file=sys.stderr)
    return 2
  if args.compare and not os.path.isdir(args.compare):
    print(f"error: --compare: expected an earlier reproduction's workdir, got {args.compare!r}",
          file=sys.stderr)
    return 2
  variant = "quick" if args.quick else "full"
  docs, failed = [], []
  for name in only or names:
    print(f"== {name}:{variant}", flush=True)
    try:
      code = launch([sys.executable, "-m", "sweeps.launch",
                     f"--config={os.path.join(configs.FOLDER, name)}.py:{variant}",
                     f"--workdir={args.workdir}",
                     *([] if args.seed is None else [f"--config.seed={args.seed}"])], ROOT)
    except KeyboardInterrupt:
      print("interrupted; relaunch the same command to resume", file=sys.stderr)
      return 130
    folder = latest_report(args.workdir, name) if code == 0 else None
    path = folder and os.path.join(folder, "claims.json")
    if not path or not os.path.exists(path):
      failed.append(name)
      continue
    with open(path) as f:
      docs.append(json.load(f))
  os.makedirs(args.workdir, exist_ok=True)
  out = os.path.join(args.workdir, "REPRODUCTION.md")
  flags = (" --quick" if args.quick else "") + ("" if args.seed is None else f" --seed {args.seed}")
  seeds = "" if args.seed is None else f", base seed {args.seed}"
  lines = [f"# Reproduction ({variant} variants{seeds})", "",
           f"Regenerate with `python -m sweeps.reproduce{flags}`.", "",
           f"{claims_lib.counts(docs)}. A reproduction is a paper's statement the measurement "
           "could contradict; a check is accounting, a theorem or a sanity target, never "
           "counted as reproduced.", "", "## Reproductions", "", table(docs, "reproduction"), "",
           "## Checks", "", table(docs, "check"), ""]
  if failed:
    lines += [f"Failed to run: {', '.join(failed)}.", ""]
  reference = _reference_docs(args.compare, only or names) if args.compare else []
  if args.compare:
    lines += [f"## Against `{args.compare}`", "", compare(docs, reference), ""]
  with open(out, "w") as f:
    f.write("\n".join(lines))
  total = sum(len(d["claims"]) for d in docs)
  print(f"{claims_lib.counts(docs)} -> {out}")
  if args.compare:
    same = sum(ref is not None and _difference(ref, cl) == "bit-equal"
               for _, cl, ref in _matched(docs, reference))
    print(f"{same}/{total} claims bit-equal to {args.compare}'s -> {out}")
  return 1 if failed else 0


if __name__ == "__main__":
  raise SystemExit(main())
