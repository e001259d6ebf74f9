"""Federated LoRA (FedIT) vs federated full fine-tuning (see sweeps/configs/fedlora.py).

Both methods are :class:`jaxfl.algorithms.fedpeft.FederatedPEFT` (FedAvg over the
trainable part of the model, server step 1) on the same clients, differing only in what
trains: FedIT the LoRA factors (``A``, ``B`` averaged separately; Zhang et al., arXiv
2305.05644), full fine-tuning every parameter.

Data splits (:func:`heldout_windows`): the clients train on the corpus's ``train`` files;
the held-out files of every domain are cut into non-overlapping windows and dealt, by a
generator seeded with the config's base ``seed``, into a **validation** and a disjoint
**test** set of equal size. Tuning runs (stage ``"tune"``) are evaluated on validation
windows, reported runs (``"report"``) on test windows (:data:`sweeps.families.SPLITS`),
so the learning rate each method keeps was chosen on data no claim is computed on.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxfl import progress
from jaxfl.algorithms.fedpeft import FederatedPEFT, PEFTInputs
from jaxfl.data import corpus as corpus_lib
from jaxfl.errors import ConfigError, check, check_number
from jaxfl.local import ClientData
from jaxfl.models import lora, pretrained, transformer
from jaxfl.sim import sample_profiles, tree_bytes
from sweeps import claims as claims_lib
from sweeps import families as families_lib
from sweeps import report as report_lib
from sweeps.configs import common
from sweeps.experiments import lm_pretrain
from sweeps.families import SPLITS, seeds, tuning_seeds

METHODS = ("fedit", "full")
NAMES = {"fedit": "FedIT (LoRA)", "full": "full fine-tuning"}
KEY_LORA, KEY_PROFILES, KEY_ROUNDS = range(3)
EVAL_METRICS = ("downstream_loss", "downstream_accuracy", "general_loss", "general_accuracy")


def validate(c) -> None:
  common.check(c)
  spec = lm_pretrain.spec(c.pretrain)
  n_domains = len(corpus_lib.CLIENT_DOMAINS)
  for field in ("num_clients", "clients_per_round", "seq_len", "windows_per_client",
                "eval_windows", "batch_size", "local_steps", "num_rounds", "eval_every",
                "lora_rank"):
    check_number(c[field], field, low=1, integer=True)
  check(c.batch_size <= c.windows_per_client, "batch_size",
        f"at most windows_per_client={c.windows_per_client} (a client's own data)", c.batch_size)
  check(c.clients_per_round <= c.num_clients, "clients_per_round",
        f"between 1 and num_clients={c.num_clients}", c.clients_per_round)
  check(c.seq_len <= spec.config.max_len, "seq_len",
        f"an integer in [1, {spec.config.max_len}] (the model's context)", c.seq_len)
  check(c.num_clients <= n_domains * 64, "num_clients", f"at most {n_domains * 64}",
        c.num_clients)
  check(len(c.lora_targets) > 0, "lora_targets", f"names among {transformer.LINEAR_NAMES}",
        c.lora_targets)
  try:  # the names are checked where adapters are made
    transformer.LMConfig(num_layers=1, d_model=2, num_heads=1, d_ff=1, max_len=1,
                         lora_targets=tuple(c.lora_targets))
  except ConfigError as e:
    raise ConfigError("lora_targets", e.expected, e.got) from None
  for field in ("lora_alpha", "compute_median", "uplink_median", "downlink_median",
                "min_reduction", "max_loss_ratio"):
    check_number(c[field], field, low=0, strict=True)
  for field in ("lora_lr_grid", "full_lr_grid"):
    check(len(c[field]) > 0, field, "a non-empty tuple of learning rates", c[field])
    for v in c[field]:
      check_number(v, field, low=0, strict=True)
  check(len(c.full_lr_grid) == len(c.lora_lr_grid), "full_lr_grid",
        f"{len(c.lora_lr_grid)} values (the same tuning budget as lora_lr_grid)",
        c.full_lr_grid)
  check_number(c.profile_sigma, "profile_sigma", low=0)


class Context:
  """The corpus, the clients' windows, the validation and test windows and (loaded on
  first use) the pre-trained base model."""

  def __init__(self, corpus, clients: ClientData, windows, domains):
    self.corpus = corpus
    self.clients = clients  # [num_clients, windows_per_client, seq_len]
    # {"validation" | "test": (downstream x, y, general x, y)}: the clients' domains' and
    # the general domains' held-out windows (general: forgetting, never selected on).
    self.windows = windows
    self.domains = domains  # each client's domain
    self._base = None

  def base(self, c, log=print) -> tuple[transformer.LMConfig, dict]:
    if self._base is None:
      self._base = base_model(c, self.corpus, log=log)
    return self._base


def heldout_windows(corpus, domains, seq_len: int, max_windows: int, seed: int
                    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """``{"validation": (x, y), "test": (x, y)}``, disjoint, deterministic in ``seed``.

  Each domain's held-out stream (the corpus's ``validation`` files, which no client and no
  pre-training saw) is cut into its non-overlapping windows
  (:func:`jaxfl.data.corpus.eval_windows`); a generator seeded with ``(seed, domain)``
  shuffles them and deals the first ``k`` to validation and the next ``k`` to test,
  ``k = min(max_windows, n // 2)`` of the domain's ``n``, so both splits have the same
  shape and no target byte is in both. Domains are concatenated in the order given.
  """
  parts = {"validation": [], "test": []}
  for d in domains:
    x, y = corpus_lib.eval_windows(corpus.validation[d], seq_len)
    k = min(max_windows, len(x) // 2)
    check(k >= 1, "seq_len", f"short enough for 2 held-out windows of domain {d!r}", seq_len)
    order = np.random.default_rng([seed, corpus_lib.DOMAINS.index(d)]).permutation(len(x))
    for name, idx in (("validation", order[:k]), ("test", order[k:2 * k])):
      idx = np.sort(idx)
      parts[name].append((x[idx], y[idx]))
  return {name: (np.concatenate([p[0] for p in ps]), np.concatenate([p[1] for p in ps]))
          for name, ps in parts.items()}


def prepare(c) -> Context:
  corpus = lm_pretrain.load_corpus(c)
  shards = corpus_lib.client_domains(c.num_clients)
  clients = corpus_lib.client_windows(corpus, c.num_clients, c.seq_len, c.windows_per_client)
  used = tuple(dict.fromkeys(s.domain for s in shards))
  down = heldout_windows(corpus, used, c.seq_len, c.eval_windows, c.seed)
  general = heldout_windows(corpus, corpus_lib.GENERAL_DOMAINS, c.seq_len, c.eval_windows,
                            c.seed)
  windows = {k: (*down[k], *general[k]) for k in down}
  return Context(corpus, clients, windows, tuple(s.domain for s in shards))


def eval_rounds(c) -> list[int]:
  """Rounds with an evaluation: the initial model's (0), every ``eval_every``-th, the last."""
  return [0, *sorted({*range(c.eval_every, c.num_rounds + 1, c.eval_every), c.num_rounds})]


def base_model(c, corpus, log=print) -> tuple[transformer.LMConfig, dict]:
  """The pre-trained model of ``c.pretrain`` (pre-trained and cached when missing)."""
  spec = lm_pretrain.spec(c.pretrain)
  params, _ = pretrained.load_or_pretrain(spec, corpus=corpus, root=c.cache_dir or None, log=log)
  return spec.config, params


def model(c, method: str, base_config, base_params, key) -> tuple[transformer.LMConfig, dict,
                                                                   lora.PathRule]:
  """The fine-tuned model's config, initial parameters and trainable rule."""
  if method == "full":
    return base_config, base_params, lora.everything
  config = base_config.with_lora(c.lora_rank, alpha=float(c.lora_alpha),
                                 targets=tuple(c.lora_targets))
  fresh = transformer.init(config, jax.random.fold_in(key, KEY_LORA))
  adapters, _ = lora.split(fresh, lora.path_labels(fresh, lora.is_lora_path))
  return config, lora.combine(adapters, base_params), lora.is_lora_path


def lr_grid(c, method: str) -> list[dict[str, float]]:
  """The method's tuning grid over its client learning rate (the same size for both)."""
  values = c.full_lr_grid if method == "full" else c.lora_lr_grid
  return [{"client_lr": float(v)} for v in values]


def _rule(method: str) -> lora.PathRule:
  return lora.everything if method == "full" else lora.is_lora_path


def federated(c, config: transformer.LMConfig, method: str, lr) -> FederatedPEFT:
  """FedAvg over the method's trainable tree: fresh Adam at client learning rate ``lr``
  (a traced scalar under a grid) every round, the server's step FedAvg's 1."""
  return FederatedPEFT(config, _rule(method), optax.adam(lr), batch_size=c.batch_size,
                       clients_per_round=c.clients_per_round, local_steps=c.local_steps)


def _evaluate(config: transformer.LMConfig, trainable, frozen, windows) -> dict:
  params = lora.combine(trainable, frozen)
  down_x, down_y, gen_x, gen_y = windows
  d = transformer.lm_metrics(config, params, down_x, down_y)
  g = transformer.lm_metrics(config, params, gen_x, gen_y)
  return {"downstream_loss": d["loss"], "downstream_accuracy": d["accuracy"],
          "general_loss": g["loss"], "general_accuracy": g["accuracy"]}


def _simulate_fn(c, ctx: Context, method: str):
  """``simulate(key, (base_params, windows), {"client_lr": lr})``: ``num_rounds`` FedAvg
  rounds of ``method`` as a scan, evaluated on ``windows`` (a stage's split) at
  :func:`eval_rounds`; the summary (trainable parameters, uplink bytes, retention of
  general accuracy, general-loss increase) at the last of them."""
  steps = eval_rounds(c)
  lengths = np.diff(steps)  # rounds before each evaluation after the first

  def simulate(key, inputs, hparams):
    base_params, windows = inputs
    base_config, _ = ctx.base(c)
    config, params0, rule = model(c, method, base_config, base_params, key)
    trainable, frozen = lora.split(params0, lora.path_labels(params0, rule))
    profiles = sample_profiles(jax.random.fold_in(key, KEY_PROFILES), c.num_clients,
                               compute_median=c.compute_median, uplink_median=c.uplink_median,
                               downlink_median=c.downlink_median, sigma=c.profile_sigma)
    fed = federated(c, config, method, hparams["client_lr"])
    round_inputs = PEFTInputs(jax.tree.map(jnp.asarray, ctx.clients), frozen, profiles)
    evaluate = lambda st: _evaluate(config, st.params, frozen, windows)

    def train_then_evaluate(state, n: int):
      state, m = jax.lax.scan(lambda st, _: fed.round(st, round_inputs), state, None,
                              length=n)
      return state, (state.sim_time, evaluate(state), m.loss[-1],
                     jnp.sum(m.participants.astype(jnp.float32)))

    state = fed.init(trainable, jax.random.fold_in(key, KEY_ROUNDS))
    rows = [(state.sim_time[None], jax.tree.map(lambda v: v[None], evaluate(state)),
             jnp.full([1], jnp.nan), jnp.zeros([1]))]
    # Rows: the pre-trained model's, then one per evaluation interval (all eval_every but
    # perhaps the last). The intervals are a scan: its iterations run in order, so the
    # ticks arrive as the rows are computed (an unrolled loop's may all come at the end).
    full = int(np.sum(lengths == c.eval_every))

    def interval(state, i):
      state, out = train_then_evaluate(state, c.eval_every)
      progress.tick(i + 2, len(lengths) + 1, after=out[0])
      return state, out

    if full:
      state, out = jax.lax.scan(interval, state, jnp.arange(full))
      rows.append(out)
    for i, n in enumerate(lengths[full:], start=full):
      state, out = train_then_evaluate(state, int(n))
      progress.tick(i + 2, len(lengths) + 1, after=out[0])
      rows.append(jax.tree.map(lambda v: v[None], out))
    sim_time = jnp.concatenate([r[0] for r in rows])
    values = {k: jnp.concatenate([r[1][k] for r in rows]) for k in rows[0][1]}
    first, last = jax.tree.map(lambda v: v[0], values), jax.tree.map(lambda v: v[-1], values)
    uplink = jnp.sum(jnp.concatenate([r[3] for r in rows])) * tree_bytes(trainable)
    summary = {"trainable_params": jnp.float32(lora.count(trainable)),
               "uplink_bytes_per_round": uplink / c.num_rounds,  # participants x bytes
               "retention": last["general_accuracy"] / jnp.maximum(first["general_accuracy"],
                                                                    1e-12),
               "general_loss_increase": last["general_loss"] - first["general_loss"]}
    at_end = jnp.arange(len(steps)) == len(steps) - 1
    values["train_loss"] = jnp.concatenate([r[2] for r in rows])
    values.update({k: jnp.where(at_end, v, jnp.nan) for k, v in summary.items()})
    return sim_time, values

  return simulate


def families(c, ctx: Context) -> list[families_lib.Family]:
  """FedIT and full fine-tuning, a family each (their trainable trees differ), each tuned
  over its own client learning rate with the same number of grid points
  (:func:`lr_grid`): every point on the tuning seeds, evaluated on the validation
  windows, the lowest mean final downstream validation loss kept; then the reported seeds
  at the kept point, evaluated on the test windows. A call vmaps ``num_seeds`` runs."""
  select = families_lib.lowest("downstream_loss")
  out = []
  for method in METHODS:
    def post(run, outputs, method=method):
      del run
      base_config, base_params = ctx.base(c)
      shapes = jax.eval_shape(lambda: model(c, method, base_config, base_params,
                                            jax.random.PRNGKey(0))[1])
      trainable, frozen = lora.split(shapes, lora.path_labels(shapes, _rule(method)))
      return (*outputs, {"trainable_params": lora.count(trainable),
                         "frozen_params": lora.count(frozen)})

    out.append(families_lib.Family(
        name=method, methods=(method,), simulate=_simulate_fn(c, ctx, method),
        steps=eval_rounds(c), grid=lr_grid(c, method), select=select, batch=c.num_seeds,
        inputs=lambda m, seed, stage: (ctx.base(c)[1], ctx.windows[SPLITS[stage]]), post=post,
        optional=("train_loss", "trainable_params", "uplink_bytes_per_round", "retention",
                  "general_loss_increase")))
  return out


# ----------------------------------------------------------------------------- report


def report(c, db, out: str, digest: str) -> dict:
  """claims.json, report.md and curves.png from the database alone: the reported runs'
  (test windows) values; the tuning table reads each method's kept learning rate back from
  its reported runs."""
  names = ("downstream_loss", "downstream_accuracy", "general_loss", "general_accuracy",
           "trainable_params", "uplink_bytes_per_round", "retention", "general_loss_increase")
  final = {n: db.final_values(c.experiment, n, config_hash=digest) for n in names}
  per_seed = {n: {m: [final[n].get(m, {}).get(s) for s in seeds(c)] for m in METHODS}
              for n in names}

  def ratio(n, num, den):
    return [None if a is None or b is None or b == 0 else a / b
            for a, b in zip(per_seed[n][num], per_seed[n][den])]

  paper = ("FedIT: federated instruction tuning with LoRA (Zhang et al., arXiv 2305.05644); "
           "LoRA cuts trainable parameters by orders of magnitude at comparable quality (Hu et "
           "al., arXiv 2106.09685)")
  claims = [
      claims_lib.claim(
          id="trainable_params_reduction", kind="check",
          statement=f"FedIT trains at least {c.min_reduction:g}x fewer parameters than full "
                    "fine-tuning",
          paper=paper, metric="full_over_lora_trainable_params", better="higher",
          method="fedit", threshold=c.min_reduction,
          per_seed={"fedit": ratio("trainable_params", "full", "fedit")}),
      claims_lib.claim(
          id="uplink_bytes_reduction", kind="check",
          statement=f"FedIT uploads at least {c.min_reduction:g}x fewer bytes per round (mean "
                    "over rounds of participants x update bytes) than full fine-tuning",
          paper=paper, metric="full_over_lora_uplink_bytes_per_round", better="higher",
          method="fedit", threshold=c.min_reduction,
          per_seed={"fedit": ratio("uplink_bytes_per_round", "full", "fedit")}),
      claims_lib.claim(
          id="downstream_loss_vs_full", kind="reproduction",
          statement=f"FedIT's final downstream test loss is within "
                    f"{100 * (c.max_loss_ratio - 1):.0f}% of full fine-tuning's, each at "
                    "the client learning rate chosen on validation windows and tuning seeds",
          paper=paper, metric="lora_over_full_downstream_loss", better="lower", method="fedit",
          threshold=c.max_loss_ratio,
          per_seed={"fedit": ratio("downstream_loss", "fedit", "full")}),
  ]
  doc = claims_lib.write_claims(
      os.path.join(out, "claims.json"), experiment=c.experiment, variant=c.variant,
      seeds=seeds(c), claims=claims, reported={n: per_seed[n] for n in names})
  curves = {n: {m: db.series(c.experiment, m, n, config_hash=digest) for m in METHODS}
            for n in ("downstream_loss", "general_loss")}
  tuning = report_lib.tuning_table(
      db, c.experiment, digest, {m: lr_grid(c, m) for m in METHODS},
      f"final downstream validation loss, mean over {c.num_tuning_seeds} tuning seeds; server "
      "step 1, FedAvg's, not tuned", NAMES)
  write_report(out, c, doc, per_seed, curves, tuning)
  return doc


def write_report(out, c, doc, per_seed, curves, tuning: str) -> None:
  with report_lib.figure(os.path.join(out, "curves.png"), 1, 2, size=(11, 4)) as axes:
    for ax, (name, by_method) in zip(axes, curves.items()):
      for i, (m, by_seed) in enumerate(by_method.items()):
        report_lib.seed_band(ax, by_seed, color=f"C{i}", label=NAMES[m])
      ax.set(xlabel="round", ylabel=f"{name.replace('_', ' ')} (nats/byte)",
             title="downstream domains" if name.startswith("down") else
             "general domains (forgetting)")
  start = {n: [v[2][0] for by_seed in curves[n].values() for v in by_seed.values() if v[2]]
           for n in curves}
  fmt = report_lib.fmt
  report_lib.write_markdown(out, [
      f"# fedlora ({c.variant})", report_lib.claims_table(doc),
      tuning,
      "Before fine-tuning (the pre-trained model, test windows): downstream loss "
      f"{fmt(start['downstream_loss'][0] if start['downstream_loss'] else None)}, general "
      f"loss {fmt(start['general_loss'][0] if start['general_loss'] else None)} (nats/byte).",
      report_lib.metric_table(per_seed, [
          ("downstream_loss", "downstream loss"), ("general_loss", "general loss"),
          ("general_accuracy", "general accuracy"), ("retention", "retention"),
          ("trainable_params", "trainable params"),
          ("uplink_bytes_per_round", "uplink bytes / round")], METHODS, NAMES),
      "Retention = general-domain next-byte accuracy after / before fine-tuning.",
      report_lib.image("curves.png"),
      f"{c.num_clients} clients (one stdlib domain each), {c.clients_per_round} per round, "
      f"{c.num_rounds} rounds x {c.local_steps} local Adam steps of {c.batch_size} windows "
      f"of {c.seq_len} bytes; LoRA rank {c.lora_rank}, alpha {c.lora_alpha} on "
      f"{', '.join(c.lora_targets)}. Held-out windows: up to {c.eval_windows} validation "
      "and as many disjoint test windows per domain, dealt by a generator seeded with "
      f"seed {c.seed}; tuning runs (seeds {', '.join(map(str, tuning_seeds(c)))}) are "
      "evaluated on validation windows, the reported runs on test windows."])
