"""Provenance: report folder names from the config, the facts a launch and a run record."""

import importlib.metadata
import subprocess

import jax
import ml_collections
import pytest

from sweeps import provenance
from sweeps.configs.fedavg import get_config as fedavg_config
from sweeps.configs.prism import get_config as prism_config
from sweeps.results import ResultsDB, config_hash, results_path


def test_an_unchanged_variant_is_named_by_its_variant_and_hash():
  c = fedavg_config("quick")
  digest = config_hash(c)
  assert provenance.overrides(c) == {}
  assert provenance.report_name(c, digest) == f"quick-{digest[:8]}"
  assert provenance.report_folder(c) == f"fedavg/quick-{digest[:8]}"


def test_overrides_are_the_fields_changed_against_the_variant_sorted_and_dotted():
  c = fedavg_config("quick")
  c.client_lr_grid = (0.1, 0.2)
  c.num_seeds = 2
  assert provenance.overrides(c) == {"client_lr_grid": [0.1, 0.2], "num_seeds": 2}
  assert provenance.report_name(c, "0123456789abcdef") == \
      "quick,client_lr_grid=0.1-0.2,num_seeds=2-01234567"
  p = prism_config("quick")
  p.denoiser.width = 7  # a block's field
  assert provenance.overrides(p) == {"denoiser.width": 7}


def test_where_data_lives_changes_the_hash_not_the_readable_name():
  a, b = fedavg_config("quick"), fedavg_config("quick")
  b.data_dir = "/somewhere/else"
  assert provenance.overrides(b) == {"data_dir": "/somewhere/else"}
  na, nb = (provenance.report_name(c, config_hash(c)) for c in (a, b))
  assert na.rsplit("-", 1)[0] == nb.rsplit("-", 1)[0] == "quick" and na != nb


def test_a_long_name_is_cut_and_odd_characters_replaced():
  c = fedavg_config("quick")
  c.num_clients = 12
  c.data_dir = "x"
  with c.unlocked():
    c.note = "a/b c" * 40  # a field the variant does not have
  name = provenance.report_name(c, "f" * 16)
  text, digest = name.rsplit("-", 1)
  assert digest == "f" * 8 and len(text) == provenance.NAME_CHARS
  assert text.startswith("quick,note=a_b_ca_b_c") and text.endswith("...")
  assert "/" not in name and " " not in name


def test_a_config_without_a_variant_file_has_no_overrides():
  c = ml_collections.ConfigDict({"experiment": "not_an_experiment", "variant": "quick"})
  assert provenance.overrides(c) is None
  assert provenance.report_name(c, "ab" * 8) == "quick-abababab"
  assert provenance.overrides(ml_collections.ConfigDict({"experiment": "fedavg"})) is None


def test_launch_facts_name_the_commit_the_versions_and_the_devices():
  c = fedavg_config("quick")
  c.num_seeds = 3
  facts = provenance.launch_facts(c, config_hash(c), "local")
  assert facts["config_hash"] == config_hash(c) and facts["overrides"] == {"num_seeds": 3}
  head = subprocess.run(["git", "-C", provenance.ROOT, "rev-parse", "HEAD"],
                        capture_output=True, text=True)
  if head.returncode == 0:  # a git checkout (CI's clean clone is one)
    assert facts["commit"] == head.stdout.strip() and isinstance(facts["dirty"], bool)
  else:
    assert facts["commit"] is None
  assert facts["versions"]["jax"] == jax.__version__
  assert facts["versions"]["optax"] == importlib.metadata.version("optax")
  assert facts["devices"] == {"platform": "cpu", "device": jax.devices()[0].device_kind,
                              "devices": jax.device_count(), "processes": 1}
  assert facts["backend"] == "local"


def test_the_database_keeps_every_launch_in_order(tmp_path):
  with ResultsDB(results_path(tmp_path)) as db:
    db.record_launch("fedavg", "h1", {"commit": "a", "n": 1})
    db.record_launch("fedavg", "h2", {"commit": "b"})
    db.record_launch("fedavg", "h1", {"commit": "c", "n": 2})
    assert db.launches("fedavg", "h1") == [{"commit": "a", "n": 1}, {"commit": "c", "n": 2}]
    assert db.launches("prism", "h1") == []
    with pytest.raises(ValueError, match="facts: expected a mapping"):
      db.record_launch("fedavg", "h1", [1])


def test_summary_lists_launches_and_the_devices_of_done_runs():
  env = {"host": "h", "platform": "cpu", "device": "cpu", "devices": 8, "processes": 1}
  runs = [{"status": "done", "info": {"environment": env}},
          {"status": "done", "info": {"environment": env, "params": 3}},
          {"status": "failed", "info": {"environment": {**env, "device": "gpu"}}},
          {"status": "done", "info": None}]
  launch = {"config_hash": "h", "overrides": {"num_seeds": 2}, "commit": "abc", "time": 1.0}
  got = provenance.summary([launch], runs)
  assert got == {"overrides": {"num_seeds": 2}, "launches": [{"commit": "abc", "time": 1.0}],
                 "run_devices": [{"platform": "cpu", "device": "cpu", "devices": 8}]}
  assert provenance.summary([], [])["overrides"] is None
