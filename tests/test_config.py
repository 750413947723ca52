"""The typed run config: validation, round trip, and variant names."""

import pytest

from workers.config import RunConfig, field_docs


def test_round_trip_through_dict():
    cfg = RunConfig(similarity="cosine", epochs=3, extra={"study": "x"})
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"similarity": "dott"}, "allowed: cosine, dot, dot-legacy"),
        ({"norm": "l2"}, "allowed: minmax, meanstd"),
        ({"scope": "all"}, "allowed: local, global"),
        ({"preset": "huge"}, "allowed: tiny, small, base, large"),
        ({"batch_size": 0}, "batch_size must be > 0"),
        ({"batch_size": -8}, "batch_size must be > 0"),
        ({"clips_per_class": 1}, "clips_per_class must be >= 2"),
        ({"batch_size": 130}, "not a multiple of clips_per_class"),
        ({"batch_size": 12, "workers": 2}, "do not split evenly over 2 workers"),
        ({"dropout": 1.0}, "dropout must be in"),
        ({"epochs": 0}, "epochs must be > 0"),
        ({"prototypes": "plain"}, "unknown prototypes 'plain'; allowed: normalised, reference"),
        ({"protocol": "fskil", "prototypes": "mean"}, "allowed: normalised, reference"),
    ],
)
def test_bad_values_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(**kwargs)


def test_unknown_field_from_dict():
    with pytest.raises(ValueError, match="unknown config field"):
        RunConfig.from_dict({"learning_rate": 1.0})


def test_variant_names():
    assert RunConfig(similarity="cosine", norm="meanstd").variant == "cosine"
    assert RunConfig(norm="meanstd", scope="local").variant == "dot:meanstd:local"
    assert RunConfig(detach_stats=True).variant == "dot:minmax:global:detached"


def test_every_field_is_documented():
    import dataclasses

    docs = field_docs()
    assert {f.name for f in dataclasses.fields(RunConfig)} == set(docs)


def test_bf16_is_a_gpu_switch():
    import torch

    from orchestrator.cli import build_config
    from workers.train import RankContext, _autocast

    assert RunConfig().bf16 and not build_config({"bf16": False}).bf16
    cpu = RankContext(0, 1, torch.device("cpu"))
    with _autocast(RunConfig(gpu=True, bf16=True), cpu):
        # CPU workers always run float32, whatever the switch says
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_run_key_covers_what_changes_results_only():
    base = RunConfig(data="/d")
    # every field that can change the numbers moves the key (and the default run name)
    for change in ({"lr": 1e-4}, {"epochs": 20}, {"seed": 1}, {"workers": 1},
                   {"data": "/other"}, {"dropout": 0.0}, {"bf16": False}, {"w_lpc": 0.5}):
        other = base.replace(**change)
        assert other.run_key() != base.run_key(), change
        assert other.default_run_name() != base.default_run_name()
        assert base.differences(other) == list(change)
    # where files go and how fast it runs do not
    for change in ({"storage_path": "/s"}, {"run_name": "x"}, {"cpus_per_worker": 0.5},
                   {"threads_per_worker": 2}, {"checkpoints_to_keep": 5}, {"max_failures": 3},
                   {"max_preemptions": 2}, {"extra": {"study": "x"}}):
        assert base.replace(**change).run_key() == base.run_key(), change
    assert base.default_run_name() == f"dot-minmax-global-seed0-{base.run_key()}"


def test_prototypes_count_only_under_fskil_and_away_from_their_default():
    import hashlib
    import json

    from workers.config import CHOICES, RUNTIME_FIELDS

    assert CHOICES["prototypes"] == ("normalised", "reference") and "prototypes" in field_docs()
    fskil = RunConfig(data="/d", protocol="fskil")
    assert fskil.prototypes == "normalised" and fskil.fskil.prototypes == "normalised"
    # the default keeps the key a run got before the field existed (its record has no
    # prototypes): the same default name, and it resumes
    older = {k: v for k, v in fskil.to_dict().items() if k != "prototypes"}
    keyed = {k: v for k, v in older.items() if k not in RUNTIME_FIELDS}
    older_key = hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode())
    assert fskil.run_key() == older_key.hexdigest()[:8]
    assert RunConfig.from_dict(older).differences(fskil) == []
    # the reference's prototypes are another run under fskil ...
    reference = fskil.replace(prototypes="reference")
    assert reference.fskil.prototypes == "reference"
    assert reference.run_key() != fskil.run_key()
    assert reference.default_run_name() != fskil.default_run_name()
    assert RunConfig.from_dict(older).differences(reference) == ["prototypes"]
    assert reference.differences(fskil) == ["prototypes"]
    # ... and change nothing under the standard protocol, like the FSKIL sizes
    standard = RunConfig(data="/d")
    assert standard.replace(prototypes="reference").run_key() == standard.run_key()
    assert standard.replace(shots=3).run_key() == standard.run_key()


def test_world_size_independence():
    assert RunConfig(scope="global").world_size_independent
    assert RunConfig(similarity="cosine", scope="local").world_size_independent
    assert not RunConfig(scope="local").world_size_independent


def test_bad_values_are_input_errors():
    from workers.errors import InputError

    for bad in ({"norm": "zscore"}, {"batch_size": 0}, {"preset": "huge"}):
        with pytest.raises(InputError):
            RunConfig(**bad)
