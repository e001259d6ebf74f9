"""Non-IID partitioners: split a centralised data set into federated clients.

Each partitioner returns ``parts``: a list with one sorted ``int64`` index array per
client, indexing into the original arrays. Except for :func:`natural` with a
sampled subset of groups, every sample lands in exactly one client, so
``np.sort(np.concatenate(parts))`` equals ``np.arange(N)``.

All randomness comes from ``np.random.default_rng(seed)``; global RNG state is never
read or written. The same ``seed`` (an int, or a ``np.random.Generator`` in the same
state) gives the same partition.

* :func:`iid` -- uniform random split, the baseline.
* :func:`dirichlet` -- label skew with per-class Dirichlet proportions
  (Hsu et al. 2019; Yurochkin et al. 2019).
* :func:`shards` -- the pathological sort-and-shard split of McMahan et al. 2017.
* :func:`natural` -- one client per writer/speaker/domain id.

:func:`pad_clients` turns ragged ``parts`` into the dense ``[K, n_max, ...]`` arrays
plus valid-prefix ``counts`` that the jitted client-axis runtime consumes, and
:func:`label_histograms` gives the ``[K, C]`` label counts used to inspect skew.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from jaxfl.errors import ConfigError

Seed = int | np.integer | np.random.Generator | np.random.SeedSequence


def _rng(seed: Seed | None) -> np.random.Generator:
  """A generator from ``seed``; ``None`` is refused so partitions stay reproducible."""
  if isinstance(seed, (np.random.Generator, np.random.SeedSequence)):
    return np.random.default_rng(seed)
  if isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and seed >= 0:
    return np.random.default_rng(int(seed))
  raise ConfigError("seed", "a non-negative int or a np.random.Generator", seed)


def _int_at_least(value, field: str, low: int) -> int:
  # bool is an Integral, but num_clients=True is a bug, not 1.
  if not isinstance(value, numbers.Integral) or isinstance(value, bool):
    raise ConfigError(field, f"an int >= {low}", value)
  if value < low:
    raise ConfigError(field, f"an int >= {low}", value)
  return int(value)


def _vector(a, field: str) -> np.ndarray:
  a = np.asarray(a)
  if a.ndim != 1:
    raise ConfigError(field, "a 1-D array", f"shape {a.shape}")
  return a


def _check_clients(num_clients, num_samples: int) -> int:
  k = _int_at_least(num_clients, "num_clients", 1)
  if k > num_samples:
    raise ConfigError(
        "num_clients", f"at most {num_samples} (the number of samples)", k)
  return k


def _split_by_client(client_of: np.ndarray, num_clients: int) -> list[np.ndarray]:
  """Group sample indices by their client id; each group comes out sorted."""
  # A stable sort of client ids over arange(N) keeps indices ascending per client.
  order = np.argsort(client_of, kind="stable").astype(np.int64)
  sizes = np.bincount(client_of, minlength=num_clients)
  return np.split(order, np.cumsum(sizes)[:-1])


def iid(num_samples: int, num_clients: int, *, seed: Seed) -> list[np.ndarray]:
  """Uniform random split into ``num_clients`` clients of sizes within one.

  A random permutation of ``arange(N)`` is cut into ``K`` contiguous pieces of size
  ``floor(N/K)`` or ``ceil(N/K)``.

  Args:
    num_samples: ``N``, the number of samples.
    num_clients: ``K``, with ``1 <= K <= N``.
    seed: int or ``np.random.Generator``.

  Returns:
    ``K`` sorted ``int64`` index arrays covering ``arange(N)`` exactly once.

  Raises:
    ConfigError: ``num_samples`` not a non-negative int; ``num_clients`` not in
      ``[1, N]``.
  """
  n = _int_at_least(num_samples, "num_samples", 0)
  k = _check_clients(num_clients, n)
  perm = _rng(seed).permutation(n).astype(np.int64)
  return [np.sort(p) for p in np.array_split(perm, k)]


def dirichlet(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    *,
    seed: Seed,
    min_size: int = 1,
    max_retries: int = 100,
) -> list[np.ndarray]:
  """Label-skewed split with per-class Dirichlet proportions.

  For every class ``c`` (with ``n_c`` samples) draw client proportions
  ``p_c ~ Dir(alpha * 1_K)`` and give client ``k`` a contiguous run of the class's
  shuffled samples. With cumulative proportions ``P_{c,k} = sum_{j<=k} p_{c,j}``
  (``P_{c,0} = 0``, ``P_{c,K} = 1``) client ``k`` receives

    n_{c,k} = floor(n_c P_{c,k}) - floor(n_c P_{c,k-1}),

  so ``sum_k n_{c,k} = n_c`` exactly and no sample is lost to rounding. Small
  ``alpha`` concentrates each class on few clients (``alpha -> 0``: one client per
  class); large ``alpha`` gives every client ``n_c / K`` of each class (IID). The
  relative spread of a share is ``sd(p_{c,k}) / E p_{c,k} = sqrt((K-1)/(K alpha+1))``.

  Draws whose smallest client has fewer than ``min_size`` samples are redrawn
  (proportions and shuffles both), as in Yurochkin et al.; this conditions the
  Dirichlet on that event, which matters only when ``alpha`` is small.

  Args:
    labels: ``[N]`` class labels (any sortable values).
    num_clients: ``K``, with ``1 <= K <= N`` and ``K * min_size <= N``.
    alpha: Dirichlet concentration, finite and ``> 0``.
    seed: int or ``np.random.Generator``.
    min_size: every client must get at least this many samples (``>= 0``).
    max_retries: total number of draws tried before giving up (``>= 1``).

  Returns:
    ``K`` sorted ``int64`` index arrays covering ``arange(N)`` exactly once.

  Raises:
    ConfigError: bad ``num_clients``, ``alpha``, ``min_size``, ``max_retries`` or
      ``labels``; or field ``alpha`` when ``max_retries`` draws all left some client
      below ``min_size`` (raise ``alpha``, lower ``num_clients``/``min_size``).
  """
  labels = _vector(labels, "labels")
  n = labels.shape[0]
  k = _check_clients(num_clients, n)
  if (isinstance(alpha, bool) or not isinstance(alpha, numbers.Real)
      or not math.isfinite(alpha) or alpha <= 0):
    raise ConfigError("alpha", "a finite float > 0", alpha)
  min_size = _int_at_least(min_size, "min_size", 0)
  max_retries = _int_at_least(max_retries, "max_retries", 1)
  if k * min_size > n:
    raise ConfigError(
        "num_clients",
        f"at most {n // min_size} so each client can hold min_size={min_size} "
        f"of the {n} samples", k)
  rng = _rng(seed)

  classes, cls = np.unique(labels, return_inverse=True)
  cls = cls.reshape(-1)
  n_c = np.bincount(cls, minlength=classes.shape[0])
  best = -1
  for _ in range(max_retries):
    # Shuffle, then stable-sort by class: samples grouped by class, random within.
    perm = rng.permutation(n)
    grouped = perm[np.argsort(cls[perm], kind="stable")]
    p = rng.dirichlet(np.full(k, float(alpha)), size=classes.shape[0])
    cum = np.floor(np.cumsum(p, axis=1) * n_c[:, None]).astype(np.int64)
    # Float cumsum can end a hair below 1; pin the last cut so every sample lands.
    cum = np.minimum(cum, n_c[:, None])
    cum[:, -1] = n_c
    per = np.diff(cum, axis=1, prepend=0)  # [C, K] samples of class c to client k
    sizes = per.sum(axis=0)
    best = max(best, int(sizes.min()))
    if sizes.min() >= min_size:
      client_of = np.empty(n, np.int64)
      # `grouped` is class-major, and `per` ravels class-major with clients inside.
      client_of[grouped] = np.repeat(np.tile(np.arange(k), classes.shape[0]),
                                     per.ravel())
      return _split_by_client(client_of, k)
  raise ConfigError(
      "alpha",
      f"a larger alpha (or fewer num_clients than {k}, or min_size below "
      f"{min_size}) so every client gets >= {min_size} samples: all {max_retries} "
      f"draws left some client short (best draw's smallest client: {best})",
      alpha)


def shards(
    labels: np.ndarray,
    num_clients: int,
    shards_per_client: int,
    *,
    seed: Seed,
) -> list[np.ndarray]:
  """Pathological label-sorted shard split (McMahan et al. 2017).

  Samples are sorted by label (randomly within a label), cut into
  ``S = K * shards_per_client`` contiguous shards of size ``floor(N/S)`` or
  ``ceil(N/S)``, and the shards are dealt out at random, ``shards_per_client`` per
  client. A shard spans one label unless it straddles a class boundary, so a client
  sees few labels: at most ``shards_per_client`` when every class size is a multiple
  of the shard size. Client sizes lie in
  ``[shards_per_client * floor(N/S), shards_per_client * ceil(N/S)]``.

  Args:
    labels: ``[N]`` class labels (any sortable values).
    num_clients: ``K``, with ``1 <= K <= N``.
    shards_per_client: ``>= 1``, with ``K * shards_per_client <= N``.
    seed: int or ``np.random.Generator``.

  Returns:
    ``K`` sorted ``int64`` index arrays covering ``arange(N)`` exactly once.

  Raises:
    ConfigError: bad ``num_clients``, ``shards_per_client`` or ``labels``.
  """
  labels = _vector(labels, "labels")
  n = labels.shape[0]
  k = _check_clients(num_clients, n)
  spc = _int_at_least(shards_per_client, "shards_per_client", 1)
  if k * spc > n:
    raise ConfigError(
        "shards_per_client",
        f"at most {n // k} (num_clients={k} times it must not exceed the {n} "
        "samples, or some shard would be empty)", spc)
  rng = _rng(seed)
  perm = rng.permutation(n)
  by_label = perm[np.argsort(labels[perm], kind="stable")]
  num_shards = k * spc
  # Shard sizes as np.array_split: the first N mod S shards get one extra sample.
  q, r = divmod(n, num_shards)
  shard_sizes = q + (np.arange(num_shards) < r)
  shard_of = np.empty(n, np.int64)
  shard_of[by_label] = np.repeat(np.arange(num_shards), shard_sizes)
  # Deal a random permutation of shard ids: client c owns shards owner == c.
  owner = np.empty(num_shards, np.int64)
  owner[rng.permutation(num_shards)] = np.repeat(np.arange(k), spc)
  return _split_by_client(owner[shard_of], k)


def natural(
    group_ids: np.ndarray,
    *,
    num_clients: int | None = None,
    seed: Seed | None = None,
) -> list[np.ndarray]:
  """One client per distinct group id (writer, speaker, domain, ...).

  Clients come in ascending group-id order, so client ``k`` holds the samples of
  the ``k``-th smallest chosen group; ``group_ids[parts[k][0]]`` recovers its id.
  With ``num_clients`` given, that many groups are sampled uniformly without
  replacement and the others' samples are left out.

  Args:
    group_ids: ``[N]`` group of each sample (any sortable values), ``N >= 1``.
    num_clients: number of groups to keep; ``None`` keeps all ``G`` groups.
    seed: int or ``np.random.Generator``; required when ``num_clients`` is given.

  Returns:
    One sorted ``int64`` index array per chosen group.

  Raises:
    ConfigError: ``group_ids`` empty or not 1-D; ``num_clients`` not in
      ``[1, G]``; ``seed`` missing when sampling.
  """
  group_ids = _vector(group_ids, "group_ids")
  if group_ids.shape[0] == 0:
    raise ConfigError("group_ids", "at least one sample", "an empty array")
  groups, inv = np.unique(group_ids, return_inverse=True)
  num_groups = groups.shape[0]
  parts = _split_by_client(inv.reshape(-1).astype(np.int64), num_groups)
  if num_clients is None:
    return parts
  k = _int_at_least(num_clients, "num_clients", 1)
  if k > num_groups:
    raise ConfigError(
        "num_clients", f"at most {num_groups} (the number of distinct groups)", k)
  if seed is None:
    raise ConfigError(
        "seed", "an int or np.random.Generator when num_clients is given", None)
  chosen = np.sort(_rng(seed).choice(num_groups, size=k, replace=False))
  return [parts[g] for g in chosen]


def pad_clients(
    x: np.ndarray, y: np.ndarray, parts: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Stack ragged clients into dense, zero-padded arrays for a jitted client axis.

  With ``n_k = len(parts[k])`` and ``n_max = max_k n_k``:

    x_pad[k, i] = x[parts[k][i]]  if i < n_k  else 0,
    y_pad[k, i] = y[parts[k][i]]  if i < n_k  else 0,
    counts[k] = n_k,

  so the valid-sample mask is ``arange(n_max)[None, :] < counts[:, None]``. Dtypes
  of ``x`` and ``y`` are kept.

  Args:
    x: ``[N, ...]`` features.
    y: ``[N, ...]`` targets (usually ``[N]`` labels).
    parts: ``K >= 1`` integer index arrays into ``x``/``y``.

  Returns:
    ``(x_pad [K, n_max, *x.shape[1:]], y_pad [K, n_max, *y.shape[1:]],
    counts [K] int32)``.

  Raises:
    ConfigError: ``x``/``y`` lengths differ; ``parts`` empty, not 1-D integer
      arrays, or indexing out of range.
  """
  x = np.asarray(x)
  y = np.asarray(y)
  if x.ndim < 1:
    raise ConfigError("x", "an array with a leading sample axis", f"shape {x.shape}")
  n = x.shape[0]
  if y.ndim < 1 or y.shape[0] != n:
    raise ConfigError("y", f"an array with leading axis {n} (as x)",
                      f"shape {y.shape}")
  parts = [np.asarray(p) for p in parts]
  if not parts:
    raise ConfigError("parts", "at least one client", "an empty list")
  for p in parts:
    if p.ndim != 1 or not (p.size == 0 or np.issubdtype(p.dtype, np.integer)):
      raise ConfigError("parts", "1-D integer index arrays",
                        f"shape {p.shape} dtype {p.dtype}")
    if p.size and (p.min() < 0 or p.max() >= n):
      raise ConfigError("parts", f"indices in [0, {n})",
                        f"range [{p.min()}, {p.max()}]")
  counts = np.array([p.shape[0] for p in parts], np.int32)
  k, n_max = len(parts), int(counts.max())
  flat = np.concatenate(parts).astype(np.int64)
  rows = np.repeat(np.arange(k), counts)
  # Position of each flat entry within its client: global position minus client start.
  cols = np.arange(flat.shape[0]) - np.repeat(np.cumsum(counts) - counts, counts)
  x_pad = np.zeros((k, n_max) + x.shape[1:], x.dtype)
  y_pad = np.zeros((k, n_max) + y.shape[1:], y.dtype)
  x_pad[rows, cols] = x[flat]
  y_pad[rows, cols] = y[flat]
  return x_pad, y_pad, counts


def label_histograms(
    labels: np.ndarray, parts: list[np.ndarray], num_classes: int
) -> np.ndarray:
  """Per-client label counts ``h[k, c] = #{i in parts[k] : labels[i] = c}``.

  Args:
    labels: ``[N]`` integer labels in ``[0, num_classes)``.
    parts: ``K`` index arrays into ``labels``.
    num_classes: ``C >= 1``.

  Returns:
    ``[K, C]`` ``int64`` counts; row ``k`` sums to ``len(parts[k])``.

  Raises:
    ConfigError: ``num_classes`` < 1; ``labels`` not 1-D integers in range.
  """
  c = _int_at_least(num_classes, "num_classes", 1)
  labels = _vector(labels, "labels")
  if labels.size and not np.issubdtype(labels.dtype, np.integer):
    raise ConfigError("labels", "integer class ids", f"dtype {labels.dtype}")
  if labels.size and (labels.min() < 0 or labels.max() >= c):
    raise ConfigError("labels", f"class ids in [0, {c})",
                      f"range [{labels.min()}, {labels.max()}]")
  hist = np.zeros((len(parts), c), np.int64)
  for k, p in enumerate(parts):
    hist[k] = np.bincount(labels[np.asarray(p, np.int64)], minlength=c)
  return hist
