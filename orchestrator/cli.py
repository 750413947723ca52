"""The ``dotsim`` command line: a thin Click group over plain functions.

User errors (bad options, bad data, an unreachable cluster) exit with code 2 and one line
on stderr; a failed run exits with 1. Set DOTSIM_DEBUG=1 to see tracebacks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import types
import typing
from pathlib import Path

import click

from workers.config import RunConfig, field_docs

EXAMPLE_TRAIN = "dotsim train --similarity dot --norm meanstd --scope global --epochs 12"


class UserError(click.ClickException):
    """Bad input from the user: exit 2, one line."""

    exit_code = 2


# --- options generated from the typed config -----------------------------------------

# Fields that have their own option name or are not for the command line.
_OPTION_NAMES = {"gpu": "--gpu/--cpu"}
_NOT_OPTIONS = {"extra"}


def _click_type(annotation: str):
    base = {"int": int, "float": float, "str": str, "bool": bool}
    return base[annotation.replace(" | None", "")]


def config_options(func):
    """One Click option per RunConfig field, named after it (kebab-case). Defaults stay in
    RunConfig: an option left out is not passed, and its help shows RunConfig's default."""
    docs = field_docs()
    hints = typing.get_type_hints(RunConfig)
    for f in reversed(dataclasses.fields(RunConfig)):
        if f.name in _NOT_OPTIONS:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        kind = next(a for a in typing.get_args(kind) if a is not type(None)) \
            if isinstance(kind, types.UnionType) else kind
        default = f.default
        help_text = f"{docs.get(f.name, '')} [default: {default}]"
        if kind is bool:
            name = _OPTION_NAMES.get(f.name, f"{flag}/--no-{flag[2:]}")
            func = click.option(name, f.name, default=None, help=help_text)(func)
        else:
            func = click.option(flag, f.name, type=kind, default=None, help=help_text)(func)
    return func


def build_config(options: dict) -> RunConfig:
    """RunConfig from the options the user gave (None means: RunConfig's default)."""
    given = {k: v for k, v in options.items() if v is not None}
    try:
        return RunConfig(**given)
    except ValueError as err:
        raise UserError(str(err)) from err


def address_option(func):
    return click.option(
        "--address", envvar="RAY_ADDRESS", show_envvar=True, default=None,
        help="Ray cluster to run on (e.g. ray://HEAD:10001 or HEAD:6379); without it dotsim "
             "starts a private local Ray.",
    )(func)


# --- the group -----------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli():
    """dotsim: compare dot-similarity loss variants for speech embeddings on Ray.

    \b
    Example:
      dotsim prepare --out data/synthetic     # features of the embedded corpus
      dotsim train --scope global --epochs 12  # DDP on Ray Train, 2 workers
    """


@cli.command()
def version():
    """Print the versions of dotsim and of the packages it runs on.

    \b
    Example:
      dotsim version
    """
    from orchestrator.launch import code_version, package_versions

    for name, value in package_versions().items():
        click.echo(f"{name} {value}")
    click.echo(f"code {code_version()}")


@cli.command()
@click.argument("source", required=False, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Folder to create (written under a temporary name, then renamed).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the synthetic corpus (when SOURCE is not given).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--ray/--no-ray", "use_ray", default=None,
              help="Compute features in Ray tasks over the cluster (default: when --address "
                   "is given or the source has more than 2000 clips).")
@address_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def prepare(source, out, seed, overwrite, use_ray, address, as_json):
    """Compute speech, formant and residual features into Parquet shards.

    SOURCE is a Speech Commands v2 folder (<word>/<speaker>_nohash_<n>.wav with
    validation_list.txt and testing_list.txt); without it, the embedded synthetic corpus
    is written. A clip that cannot be read stops the run with its name (nothing is
    written), so no split silently loses clips.

    \b
    Example:
      dotsim prepare ~/speech_commands_v0.02 --out data/sc2
      dotsim prepare --out data/synthetic
    """
    from orchestrator.launch import ray_session
    from orchestrator.prepare import prepare as run_prepare

    if use_ray is None:
        use_ray = bool(address) or _count_wavs(source) > 2000
    with ray_session(address) if use_ray else _nothing():
        summary = run_prepare(source, out, seed=seed, overwrite=overwrite, use_ray=use_ray)
    if as_json:
        click.echo(json.dumps(summary))
    else:
        counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
        click.echo(f"Prepared {summary['path']}: {counts} clips, {summary['labels']} labels")


@cli.command()
@config_options
@address_option
@click.option("--dashboard", is_flag=True,
              help="Start the Ray Dashboard on 127.0.0.1:8265 (local Ray only).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON document (config, final metrics, history) on stdout.")
def train(address, dashboard, as_json, **options):
    """Train the keyword encoder with DDP workers on Ray Train.

    Without --data, the synthetic corpus is prepared once into ~/.cache/dotsim and reused.
    Re-running with the same --run-name (and --storage-path) resumes the run from its
    last checkpoint. Prints one line per epoch on stderr.

    \b
    Example:
      dotsim train
      dotsim train --similarity dot --norm meanstd --scope local --workers 2 --json
    """
    cfg = build_config(options)
    from orchestrator.launch import ray_session, run_training
    from orchestrator.prepare import ensure_synthetic

    if cfg.gpu and not address and not _local_gpu():
        raise UserError("--gpu asked for, but this machine has no CUDA GPU; use --cpu or "
                        "--address of a GPU cluster")
    if cfg.data is None:
        cfg = cfg.replace(data=str(ensure_synthetic()))
    else:
        cfg = cfg.replace(data=str(Path(cfg.data).expanduser().resolve()))
        _check_prepared(cfg.data)
    with ray_session(address, num_cpus=_local_cpus(cfg), dashboard=dashboard):
        _check_resources(cfg)
        summary = run_training(cfg)
    if as_json:
        click.echo(json.dumps(summary, default=str))
    else:
        m = summary["metrics"]
        click.echo(f"{summary['variant']}: test_acc {m['test_acc']:.4f} (best epoch "
                   f"{m['best_epoch']}), val_acc {m['val_acc']:.4f}; run folder "
                   f"{summary['path']}")


# --- helpers -------------------------------------------------------------------------


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _count_wavs(source) -> int:
    if source is None or not Path(source).is_dir():
        return 0
    return sum(1 for _ in Path(source).glob("*/*.wav"))


def _local_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _local_cpus(cfg: RunConfig) -> int:
    """A local Ray gets this machine's CPUs, and never fewer than the workers need."""
    import math

    return max(os.cpu_count() or 1, math.ceil(cfg.workers * cfg.cpus_per_worker))


def _check_prepared(path: str) -> None:
    from workers.data import read_meta

    read_meta(Path(path))  # PreparedDataError (a ValueError) names what is wrong


def _check_resources(cfg: RunConfig) -> None:
    import ray

    have = ray.cluster_resources()
    need_cpu = cfg.workers * cfg.cpus_per_worker
    if cfg.gpu and have.get("GPU", 0) < cfg.workers:
        raise UserError(f"--gpu with {cfg.workers} workers needs {cfg.workers} GPUs; the "
                        f"cluster has {int(have.get('GPU', 0))}")
    if have.get("CPU", 0) < need_cpu:
        raise UserError(f"{cfg.workers} workers x {cfg.cpus_per_worker} CPUs need {need_cpu} "
                        f"CPUs; the cluster has {have.get('CPU', 0)}: lower --workers or "
                        "--cpus-per-worker")


def _one_line(err: BaseException) -> str:
    cause = getattr(err, "cause", None)  # a Ray task error wraps the real one
    text = str(cause if cause is not None else err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def main(argv=None) -> None:
    """Entry point: run the group, turning user errors into exit 2 and one line."""
    debug = bool(os.environ.get("DOTSIM_DEBUG"))
    try:
        cli.main(args=argv, prog_name="dotsim", standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.Abort:
        click.echo("dotsim: aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        if debug:
            raise
        click.echo(f"dotsim: error: {_one_line(err) if not err.message else err.format_message()}"
                   .splitlines()[0], err=True)
        sys.exit(err.exit_code)
    except (ValueError, FileNotFoundError, ConnectionError) as err:
        if debug:
            raise
        click.echo(f"dotsim: error: {_one_line(err)}", err=True)
        sys.exit(2)
    except Exception as err:  # a failed run: say what failed, exit non-zero
        if debug:
            raise
        click.echo(f"dotsim: failed: {type(err).__name__}: {_one_line(err)} "
                   "(DOTSIM_DEBUG=1 shows the traceback)", err=True)
        sys.exit(1)
