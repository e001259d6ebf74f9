"""Pre-training of the byte-level LM (see sweeps/configs/lm_pretrain.py)."""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import numpy as np

from jaxfl.data import corpus as corpus_lib
from jaxfl.errors import check, check_number
from jaxfl.models import pretrained, transformer
from sweeps import claims as claims_lib
from sweeps import report as report_lib
from sweeps.configs import common
from sweeps.sweep import RunSpec

METHODS = ("pretrain",)


def spec(p) -> pretrained.PretrainSpec:
  """The :class:`PretrainSpec` the config's ``pretrain`` block builds (ConfigError naming
  ``pretrain.<field>`` on a bad one)."""
  return common.build(pretrained.PretrainSpec, p, "pretrain")


def validate(c) -> None:
  common.check(c)
  check(c.num_seeds == 1, "num_seeds", "1 (one model per recipe; vary pretrain.seed)",
        c.num_seeds)
  check_number(c.target_val_loss, "target_val_loss", low=0, strict=True)
  spec(c.pretrain)  # every pretrain.* field


class Context(NamedTuple):
  corpus: corpus_lib.Corpus


def load_corpus(c) -> corpus_lib.Corpus:
  return corpus_lib.load_corpus(c.data_dir or None)


def prepare(c) -> Context:
  return Context(load_corpus(c))


def run_specs(c) -> list[RunSpec]:
  return [RunSpec("pretrain", c.seed)]


def rounds(c, spec_: RunSpec) -> int:
  del spec_
  return c.pretrain.steps


def execute(c, spec_: RunSpec, ctx: Context, run_dir: str, log_metrics, progress) -> dict:
  """Pre-train (or load the cached model) and log its validation curve."""
  del spec_, run_dir
  s = spec(c.pretrain)
  root = c.cache_dir or None
  cached = pretrained.load(s.path(root), s.config) is not None
  if cached:
    progress.log(f"reusing the cached model {s.path(root)}")
  params, meta = pretrained.load_or_pretrain(s, corpus=ctx.corpus, root=root, log=progress.log)
  for row in meta["history"]:
    values = {k: row[k] for k in ("loss", "accuracy", "seconds") if row.get(k) is not None}
    if row.get("train_loss") is not None:
      values["train_loss"] = row["train_loss"]
    log_metrics(row["step"], None, values)
    progress.update(row["step"], acc=row["accuracy"])
  unigram = unigram_loss(ctx.corpus, s.domains)
  log_metrics(s.steps, None, {"num_params": float(transformer.num_params(params)),
                              "unigram_loss": unigram})
  return {"path": s.path(root), "cached": cached, "digest": s.digest()}


def unigram_loss(corpus: corpus_lib.Corpus, domains) -> float:
  """Cross-entropy (nats/byte) of the validation text under the train bytes' frequencies.

  The context-free baseline a language model must beat (add-one smoothing).
  """
  train, valid = pretrained.general_streams(corpus, domains)
  counts = np.bincount(train, minlength=corpus_lib.VOCAB_SIZE) + 1.0
  logp = np.log(counts / counts.sum())
  return float(-logp[valid].mean())


def report(c, db, out: str, digest: str) -> dict:
  final = {n: db.final_values(c.experiment, n, config_hash=digest).get("pretrain", {})
           for n in ("loss", "accuracy", "seconds", "unigram_loss", "num_params")}
  seeds = [c.seed]
  loss = [final["loss"].get(s) for s in seeds]
  claim = claims_lib.claim(
      id="validation_loss", kind="check",
      statement=(f"The '{c.pretrain.variant}' LM pre-trained for {c.pretrain.steps} steps reaches "
                 f"{c.target_val_loss} nats/byte on held-out general-domain text"),
      paper="a small pre-trained LM is the starting point of the federated fine-tuning "
            "papers (FedBE arXiv 2506.05977, FedQuad 2506.01001, HierFedLoRA 2503.21213, "
            "DropPEFT 2503.10217)",
      metric="val_loss_nats_per_byte", better="lower", method="pretrain",
      threshold=c.target_val_loss, per_seed={"pretrain": loss},
      unigram_loss=final["unigram_loss"].get(c.seed),
      wall_seconds=final["seconds"].get(c.seed))
  doc = claims_lib.write_claims(os.path.join(out, "claims.json"), experiment=c.experiment,
                                variant=c.variant, seeds=seeds, claims=[claim])
  curve = db.series(c.experiment, "pretrain", "loss", config_hash=digest)
  with report_lib.figure(os.path.join(out, "loss.png"), size=(6, 4)) as ax:
    for seed, (steps, _, values) in curve.items():
      ax.plot(steps, values, label=f"validation (seed {seed})")
    if final["unigram_loss"].get(c.seed) is not None:
      ax.axhline(final["unigram_loss"][c.seed], color="k", ls=":", label="unigram baseline")
    ax.axhline(c.target_val_loss, color="C3", ls="--", label="claim threshold")
    ax.set(xlabel="step", ylabel="loss (nats/byte)", ylim=(0, 6),
           title=f"pre-training '{c.pretrain.variant}'")
  fmt = report_lib.fmt
  bits = None if loss[0] is None else loss[0] / math.log(2)
  report_lib.write_markdown(out, [
      f"# lm_pretrain ({c.variant})", report_lib.claims_table(doc),
      f"Validation loss {fmt(loss[0])} nats/byte ({fmt(bits)} bits/byte), next-byte accuracy "
      f"{fmt(final['accuracy'].get(c.seed))}; unigram baseline "
      f"{fmt(final['unigram_loss'].get(c.seed))} nats/byte. "
      f"{fmt(final['num_params'].get(c.seed))} parameters; wall time of the training "
      f"{fmt(final['seconds'].get(c.seed))} s (when it was trained).",
      report_lib.image("loss.png"),
      "Recipe: " + ", ".join(f"{k}={v}" for k, v in c.pretrain.items()) +
      f"; domains {', '.join(corpus_lib.GENERAL_DOMAINS)}."])
  return doc

