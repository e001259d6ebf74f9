"""Windows of token streams, and the federated clients' shares of the corpus.

:func:`sample_windows` draws random training windows from a stream, :func:`eval_windows`
cuts fixed evaluation windows, and :func:`client_domains` / :func:`client_streams` /
:func:`client_windows` give federated clients their data.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxfl.data.corpus.loading import Corpus, _check_domains
from jaxfl.data.corpus.text import CLIENT_DOMAINS, SPLITS
from jaxfl.errors import ConfigError
from jaxfl.local import ClientData

# --- batching -------------------------------------------------------------------


def _positive_int(value, field: str) -> int:
  if not isinstance(value, numbers.Integral) or isinstance(value, bool) or (
      value < 1):
    raise ConfigError(field, "an int >= 1", value)
  return int(value)


@functools.partial(jax.jit, static_argnames=("batch_size", "seq_len"))
def sample_windows(tokens: jax.Array, key: jax.Array, batch_size: int,
                   seq_len: int) -> tuple[jax.Array, jax.Array]:
  """``batch_size`` random contiguous windows of ``tokens`` (uniform starts).

  Jitted with ``batch_size`` and ``seq_len`` static; pass ``tokens`` as a
  device array (``jnp.asarray`` once) so it is not copied on every call.

  Args:
    tokens: ``int [N]`` stream, ``N >= seq_len + 1``.
    key: PRNG key.
    batch_size: windows to draw (with replacement).
    seq_len: window length ``T``.

  Returns:
    ``(inputs, targets)``, ``int32 [batch_size, seq_len]`` each, with
    ``targets[:, t] == inputs[:, t + 1]``: both are
    ``tokens[s : s + T + 1]`` for a start ``s`` in ``[0, N - T - 1]``, minus
    its last or first token.

  Raises:
    ConfigError: ``tokens`` not 1-D or shorter than ``seq_len + 1`` (field
      ``tokens``); bad ``batch_size``/``seq_len``.
  """
  batch_size = _positive_int(batch_size, "batch_size")
  seq_len = _positive_int(seq_len, "seq_len")
  if tokens.ndim != 1 or tokens.shape[0] < seq_len + 1:
    raise ConfigError(
        "tokens", f"a 1-D stream of at least seq_len + 1 = {seq_len + 1}"
        " tokens", f"shape {tokens.shape}")
  starts = jax.random.randint(
      key, (batch_size, 1), 0, tokens.shape[0] - seq_len)
  windows = tokens[starts + jnp.arange(seq_len + 1)[None, :]].astype(jnp.int32)
  return windows[:, :-1], windows[:, 1:]


def eval_windows(tokens, seq_len: int, max_windows: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Fixed evaluation windows: every target token scored at most once.

  Window ``k`` is ``tokens[k*T : k*T + T + 1]`` (inputs without its last token,
  targets without its first), so the targets of different windows never
  overlap. With more than ``max_windows`` of them, ``max_windows`` evenly
  spaced ones are kept (first and last included), so long streams are sampled
  across all their files rather than at the start.

  >>> x, y = eval_windows(np.arange(10), 3)
  >>> x.tolist(), y.tolist()
  ([[0, 1, 2], [3, 4, 5], [6, 7, 8]], [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
  >>> eval_windows(np.arange(10), 3, max_windows=2)[0].tolist()
  [[0, 1, 2], [6, 7, 8]]

  Args:
    tokens: ``int [N]`` stream, ``N >= seq_len + 1``.
    seq_len: window length ``T``.
    max_windows: keep at most this many windows; ``None`` keeps all
      ``(N - 1) // T``.

  Returns:
    ``(inputs, targets)``, numpy ``int32 [W, seq_len]`` each.

  Raises:
    ConfigError: ``tokens`` not 1-D or too short (field ``tokens``); bad
      ``seq_len``/``max_windows``.
  """
  seq_len = _positive_int(seq_len, "seq_len")
  tokens = np.asarray(tokens)
  if tokens.ndim != 1 or tokens.shape[0] < seq_len + 1:
    raise ConfigError(
        "tokens", f"a 1-D stream of at least seq_len + 1 = {seq_len + 1}"
        " tokens", f"shape {tokens.shape}")
  num = (tokens.shape[0] - 1) // seq_len
  index = np.arange(num)
  if max_windows is not None:
    max_windows = _positive_int(max_windows, "max_windows")
    if num > max_windows:
      index = np.round(np.linspace(0, num - 1, max_windows)).astype(np.int64)
  rows = index[:, None] * seq_len + np.arange(seq_len + 1)
  windows = tokens[rows].astype(np.int32)
  return windows[:, :-1], windows[:, 1:]


# --- federated clients ----------------------------------------------------------


class ClientShard(NamedTuple):
  """A client's data: contiguous shard ``shard`` of ``num_shards`` of a domain."""

  domain: str
  shard: int
  num_shards: int


def client_domains(num_clients: int, *,
                   domains: Sequence[str] = CLIENT_DOMAINS
                   ) -> tuple[ClientShard, ...]:
  """Which domain (and which shard of it) each client gets.

  With ``num_clients <= len(domains)``, client ``i`` gets all of
  ``domains[i]``; the remaining domains are unused. With more clients, every
  domain is cut into contiguous shards: ``num_clients // len(domains)`` each,
  one more for the first ``num_clients % len(domains)`` domains, clients listed
  domain by domain. Clients are thus non-IID by construction; clients sharing a
  domain differ only in which files (parts) they hold.

  Args:
    num_clients: number of clients.
    domains: the domains to use, in order; defaults to :data:`CLIENT_DOMAINS`,
      which excludes the held-out :data:`GENERAL_DOMAINS`.

  Returns:
    One :class:`ClientShard` per client.

  Raises:
    ConfigError: bad ``num_clients`` or ``domains``.
  """
  num_clients = _positive_int(num_clients, "num_clients")
  domains = _check_domains(domains)
  if num_clients <= len(domains):
    return tuple(ClientShard(d, 0, 1) for d in domains[:num_clients])
  base, extra = divmod(num_clients, len(domains))
  out = []
  for j, d in enumerate(domains):
    n = base + (j < extra)
    out.extend(ClientShard(d, s, n) for s in range(n))
  return tuple(out)


def shard_stream(tokens, shard: int, num_shards: int) -> np.ndarray:
  """Contiguous part ``shard`` of ``num_shards`` near-equal parts of a stream."""
  tokens = np.asarray(tokens)
  num_shards = _positive_int(num_shards, "num_shards")
  if not isinstance(shard, numbers.Integral) or not 0 <= shard < num_shards:
    raise ConfigError("shard", f"an int in [0, {num_shards})", shard)
  bounds = np.linspace(0, tokens.shape[0], num_shards + 1).round().astype(int)
  return tokens[bounds[shard]:bounds[shard + 1]]


def client_streams(corpus: Corpus, num_clients: int, *, split: str = "train",
                   domains: Sequence[str] = CLIENT_DOMAINS
                   ) -> list[np.ndarray]:
  """Each client's token stream, per :func:`client_domains`.

  Args:
    corpus: a loaded :class:`Corpus` holding ``domains``.
    num_clients: number of clients.
    split: ``'train'`` or ``'validation'``.
    domains: as in :func:`client_domains`.

  Returns:
    ``num_clients`` ``int32`` streams (views into the corpus).

  Raises:
    ConfigError: bad ``split``; a domain not in ``corpus`` (field ``domains``).
  """
  if split not in SPLITS:
    raise ConfigError("split", f"one of {list(SPLITS)}", split)
  shards = client_domains(num_clients, domains=domains)
  absent = sorted({c.domain for c in shards} - set(corpus.domains))
  if absent:
    raise ConfigError("domains", f"domains loaded in the corpus "
                      f"{list(corpus.domains)}", absent)
  streams = getattr(corpus, split)
  return [shard_stream(streams[c.domain], c.shard, c.num_shards)
          for c in shards]


def client_windows(corpus: Corpus, num_clients: int, seq_len: int, windows_per_client: int, *,
                   equal: bool = False, domains: Sequence[str] = CLIENT_DOMAINS) -> ClientData:
  """Each client's training windows (:func:`client_streams`, :func:`eval_windows`), stacked.

  Clients with fewer windows are zero-padded to the longest and carry their counts
  (:class:`jaxfl.local.ClientData`); with ``equal`` every client is cut to the shortest
  instead (for workers that draw batches uniformly from a full array).

  Returns:
    numpy ``ClientData``: ``x``, ``y`` ``int32 [num_clients, n, seq_len]``, ``count [N]``.
  """
  streams = client_streams(corpus, num_clients, domains=domains)
  xs, ys = zip(*(eval_windows(s, seq_len, windows_per_client) for s in streams), strict=True)
  if equal:
    n = min(len(x) for x in xs)
    return ClientData(np.stack([x[:n] for x in xs]), np.stack([y[:n] for y in ys]),
                      np.full([num_clients], n, np.int32))
  n_max = max(len(x) for x in xs)
  pad = lambda a: np.pad(a, [(0, n_max - len(a)), (0, 0)])
  return ClientData(np.stack([pad(x) for x in xs]), np.stack([pad(y) for y in ys]),
                    np.array([len(x) for x in xs], np.int32))


def domain_windows(corpus: Corpus, domains: Sequence[str], seq_len: int,
                   windows_per_domain: int, *, split: str = "validation"
                   ) -> tuple[np.ndarray, np.ndarray]:
  """``(inputs, targets)``: :func:`eval_windows` of each domain's ``split`` stream, concatenated
  in the order of ``domains`` (held-out text of the clients' domains, or of general ones)."""
  if split not in SPLITS:
    raise ConfigError("split", f"one of {list(SPLITS)}", split)
  parts = [eval_windows(getattr(corpus, split)[d], seq_len, windows_per_domain)
           for d in domains]
  return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
