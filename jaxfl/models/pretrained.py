"""Pre-train the byte-level LM on the corpus's general domains; cache it with orbax.

The federated fine-tuning experiments (FedIT, FedBE, FedQuad, HierFedLoRA, DropPEFT) and
the inference ones start from one pre-trained model. :func:`load_or_pretrain` returns it
from ``<cache>/lm/<variant>-<digest>/`` (``$JAXFL_CACHE_DIR``, default
``~/.cache/jaxfl``), pre-training it first when it is missing. The digest covers every
field of :class:`PretrainSpec` and the Python version (the corpus is that version's
standard library), so a changed recipe never reads a stale model.

Recipe: AdamW (Loshchilov & Hutter, arXiv 1711.05101) with linear warm-up then cosine
decay to 10% of the peak; each step draws ``batch_size`` random windows of ``seq_len``
bytes from the general domains' joined training streams
(:data:`jaxfl.data.corpus.GENERAL_DOMAINS`); training is ``lax.scan`` over chunks of
``eval_every`` steps with a validation loss (nats per byte, fixed held-out windows)
between chunks. Same spec, same machine type: bit-identical parameters.

Examples:
  >>> spec = PretrainSpec(variant='tiny', steps=4, batch_size=2, seq_len=16, warmup_steps=1,
  ...                     eval_every=2)
  >>> spec.config.num_layers
  2
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from jaxfl import ENV_CACHE_DIR, cache_dir  # noqa: F401 -- re-exported: the model cache
from jaxfl.data import corpus as corpus_lib
from jaxfl.errors import ConfigError
from jaxfl.models import transformer


@dataclasses.dataclass(frozen=True)
class PretrainSpec:
  """Everything that determines a pre-trained model.

  Attributes:
    variant: model size (:data:`jaxfl.models.transformer.VARIANTS`).
    steps: optimizer steps.
    batch_size: windows per step.
    seq_len: bytes per window (at most the variant's ``max_len``).
    learning_rate: peak AdamW learning rate.
    warmup_steps: linear warm-up steps.
    weight_decay: AdamW decoupled weight decay.
    eval_every: steps between validation evaluations.
    eval_windows: held-out windows per evaluation.
    seed: the run seed (initialisation and batches).
    domains: corpus domains to pre-train on.
  """

  variant: str = "small"
  steps: int = 900
  batch_size: int = 32
  seq_len: int = 128
  learning_rate: float = 3e-3
  warmup_steps: int = 50
  weight_decay: float = 0.01
  eval_every: int = 100
  eval_windows: int = 64
  seed: int = 0
  domains: tuple[str, ...] = corpus_lib.GENERAL_DOMAINS

  def __post_init__(self):
    transformer.get_variant(self.variant, "variant")
    for name in ("steps", "batch_size", "seq_len", "eval_every", "eval_windows"):
      value = getattr(self, name)
      if not (isinstance(value, int) and value > 0):
        raise ConfigError(f"{name}", "a positive integer", value)
    if self.seq_len > self.config.max_len:
      raise ConfigError("seq_len", f"at most max_len={self.config.max_len}",
                        self.seq_len)
    if self.steps % self.eval_every:
      raise ConfigError("eval_every", f"a divisor of steps={self.steps}",
                        self.eval_every)
    if not (isinstance(self.warmup_steps, int) and 0 <= self.warmup_steps < self.steps):
      raise ConfigError("warmup_steps", f"an integer in [0, steps={self.steps})",
                        self.warmup_steps)
    if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
      raise ConfigError("learning_rate", "a positive number", self.learning_rate)
    if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
      raise ConfigError("weight_decay", "a non-negative number", self.weight_decay)
    if not (isinstance(self.seed, int) and self.seed >= 0):
      raise ConfigError("seed", "a non-negative integer", self.seed)

  @property
  def config(self) -> transformer.LMConfig:
    return transformer.get_variant(self.variant, "variant")

  def digest(self) -> str:
    """Short hash of the spec and the Python version (whose stdlib is the corpus)."""
    fields = dataclasses.asdict(self) | {"python": f"{sys.version_info[0]}.{sys.version_info[1]}"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]

  def path(self, root: str | None = None) -> str:
    return os.path.join(root or cache_dir(), "lm", f"{self.variant}-{self.digest()}")


def schedule(spec: PretrainSpec) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(0.0, spec.learning_rate, spec.warmup_steps,
                                            spec.steps, end_value=0.1 * spec.learning_rate)


def general_streams(corpus: corpus_lib.Corpus, domains) -> tuple[np.ndarray, np.ndarray]:
  """The domains' train and validation streams, each joined in domain order."""
  missing = [d for d in domains if d not in corpus.domains]
  if missing:
    raise ConfigError("domains", f"domains of the loaded corpus {corpus.domains}",
                      missing)
  return (np.concatenate([corpus.train[d] for d in domains]),
          np.concatenate([corpus.validation[d] for d in domains]))


def make_train_chunk(spec: PretrainSpec, tx: optax.GradientTransformation):
  """``chunk(params, opt_state, key, first_step, tokens) -> (params, opt_state, losses)``.

  Jitted; ``tokens`` (the training stream) is an argument, not a compile-time constant.
  Runs ``eval_every`` steps as one ``lax.scan``; step ``s`` draws its windows with
  ``fold_in(key, s)``, so a chunk's result depends only on the step numbers it covers.
  """
  config = spec.config

  def step(carry, s, tokens):
    params, opt_state, key = carry
    x, y = corpus_lib.sample_windows(tokens, jax.random.fold_in(key, s), spec.batch_size,
                                     spec.seq_len)
    loss, grads = jax.value_and_grad(lambda p: transformer.lm_loss(config, p, x, y))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, key), loss

  @jax.jit
  def chunk(params, opt_state, key, first_step, tokens):
    steps = first_step + jnp.arange(spec.eval_every)
    (params, opt_state, _), losses = jax.lax.scan(functools.partial(step, tokens=tokens),
                                                  (params, opt_state, key), steps)
    return params, opt_state, losses

  return chunk


def make_eval(config: transformer.LMConfig, inputs: np.ndarray, targets: np.ndarray):
  """Jitted ``evaluate(params) -> {'loss', 'accuracy'}`` over fixed windows."""
  inputs, targets = jnp.asarray(inputs), jnp.asarray(targets)
  return jax.jit(lambda params: transformer.lm_metrics(config, params, inputs, targets))


def pretrain(spec: PretrainSpec, corpus: corpus_lib.Corpus, *,
             on_eval: Callable[[int, dict], None] | None = None) -> tuple[dict, list[dict]]:
  """Pre-train from scratch; returns ``(params, history)``.

  ``history`` has one row per evaluation: ``step``, validation ``loss`` (nats/byte) and
  ``accuracy`` (next-byte), the mean training ``train_loss`` of the chunk, and
  ``seconds`` of wall time so far; ``on_eval(step, row)`` sees each as it comes.
  """
  config = spec.config
  train, valid = general_streams(corpus, spec.domains)
  key = jax.random.PRNGKey(spec.seed)
  params = transformer.init(config, jax.random.fold_in(key, 0))
  tx = optax.adamw(schedule(spec), weight_decay=spec.weight_decay)
  opt_state = tx.init(params)
  chunk = make_train_chunk(spec, tx)
  tokens = jnp.asarray(train)
  evaluate = make_eval(config, *corpus_lib.eval_windows(valid, spec.seq_len, spec.eval_windows))
  data_key = jax.random.fold_in(key, 1)
  history, start, step = [], time.perf_counter(), 0

  def record(train_loss):
    metrics = {k: float(v) for k, v in evaluate(params).items()}
    if not np.isfinite(metrics["loss"]):
      raise FloatingPointError(f"pre-training diverged: validation loss {metrics['loss']} "
                               f"at step {step}")
    row = dict(step=step, train_loss=train_loss, seconds=time.perf_counter() - start, **metrics)
    history.append(row)
    if on_eval is not None:
      on_eval(step, row)

  record(None)
  while step < spec.steps:
    params, opt_state, losses = chunk(params, opt_state, data_key, jnp.int32(step), tokens)
    step += spec.eval_every
    record(float(jnp.mean(losses)))
  return params, history


def save(path: str, params: dict, meta: dict) -> None:
  """Write ``params`` (orbax) and ``meta.json`` under ``path``, replacing what was there."""
  path = os.path.abspath(path)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(path, "params"), params, force=True)
  tmp = os.path.join(path, "meta.json.tmp")
  with open(tmp, "w") as f:
    json.dump(meta, f, indent=2)
  os.replace(tmp, os.path.join(path, "meta.json"))  # meta last: it marks the model complete


def load(path: str, config: transformer.LMConfig) -> tuple[dict, dict] | None:
  """``(params, meta)`` saved under ``path``, or ``None`` if there is no complete model."""
  path = os.path.abspath(path)
  if not os.path.exists(os.path.join(path, "meta.json")):
    return None
  template = jax.eval_shape(lambda: transformer.init(config, jax.random.PRNGKey(0)))
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(os.path.join(path, "params"), template)
  with open(os.path.join(path, "meta.json")) as f:
    return params, json.load(f)


def load_or_pretrain(spec: PretrainSpec, *, corpus: corpus_lib.Corpus | None = None,
                     data_dir: str | None = None, root: str | None = None,
                     log: Callable[[str], None] = print) -> tuple[dict, dict]:
  """The cached pre-trained model of ``spec``, pre-training and saving it if missing.

  Returns:
    ``(params, meta)``; ``meta`` holds the spec, the final validation loss and accuracy,
    the training history and the wall time it took.
  """
  path = spec.path(root)
  found = load(path, spec.config)
  if found is not None:
    return found
  if corpus is None:
    corpus = corpus_lib.load_corpus(data_dir, domains=corpus_lib.DOMAINS)
  log(f"pre-training '{spec.variant}' ({spec.steps} steps) into {path}")

  def on_eval(step, row):
    log(f"  step {step:5d}  val loss {row['loss']:.3f} nats/byte  "
        f"acc {row['accuracy']:.3f}  ({row['seconds']:.0f} s)")

  params, history = pretrain(spec, corpus, on_eval=on_eval)
  meta = dict(spec=dataclasses.asdict(spec), digest=spec.digest(),
              python=corpus.python_version, val_loss=history[-1]["loss"],
              val_accuracy=history[-1]["accuracy"], seconds=history[-1]["seconds"],
              num_params=transformer.num_params(params), history=history)
  meta = json.loads(json.dumps(meta))  # as load() will return it (tuples become lists)
  save(path, params, meta)
  return params, meta
