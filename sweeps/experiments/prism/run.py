"""PRISM's runs: validation, each seed's shapes and part SSMs, the pipeline, and the two
method families (prism, vmapped over seeds; the baselines, on the host)."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxfl.errors import check, check_number
from shapes import baselines, data, diffusion, metrics, tokens
from shapes import prism as prism_lib
from shapes import ssm as ssm_lib
from sweeps import families as families_lib
from sweeps.configs import common
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
#: The references each stage scores against: a tuning run (none today: no family has a
#: grid) only the validation ones; a reported run the test ones (its claims) and the
#: validation ones (``val_*``, beside them in the report).
REFERENCES = {"tune": ("validation",), "report": ("test", "validation")}


def validate(c) -> None:
  common.check(c)
  check(c.category in data.CATEGORIES, "category", f"one of {list(data.CATEGORIES)}",
        c.category)
  for field in ("num_train", "train_steps", "batch_size", "num_samples", "num_eval",
                "eval_points"):
    check_number(c[field], field, low=1, integer=True)
  check_number(c.points_per_part, "points_per_part", low=24, integer=True)
  check_number(c.diffusion_steps, "diffusion_steps", low=2, integer=True)
  check(isinstance(c.warmup_steps, int) and 0 <= c.warmup_steps < c.train_steps,
        "warmup_steps", f"an integer in [0, train_steps={c.train_steps})", c.warmup_steps)
  check(isinstance(c.num_pictures, int) and 0 <= c.num_pictures <= c.num_samples,
        "num_pictures", f"an integer in [0, num_samples={c.num_samples}]", c.num_pictures)
  check(c.batch_size <= c.num_train, "batch_size", f"at most num_train={c.num_train}",
        c.batch_size)
  check(c.num_eval <= c.num_samples, "num_eval", f"at most num_samples={c.num_samples}",
        c.num_eval)
  check(c.slots in ("ordered", "set"), "slots", "'ordered' or 'set'", c.slots)
  # Before building: an MLP over a set of slots would be refused as num_slots=0, a field
  # the config does not have.
  check(c.denoiser.get("kind") == "set" or c.slots == "ordered", "denoiser.kind",
        "'set' when slots='set' (an MLP needs ordered slots)", c.denoiser.get("kind"))
  spec = token_spec(c)
  denoiser_config(c)
  check(spec.num_modes <= c.num_train, "tokens.num_modes", f"at most num_train={c.num_train}",
        spec.num_modes)
  for field in ("lr", "label_weight"):
    check_number(c[field], field, low=0, strict=True)
  check_number(c.min_nna_gap, "min_nna_gap")
  for field in ("max_pattern_tv", "max_violations"):
    check(0 <= c[field] <= 1, field, "a number in [0, 1]", c[field])


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


class References(NamedTuple):
  """Held-out reference clouds for the Chamfer metrics of one split."""

  clouds: np.ndarray  # [num_eval, eval_points, 3], each normalised into [-1, 1]^3
  d_rr: np.ndarray  # [num_eval, num_eval] their pairwise Chamfer distances


class SeedData(NamedTuple):
  train: data.PartShapes
  test: data.PartShapes  # num_samples held-out real shapes (structure statistics, edits)
  ssm: ssm_lib.PartSSMs
  refs: dict[str, References]  # "validation": test[:num_eval]; "test": shapes after test


def seed_shapes(c, seed: int) -> tuple[data.PartShapes, data.PartShapes, ssm_lib.PartSSMs]:
  """The seed's training shapes, its ``num_samples + num_eval`` held-out shapes (cached on
  disk; :func:`shapes.data.generate` draws them in order, so the first ``num_samples``
  are the same whatever their number) and its part SSMs."""
  kw = dict(seed=seed, points_per_part=c.points_per_part, data_dir=c.data_dir or None)
  train = data.load(c.category, "train", c.num_train, **kw)
  heldout = data.load(c.category, "test", c.num_samples + c.num_eval, **kw)
  return train, heldout, ssm_lib.fit(train, c.tokens.num_modes)


def _take(shapes: data.PartShapes, index: slice) -> data.PartShapes:
  # Built by field, not _replace: PartShapes' __len__ counts shapes, not fields.
  return data.PartShapes(shapes.category, shapes.labels, shapes.points[index],
                         shapes.exists[index], shapes.attrs[index])


def seed_data(c, seed: int) -> SeedData:
  """:func:`seed_shapes`, split: the held-out real sample (the first ``num_samples``), the
  validation references (its first ``num_eval``: those the fixed design was chosen
  against, by hand, before the protocol) and the test references (the ``num_eval``
  held-out shapes after the sample: never looked at before the claims were computed)."""
  train, heldout, model = seed_shapes(c, seed)
  n, k = c.num_samples, c.num_eval

  def references(shapes: data.PartShapes) -> References:
    clouds = metrics.normalize(metrics.resample(shapes.points, shapes.exists, c.eval_points,
                                                seed))
    return References(clouds, np.asarray(metrics.pairwise_chamfer(clouds, clouds)))

  return SeedData(train, _take(heldout, slice(0, n)), model,
                  {"validation": references(_take(heldout, slice(0, k))),
                   "test": references(_take(heldout, slice(n, n + k)))})


def token_spec(c) -> tokens.TokenSpec:
  """``c.tokens`` as the token layout of ``c.category`` (bench_shapes builds it too)."""
  return common.build(tokens.TokenSpec, c.tokens, "tokens",
                      num_labels=len(data.CATEGORIES[c.category]))


def denoiser_config(c) -> diffusion.DenoiserConfig:
  """``c.denoiser`` for those tokens and ``c.slots`` (ordered: one slot per label)."""
  m = len(data.CATEGORIES[c.category])
  return common.build(diffusion.DenoiserConfig, c.denoiser, "denoiser", dim=token_spec(c).dim,
                      num_slots=m if c.slots == "ordered" else 0)


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
                            shuffle=c.slots == "set", weights=_weights(c),
                            progress_every=max(1, c.train_steps // 50))


def geometry(c, d: SeedData, points, exists, seed: int, splits=("test",)
             ) -> dict[str, float]:
  """MMD-CD, COV-CD and 1-NNA-CD of the first ``num_eval`` shapes against each split's
  references (``test``: ``1nna_cd``...; ``validation``: ``val_1nna_cd``...)."""
  gen = metrics.normalize(metrics.resample(points[:c.num_eval], exists[:c.num_eval],
                                           c.eval_points, seed + 1))
  d_ss = np.asarray(metrics.pairwise_chamfer(gen, gen))
  out = {}
  for split in splits:
    refs = d.refs[split]
    d_sr = np.asarray(metrics.pairwise_chamfer(gen, refs.clouds))
    prefix = "" if split == "test" else "val_"
    out.update({f"{prefix}mmd_cd": metrics.mmd(d_sr), f"{prefix}cov_cd": metrics.coverage(d_sr),
                f"{prefix}1nna_cd": metrics.one_nna(refs.d_rr, d_sr.T, d_ss)})
  return out


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


def prism_values(c, d: SeedData, seed: int, losses, z, splits=REFERENCES["report"]
                 ) -> tuple[dict, np.ndarray, np.ndarray]:
  """One seed's PRISM values from its training losses and sampled tokens (the Chamfer
  metrics against ``splits``' references), and the decoded coefficients and existence."""
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
  values.update(geometry(c, d, points, exists, seed, splits))
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


def run_baseline(c, d: SeedData, method: str, seed: int, splits=REFERENCES["report"]
                 ) -> dict:
  if method == "global_pca":
    points, exists = baselines.sample_global_pca(baselines.fit_global_pca(d.train),
                                                 c.num_samples, seed=seed)
  else:
    points, exists = baselines.sample_independent(d.ssm, d.train.exists.mean(0),
                                                  c.num_samples, seed=seed)
  return {**structure(c, d, points, exists), **geometry(c, d, points, exists, seed, splits)}


def families(c, ctx: Context) -> list[families_lib.Family]:
  """PRISM (train and sample on device, one call for every seed; decode and score on the
  host) and the two baselines (host only). No family has a tuning grid (the config says
  how each fixed value was set), so every run is a reported one, scored against the test
  references (the claims) and, for the record, the validation references."""
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
    values, coeffs, exists = prism_values(c, d, run.seed, losses, z, REFERENCES[run.stage])
    info = pictures(c, d, params, coeffs, exists, run.seed) if run.seed == seeds(c)[0] else None
    return _one_row(values) + (info,)

  def post_baseline(run, outputs):
    del outputs
    return _one_row(run_baseline(c, ctx.seed_data(run.seed), run.method, run.seed,
                                 REFERENCES[run.stage]))

  return [
      families_lib.Family(name="prism", methods=("prism",), simulate=generate, steps=(1,),
                          inputs=inputs, post=post_prism),
      families_lib.Family(name="baselines", methods=METHODS[1:], steps=(1,),
                          simulate=lambda key, inputs, hparams: key, post=post_baseline),
  ]


def _one_row(values: dict) -> tuple:
  """``values`` as the rows' arrays of one step with no simulated time."""
  return np.full([1], np.nan), {k: np.asarray([v], np.float64) for k, v in values.items()}
