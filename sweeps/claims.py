"""claims.json: a paper's headline result, checked at small scale (DESIGN.md contract 8).

A claim compares a measured ``value`` (median over seeds) either with a baseline's
measured value (optionally allowing a ``margin``) or with a fixed ``threshold`` from
the config. Nothing here decides a result: it only applies the config's numbers.

Every claim has a ``kind`` (DESIGN.md contract 11): ``reproduction``, a paper's (or the
literature's) statement that the measurement could contradict, or ``check``: accounting
fixed by the configuration (parameter counts, bytes), a theorem the implementation must
satisfy, or a sanity target. Reports and ``sweeps.reproduce`` count the two apart, and
only reproductions count as reproduced.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

BETTER = ("higher", "lower")
KINDS = ("reproduction", "check")


def median(values: Sequence[float | None], better: str = "higher") -> float | None:
  """Median over seeds; a missing value (``None``, e.g. target never reached) counts as worst.

  Returns ``None`` when the median itself is a missing value.
  """
  worst = -math.inf if better == "higher" else math.inf
  xs = sorted(worst if v is None or not math.isfinite(v) else float(v) for v in values)
  if not xs:
    return None
  n = len(xs)
  m = xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])
  return None if math.isinf(m) or math.isnan(m) else m


def mean(values: Sequence[float | None], better: str = "higher") -> float | None:
  """Mean over seeds; a missing value counts as worst, so any missing value gives ``None``."""
  xs = [v for v in values if v is not None and math.isfinite(v)]
  if not values or len(xs) < len(values):
    return None
  return math.fsum(float(v) for v in xs) / len(xs)


AGGREGATES = {"median": median, "mean": mean}


def claim(*, id: str, kind: str, statement: str, paper: str, metric: str, better: str,
          method: str, per_seed: dict[str, list[float | None]], baseline: str | None = None,
          margin: float = 0.0, threshold: float | None = None, aggregate: str = "median",
          strict: bool = False, **extra) -> dict:
  """One claim entry.

  ``kind`` is one of :data:`KINDS` (see the module docstring). Exactly one of
  ``baseline`` (compare medians, ``margin`` slack in the worse direction) or
  ``threshold`` (compare the median with a fixed number) is given.
  ``aggregate='mean'`` compares means over seeds instead (where an issue states its claim
  as a mean); the entry records which. ``strict`` makes a tie fail (a claim of "less
  time", on a grid where two methods often land on the same point); the entry records it.
  """
  if kind not in KINDS:
    raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
  if better not in BETTER:
    raise ValueError(f"better: expected one of {BETTER}, got {better!r}")
  if aggregate not in AGGREGATES:
    raise ValueError(f"aggregate: expected one of {list(AGGREGATES)}, got {aggregate!r}")
  if (baseline is None) == (threshold is None):
    raise ValueError("claim needs exactly one of baseline and threshold")
  agg = AGGREGATES[aggregate]
  value = agg(per_seed[method], better)
  sign = 1.0 if better == "higher" else -1.0
  out = dict(id=id, kind=kind, statement=statement, paper=paper, metric=metric,
             better=better, method=method, value=value)
  if aggregate != "median":
    out["aggregate"] = aggregate
  if baseline is not None:
    base = agg(per_seed[baseline], better)
    out.update(baseline=baseline, baseline_value=base, margin=margin)
    diff = None if value is None or base is None else sign * (value - base) + margin
    holds = diff is not None and (diff > 0 if strict else diff >= 0)
  else:
    out.update(threshold=threshold)
    holds = value is not None and sign * (value - threshold) >= 0
  if strict:
    out["strict"] = True
  out.update(per_seed=per_seed, holds=bool(holds), **extra)
  return out


def counts(docs: Sequence[dict]) -> str:
  """How many claims of each kind hold over claims documents (incomplete ones apart).

  >>> doc = {"claims": [{"kind": "reproduction", "holds": True},
  ...                   {"kind": "reproduction", "holds": False}, {"kind": "check", "holds": True}]}
  >>> counts([doc])
  '1 of 2 reproductions hold; 1 of 1 checks hold'
  >>> counts([{"claims": [{"kind": "check", "holds": None, "incomplete": ["a seed 1"]}]}])
  '0 of 0 reproductions hold; 0 of 1 checks hold (1 incomplete)'
  """
  parts = []
  for kind in KINDS:
    these = [cl for d in docs for cl in d["claims"] if cl.get("kind") == kind]
    line = f"{sum(cl['holds'] is True for cl in these)} of {len(these)} {kind}s hold"
    missing = sum(cl["holds"] is None for cl in these)
    parts.append(line + (f" ({missing} incomplete)" if missing else ""))
  return "; ".join(parts)


def verdict(cl: dict, no: str = "**no**") -> str:
  """A claim's holds column: ``yes``, ``no`` or ``incomplete`` (a reported run missing)."""
  return "incomplete" if cl["holds"] is None else "yes" if cl["holds"] else no


def mark_incomplete(doc: dict, missing: Sequence[str]) -> dict:
  """``doc`` with every claim ``incomplete`` when a reported run is ``missing``
  (``"<method> seed <s>"``; DESIGN.md contract 8: a claim missing a seed's value is
  incomplete, not false): ``holds`` becomes None and ``incomplete`` names the runs.
  Unchanged when nothing is missing.

  Every claim, not only those naming the missing method: a claim's aggregate may draw on
  any reported run (a target set by a baseline, a ratio of two methods).
  """
  if not missing:
    return doc
  claims = [{**cl, "holds": None, "incomplete": list(missing)} for cl in doc["claims"]]
  return {**doc, "claims": claims}


def write_claims(path: str | os.PathLike, *, experiment: str, variant: str, seeds: Sequence[int],
                 claims: list[dict], **extra) -> dict:
  doc = dict(experiment=experiment, variant=variant, seeds=list(seeds), claims=claims, **extra)
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
  os.replace(tmp, path)
  return doc
