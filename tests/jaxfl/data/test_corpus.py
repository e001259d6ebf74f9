"""Tests for jaxfl.data.corpus: the stdlib text corpus (no network, no TF)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxfl.data import corpus
from jaxfl.data.corpus import loading as corpus_loading
from jaxfl.errors import ConfigError

# Unigram byte distributions of source code are close; these bounds hold with
# margin on CPython 3.11-3.13 (measured on 3.11: smallest pair 0.005 bits,
# email/toplevel; encodings/toplevel 0.29 bits).
_MIN_PAIR_JSD_BITS = 0.002
_ENCODINGS_VS_TOPLEVEL_JSD_BITS = 0.1


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def text(data_dir):
  return corpus.load_corpus(data_dir)


def _byte_distribution(tokens: np.ndarray) -> np.ndarray:
  counts = np.bincount(tokens[tokens < 256], minlength=256).astype(np.float64)
  return counts / counts.sum()


def _jsd_bits(p: np.ndarray, q: np.ndarray) -> float:
  """Jensen-Shannon divergence in bits (0 = same, 1 = disjoint support)."""
  m = (p + q) / 2

  def kl(a):
    nz = a > 0
    return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

  return 0.5 * kl(p) + 0.5 * kl(q)


# --- tokenizer ------------------------------------------------------------------


def test_tokenizer_round_trip_non_ascii():
  tok = corpus.ByteTokenizer()
  s = "naïve café — λx. x² ≠ 𝔼[x] 日本語 🙂\n\ttab"
  ids = tok.encode(s)
  assert ids.dtype == np.int32
  assert ids.tolist() == list(s.encode("utf-8"))
  assert tok.decode(ids) == s
  framed = tok.encode(s, bos=True, eos=True)
  assert framed[0] == corpus.BOS_ID and framed[-1] == corpus.EOS_ID
  assert tok.decode(framed) == s
  assert tok.vocab_size == corpus.VOCAB_SIZE == 258
  assert tok.decode(np.array([], np.int32)) == ""
  # A window cut mid-character decodes with a replacement character.
  assert tok.decode(tok.encode("é")[:1]) == "\ufffd"


def test_tokenizer_rejects_bad_input():
  tok = corpus.ByteTokenizer()
  with pytest.raises(ConfigError) as e:
    tok.decode([65, corpus.VOCAB_SIZE])
  assert e.value.field == "ids"
  with pytest.raises(ConfigError) as e:
    tok.encode(b"bytes")
  assert e.value.field == "text"


# --- corpus ---------------------------------------------------------------------


def test_domains_constants():
  assert len(set(corpus.DOMAINS)) == len(corpus.DOMAINS) == 17
  assert set(corpus.GENERAL_DOMAINS) <= set(corpus.DOMAINS)
  assert set(corpus.CLIENT_DOMAINS).isdisjoint(corpus.GENERAL_DOMAINS)
  assert set(corpus.CLIENT_DOMAINS) | set(corpus.GENERAL_DOMAINS) == set(
      corpus.DOMAINS)


def test_every_domain_in_both_splits(text):
  assert text.domains == corpus.DOMAINS
  for d in corpus.DOMAINS:
    for split, minimum in (("train", corpus.MIN_TRAIN_BYTES),
                           ("validation", corpus.MIN_VALIDATION_BYTES)):
      stream = getattr(text, split)[d]
      paths = getattr(text, f"{split}_paths")[d]
      assert stream.dtype == np.int32 and stream.ndim == 1
      num_bytes = int(np.sum(stream < 256))
      assert num_bytes > minimum, (d, split, num_bytes)
      # One EOS after each file, the stream ends with one.
      assert int(np.sum(stream == corpus.EOS_ID)) == len(paths) >= 1
      assert stream[-1] == corpus.EOS_ID
      assert stream.min() >= 0 and stream.max() <= corpus.EOS_ID
      assert list(paths) == sorted(paths)
      top = d if d != corpus.TOPLEVEL else None
      for p in paths:
        assert p.endswith(".py")
        parts = p.split("/")
        assert (parts[0] if len(parts) > 1 else None) == top, p
        assert not {"test", "tests", "__pycache__"} & set(parts[:-1]), p


def test_validation_holds_about_a_tenth(text):
  for d in corpus.DOMAINS:
    n_train, n_val = text.train[d].size, text.validation[d].size
    frac = n_val / (n_train + n_val)
    assert 0.05 < frac <= corpus.MAX_VALIDATION_FRACTION + 0.01, (d, frac)


def test_train_validation_files_disjoint(text):
  all_train = set()
  all_val = set()
  for d in corpus.DOMAINS:
    assert not set(text.train_paths[d]) & set(text.validation_paths[d])
    all_train |= set(text.train_paths[d])
    all_val |= set(text.validation_paths[d])
  assert not all_train & all_val


def test_stream_is_the_files(text):
  tok = corpus.ByteTokenizer()
  root = corpus.stdlib_dir()
  for d in ("json", "concurrent"):
    for split in corpus.SPLITS:
      paths = getattr(text, f"{split}_paths")[d]
      expected = []
      for p in paths:
        with open(f"{root}/{p}", encoding="utf-8", newline="") as f:
          expected.append(tok.encode(f.read(), eos=True))
      np.testing.assert_array_equal(
          getattr(text, split)[d], np.concatenate(expected))


def test_deterministic_rebuild(text, tmp_path):
  again = corpus.load_corpus(str(tmp_path))
  assert again.domains == text.domains
  assert again.python_version == text.python_version
  for d in text.domains:
    np.testing.assert_array_equal(again.train[d], text.train[d])
    np.testing.assert_array_equal(again.validation[d], text.validation[d])
    assert again.train_paths[d] == text.train_paths[d]
    assert again.validation_paths[d] == text.validation_paths[d]


def test_second_load_reads_the_cache(text, data_dir, monkeypatch):
  def forbidden(self, *args, **kwargs):
    raise AssertionError("download_and_prepare called on a prepared corpus")

  monkeypatch.setattr(
      tfds.core.DatasetBuilder, "download_and_prepare", forbidden)
  sub = corpus.load_corpus(data_dir, domains=("xml", "json"))
  assert sub.domains == ("json", "xml")  # DOMAINS order.
  np.testing.assert_array_equal(sub.train["json"], text.train["json"])
  np.testing.assert_array_equal(sub.validation["xml"], text.validation["xml"])


def test_domains_are_non_iid(text):
  dist = {d: _byte_distribution(text.train[d]) for d in text.domains}
  pairs = [(a, b) for i, a in enumerate(text.domains)
           for b in text.domains[i + 1:]]
  jsd = {(a, b): _jsd_bits(dist[a], dist[b]) for a, b in pairs}
  assert min(jsd.values()) > _MIN_PAIR_JSD_BITS, min(jsd.items(),
                                                     key=lambda kv: kv[1])
  assert (jsd[("encodings", "toplevel")] > _ENCODINGS_VS_TOPLEVEL_JSD_BITS)
  assert _jsd_bits(dist["json"], dist["json"]) == 0.0


def test_bad_domain_raises_config_error(data_dir):
  for bad in (("json", "nope"), "json", (), ("json", "json")):
    with pytest.raises(ConfigError) as e:
      corpus.load_corpus(data_dir, domains=bad)
    assert e.value.field == "domains"
    assert "domains" in str(e.value)
  with pytest.raises(ConfigError) as e:
    corpus.load_corpus(3)
  assert e.value.field == "data_dir"


def test_missing_domains_skipped_or_refused(tmp_path, monkeypatch):
  real = corpus.list_source_files

  def only_two(root=None, domains=corpus.DOMAINS):
    return [f for f in real(root, domains) if f.domain in ("json", "html")]

  # load_corpus and the builder read both names in corpus.loading.
  monkeypatch.setattr(corpus_loading, "list_source_files", only_two)
  data_dir = str(tmp_path)
  with pytest.raises(ConfigError) as e:
    corpus.load_corpus(data_dir)  # 2 of 17 domains < MIN_DOMAINS.
  assert e.value.field == "domains" and "email" in str(e.value)
  with pytest.raises(ConfigError):
    corpus.load_corpus(data_dir, domains=("json", "email"))
  assert corpus.load_corpus(data_dir, domains=("json", "html")).domains == (
      "html", "json")
  monkeypatch.setattr(corpus_loading, "MIN_DOMAINS", 1)
  with pytest.warns(UserWarning, match="email"):
    got = corpus.load_corpus(data_dir, domains=("json", "email"))
  assert got.domains == ("json",)


def test_split_rule_on_synthetic_files():
  files = [corpus.SourceFile(f"pkg/m{i}.py", "pkg", b"x" * (1000 + i))
           for i in range(40)]
  files.append(corpus.SourceFile("big/a.py", "big", b"y" * 100))
  files.append(corpus.SourceFile("big/b.py", "big", b"y" * 100))
  split = corpus.split_files(files)
  train = {f.path for f in split["train"]}
  val = {f.path for f in split["validation"]}
  assert not train & val and len(train | val) == len(files)
  val_pkg = sum(len(f.data) for f in split["validation"] if f.domain == "pkg")
  total_pkg = sum(len(f.data) for f in files if f.domain == "pkg")
  assert 0.1 <= val_pkg / total_pkg <= 0.25
  # Two equal files: each is half the domain, over the cap: all train.
  assert {"big/a.py", "big/b.py"} <= train
  assert _split_is_order_free(files)


def _split_is_order_free(files):
  a = corpus.split_files(files)
  b = corpus.split_files(list(reversed(files)))
  return all([f.path for f in a[s]] == [f.path for f in b[s]]
             for s in corpus.SPLITS)


# --- batching -------------------------------------------------------------------


def test_sample_windows_shift_and_bounds(text):
  stream = text.train["json"]
  tokens = jnp.asarray(stream)
  batch, seq_len = 16, 32
  x, y = corpus.sample_windows(tokens, jax.random.PRNGKey(0), batch, seq_len)
  assert x.shape == y.shape == (batch, seq_len)
  assert x.dtype == y.dtype == jnp.int32
  x, y = np.asarray(x), np.asarray(y)
  np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
  windows = np.lib.stride_tricks.sliding_window_view(stream, seq_len + 1)
  for row in np.concatenate([x, y[:, -1:]], axis=1):
    assert np.any(np.all(windows == row, axis=1))
  # Windows are exactly tokens[s:s+T+1] with s in [0, N-T-1], every start drawn.
  n = 40
  x, y = corpus.sample_windows(
      jnp.arange(n), jax.random.PRNGKey(1), 2000, 7)
  x, y = np.asarray(x), np.asarray(y)
  np.testing.assert_array_equal(x, x[:, :1] + np.arange(7))
  np.testing.assert_array_equal(y, x + 1)
  assert x[:, 0].min() == 0 and y[:, -1].max() == n - 1
  assert set(x[:, 0].tolist()) == set(range(n - 7))
  # Same key, same batch; another key, another batch.
  # (Same shapes as above: no new compilation.)
  a = corpus.sample_windows(tokens, jax.random.PRNGKey(3), batch, seq_len)[0]
  b = corpus.sample_windows(tokens, jax.random.PRNGKey(3), batch, seq_len)[0]
  c = corpus.sample_windows(tokens, jax.random.PRNGKey(4), batch, seq_len)[0]
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_sample_windows_rejects_short_stream():
  with pytest.raises(ConfigError) as e:
    corpus.sample_windows(jnp.arange(8), jax.random.PRNGKey(0), 2, 8)
  assert e.value.field == "tokens"
  with pytest.raises(ConfigError) as e:
    corpus.sample_windows(jnp.arange(8), jax.random.PRNGKey(0), 0, 2)
  assert e.value.field == "batch_size"


def test_eval_windows(text):
  x, y = corpus.eval_windows(np.arange(23), 5)
  assert x.shape == y.shape == (4, 5) and x.dtype == np.int32
  np.testing.assert_array_equal(x.ravel(), np.arange(20))
  np.testing.assert_array_equal(y.ravel(), np.arange(1, 21))
  stream = text.validation["toplevel"]
  x, y = corpus.eval_windows(stream, 128, max_windows=64)
  assert x.shape == (64, 128)
  np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
  np.testing.assert_array_equal(x[0], stream[:128])
  last = (stream.size - 1) // 128 - 1
  np.testing.assert_array_equal(y[-1], stream[last * 128 + 1:last * 128 + 129])
  x2, _ = corpus.eval_windows(stream, 128, max_windows=64)
  np.testing.assert_array_equal(x, x2)
  with pytest.raises(ConfigError) as e:
    corpus.eval_windows(np.arange(5), 5)
  assert e.value.field == "tokens"
  with pytest.raises(ConfigError) as e:
    corpus.eval_windows(np.arange(50), 5, max_windows=0)
  assert e.value.field == "max_windows"


# --- clients --------------------------------------------------------------------


def test_client_domains_layout():
  n = len(corpus.CLIENT_DOMAINS)
  few = corpus.client_domains(3)
  assert [c.domain for c in few] == list(corpus.CLIENT_DOMAINS[:3])
  assert all(c.num_shards == 1 for c in few)
  many = corpus.client_domains(n + 3)
  assert len(many) == n + 3
  counts = {d: sum(c.domain == d for c in many) for d in corpus.CLIENT_DOMAINS}
  assert [counts[d] for d in corpus.CLIENT_DOMAINS] == [2] * 3 + [1] * (n - 3)
  assert not {c.domain for c in many} & set(corpus.GENERAL_DOMAINS)
  with pytest.raises(ConfigError) as e:
    corpus.client_domains(0)
  assert e.value.field == "num_clients"
  with pytest.raises(ConfigError) as e:
    corpus.client_domains(2, domains=("json", "python2"))
  assert e.value.field == "domains"


def test_client_streams_cover_domains(text):
  n = 2 * len(corpus.CLIENT_DOMAINS) + 1
  streams = corpus.client_streams(text, n)
  shards = corpus.client_domains(n)
  assert len(streams) == n
  for d in corpus.CLIENT_DOMAINS:
    parts = [s for s, c in zip(streams, shards) if c.domain == d]
    np.testing.assert_array_equal(np.concatenate(parts), text.train[d])
    assert max(p.size for p in parts) - min(p.size for p in parts) <= 1
  val = corpus.client_streams(text, 2, split="validation")
  np.testing.assert_array_equal(val[1], text.validation[corpus.CLIENT_DOMAINS[1]])
  with pytest.raises(ConfigError) as e:
    corpus.client_streams(text, 2, split="test")
  assert e.value.field == "split"


def _toy_corpus():
  """Two domains of known streams (no build): 'json' 0..40, 'email' 100..120."""
  train = {"json": np.arange(41, dtype=np.int32), "email": np.arange(100, 121, dtype=np.int32)}
  return corpus.Corpus(("json", "email"), train, {d: v + 1 for d, v in train.items()},
                       {}, {}, "3.11")


def test_client_windows_pad_or_cut_and_domain_windows_concatenate():
  toy = _toy_corpus()
  # One client per domain, windows of 4 tokens: json has 10, email 5.
  padded = corpus.client_windows(toy, 2, 4, 100, domains=("json", "email"))
  assert padded.x.shape == (2, 10, 4) and padded.count.tolist() == [10, 5]
  assert padded.x[1, 0].tolist() == [100, 101, 102, 103] and padded.y[1, 0, 0] == 101
  assert not padded.x[1, 5:].any()  # zero padding past the count
  cut = corpus.client_windows(toy, 2, 4, 100, equal=True, domains=("json", "email"))
  assert cut.x.shape == (2, 5, 4) and cut.count.tolist() == [5, 5]
  assert np.array_equal(cut.x[0], padded.x[0, :5])
  x, y = corpus.domain_windows(toy, ["email", "json"], 4, 2)
  assert x.shape == (4, 4) and x[0, 0] == 101 and x[2, 0] == 1  # validation = train + 1
  assert np.array_equal(y[:, :-1], x[:, 1:])
