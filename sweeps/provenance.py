"""Where results came from: each config's report folder, and what a launch and a run record.

A config's report goes to ``<workdir>/<experiment>/<name>/`` (:func:`report_folder`), with
``name`` read from the config itself: its variant, the fields it overrides against that
variant's ``get_config`` (:func:`overrides`), and its hash, e.g. ``quick-3f2a9c01`` or
``quick,client_lr=0.1,num_seeds=2-8be0d4a7``. Two configs launched into one workdir so
keep two reports, and the name says which is which before the folder is opened.

What the database keeps, so that ``python -m sweeps.report`` rebuilds identical files:

* per launch that computes runs (:func:`launch_facts`, the ``launches`` table): the config
  hash, the overrides, the git commit of this checkout (and whether it had uncommitted
  changes), the versions of Python and the packages results depend on, the launching
  process's devices, the backend and the time;
* per run (:func:`with_environment`, in ``runs.info["environment"]``): the host and the
  devices that computed it, on every backend (a remote worker fills its own).

Reports and ``claims.json`` carry both (:func:`summary`).
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import platform
import socket
import subprocess
import time
from collections.abc import Mapping
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The distributions whose versions a launch records (results may depend on each).
PACKAGES = ("jaxfl", "jax", "jaxlib", "flax", "optax", "numpy", "orbax-checkpoint",
            "ml-collections", "tensorflow-datasets", "scikit-learn", "scipy")
#: Fields that say where data and caches live, not what is computed: kept out of names.
WHERE_FIELDS = ("data_dir", "cache_dir")
NAME_CHARS = 120  # a folder name's readable part at most (before the hash)
HASH_IN_NAME = 8


def point_name(point: Mapping[str, Any]) -> str:
  """Overrides as a folder name: ``alpha=0.1,clients_per_round=5`` (keys sorted; characters
  other than letters, digits and ``=,.-_+`` become ``_``).

  >>> point_name({"path": "a/b c", "ks": (8, 64)})
  'ks=8-64,path=a_b_c'
  """
  return _safe(",".join(f"{k}={_value_text(v)}" for k, v in sorted(point.items())))


def _safe(text: str) -> str:
  return "".join(ch if ch.isalnum() or ch in "=,.-_+" else "_" for ch in text)


def _value_text(v) -> str:
  return "-".join(map(_value_text, v)) if isinstance(v, (list, tuple)) else str(v)


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


@functools.lru_cache(maxsize=32)
def _variant_fields(experiment: str, variant: str) -> dict[str, Any] | None:
  path = os.path.join(ROOT, "sweeps", "configs", f"{experiment}.py")
  if not os.path.isfile(path):
    return None
  spec = importlib.util.spec_from_file_location(f"_provenance_config_{experiment}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    return _flat(module.get_config(variant).to_dict())
  except Exception:  # noqa: BLE001 -- no such variant: the config names no baseline
    return None


def overrides(config) -> dict[str, Any] | None:
  """The dotted fields of ``config`` that differ from (or are not in) its variant's config
  in ``sweeps/configs/<experiment>.py``; ``None`` when there is no such file or variant.

  A launcher's ``--config.client_lr=0.1`` gives ``{"client_lr": 0.1}``; a notebook's edits
  of a loaded config show the same way.
  """
  cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  variant = cfg.get("variant")
  base = _variant_fields(cfg.get("experiment", ""), variant) if variant else None
  if base is None:
    return None
  return {k: v for k, v in sorted(_flat(cfg).items()) if k not in base or base[k] != v}


def report_name(config, digest: str) -> str:
  """The folder name of ``config``'s report: ``<variant>[,<overrides>]-<hash[:8]>``.

  Overrides of :data:`WHERE_FIELDS` are left out of the readable part (the hash still
  tells such configs apart); a readable part longer than :data:`NAME_CHARS` is cut.
  """
  cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  changed = {k: v for k, v in (overrides(cfg) or {}).items() if k not in WHERE_FIELDS}
  text = ",".join(p for p in (_safe(str(cfg.get("variant") or "config")), point_name(changed))
                  if p)
  if len(text) > NAME_CHARS:
    text = text[:NAME_CHARS - 3] + "..."
  return f"{text}-{digest[:HASH_IN_NAME]}"


def report_folder(config, digest: str | None = None) -> str:
  """``<experiment>/<report_name>``: where ``config``'s report goes, relative to the
  workdir (``digest``: its :func:`~sweeps.results.config_hash`, computed if not given)."""
  if digest is None:
    from sweeps.results_schema import config_hash

    digest = config_hash(config)
  return os.path.join(config["experiment"], report_name(config, digest))


# ----------------------------------------------------------------------------- facts


def _git(*args: str) -> str | None:
  try:
    done = subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True,
                          timeout=10, check=False)
  except (OSError, subprocess.SubprocessError):
    return None
  return done.stdout.strip() if done.returncode == 0 else None


def commit() -> dict[str, Any]:
  """``{"commit": sha or None, "dirty": bool or None}`` of this checkout (None when the
  code does not run from a git checkout, e.g. an installed package)."""
  if not os.path.exists(os.path.join(ROOT, ".git")):
    return {"commit": None, "dirty": None}
  sha = _git("rev-parse", "HEAD")
  status = _git("status", "--porcelain", "--untracked-files=no")
  return {"commit": sha, "dirty": None if status is None else bool(status)}


def versions() -> dict[str, str | None]:
  """Python's version and each of :data:`PACKAGES`' (None: not installed)."""
  out = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def devices() -> dict[str, Any]:
  """The JAX platform, the kind and number of devices, and the number of processes."""
  import jax

  return {"platform": jax.default_backend(), "device": jax.devices()[0].device_kind,
          "devices": jax.device_count(), "processes": jax.process_count()}


def with_environment(info: Mapping[str, Any] | None) -> dict[str, Any]:
  """A run's ``info`` with ``environment``: the host and devices computing it."""
  return {**(info or {}), "environment": {"host": socket.gethostname(), **devices()}}


def run_info(runner, config, ctx, info: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """What a run stores as its ``info``: the experiment's shared ``info(config, ctx)`` (if
  it has one), then ``info`` (the run's own), with :func:`with_environment`."""
  shared = runner.info(config, ctx) if hasattr(runner, "info") else None
  return with_environment({**(shared or {}), **(info or {})})


def launch_facts(config, digest: str, backend: str) -> dict[str, Any]:
  """What a launch records (the ``launches`` table): hash, overrides, commit, versions,
  the launching process's devices, backend and time."""
  return {"config_hash": digest, "overrides": overrides(config), **commit(),
          "versions": versions(), "devices": devices(), "backend": backend,
          "host": socket.gethostname(), "time": time.time()}


def summary(launches: list[dict], runs: list[dict]) -> dict[str, Any]:
  """The provenance a report shows: the config's overrides, every launch that computed
  its runs (commit, versions, backend, time) and the devices its done runs ran on."""
  seen = sorted({(e.get("platform"), e.get("device"), e.get("devices")) for e in
                 ((r["info"] or {}).get("environment") for r in runs if r["status"] == "done")
                 if e}, key=str)
  last = launches[-1] if launches else {}
  return {"overrides": last.get("overrides"),
          "launches": [{k: v for k, v in la.items() if k not in ("config_hash", "overrides")}
                       for la in launches],
          "run_devices": [dict(platform=p, device=d, devices=n) for p, d, n in seen]}
