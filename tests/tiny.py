"""The tiny run every test that trains uses, defined once: the tiny model, global batches
of 16 words x 2 clips, 2 workers (on the small corpus of conftest's ``small_prepared``)."""

from __future__ import annotations

from workers.config import RunConfig

TINY = {"preset": "tiny", "batch_size": 32, "clips_per_class": 2, "workers": 2}


def tiny_config(data, storage=None, **changes) -> RunConfig:
    """RunConfig of the tiny run on ``data``, its runs under ``storage``."""
    return RunConfig(**TINY, data=str(data),
                     storage_path=None if storage is None else str(storage)) \
        .replace(**changes)


def tiny_options(**changes) -> list[str]:
    """The tiny run as command-line options (``changes`` in config-field names)."""
    options = []
    for name, value in (TINY | changes).items():
        options += [f"--{name.replace('_', '-')}", str(value)]
    return options
