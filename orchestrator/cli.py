"""The ``dotsim`` command line: a thin Click group over plain functions.

User errors (``InputError``: bad options, bad data, an unreachable cluster, a run folder
of another config) exit with code 2 and one line on stderr; anything else that fails
exits with 1 and one line; Ctrl-C exits with 130 and says how to resume. Set
DOTSIM_DEBUG=1 to see tracebacks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
import types
import typing
from pathlib import Path

import click

from orchestrator import variants as sweep_variants
from workers import storage
from workers.config import RunConfig, field_docs
from workers.errors import InputError
from workers.metrics import FSKIL_HEADLINE, LOGMEL_HEADLINE


class UserError(click.ClickException):
    """Bad input from the user: exit 2, one line."""

    exit_code = 2


# --- options generated from the typed config -----------------------------------------

# Fields that have their own option name or are not for the command line.
_OPTION_NAMES = {"gpu": "--gpu/--cpu"}
_NOT_OPTIONS = {"extra", "class_order"}  # class_order: --class-order FILE


def config_options(func):
    """One Click option per RunConfig field, named after it (kebab-case). Defaults stay in
    RunConfig: an option left out is not passed, and its help shows RunConfig's default."""
    func = click.option(
        "--class-order", "class_order_file", type=click.Path(path_type=Path), default=None,
        help="fskil: a file of words, one a line (# comments allowed): the base words, then "
             "each session's, e.g. a lab's own split [default: the FSKIL reference's order "
             "for the Speech Commands words].")(func)
    docs = field_docs()
    hints = typing.get_type_hints(RunConfig)
    for f in reversed(dataclasses.fields(RunConfig)):
        if f.name in _NOT_OPTIONS:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        if isinstance(kind, types.UnionType):  # `str | None` -> str
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        help_text = f"{docs.get(f.name, '')} [default: {f.default}]"
        if kind is bool:
            name = _OPTION_NAMES.get(f.name, f"{flag}/--no-{flag[2:]}")
            func = click.option(name, f.name, default=None, help=help_text)(func)
        else:
            func = click.option(flag, f.name, type=kind, default=None, help=help_text)(func)
    return func


def build_config(options: dict) -> RunConfig:
    """RunConfig from the options the user gave (None means: RunConfig's default)."""
    return RunConfig(**{k: v for k, v in options.items()
                        if v is not None and k != "class_order_file"})


def with_data(cfg: RunConfig, options: dict) -> RunConfig:
    """``cfg`` with its data folder resolved and checked (the synthetic corpus, prepared
    once, when none is given), a --class-order file read against its words, and the run's
    needs checked against its training labels (words for a batch, FSKIL shots)."""
    import torch

    from workers.data import read_labels, read_meta
    from workers.fskil import read_class_order
    from workers.train import check_data

    cfg = _resolve_data(cfg)
    meta = read_meta(cfg.data)
    order_file = options.get("class_order_file")
    if order_file is not None:
        if cfg.protocol != "fskil":
            raise InputError("--class-order orders the words of --protocol fskil; add it")
        cfg = cfg.replace(class_order=read_class_order(order_file, meta["labels"], cfg.fskil))
    check_data(cfg, meta["labels"], torch.from_numpy(read_labels(cfg.data, meta, "train")))
    return cfg


def address_option(func):
    return click.option(
        "--address", envvar="RAY_ADDRESS", show_envvar=True, default=None,
        help="Ray cluster to run on (HEAD:6379, the head node's GCS address); without it "
             "dotsim starts a private local Ray.",
    )(func)


# --- the group -----------------------------------------------------------------------


class DotsimGroup(click.Group):
    """Turns dotsim's own ``InputError`` (raised by its checks of options, data, folders
    and addresses) into a UserError: exit 2, one line. Nothing else is a user error."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except InputError as err:
            if os.environ.get("DOTSIM_DEBUG"):
                raise
            raise UserError(_one_line(err)) from err


@click.group(cls=DotsimGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
    from orchestrator.versions import code_version, package_versions

    for name, value in package_versions().items():
        click.echo(f"{name} {value}")
    click.echo(f"code {code_version()}")


@cli.command()
@click.argument("source", required=False, type=click.Path(path_type=Path))
@click.option("--out", required=True,
              help="Folder to create: a path (written under a temporary name, then renamed) "
                   "or a URI such as s3://bucket/data/sc2 (shards first, meta.json last).")
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
    is written. A clip that cannot be used (corrupt, truncated, empty, not audio) stops
    the run with its name and nothing is written, so no split silently loses clips;
    8/24/32-bit and float WAVs, other sample rates, stereo and clips longer than 1 s are
    converted (mono, 16 kHz, padded or trimmed to 1 s).

    \b
    Example:
      dotsim prepare ~/speech_commands_v0.02 --out data/sc2
      dotsim prepare --out data/synthetic
    """
    from orchestrator.launch import ray_session
    from orchestrator.prepare import prepare as run_prepare

    if storage.is_uri(out):  # an unusable bucket fails now, not after the features
        storage.check_writable(storage.parent(out))
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
    The run folder is named after the variant, the seed and a hash of every option that
    changes results (or --run-name). The same command again resumes an unfinished run
    from its last checkpoint, and prints a finished run's results without training; a
    run folder is never reused by different options (exit 2). Ctrl-C stops the run and
    prints the command that resumes it. Prints one line per epoch on stderr.

    \b
    Example:
      dotsim train
      dotsim train --similarity dot --norm meanstd --scope local --workers 2 --json
    """
    cfg = build_config(options)
    if cfg.gpu and not address and not _local_gpu():
        raise InputError("--gpu asked for, but this machine has no CUDA GPU; use --cpu or "
                        "--address of a GPU cluster")
    from orchestrator.launch import RunInterrupted, launch, named, ray_session

    cfg = named(with_data(cfg, options))
    storage.check_writable(storage.resolve(cfg.storage_path or _default_storage()))
    with ray_session(address, num_cpus=_local_cpus(cfg), dashboard=dashboard):
        if not address:  # a cluster behind --address may autoscale to what is missing
            _check_resources(cfg)
        try:
            summary = launch(cfg)
        except RunInterrupted as stopped:
            click.echo(f"dotsim: {stopped}; resume it: "
                       f"{_resume_command(click.get_current_context(), cfg.run_name)}",
                       err=True)
            sys.exit(130)
    if summary["already_finished"]:
        click.echo(f"dotsim: run {cfg.run_name} had already finished with these options: its "
                   "results, nothing trained (another --run-name trains anew)", err=True)
    if as_json:
        click.echo(json.dumps(summary, default=str))
    else:
        m = summary["metrics"]
        click.echo(f"{summary['variant']}: test_acc {m['test_acc']:.4f} (best epoch "
                   f"{m['best_epoch']}), val_acc {m['val_acc']:.4f}; run folder "
                   f"{summary['path']}")
        if FSKIL_HEADLINE[0] in m:
            click.echo("FSKIL " + _headline(m, FSKIL_HEADLINE) + "; log-mel baseline "
                       + _headline(m, LOGMEL_HEADLINE))


@cli.command()
@config_options
@click.option("--name", default=None,
              help="Sweep folder name under the storage path [default: sweep-<date-time>].")
@click.option("--variants", default=None,
              help="Comma-separated variants: cosine or SIMILARITY:NORM:SCOPE[:detached] "
                   f"[default: {','.join(sweep_variants.DEFAULT_VARIANTS)}].")
@click.option("--with-detached", is_flag=True,
              help="Add a detach_stats variant of every variant that has statistics.")
@click.option("--seeds", type=int, default=3, show_default=True,
              help="Seeds per variant (0, 1, ...); comparisons pair variants by seed.")
@click.option("--grid", "grid_items", multiple=True, metavar="KEY=V1,V2",
              help="Cross another config field, e.g. --grid w_lpc=0.5,1 (repeatable).")
@click.option("--scheduler", type=click.Choice(["fifo", "asha"]), default="fifo",
              show_default=True,
              help="fifo runs every trial to the end (needed for fair comparisons); asha stops "
                   "weak trials early on validation accuracy (exploration only).")
@click.option("--max-concurrent", type=int, default=None,
              help="Trials at once [default: as many as the cluster's CPUs/GPUs can place].")
@click.option("--study", type=click.Choice(["world-size"]), default=None,
              help="world-size: the same global batch at world sizes --world-sizes, dropout "
                   "off; the report shows how far each moves from world size 1.")
@click.option("--world-sizes", default="1,2,4", show_default=True,
              help="World sizes of --study world-size.")
@click.option("--resume", "resume_dir", default=None,
              help="Continue the interrupted sweep in this folder, as it was defined (only "
                   "--address, --dashboard and --json may be given with it).")
@address_option
@click.option("--dashboard", is_flag=True,
              help="Start the Ray Dashboard on 127.0.0.1:8265 (local Ray only).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def sweep(name, variants, with_detached, seeds, grid_items, scheduler, max_concurrent, study,
          world_sizes, resume_dir, address, dashboard, as_json, **options):
    """Compare loss variants with Ray Tune: variants x seeds (x --grid), then report.

    The default grid is cosine plus dot x {minmax, meanstd} x {global, local}, 3 seeds
    each. Every trial trains with Ray Train; progress is in TensorBoard
    (tensorboard --logdir SWEEP_DIR) and, with --dashboard, the Ray Dashboard. Stop it any
    time (Ctrl-C, exit 130) and continue with --resume SWEEP_DIR: finished trials are not
    run again. A trial that fails is listed with its error, kept in results.parquet and
    the report as failed, and the sweep exits 1 once the others are done; --resume
    re-runs failed trials from their last checkpoint.

    \b
    Example:
      dotsim sweep --epochs 12 --seeds 3
      dotsim sweep --variants cosine,dot:meanstd:global --grid w_lpc=0.5,1 --seeds 2
      dotsim sweep --study world-size --variants dot:minmax:global,dot:minmax:local
      dotsim sweep --resume ~/dotsim_results/sweep-2026-11-27_10-00-00
    """
    from orchestrator import sweep as sweeps
    from orchestrator.launch import default_storage, ray_session

    if resume_dir is not None:
        _refuse_options_besides_resume()
        storage.check_reachable(resume_dir)
        definition = sweeps.read_definition(resume_dir)
        base = RunConfig.from_dict(definition["base"])
        with _sweep_endings(resume_dir, as_json), ray_session(
                address, num_cpus=_local_cpus(base), dashboard=dashboard):
            sweeps.resume_sweep(resume_dir)
        return _print_report(resume_dir, as_json)

    base = build_config(options)
    chosen = (variants.split(",") if variants else
              list(sweep_variants.STUDY_VARIANTS if study else sweep_variants.DEFAULT_VARIANTS))
    if with_detached:
        chosen += [v + ":detached" for v in chosen if v.count(":") == 2]
    sizes = _world_sizes(world_sizes) if study == "world-size" else None
    if seeds < 1:
        raise InputError("--seeds must be >= 1")
    trials = sweep_variants.trial_configs(chosen, seeds,
                                          sweep_variants.parse_grid(list(grid_items)), sizes)
    base = with_data(base, options)
    storage.check_writable(storage.resolve(base.storage_path or default_storage()))
    if sizes:
        base = base.replace(dropout=0.0)
    folder = storage.join(storage.resolve(base.storage_path or default_storage()),
                          name or "sweep-" + time.strftime("%Y-%m-%d_%H-%M-%S"))
    click.echo(f"Sweep of {len(trials)} trials in {folder}\n"
               f"  live curves: tensorboard --logdir {folder}", err=True)
    with _sweep_endings(folder, as_json), ray_session(address, num_cpus=_local_cpus(base),
                                                      dashboard=dashboard):
        if sizes:
            base = base.replace(cpus_per_worker=_study_cpus(base, max(sizes)))
        # a cluster behind --address may autoscale: its resources now are not its limit
        sweeps.run_sweep(folder, base, trials, scheduler=scheduler,
                         max_concurrent=max_concurrent, study=study, elastic=bool(address))
    _print_report(folder, as_json)


@cli.command()
@click.argument("sweep_dir")
@click.option("--baseline", default=None,
              help="Variant the others are compared with, paired by seed [default: cosine "
                   "if the sweep has it, else its first variant].")
@click.option("--format", "fmt", type=click.Choice(["markdown", "json"]), default="markdown",
              show_default=True, help="Output format on stdout.")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--plot/--no-plot", default=True, show_default=True,
              help="Write comparison.png into SWEEP_DIR.")
def report(sweep_dir, baseline, fmt, as_json, plot):
    """Summarise a sweep: accuracy with 95% intervals, paired comparisons, plots.

    \b
    Example:
      dotsim report ~/dotsim_results/sweep-2026-11-27_10-00-00
      dotsim report SWEEP_DIR --baseline dot:minmax:local --json
    """
    storage.check_reachable(sweep_dir)
    _print_report(sweep_dir, as_json or fmt == "json", baseline=baseline, plot=plot)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--address", envvar="RAY_ADDRESS", show_envvar=True, default=None,
              help="The cluster's Jobs API, e.g. http://127.0.0.1:8265 (through "
                   "`dotsim cluster dashboard`).")
@click.option("--no-wait", is_flag=True, help="Print the job id and return at once.")
@click.option("--working-dir", default=".", show_default=True,
              help="Folder uploaded as the job's working directory ('' for none).")
def submit(args, address, no_wait, working_dir):
    """Run a dotsim command on a cluster as a Ray Job, or manage such jobs.

    Everything after -- is the dotsim command to run there. The job's logs stream here
    and the exit code is non-zero when the job fails. Token authentication: the token
    comes from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.

    \b
    Example:
      dotsim submit --address http://127.0.0.1:8265 -- train --gpu --workers 4
      dotsim submit --no-wait -- sweep --seeds 5
      dotsim submit status raysubmit_abc123
      dotsim submit logs raysubmit_abc123
      dotsim submit stop raysubmit_abc123
    """
    from orchestrator import submit as jobs

    args = list(args)
    if args and args[0] in ("status", "logs", "stop"):
        if len(args) != 2:
            raise InputError(f"usage: dotsim submit {args[0]} JOB_ID")
        client = jobs.client(address)
        action, job_id = args
        if action == "status":
            click.echo(client.get_job_status(job_id).value)
        elif action == "logs":
            click.echo(client.get_job_logs(job_id), nl=False)
        else:
            click.echo("stopped" if client.stop_job(job_id) else "not running")
        return
    client, job_id = jobs.submit(address, args, working_dir=working_dir or None)
    # at once, as `ray job submit` does: Ctrl-C or a dropped tunnel must not lose the id
    click.echo(jobs.job_commands(job_id, address), err=True)
    if no_wait:
        click.echo(job_id)
        return
    status = jobs.follow(client, job_id)
    click.echo(f"job {job_id}: {status.value}", err=True)
    if status.value != "SUCCEEDED":
        sys.exit(1)


@cli.command()
@click.argument("action", type=click.Choice(["up", "down", "status", "dashboard", "validate"]))
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              default=Path("cluster.yaml"), show_default=True,
              help="Ray cluster launcher config.")
def cluster(action, config_path):
    """Start, stop or inspect the GPU cluster of cluster.yaml (Ray's cluster launcher).

    The file is checked against Ray's schema offline first. `dashboard` forwards the
    head's dashboard and Jobs API to http://127.0.0.1:8265 over SSH (the head serves them
    on its own 127.0.0.1 only), for the browser and for `dotsim submit`.

    \b
    Example:
      dotsim cluster validate
      dotsim cluster up --config cluster.yaml
      dotsim cluster dashboard
      dotsim cluster down
    """
    from orchestrator import cluster as launcher

    if action == "validate":
        launcher.validate(config_path)
        click.echo(f"{config_path}: valid Ray cluster config")
        return
    sys.exit(launcher.run(action, config_path))


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


def _resolve_data(cfg: RunConfig) -> RunConfig:
    """An absolute, checked prepared folder; the synthetic cache when none is given."""
    from orchestrator.prepare import ensure_synthetic
    from workers.data import check_prepared

    if cfg.data is None:
        return cfg.replace(data=str(ensure_synthetic()))
    location = storage.resolve(cfg.data)
    storage.check_reachable(location)
    check_prepared(location)  # PreparedDataError (an InputError) names what is wrong
    return cfg.replace(data=location)


def _default_storage() -> str:
    from orchestrator.launch import default_storage

    return default_storage()


def _typed(ctx: click.Context) -> list[click.Parameter]:
    """The command's parameters the user typed (not defaults, not the environment)."""
    return [param for param in ctx.command.params
            if ctx.get_parameter_source(param.name) == click.core.ParameterSource.COMMANDLINE]


def _resume_command(ctx: click.Context, run_name: str) -> str:
    """``dotsim train`` with the options the user gave on the command line (not those
    from the environment, which the next shell has too) and the run's name."""
    import shlex

    words = ["dotsim", ctx.info_name]
    for param in _typed(ctx):
        value = ctx.params.get(param.name)
        if param.name == "run_name" or value is None:
            continue
        if param.is_flag:
            flags = param.opts if value else param.secondary_opts
            words += flags[:1]
        else:
            words += [param.opts[0], str(value)]
    return shlex.join([*words, "--run-name", run_name])


@contextlib.contextmanager
def _sweep_endings(sweep_dir: str, as_json: bool):
    """An interrupted sweep: one line saying how to resume it, exit code 130. A sweep with
    failed trials: the report (results are written), each failure's last line, exit 1."""
    from orchestrator.sweep import SweepFailed, SweepInterrupted

    try:
        yield
    except SweepInterrupted as stopped:
        _say_failures(stopped.trials)
        click.echo(f"dotsim: {stopped}", err=True)
        sys.exit(130)
    except SweepFailed as failed:
        _say_failures(failed.trials)  # first: the report below could fail too
        _print_report(sweep_dir, as_json)
        click.echo(f"dotsim: {failed}", err=True)
        sys.exit(1)


RESUME_OPTIONS = ("resume_dir", "address", "dashboard", "as_json")


def _refuse_options_besides_resume() -> None:
    """``sweep --resume`` continues a sweep as it was defined (its sweep.json and Tune's
    state): an option that would change it must not be silently ignored."""
    given = [param.opts[0] for param in _typed(click.get_current_context())
             if param.name not in RESUME_OPTIONS]
    if given:
        raise InputError(f"--resume continues a sweep with the options it was started with; "
                         f"drop {', '.join(given)} (start a new sweep to change them)")


def _headline(metrics: dict, names: tuple[str, ...]) -> str:
    """e.g. "mean_acc 0.862 last_acc 0.780 last_harmonic 0.721" (None: "-")."""
    return " ".join(f"{name.split('_', 1)[1]} "
                    + ("-" if metrics[name] is None else f"{metrics[name]:.3f}")
                    for name in names)


def _say_failures(trials) -> None:
    for outcome in trials:
        click.echo(f"dotsim: trial {outcome.name} failed: {outcome.error}", err=True)


def _world_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(x) for x in text.split(",")})
    except ValueError as err:
        raise InputError(f"--world-sizes {text!r}: write numbers like 1,2,4") from err
    if sizes[0] != 1 or min(sizes) < 1:
        raise InputError("--world-sizes must include 1 (the reference) and be >= 1")
    return sizes


def _study_cpus(base: RunConfig, widest: int) -> float:
    """CPUs per worker so the widest world size fits the cluster (fractions allowed)."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 1)
    return min(base.cpus_per_worker, round((cpus - 0.05) / widest, 3))


def _print_report(sweep_dir: str, as_json: bool, baseline: str | None = None,
                  plot: bool = True) -> None:
    from orchestrator import report as reports

    result = reports.build_report(storage.resolve(sweep_dir), baseline=baseline)
    if plot:
        result["plot"] = reports.plot(storage.resolve(sweep_dir))
        if sessions := reports.plot_sessions(result):
            result["sessions_plot"] = sessions
    click.echo(json.dumps(result, default=str) if as_json else reports.to_markdown(result))


def _check_resources(cfg: RunConfig) -> None:
    import ray

    have = ray.cluster_resources()
    need_cpu = cfg.workers * cfg.cpus_per_worker
    if cfg.gpu and have.get("GPU", 0) < cfg.workers:
        raise InputError(f"--gpu with {cfg.workers} workers needs {cfg.workers} GPUs; the "
                        f"cluster has {int(have.get('GPU', 0))}")
    if have.get("CPU", 0) < need_cpu:
        raise InputError(f"{cfg.workers} workers x {cfg.cpus_per_worker} CPUs need {need_cpu} "
                        f"CPUs; the cluster has {have.get('CPU', 0)}: lower --workers or "
                        "--cpus-per-worker")


def _one_line(err: BaseException) -> str:
    """The error's first line; a first line that ends in ":" (Ray's "Training failed due
    to controller error:") takes the next line along."""
    cause = getattr(err, "cause", None)  # a Ray task error wraps the real one
    lines = [line.strip() for line in str(cause if cause is not None else err).splitlines()
             if line.strip()]
    if not lines:
        return type(err).__name__
    return f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]


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
        click.echo(f"dotsim: error: {err.format_message()}".splitlines()[0], err=True)
        sys.exit(err.exit_code)
    except Exception as err:  # a failed run: say what failed, exit non-zero
        if debug:
            raise
        click.echo(f"dotsim: failed: {type(err).__name__}: {_one_line(err)} "
                   "(DOTSIM_DEBUG=1 shows the traceback)", err=True)
        sys.exit(1)
