"""A run folder belongs to the config that made it (``launch.bind_run``), checked without
training: its record, the refusal of another config (naming the fields that differ), and
which configs may resume on another number of workers."""

import json
import os
import socket

import pytest
from tiny import tiny_config

from orchestrator.launch import RECORD_FILE, bind_run, run_location
from orchestrator.plan import located
from workers.errors import InputError


def _cfg(data, tmp_path, **changes):
    return located(tiny_config(data, tmp_path / "runs", epochs=3, run_name="r")
                   .replace(**changes))


@pytest.fixture
def data(tmp_path):
    """bind_run reads only the prepared folder's meta.json (its fingerprint)."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "meta.json").write_text(json.dumps({"labels": ["a", "b"], "prepared_id": "1"}))
    return folder


def test_a_new_folder_records_its_config_and_every_launch(data, tmp_path):
    cfg = _cfg(data, tmp_path)
    history, owner = bind_run(cfg, run_location(cfg))
    assert history == [] and owner == cfg
    bind_run(cfg, run_location(cfg))
    record = json.loads((tmp_path / "runs" / "r" / RECORD_FILE).read_text())
    assert record["config"] == cfg.to_dict() and record["run_key"] == cfg.run_key()
    assert len(record["launches"]) == 2
    facts = record["launches"][0]
    assert facts["packages"]["torch"] == "2.11.0" and facts["code_version"]
    assert facts["epochs_done_before"] == 0 and facts["workers"] == 2
    assert facts["host"] == socket.gethostname() and facts["pid"] == os.getpid()


@pytest.mark.parametrize("change,named", [({"lr": 1e-4}, "lr 0.004 -> 0.0001"),
                                          ({"epochs": 4}, "epochs 3 -> 4"),
                                          ({"scope": "local"}, "scope 'global' -> 'local'")])
def test_another_config_is_refused_naming_what_differs(data, tmp_path, change, named):
    cfg = _cfg(data, tmp_path)
    bind_run(cfg, run_location(cfg))
    with pytest.raises(InputError) as refused:
        bind_run(cfg.replace(**change), run_location(cfg))
    assert named in str(refused.value) and "another --run-name" in str(refused.value)
    record = json.loads((tmp_path / "runs" / "r" / RECORD_FILE).read_text())
    assert record["config"] == cfg.to_dict() and len(record["launches"]) == 1


def test_another_config_gets_another_default_folder(data, tmp_path):
    """Without --run-name, changing a result field trains a new run beside the old."""
    cfg = _cfg(data, tmp_path, run_name=None)
    other = _cfg(data, tmp_path, run_name=None, lr=1e-4)
    assert cfg.run_name != other.run_name
    # where files go and how fast they come are not the run's config
    assert cfg.run_name == _cfg(data, tmp_path, run_name=None, checkpoints_to_keep=5,
                                max_failures=3, cpus_per_worker=0.5).run_name


def test_changed_data_is_refused(data, tmp_path):
    cfg = _cfg(data, tmp_path)
    bind_run(cfg, run_location(cfg))
    (data / "meta.json").write_text(json.dumps({"labels": ["a", "b"], "prepared_id": "2"}))
    with pytest.raises(InputError, match="prepared data .* changed"):
        bind_run(cfg, run_location(cfg))


def test_workers_may_change_on_resume_only_without_local_statistics(data, tmp_path):
    """A world-size-independent run (global statistics, or cosine) may resume on another
    number of workers; a local-scope run may not."""
    for scope, allowed in (("global", True), ("local", False)):
        cfg = _cfg(data, tmp_path, scope=scope, run_name=f"ws-{scope}")
        bind_run(cfg, run_location(cfg))
        fewer = cfg.replace(workers=1)
        if allowed:
            _, owner = bind_run(fewer, run_location(fewer))
            assert owner.workers == 2  # the folder still belongs to the config that began it
        else:
            with pytest.raises(InputError, match="depend on the number of workers"):
                bind_run(fewer, run_location(fewer))
