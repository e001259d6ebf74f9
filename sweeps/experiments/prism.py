"""PRISM vs global PCA vs independent parts (see sweeps/configs/prism.py).

Per seed ``s``: training shapes ``load(category, 'train', seed=s)``, held-out shapes
``load(category, 'test', seed=s)`` (the first ``num_eval`` are the metrics' references,
all ``num_samples`` the held-out real sample for the structure statistics), one part SSM
per label fitted on the training shapes, and three generators:

* ``prism``: the token diffusion model (:mod:`shapes.diffusion`) trained on the training
  shapes' tokens (fresh label noise, and slot order when ``slots='set'``, every batch),
  sampled with ancestral DDPM and decoded by :func:`shapes.tokens.decode`;
* ``global_pca`` and ``independent`` (:mod:`shapes.baselines`).

Every method draws ``num_samples`` shapes: all of them give the existence-pattern TV and
the rule violations, the first ``num_eval`` (``eval_points`` points each, normalised into
``[-1, 1]^3``) the Chamfer MMD, COV and 1-NNA against the references.

PRISM's seeds train and sample as one vmapped call of :class:`shapes.prism.Pipeline`
(a :mod:`sweeps.families` family; decoding and the metrics run on the host after it),
the two baselines as a second family whose work is all on the host. The first seed's
PRISM run also stores a gallery of generated shapes, an editing sequence (the back and
arms of a held-out chair regenerated around its kept seat and legs by inpainting) and an
interpolation, as SSM coefficients in the run's info: the report decodes and draws them.
"""

from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxfl.errors import check
from shapes import baselines, data, diffusion, metrics, plot, tokens
from shapes import prism as prism_lib
from shapes import ssm as ssm_lib
from sweeps import claims as claims_lib
from sweeps import families as families_lib
from sweeps import report as report_lib
from sweeps.families import seeds

METHODS = ("prism", "global_pca", "independent")
NAMES = {"prism": "PRISM", "global_pca": "global PCA", "independent": "independent parts"}
KEY_EDIT = 3  # an edit's key (shapes.prism.Pipeline takes 0-2 from the run's key)
#: Two parts whose sizes the generator ties together, per category, and the feature of
#: each compared (x-extent, or mean x for the lamp's shade, which hangs from the arm's end).
PAIRS = {"chair": ("seat", "back"), "table": ("top", "shelf"), "lamp": ("arm", "shade")}
#: Parts regenerated in the editing sequence (the rest are kept).
EDITED = {"chair": ("back", "arms"), "table": ("legs4", "pedestal", "shelf"),
          "lamp": ("arm", "shade")}


def validate(c) -> None:
  check(isinstance(c.seed, int) and c.seed >= 0, "seed", "a non-negative integer", c.seed)
  check(c.category in data.CATEGORIES, "category", f"one of {list(data.CATEGORIES)}",
        c.category)
  for field in ("num_seeds", "num_train", "num_modes", "width", "depth", "heads",
                "train_steps", "batch_size", "num_samples", "num_eval", "eval_points"):
    check(isinstance(c[field], int) and c[field] > 0, field, "a positive integer", c[field])
  check(isinstance(c.points_per_part, int) and c.points_per_part >= 24, "points_per_part",
        "an integer >= 24", c.points_per_part)
  check(isinstance(c.diffusion_steps, int) and c.diffusion_steps >= 2, "diffusion_steps",
        "an integer >= 2", c.diffusion_steps)
  check(isinstance(c.warmup_steps, int) and 0 <= c.warmup_steps < c.train_steps,
        "warmup_steps", f"an integer in [0, train_steps={c.train_steps})", c.warmup_steps)
  check(isinstance(c.num_pictures, int) and 0 <= c.num_pictures <= c.num_samples,
        "num_pictures", f"an integer in [0, num_samples={c.num_samples}]", c.num_pictures)
  check(c.num_eval <= c.num_samples, "num_eval", f"at most num_samples={c.num_samples}",
        c.num_eval)
  check(c.slots in ("ordered", "set"), "slots", "'ordered' or 'set'", c.slots)
  check(c.prediction in ("eps", "v"), "prediction", "'eps' or 'v'", c.prediction)
  check(c.denoiser in ("set", "mlp"), "denoiser", "'set' or 'mlp'", c.denoiser)
  check(c.denoiser == "set" or c.slots == "ordered", "denoiser",
        "'set' when slots='set' (an MLP needs ordered slots)", c.denoiser)
  check(c.width % c.heads == 0 and c.width % 2 == 0, "heads",
        f"a divisor of an even width={c.width}", c.heads)
  check(c.num_modes <= c.num_train, "num_modes", f"at most num_train={c.num_train}",
        c.num_modes)
  for field in ("alpha", "lr", "label_weight"):
    check(math.isfinite(c[field]) and c[field] > 0, field, "a positive number", c[field])
  check(math.isfinite(c.sigma) and c.sigma >= 0, "sigma", "a non-negative number", c.sigma)
  check(math.isfinite(c.min_nna_gap), "min_nna_gap", "a number", c.min_nna_gap)
  for field in ("max_pattern_tv", "max_violations"):
    check(0 <= c[field] <= 1, field, "a number in [0, 1]", c[field])
  check(isinstance(c.data_dir, str) and not os.path.isfile(c.data_dir), "data_dir",
        "'' or a directory path (not a file)", c.data_dir)


class Context:
  """Each seed's shapes, SSMs and reference clouds, loaded when a run first needs them."""

  def __init__(self, c):
    self.c = c
    self._seeds: dict[int, SeedData] = {}

  def seed_data(self, seed: int) -> SeedData:
    if seed not in self._seeds:
      self._seeds[seed] = seed_data(self.c, seed)
    return self._seeds[seed]


def prepare(c) -> Context:
  return Context(c)


# ----------------------------------------------------------------------------- pieces


class SeedData(NamedTuple):
  train: data.PartShapes
  test: data.PartShapes  # num_samples held-out shapes; the first num_eval are references
  ssm: ssm_lib.PartSSMs
  refs: np.ndarray  # [num_eval, eval_points, 3] normalised reference clouds
  d_rr: np.ndarray  # [num_eval, num_eval] their pairwise Chamfer distances


def seed_shapes(c, seed: int) -> tuple[data.PartShapes, data.PartShapes, ssm_lib.PartSSMs]:
  """The seed's training and held-out shapes (cached on disk) and its part SSMs."""
  kw = dict(seed=seed, points_per_part=c.points_per_part, data_dir=c.data_dir or None)
  train = data.load(c.category, "train", c.num_train, **kw)
  test = data.load(c.category, "test", c.num_samples, **kw)
  return train, test, ssm_lib.fit(train, c.num_modes)


def seed_data(c, seed: int) -> SeedData:
  """:func:`seed_shapes` and the reference clouds with their pairwise distances."""
  train, test, model = seed_shapes(c, seed)
  refs = metrics.normalize(metrics.resample(test.points[:c.num_eval], test.exists[:c.num_eval],
                                            c.eval_points, seed))
  return SeedData(train, test, model, refs, np.asarray(metrics.pairwise_chamfer(refs, refs)))


def token_spec(c) -> tokens.TokenSpec:
  return tokens.TokenSpec(len(data.CATEGORIES[c.category]), c.num_modes, alpha=float(c.alpha),
                          sigma=float(c.sigma))


def denoiser_config(c) -> diffusion.DenoiserConfig:
  m = len(data.CATEGORIES[c.category])
  return diffusion.DenoiserConfig(token_spec(c).dim, width=c.width, depth=c.depth,
                                  heads=c.heads, num_slots=m if c.slots == "ordered" else 0,
                                  prediction=c.prediction, kind=c.denoiser)


def _weights(c) -> jax.Array:
  spec = token_spec(c)
  return jnp.concatenate([jnp.ones(spec.num_modes),
                          jnp.full(spec.num_classes, float(c.label_weight))])


def _schedule(c) -> diffusion.Schedule:
  return diffusion.Schedule.cosine(c.diffusion_steps)


def _optimizer(c) -> optax.GradientTransformation:
  lr = optax.warmup_cosine_decay_schedule(0.0, c.lr, c.warmup_steps, c.train_steps, c.lr / 10)
  return optax.adamw(lr)


def pipeline(c) -> prism_lib.Pipeline:
  return prism_lib.Pipeline(spec=token_spec(c), denoiser=denoiser_config(c),
                            schedule=_schedule(c), optimizer=_optimizer(c),
                            train_steps=c.train_steps, batch_size=c.batch_size,
                            shuffle=c.slots == "set", weights=_weights(c))


def geometry(c, d: SeedData, points, exists, seed: int) -> dict[str, float]:
  """MMD-CD, COV-CD and 1-NNA-CD of the first ``num_eval`` shapes against the references."""
  gen = metrics.normalize(metrics.resample(points[:c.num_eval], exists[:c.num_eval],
                                           c.eval_points, seed + 1))
  return metrics.generation_metrics(gen, d.refs, d_rr=d.d_rr)


def pair_correlation(category: str, labels, points, exists) -> float | None:
  """Pearson correlation of the :data:`PAIRS` features over shapes that have both parts."""
  a, b = (labels.index(n) for n in PAIRS[category])
  both = np.asarray(exists)[:, a] & np.asarray(exists)[:, b]
  if both.sum() < 3:
    return None
  pa, pb = np.asarray(points)[both, a], np.asarray(points)[both, b]
  fa = np.ptp(pa[..., 0], axis=-1)
  fb = pb[..., 0].mean(-1) if category == "lamp" else np.ptp(pb[..., 0], axis=-1)
  if fa.std() == 0 or fb.std() == 0:
    return None
  return float(np.corrcoef(fa, fb)[0, 1])


def structure(c, d: SeedData, points, exists) -> dict[str, float]:
  shapes = data.PartShapes(c.category, d.train.labels, points, exists,
                           np.zeros((len(exists), 0), np.float32))
  values = {"pattern_tv": data.pattern_tv(exists, d.train.exists),
            "violations": float(data.violations(shapes).mean())}
  corr = pair_correlation(c.category, d.train.labels, points, exists)
  if corr is not None:
    values["pair_correlation"] = corr
  return values


# ----------------------------------------------------------------------------- runs


def prism_values(c, d: SeedData, seed: int, losses, z) -> tuple[dict, np.ndarray, np.ndarray]:
  """One seed's PRISM values from its training losses and sampled tokens, and the
  decoded coefficients and existence."""
  out = pipeline(c).decode(d.ssm, z)
  points, exists = np.asarray(out.points), np.asarray(out.exists)
  losses = np.asarray(losses)
  values = {"train_loss_start": float(losses[:100].mean()),
            "train_loss": float(losses[-100:].mean()),
            "duplicate_slots": float(np.mean(np.asarray(out.duplicates))),
            "heldout_pattern_tv": data.pattern_tv(d.test.exists, d.train.exists)}
  heldout_corr = pair_correlation(c.category, d.train.labels, d.test.points, d.test.exists)
  if heldout_corr is not None:
    values["heldout_pair_correlation"] = heldout_corr
  values.update(structure(c, d, points, exists))
  values.update(geometry(c, d, points, exists, seed))
  return values, np.asarray(out.coeffs), exists


def pictures(c, d: SeedData, params, coeffs, exists, seed: int) -> dict:
  """SSM coefficients of the gallery, the editing sequence and the interpolation."""
  labels = d.train.labels
  n = c.num_pictures
  # Editing: the first held-out shape with the most of the edited parts; kept slots exact.
  edited = np.array([lab in EDITED[c.category] for lab in labels])
  i = int(np.argmax(d.test.exists[:, edited].sum(axis=1)))
  edit = jax.jit(functools.partial(pipeline(c).inpaint, num=4))  # one program, not op by op
  known, z, out = edit(params, d.ssm, d.test.points[i:i + 1], d.test.exists[i:i + 1],
                       ~edited, key=jax.random.fold_in(jax.random.PRNGKey(seed), KEY_EDIT))
  # Interpolation: linear in the SSM coefficients between two held-out shapes with the
  # same parts.
  pat = data.existence_patterns(d.test.exists)
  same = np.flatnonzero((pat == pat[i]) & (np.arange(len(pat)) != i))
  j = int(same[0]) if same.size else i
  v = np.asarray(ssm_lib.encode(d.ssm, d.test.points[[i, j]], jnp.arange(len(labels))))
  ts = np.linspace(0, 1, 5)[:, None, None]
  interp = (1 - ts) * v[0] + ts * v[1]
  r = lambda a: np.round(np.asarray(a, np.float64), 4).tolist()
  return {"gallery": {"coeffs": r(coeffs[:n]), "exists": exists[:n].tolist()},
          "source": {"index": i, "exists": d.test.exists[i].tolist(),
                     "coeffs": r(v[0])},
          "edits": {"coeffs": r(out.coeffs), "exists": np.asarray(out.exists).tolist(),
                    "kept_unchanged": bool(np.array_equal(
                        np.asarray(z)[:, ~edited], np.asarray(known)[:, ~edited]))},
          "interpolation": {"coeffs": r(interp),
                            "exists": d.test.exists[i].tolist()}}


def run_baseline(c, d: SeedData, method: str, seed: int) -> dict:
  if method == "global_pca":
    points, exists = baselines.sample_global_pca(baselines.fit_global_pca(d.train),
                                                 c.num_samples, seed=seed)
  else:
    points, exists = baselines.sample_independent(d.ssm, d.train.exists.mean(0),
                                                  c.num_samples, seed=seed)
  return {**structure(c, d, points, exists), **geometry(c, d, points, exists, seed)}


def families(c, ctx: Context) -> list[families_lib.Family]:
  """PRISM (train and sample on device, one call for every seed; decode and score on the
  host) and the two baselines (host only). Nothing is tuned."""
  pipe = pipeline(c)
  m = len(data.CATEGORIES[c.category])

  def inputs(method, seed, stage):
    del method, stage
    d = ctx.seed_data(seed)
    return np.asarray(ssm_lib.encode(d.ssm, d.train.points, jnp.arange(m))), d.train.exists

  def generate(key, inputs, hparams):
    del hparams
    return pipe.generate(*inputs, c.num_samples, key)

  def post_prism(run, outputs):
    params, losses, z = outputs
    d = ctx.seed_data(run.seed)
    values, coeffs, exists = prism_values(c, d, run.seed, losses, z)
    info = pictures(c, d, params, coeffs, exists, run.seed) if run.seed == seeds(c)[0] else None
    return _one_row(values) + (info,)

  def post_baseline(run, outputs):
    del outputs
    return _one_row(run_baseline(c, ctx.seed_data(run.seed), run.method, run.seed))

  return [
      families_lib.Family(name="prism", methods=("prism",), simulate=generate, steps=(1,),
                          inputs=inputs, post=post_prism),
      families_lib.Family(name="baselines", methods=METHODS[1:], steps=(1,),
                          simulate=lambda key, inputs, hparams: key, post=post_baseline),
  ]


def _one_row(values: dict) -> tuple:
  """``values`` as the rows' arrays of one step with no simulated time."""
  return np.full([1], np.nan), {k: np.asarray([v], np.float64) for k, v in values.items()}


# ----------------------------------------------------------------------------- report


METRICS = ("1nna_cd", "cov_cd", "mmd_cd", "pattern_tv", "violations", "pair_correlation")
PRISM_METRICS = ("heldout_pattern_tv", "heldout_pair_correlation", "train_loss_start",
                 "train_loss", "duplicate_slots")


def report(c, db, out: str, digest: str) -> dict:
  """claims.json, report.md, gallery.png and editing.png from the database (and the
  first seed's cached shapes, to decode the stored SSM coefficients)."""
  final = {n: db.final_values(c.experiment, n, config_hash=digest)
           for n in METRICS + PRISM_METRICS}
  per_seed = {n: {m: [final[n].get(m, {}).get(s) for s in seeds(c)] for m in METHODS}
              for n in METRICS}
  per_seed.update({n: {"prism": [final[n].get("prism", {}).get(s) for s in seeds(c)]}
                   for n in PRISM_METRICS})
  nna = per_seed["1nna_cd"]
  gap = [None if a is None or b is None else a - b
         for a, b in zip(nna["global_pca"], nna["prism"], strict=True)]
  paper = ("PRISM (arXiv 2504.04454): diffusion over part tokens (part SSM coefficients + "
           "GMM label embeddings) generates shapes with correct part structure and beats "
           "whole-shape baselines on MMD / COV / 1-NNA")
  mean = functools.partial(claims_lib.claim, paper=paper, aggregate="mean", method="prism")
  claims = [
      mean(id="nna_vs_global_pca",
           statement=f"PRISM's 1-NNA (Chamfer) is at least {100 * c.min_nna_gap:g} points "
                     "lower than the global-PCA baseline's",
           metric="global_pca_minus_prism_1nna_cd", better="higher",
           threshold=c.min_nna_gap, per_seed={"prism": gap}),
      mean(id="nna_vs_independent",
           statement="PRISM's 1-NNA (Chamfer) is lower than independent parts'",
           metric="1nna_cd", better="lower", baseline="independent", per_seed=nna),
      mean(id="cov_vs_global_pca",
           statement="PRISM's COV (Chamfer) is no lower than the global-PCA baseline's",
           metric="cov_cd", better="higher", baseline="global_pca",
           per_seed=per_seed["cov_cd"]),
      mean(id="mmd_vs_global_pca",
           statement="PRISM's MMD (Chamfer) is no higher than the global-PCA baseline's",
           metric="mmd_cd", better="lower", baseline="global_pca",
           per_seed=per_seed["mmd_cd"]),
      mean(id="pattern_tv",
           statement=f"the part-existence patterns of {c.num_samples} generated shapes are "
                     f"within {c.max_pattern_tv:g} total variation of the training set's",
           metric="pattern_tv", better="lower", threshold=c.max_pattern_tv,
           per_seed={"prism": per_seed["pattern_tv"]["prism"]},
           heldout_real=claims_lib.mean(per_seed["heldout_pattern_tv"]["prism"])),
      mean(id="rule_violations",
           statement=f"at most {100 * c.max_violations:g}% of generated shapes break the "
                     f"{c.category} rules",
           metric="violations", better="lower", threshold=c.max_violations,
           per_seed={"prism": per_seed["violations"]["prism"]}),
  ]
  doc = claims_lib.write_claims(os.path.join(out, "claims.json"), experiment=c.experiment,
                                variant=c.variant, seeds=seeds(c), claims=claims,
                                reported=per_seed)
  info = next((r["info"] or {} for r in db.runs(c.experiment, status="done", method="prism")
               if r["config_hash"] == digest and r["seed"] == seeds(c)[0]), {})
  drawn = draw(c, info, out) if info else []
  write_report(out, c, doc, per_seed, drawn)
  return doc


def draw(c, info: dict, out: str) -> list[str]:
  """gallery.png and editing.png from the first seed's stored coefficients."""
  plt = report_lib.plt
  train, test, model = seed_shapes(c, seeds(c)[0])
  labels = train.labels
  del test
  pts = train.points[train.exists]
  half = 0.5 * max(2 * np.abs(pts[..., [0, 2]]).max(), pts[..., 1].max())
  files = []
  gallery = plot.decode_parts(model, info["gallery"]["coeffs"], info["gallery"]["exists"])
  n = len(gallery[1])
  if n:
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = plt.figure(figsize=(2.6 * cols, 2.6 * rows + 0.4))
    for i in range(n):
      ax = fig.add_subplot(rows, cols, i + 1, projection="3d")
      plot.draw_shape(ax, gallery[0][i], gallery[1][i], labels, f"sample {i + 1}", half)
    fig.subplots_adjust(left=0, right=1, bottom=0.08, top=0.9, wspace=0, hspace=0.05)
    plot.part_legend(fig, labels)
    fig.suptitle(f"PRISM: generated {c.category}s (seed {seeds(c)[0]}), coloured by part")
    fig.savefig(os.path.join(out, "gallery.png"), dpi=90)
    plt.close(fig)
    files.append("gallery.png")
  source = plot.decode_parts(model, [info["source"]["coeffs"]], [info["source"]["exists"]])
  edits = plot.decode_parts(model, info["edits"]["coeffs"], info["edits"]["exists"])
  interp = plot.decode_parts(model, info["interpolation"]["coeffs"],
                   [info["interpolation"]["exists"]] * len(info["interpolation"]["coeffs"]))
  cols = max(1 + len(edits[1]), len(interp[1]))
  fig = plt.figure(figsize=(2.6 * cols, 5.9))
  fig.subplots_adjust(left=0, right=1, bottom=0.06, top=0.9, wspace=0, hspace=0.05)
  plot.part_legend(fig, labels)
  kept = ", ".join(lab for lab, e in zip(labels, info["source"]["exists"], strict=True)
                   if e and lab not in EDITED[c.category])
  plot.draw_shape(fig.add_subplot(2, cols, 1, projection="3d"), source[0][0], source[1][0],
              labels, "held-out shape", half)
  for i in range(len(edits[1])):
    plot.draw_shape(fig.add_subplot(2, cols, 2 + i, projection="3d"), edits[0][i], edits[1][i],
                labels, f"edit {i + 1}", half)
  for i in range(len(interp[1])):
    plot.draw_shape(fig.add_subplot(2, cols, cols + 1 + i, projection="3d"), interp[0][i],
                interp[1][i], labels, f"t = {i / max(len(interp[1]) - 1, 1):.2f}", half)
  fig.suptitle(f"Top: inpainting keeps the held-out shape's {kept} and regenerates the "
               "rest. Bottom: "
               "interpolation in SSM coefficients between two held-out shapes", fontsize=10)
  fig.savefig(os.path.join(out, "editing.png"), dpi=90)
  plt.close(fig)
  return files + ["editing.png"]


def write_report(out, c, doc, per_seed, drawn) -> None:
  rows = []
  for n, label in (("1nna_cd", "1-NNA-CD (0.5 is ideal)"), ("cov_cd", "COV-CD"),
                   ("mmd_cd", "MMD-CD"), ("pattern_tv", "existence-pattern TV"),
                   ("violations", "rule violations"),
                   ("pair_correlation", f"{' / '.join(PAIRS[c.category])} correlation")):
    rows.append(f"| {label} | " + " | ".join(report_lib.mean_std(per_seed[n][m])
                                              for m in METHODS) + " |")
  p = per_seed
  lines = [
      f"# prism ({c.variant})", "", report_lib.claims_table(doc), "",
      "| metric (mean ± std over seeds) | " + " | ".join(NAMES[m] for m in METHODS) + " |",
      "|---|" + "---|" * len(METHODS), *rows, "",
      f"Held-out real shapes ({c.num_samples}, the sampling-noise floor): existence-pattern "
      f"TV {report_lib.mean_std(p['heldout_pattern_tv']['prism'])} against the training "
      f"set, {' / '.join(PAIRS[c.category])} correlation "
      f"{report_lib.mean_std(p['heldout_pair_correlation']['prism'])}.", "",
      f"PRISM training: loss {report_lib.mean_std(p['train_loss_start']['prism'])} (first "
      f"100 steps) -> {report_lib.mean_std(p['train_loss']['prism'])} (last 100); "
      f"{c.diffusion_steps} DDPM steps (sampling speed: the bench_shapes benchmark); slots "
      f"dropped as duplicates "
      f"{report_lib.mean_std(p['duplicate_slots']['prism'])} per shape.", "",
      *[f"![{f}]({f})" for f in drawn], "",
      f"Set-up: {c.category}s, {c.num_train} training shapes per seed ({c.points_per_part} "
      f"points per part), {c.num_modes} SSM modes per part, {c.slots} slots, GMM alpha "
      f"{c.alpha:g}, sigma {c.sigma:g}; denoiser width {c.width}, depth {c.depth}, "
      f"{c.heads} heads, {c.prediction}-prediction, label-channel weight "
      f"{c.label_weight:g}; {c.train_steps} AdamW steps of {c.batch_size} (lr {c.lr:g}); "
      f"T = {c.diffusion_steps}. {c.num_samples} samples per method for the structure "
      f"statistics; the first {c.num_eval} against {c.num_eval} held-out shapes at "
      f"{c.eval_points} points (each normalised into [-1, 1]^3) for the Chamfer metrics.",
      ""]
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write("\n".join(lines))
