"""Benchmark: PRISM sampling shapes/s and 1-NNA seconds (see sweeps/configs/bench_shapes.py).

One run per repeat (method ``bench``). A repeat initialises a denoiser of the configured
shape from its seed, fits part SSMs on 64 generated shapes and times, round-robin after
``warmup`` calls:

(i)   ``ddpm``: ancestral DDPM over all ``diffusion_steps`` for ``sample_batch`` token sets,
      then :func:`shapes.tokens.decode` to part points;
(ii)  ``ddim``: the same with DDIM over ``ddim_steps``;
(iii) ``nna_plane``: 1-NNA-CD of ``nna_shapes`` vs ``nna_shapes`` clouds (the three
      pairwise Chamfer matrices of :func:`shapes.metrics.pairwise_chamfer` and
      :func:`shapes.metrics.one_nna`);
(iv)  ``nna_matmul``: the same with the squared distances in the matmul form, the baseline
      of (iii); both give the same 1-NNA (checked on every repeat).

Every number is a metric of the repeat's run, so :func:`report` rebuilds claims.json and
report.md from the database alone.
"""

from __future__ import annotations

import functools
import os
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from jaxfl.errors import check, check_number
from shapes import data, diffusion, metrics, tokens
from shapes import ssm as ssm_lib
from sweeps import claims as claims_lib
from sweeps import report as report_lib
from sweeps.configs import common
from sweeps.experiments.prism import run as prism_run
from sweeps.sweep import RunSpec
from sweeps.timing import environment, time_interleaved

RUN_METHOD = "bench"
PROGRAMS = ("ddpm", "ddim", "nna_plane", "nna_matmul")


def validate(c) -> None:
  common.check(c)
  check(c.category in data.CATEGORIES, "category", f"one of {list(data.CATEGORIES)}",
        c.category)
  for field in ("sample_batch", "nna_shapes", "nna_points", "warmup", "timing_repeats"):
    check_number(c[field], field, low=1, integer=True)
  check(c.slots in ("ordered", "set"), "slots", "'ordered' or 'set'", c.slots)
  check(c.denoiser.get("kind") == "set" or c.slots == "ordered", "denoiser.kind",
        "'set' when slots='set' (an MLP needs ordered slots)", c.denoiser.get("kind"))
  spec = prism_run.token_spec(c)
  prism_run.denoiser_config(c)
  check(spec.num_modes <= 64, "tokens.num_modes",
        "at most 64 (the SSMs are fitted on 64 shapes)", spec.num_modes)
  check_number(c.diffusion_steps, "diffusion_steps", low=2, integer=True)
  check(isinstance(c.ddim_steps, int) and 1 <= c.ddim_steps <= c.diffusion_steps,
        "ddim_steps", f"an integer in [1, diffusion_steps={c.diffusion_steps}]", c.ddim_steps)
  check(c.min_ddim_speedup > 0, "min_ddim_speedup", "a positive number", c.min_ddim_speedup)


def prepare(c) -> None:
  del c  # nothing to load: the shapes are generated, the denoiser random


def run_specs(c) -> list[RunSpec]:
  return [RunSpec(RUN_METHOD, c.seed + i) for i in range(c.num_seeds)]


def rounds(c, spec: RunSpec) -> int:
  del c, spec
  return 1


def one_nna(pairwise, gen, ref) -> float:
  """1-NNA-CD of ``gen`` against ``ref`` with the pairwise-distance function given."""
  d_rr, d_sr, d_ss = (np.asarray(pairwise(a, b)) for a, b in ((ref, ref), (gen, ref),
                                                                (gen, gen)))
  return metrics.one_nna(d_rr, d_sr.T, d_ss)


def run_repeat(c, seed: int, log=print) -> dict:
  key = jax.random.PRNGKey(seed)
  shapes = data.generate(c.category, 64, seed=seed, points_per_part=128)
  spec, cfg = prism_run.token_spec(c), prism_run.denoiser_config(c)
  model = ssm_lib.fit(shapes, spec.num_modes)
  m = spec.num_labels
  sched = diffusion.Schedule.cosine(c.diffusion_steps)
  params = diffusion.init(cfg, key)
  eps_fn = diffusion.model_eps(cfg, params, sched)
  shape = (c.sample_batch, m, spec.dim)
  ordered = c.slots == "ordered"
  ddpm = jax.jit(lambda k: tokens.decode(spec, model, diffusion.ddpm_sample(
      eps_fn, sched, shape, k), ordered=ordered).points)
  ddim = jax.jit(lambda k: tokens.decode(spec, model, diffusion.ddim_sample(
      eps_fn, sched, shape, k, num_steps=c.ddim_steps), ordered=ordered).points)
  k_sample = jax.random.fold_in(key, 1)

  # Clouds: generated shapes resampled to nna_points (two disjoint sets).
  clouds = data.generate(c.category, 2 * c.nna_shapes, seed=seed + 1, points_per_part=128)
  pts = metrics.normalize(metrics.resample(clouds.points, clouds.exists, c.nna_points, seed))
  gen, ref = jnp.asarray(pts[:c.nna_shapes]), jnp.asarray(pts[c.nna_shapes:])
  nna = {}

  def nna_call(name, pairwise):
    def call():
      nna[name] = one_nna(pairwise, gen, ref)
      return jnp.zeros(())
    return call

  fns = {"ddpm": lambda: ddpm(k_sample), "ddim": lambda: ddim(k_sample),
         "nna_plane": nna_call("nna_plane", metrics.pairwise_chamfer),
         "nna_matmul": nna_call("nna_matmul", functools.partial(
             metrics.pairwise_chamfer, sq_dists=metrics.matmul_sq_dists))}
  times = time_interleaved(fns, warmup=c.warmup, repeats=c.timing_repeats, log=log)
  sec = {n: statistics.median(t) for n, t in times.items()}
  result = {"seconds": sec,
            "ddpm_shapes_per_s": c.sample_batch / sec["ddpm"],
            "ddim_shapes_per_s": c.sample_batch / sec["ddim"],
            "ddim_speedup": sec["ddpm"] / sec["ddim"],
            "plane_over_matmul_speed": sec["nna_matmul"] / sec["nna_plane"],
            "nna_plane_value": nna["nna_plane"], "nna_matmul_value": nna["nna_matmul"],
            "squared_distances_per_s": 3 * c.nna_shapes ** 2 * c.nna_points ** 2
                                       / sec["nna_plane"]}
  log(f"seed {seed}: DDPM-{c.diffusion_steps} {result['ddpm_shapes_per_s']:.0f} shapes/s, "
      f"DDIM-{c.ddim_steps} {result['ddim_shapes_per_s']:.0f} shapes/s "
      f"({result['ddim_speedup']:.2f}x); 1-NNA {c.nna_shapes}x{c.nna_shapes} at "
      f"{c.nna_points} points: {sec['nna_plane']:.2f} s (matmul form "
      f"{sec['nna_matmul']:.2f} s), value {nna['nna_plane']:.3f}")
  return result


def flatten(result: dict) -> dict:
  out = {f"seconds_{n}": v for n, v in result["seconds"].items()}
  out.update({k: float(v) for k, v in result.items() if k != "seconds"})
  return out


def execute(c, spec: RunSpec, ctx, run_dir: str, log_metrics, progress) -> dict:
  """One repeat, logged as metrics at step 0; the environment is the run's info."""
  del ctx, run_dir
  env = environment()
  progress.log(f"bench_shapes/{c.variant} on {env['backend']} ({env['device']}, "
               f"{env['cpu_cores']} CPU cores)")
  values = flatten(run_repeat(c, spec.seed, log=progress.log))
  log_metrics(0, None, values)
  progress.update(1, ddim=values["ddim_speedup"])
  return env


def report(c, db, out: str, digest: str) -> dict:
  """claims.json and report.md from the database alone."""
  runs = sorted((r for r in db.runs(c.experiment, status="done", method=RUN_METHOD)
                 if r["config_hash"] == digest), key=lambda r: r["seed"])
  if not runs:
    raise ValueError(f"{c.experiment}: no finished repeat of config {digest} in {db.path}")
  vals = [{m["name"]: m["value"] for m in db.metrics(run_id=r["id"])} for r in runs]
  per = lambda name: [v.get(name) for v in vals]
  claims = [claims_lib.claim(
      id="ddim_speedup", kind="reproduction",
      statement=f"DDIM with {c.ddim_steps} steps samples (and decodes) at least "
                f"{c.min_ddim_speedup:g}x the shapes/s of ancestral DDPM with "
                f"{c.diffusion_steps} steps",
      paper="DDIM (Song et al., arXiv 2010.02502) samples a DDPM-trained model on a "
            "subsequence of its steps",
      metric="shapes_per_s_ratio", better="higher", method="ddim",
      per_seed={"ddim": per("ddim_speedup")}, threshold=c.min_ddim_speedup)]
  env = runs[0]["info"] or {}
  doc = claims_lib.write_claims(os.path.join(out, "claims.json"), experiment=c.experiment,
                                variant=c.variant, seeds=[r["seed"] for r in runs],
                                claims=claims, environment=env,
                                reported={k: per(k) for k in vals[0]})
  ms = report_lib.mean_std
  report_lib.write_markdown(out, [
      f"# bench_shapes ({c.variant})", report_lib.claims_table(doc),
      f"On {env.get('backend', '?')} ({env.get('device', '?')}, {env.get('cpu_cores', '?')} "
      f"CPU cores), JAX {env.get('jax_version', '?')}; mean ± std over repeats of each "
      "repeat's median.",
      report_lib.table(["program", "seconds", "throughput"], [
          [f"DDPM, {c.diffusion_steps} steps, {c.sample_batch} shapes", ms(per("seconds_ddpm")),
           f"{ms(per('ddpm_shapes_per_s'))} shapes/s"],
          [f"DDIM, {c.ddim_steps} steps, {c.sample_batch} shapes", ms(per("seconds_ddim")),
           f"{ms(per('ddim_shapes_per_s'))} shapes/s"],
          [f"1-NNA-CD, {c.nna_shapes} x {c.nna_shapes} shapes of {c.nna_points} points "
           "(coordinate form)", ms(per("seconds_nna_plane")),
           f"{ms(per('squared_distances_per_s'))} squared distances/s"],
          ["the same, matmul form", ms(per("seconds_nna_matmul")),
           f"{ms(per('plane_over_matmul_speed'))}x the coordinate form's seconds"]]),
      f"Denoiser: {c.denoiser.kind}, width {c.denoiser.width}, depth {c.denoiser.depth}, "
      f"{c.slots} slots, random "
      f"weights. 1-NNA value (both forms): {ms(per('nna_plane_value'))} vs "
      f"{ms(per('nna_matmul_value'))} (two draws of the generator: about 0.5)."])
  return doc
