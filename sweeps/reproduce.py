"""Reproduce every experiment's headline claim and tabulate them.

  python -m sweeps.reproduce [--quick] [--only fedavg,bench_fl] [--workdir runs]

Runs each experiment config in ``sweeps/configs/`` (its ``quick`` variant with
``--quick``, else ``full``) through the launcher, one process each (so each gets a fresh
JAX runtime), then writes ``<workdir>/REPRODUCTION.md``: one row per claim with the paper's
statement, our value, the baseline's value and whether it holds. Finished runs are
skipped on a relaunch, as with the launcher.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys

from sweeps import configs
from sweeps.report import fmt

_fmt = functools.partial(fmt, missing="null")  # claims.json spells a missing value null
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def table(docs: list[dict]) -> str:
  rows = ["| experiment | claim | paper | our value | baseline value | holds |",
          "|---|---|---|---|---|---|"]
  for doc in docs:
    for cl in doc["claims"]:
      base = (f"{cl['baseline']}: {_fmt(cl['baseline_value'])}" if "baseline" in cl
              else f"threshold {_fmt(cl['threshold'])}")
      rows.append(f"| {doc['experiment']} ({doc['variant']}) | {cl['statement']} | {cl['paper']} | "
                  f"{cl['method']}: {_fmt(cl['value'])} | {base} | "
                  f"{'yes' if cl['holds'] else '**no**'} |")
  return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m sweeps.reproduce",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="quick variants (minutes on a CPU)")
  parser.add_argument("--only", default="", help="comma-separated experiment names")
  parser.add_argument("--workdir", default="runs")
  args = parser.parse_args(argv)
  names = configs.names()
  only = [n for n in args.only.split(",") if n]
  unknown = [n for n in only if n not in names]
  if unknown:
    print(f"error: --only: expected names among {names}, got {unknown}", file=sys.stderr)
    return 2
  variant = "quick" if args.quick else "full"
  docs, failed = [], []
  for name in only or names:
    print(f"== {name}:{variant}", flush=True)
    code = subprocess.call([sys.executable, "-m", "sweeps.launch",
                            f"--config={os.path.join(configs.FOLDER, name)}.py:{variant}",
                            f"--workdir={args.workdir}"], cwd=ROOT)
    path = os.path.join(args.workdir, name, "claims.json")
    if code != 0 or not os.path.exists(path):
      failed.append(name)
      continue
    with open(path) as f:
      docs.append(json.load(f))
  os.makedirs(args.workdir, exist_ok=True)
  out = os.path.join(args.workdir, "REPRODUCTION.md")
  lines = [f"# Reproduction ({variant} variants)", "",
           f"Regenerate with `python -m sweeps.reproduce{' --quick' if args.quick else ''}`.", "",
           table(docs), ""]
  if failed:
    lines += [f"Failed to run: {', '.join(failed)}.", ""]
  with open(out, "w") as f:
    f.write("\n".join(lines))
  held = sum(cl["holds"] for d in docs for cl in d["claims"])
  total = sum(len(d["claims"]) for d in docs)
  print(f"{held}/{total} claims hold -> {out}")
  return 1 if failed else 0


if __name__ == "__main__":
  raise SystemExit(main())
