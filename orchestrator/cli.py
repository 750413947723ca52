"""The ``dotsim`` command line: a thin Click group over plain functions.

Each command parses its options, calls the orchestrator (``plan`` checks and plans,
``launch``/``sweep`` run, ``report`` summarises) and prints. ``main`` owns the exit policy
(``workers.errors``): a user error exits 2 with one line, Ctrl-C 130 with the way to
resume, any other failure 1 with one line. Set DOTSIM_DEBUG=1 to see tracebacks.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import sys
import traceback
import types
import typing
from pathlib import Path

import click

from orchestrator import plan
from orchestrator import variants as sweep_variants
from workers import storage
from workers.config import CHOICES, RunConfig, field_docs
from workers.errors import InputError, Interrupted, Reported
from workers.metrics import FSKIL_HEADLINE, LOGMEL_HEADLINE

log = logging.getLogger("dotsim")


# --- options generated from the typed config -----------------------------------------

# Fields that have their own option name or are not for the command line.
_OPTION_NAMES = {"gpu": "--gpu/--cpu"}
_NOT_OPTIONS = {"extra", "class_order", "trackers"}  # --class-order FILE, --tracker


class _Choice(click.Choice):
    """click.Choice (its values in --help) with dotsim's message for a value outside it."""

    def __init__(self, kind: str, choices):
        super().__init__(list(choices))
        self.kind = kind

    def convert(self, value, param, ctx):
        if value not in self.choices:  # the same words as RunConfig's own check
            raise click.UsageError(f"unknown {self.kind} {value!r}; allowed: "
                                   f"{', '.join(self.choices)}", ctx)
        return value


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
        if f.name in CHOICES:
            kind = _Choice(f.name, CHOICES[f.name])
        help_text = f"{docs.get(f.name, '')} [default: {f.default}]"
        if kind is bool:
            name = _OPTION_NAMES.get(f.name, f"{flag}/--no-{flag[2:]}")
            func = click.option(name, f.name, default=None, help=help_text)(func)
        else:
            func = click.option(flag, f.name, type=kind, default=None, help=help_text)(func)
    return func


def build_config(options: dict) -> RunConfig:
    """RunConfig from the options the user gave (None means: RunConfig's default)."""
    return RunConfig(**{k: v for k, v in options.items() if v is not None})


def address_option(func):
    return click.option(
        "--address", envvar="RAY_ADDRESS", show_envvar=True, default=None,
        help="Ray cluster to run on (HEAD:6379, the head node's GCS address); without it "
             "dotsim starts a private local Ray.",
    )(func)


def jobs_address_option(func):
    return click.option(
        "--address", envvar="RAY_ADDRESS", show_envvar=True, default=None,
        help="The cluster's Jobs API, e.g. http://127.0.0.1:8265 (through "
             "`dotsim cluster dashboard`).")(func)


def dashboard_option(func):
    return click.option("--dashboard", is_flag=True,
                        help="Start the Ray Dashboard on 127.0.0.1:8265 (local Ray only).")(func)


def tracker_option(what: str):
    def add(func):
        return click.option(
            "--tracker", "tracker", multiple=True, metavar="mlflow[:URI]|wandb",
            help=f"Also send {what} to an experiment tracker (repeatable): mlflow "
                 "(MLFLOW_TRACKING_URI, or mlflow:URI) or wandb (WANDB_API_KEY, "
                 "WANDB_PROJECT; offline without a key). docs/trackers.md.")(func)
    return add


# --- the group -----------------------------------------------------------------------


class _Outcome(click.ClickException):
    """How a command ended, as the exit code and line(s) ``_outcome`` chose."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _outcome(err: Exception) -> _Outcome:
    """The exit policy (``workers.errors``): a user error exits 2 with one line, an
    interruption 130 with the way on, a failure dotsim explained 1 with its message, any
    other failure 1 with one line naming it."""
    if isinstance(err, InputError):
        return _Outcome(f"error: {_one_line(err)}", 2)
    if isinstance(err, Interrupted):
        return _Outcome(str(err), 130)
    if isinstance(err, Reported):
        return _Outcome(str(err), 1)
    return _Outcome(f"failed: {type(err).__name__}: {_one_line(err)} (DOTSIM_DEBUG=1 shows "
                    "the traceback)", 1)


class DotsimGroup(click.Group):
    """Applies ``_outcome`` to whatever a command raises (with DOTSIM_DEBUG=1 set, its
    traceback is printed first)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as err:
            if os.environ.get("DOTSIM_DEBUG"):  # the traceback too; the exit code stays
                traceback.print_exception(err)
            raise _outcome(err) from err


@click.group(cls=DotsimGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli():
    """dotsim: compare dot-similarity loss variants for speech embeddings on Ray.

    \b
    Example:
      dotsim prepare --out data/synthetic     # features of the embedded corpus
      dotsim train --scope global --epochs 12  # DDP on Ray Train, 2 workers
    """
    _log_to_stderr()


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
    from orchestrator.prepare import prepare_data

    summary = prepare_data(source, out, seed=seed, overwrite=overwrite, use_ray=use_ray,
                           address=address)
    if as_json:
        click.echo(json.dumps(summary))
    else:
        counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
        click.echo(f"Prepared {summary['path']}: {counts} clips, {summary['labels']} labels")


@cli.command()
@config_options
@address_option
@dashboard_option
@tracker_option("the run's parameters and every epoch's metrics")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON document (config, final metrics, history) on stdout.")
def train(address, dashboard, tracker, as_json, class_order_file, **options):
    """Train the keyword encoder with DDP workers on Ray Train.

    Without --data: the synthetic corpus, prepared once into $DOTSIM_CACHE (default
    ~/.cache/dotsim). The run folder is named after the variant, seed and a hash of the
    options that change results (or --run-name); the same command resumes an unfinished
    run and prints a finished one's results, and other options are refused there (exit
    2). Ctrl-C prints the command that resumes. One line per epoch on stderr.

    \b
    Example:
      dotsim train
      dotsim train --similarity dot --norm meanstd --scope local --workers 2 --json
      dotsim train --tracker mlflow:http://127.0.0.1:5000
    """
    from orchestrator.launch import RunInterrupted
    from orchestrator.launch import train as run

    cfg = plan.plan_run(build_config(options), address=address,
                        class_order_file=class_order_file, trackers=tracker)
    try:
        summary = run(cfg, address=address, dashboard=dashboard)
    except RunInterrupted as stopped:
        command = _resume_command(click.get_current_context(), cfg.run_name)
        raise Interrupted(f"{stopped}; resume it: {command}") from stopped
    if summary["already_finished"]:
        log.info(f"run {cfg.run_name} had already finished with these options: its results, "
                 "nothing trained (another --run-name trains anew)")
    click.echo(json.dumps(summary, default=str) if as_json else _run_lines(summary))


@cli.command()
@config_options
@click.option("--name", default=None,
              help="Sweep folder name under the storage path [default: sweep-<date-time>].")
@click.option("--variants", default=None,
              help="Comma-separated variants: cosine, ce-only or SIMILARITY:NORM:SCOPE"
                   f"[:detached] [default: {','.join(sweep_variants.DEFAULT_VARIANTS)}].")
@click.option("--with-detached", is_flag=True,
              help="Add a detach_stats variant of every variant that has statistics.")
@click.option("--seeds", type=int, default=None,
              help="Seeds per variant (0, 1, ...); comparisons pair variants by seed "
                   "[default: 3].")
@click.option("--until-decided", is_flag=True,
              help="Race the variants over seeds: each is compared with --baseline, paired "
                   "by seed, and gets seeds until it is better, worse or equivalent (within "
                   "--margin) at family-wise error --alpha, or has --max-seeds.")
@click.option("--max-seeds", type=int, default=20, show_default=True,
              help="--until-decided: the seeds one variant may get at most.")
@click.option("--margin", type=float, default=0.01, show_default=True,
              help="--until-decided: the smallest difference in --metric that matters.")
@click.option("--alpha", type=float, default=0.05, show_default=True,
              help="--until-decided: the chance of any wrong decision, over all comparisons "
                   "and looks.")
@click.option("--metric", default=None,
              help="--until-decided: what is compared [default: fskil_mean_acc under "
                   "--protocol fskil, else test_acc].")
@click.option("--baseline", default=None,
              help="--until-decided: the variant the others are compared with (with --grid, "
                   "at its first grid point) [default: cosine if raced, else the first].")
@click.option("--grid", "grid_items", multiple=True, metavar="KEY=V1,V2",
              help="Cross another config field, e.g. --grid w_lpc=0.5,1 (repeatable).")
@click.option("--scheduler", type=click.Choice(plan.SCHEDULERS), default="fifo",
              show_default=True,
              help="fifo runs every trial to the end (needed for fair comparisons); asha stops "
                   "weak trials early on validation accuracy (exploration only).")
@click.option("--max-concurrent", type=int, default=None,
              help="Trials at once [default: as many as the cluster's CPUs/GPUs can place].")
@click.option("--study", type=click.Choice(plan.STUDIES), default=None,
              help="world-size: the same global batch at world sizes --world-sizes, dropout "
                   "off; the report shows how far each moves from world size 1.")
@click.option("--world-sizes", default="1,2,4", show_default=True,
              help="World sizes of --study world-size.")
@click.option("--dry-run", is_flag=True,
              help="Print what the sweep would run and how long it would take (from earlier "
                   "runs of this config in the storage); start nothing, write nothing.")
@click.option("--resume", "resume_dir", default=None,
              help="Continue the interrupted sweep in this folder, as it was defined (only "
                   "--address, --dashboard and --json may be given with it).")
@address_option
@dashboard_option
@tracker_option("every trial, grouped under the sweep, and the report")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def sweep(name, variants, with_detached, seeds, until_decided, max_seeds, margin, alpha,
          metric, baseline, grid_items, scheduler, max_concurrent, study, world_sizes,
          dry_run, resume_dir, address, dashboard, tracker, as_json, class_order_file,
          **options):
    """Compare loss variants with Ray Tune: variants x seeds (x --grid), then report.

    Default: cosine and dot x {minmax, meanstd} x {global, local}, 3 seeds. Each trial's
    start, epochs and end go to stderr with the time left. After Ctrl-C (exit 130) or
    failed trials (exit 1), --resume SWEEP_DIR continues. docs/sweeps.md has more.

    \b
    Example:
      dotsim sweep --epochs 12 --seeds 3
      dotsim sweep --variants cosine,dot:meanstd:global --grid w_lpc=0.5,1 --seeds 2
      dotsim sweep --study world-size --tracker mlflow
      dotsim sweep --protocol fskil --until-decided --variants cosine,dot:minmax:global
      dotsim sweep --until-decided --variants cosine,ce-only --dry-run
      dotsim sweep --resume ~/dotsim_results/sweep-2026-11-27_10-00-00
    """
    from orchestrator import sweep as sweeps

    if resume_dir is not None:
        _refuse_options_besides_resume()
        return _run_then_report(lambda: sweeps.resume(resume_dir, address=address,
                                                      dashboard=dashboard), resume_dir, as_json)
    planned = plan.plan_sweep(
        build_config(options), variants=variants.split(",") if variants else None,
        seeds=seeds, grid=list(grid_items), with_detached=with_detached, study=study,
        world_sizes=world_sizes, scheduler=scheduler, max_concurrent=max_concurrent,
        name=name, address=address, class_order_file=class_order_file, trackers=tracker,
        until=_until(until_decided, max_seeds, margin, alpha, metric, baseline),
        dry_run=dry_run)
    if dry_run:
        from orchestrator.estimate import dry_run_lines

        click.echo("\n".join(dry_run_lines(planned, address)))
        return
    _run_then_report(lambda: sweeps.start(planned, address=address, dashboard=dashboard),
                     planned.folder, as_json)


def _until(until_decided, max_seeds, margin, alpha, metric, baseline) -> plan.Until | None:
    """The race's options, which mean nothing without --until-decided."""
    if until_decided:
        return plan.Until(max_seeds=max_seeds, margin=margin, alpha=alpha, metric=metric,
                          baseline=baseline)
    ctx = click.get_current_context()
    given = [f"--{name.replace('_', '-')}" for name in
             ("max_seeds", "margin", "alpha", "metric", "baseline")
             if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
    if given:
        raise InputError(f"{', '.join(given)} only apply with --until-decided")
    return None


@cli.command()
@click.argument("sweep_dir")
@click.option("--baseline", default=None,
              help="Variant the others are compared with, paired by seed [default: cosine "
                   "if the sweep has it, else its first variant].")
@click.option("--format", "fmt", type=click.Choice(["markdown", "json"]), default="markdown",
              show_default=True, help="Output format on stdout.")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--plot/--no-plot", default=True, show_default=True,
              help="Write comparison.png (and sessions.png under FSKIL) into SWEEP_DIR.")
@tracker_option("the report's Markdown, JSON and plots, as files of the sweep's run,")
def report(sweep_dir, baseline, fmt, as_json, plot, tracker):
    """Summarise a sweep: accuracy with 95% intervals, paired comparisons, plots.

    \b
    Example:
      dotsim report ~/dotsim_results/sweep-2026-11-27_10-00-00
      dotsim report SWEEP_DIR --baseline dot:minmax:local --json
      dotsim report SWEEP_DIR --tracker mlflow
    """
    storage.check_reachable(sweep_dir)
    specs = plan.plan_trackers(tracker)
    _print_report(sweep_dir, as_json or fmt == "json", baseline=baseline, plot=plot,
                  trackers=specs)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@jobs_address_option
@click.option("--no-wait", is_flag=True, help="Print the job id and return at once.")
@click.option("--working-dir", default=".", show_default=True,
              help="Folder uploaded as the job's working directory ('' for none); what "
                   ".gitignore lists stays here.")
def submit(args, address, no_wait, working_dir):
    """Run a dotsim command on a cluster as a Ray Job.

    Everything after -- is the dotsim command to run there; its logs stream here, and a
    failed job exits non-zero. `dotsim job` follows and stops jobs. docs/cluster.md.

    \b
    Example:
      dotsim submit --address http://127.0.0.1:8265 -- train --gpu --workers 4
      dotsim submit --no-wait -- sweep --seeds 5
    """
    from orchestrator import submit as jobs

    if args and args[0] in JOB_VERBS:
        raise InputError(f"'{args[0]}' is a job verb, not a dotsim command to submit: "
                         f"dotsim job {args[0]} JOB_ID")
    if args and args[0] not in cli.commands:
        raise InputError(f"{args[0]!r} is not a dotsim command; after -- write one of "
                         f"{', '.join(sorted(cli.commands))}")
    client, job_id = jobs.submit(address, list(args), working_dir=working_dir or None)
    # at once, as `ray job submit` does: Ctrl-C or a dropped tunnel must not lose the id
    click.echo(jobs.job_commands(job_id, address), err=True)
    if no_wait:
        click.echo(job_id)
        return
    status = jobs.follow(client, job_id)
    if status.value != "SUCCEEDED":
        raise Reported(f"job {job_id}: {status.value}")
    click.echo(f"job {job_id}: {status.value}", err=True)


@cli.group()
def job():
    """Follow, inspect or stop jobs sent by `dotsim submit` (Ray's Jobs API).

    \b
    Example:
      dotsim job status raysubmit_abc123
      dotsim job logs raysubmit_abc123
      dotsim job stop raysubmit_abc123
    """


@job.command("status")
@click.argument("job_id")
@jobs_address_option
def job_status(job_id, address):
    """Print a job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED).

    \b
    Example:
      dotsim job status raysubmit_abc123 --address http://127.0.0.1:8265
    """
    from orchestrator import submit as jobs

    click.echo(jobs.client(address).get_job_status(job_id).value)


@job.command("logs")
@click.argument("job_id")
@jobs_address_option
def job_logs(job_id, address):
    """Print a job's logs so far.

    \b
    Example:
      dotsim job logs raysubmit_abc123
    """
    from orchestrator import submit as jobs

    click.echo(jobs.client(address).get_job_logs(job_id), nl=False)


@job.command("stop")
@click.argument("job_id")
@jobs_address_option
def job_stop(job_id, address):
    """Stop a running job (its run folders keep their checkpoints: resume it later).

    \b
    Example:
      dotsim job stop raysubmit_abc123
    """
    from orchestrator import submit as jobs

    click.echo("stopped" if jobs.client(address).stop_job(job_id) else "not running")


JOB_VERBS = tuple(job.commands)


def cluster_config_option(func):
    return click.option("--config", "config_path", type=click.Path(path_type=Path),
                        default=Path("cluster.yaml"), show_default=True,
                        help="Ray cluster launcher config.")(func)


@cli.group()
def cluster():
    """Start, stop or inspect the GPU cluster of cluster.yaml (Ray's cluster launcher).

    Every action checks the file against Ray's schema offline first. `watch-spot` runs on
    the cluster's spot workers (cluster.yaml starts it). docs/cluster.md.

    \b
    Example:
      dotsim cluster validate
      dotsim cluster up --config cluster.yaml
      dotsim cluster dashboard
      dotsim cluster down
    """


@cluster.command("validate")
@cluster_config_option
def cluster_validate(config_path):
    """Check the file offline: Ray's schema, the placeholders, the spot workers' setup.

    \b
    Example:
      dotsim cluster validate --config cluster.yaml
    """
    from orchestrator import cluster as launcher

    launcher.validate(config_path)
    click.echo(f"{config_path}: valid Ray cluster config")


@cluster.command("up")
@cluster_config_option
def cluster_up(config_path):
    """Start or update the cluster (`ray up`), once this machine has what it needs.

    \b
    Example:
      dotsim cluster up --config cluster.yaml
    """
    from orchestrator import cluster as launcher

    sys.exit(launcher.run("up", config_path))


@cluster.command("down")
@cluster_config_option
def cluster_down(config_path):
    """Stop the cluster and terminate its nodes (`ray down`).

    \b
    Example:
      dotsim cluster down
    """
    from orchestrator import cluster as launcher

    sys.exit(launcher.run("down", config_path))


@cluster.command("status")
@cluster_config_option
def cluster_status(config_path):
    """Print `ray status` from the head: nodes, resources, pending demand.

    \b
    Example:
      dotsim cluster status
    """
    from orchestrator import cluster as launcher

    sys.exit(launcher.run("status", config_path))


@cluster.command("dashboard")
@cluster_config_option
def cluster_dashboard(config_path):
    """Forward the head's dashboard and Jobs API to http://127.0.0.1:8265 over SSH.

    The head serves them on its own 127.0.0.1 only; the forward is for the browser and for
    `dotsim submit`.

    \b
    Example:
      dotsim cluster dashboard
    """
    from orchestrator import cluster as launcher

    sys.exit(launcher.run("dashboard", config_path))


@cluster.command("watch-spot")
@click.option("--node-id", default=None,
              help="The Ray node to drain, in hex [default: this machine's node, looked up "
                   "when a notice comes]; needed where several nodes share one address.")
@click.option("--address", envvar="RAY_ADDRESS", show_envvar=True, default=None,
              help="The cluster's GCS, HEAD:6379 [default: the Ray started on this machine].")
@click.option("--interval", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True, help="Seconds between two looks for a notice.")
def cluster_watch_spot(node_id, address, interval):
    """Drain this spot node when AWS announces its reclaim (runs on the node).

    Polls the instance metadata service (IMDSv2, at AWS_EC2_METADATA_SERVICE_ENDPOINT or
    169.254.169.254) for a spot interruption notice; on one, drains the node through
    `ray drain-node` for preemption, with the notice's time as the deadline, once per
    notice, and keeps watching. A metadata error is logged and polling goes on.

    \b
    Example:
      dotsim cluster watch-spot --address $RAY_HEAD_IP:6379
    """
    from orchestrator import spot

    spot.watch(node_id=node_id, address=address, interval_s=interval)


# --- printing ------------------------------------------------------------------------


def _run_lines(summary: dict) -> str:
    """A finished run in words: test and validation accuracy, the folder, FSKIL numbers."""
    m = summary["metrics"]
    text = (f"{summary['variant']}: test_acc {m['test_acc']:.4f} (best epoch "
            f"{m['best_epoch']}), val_acc {m['val_acc']:.4f}; run folder {summary['path']}")
    if FSKIL_HEADLINE[0] in m:
        text += ("\nFSKIL " + _headline(m, FSKIL_HEADLINE) + "; log-mel baseline "
                 + _headline(m, LOGMEL_HEADLINE))
    return text


def _headline(metrics: dict, names: tuple[str, ...]) -> str:
    """e.g. "mean_acc 0.862 last_acc 0.780 last_harmonic 0.721" (None: "-")."""
    return " ".join(f"{name.split('_', 1)[1]} "
                    + ("-" if metrics[name] is None else f"{metrics[name]:.3f}")
                    for name in names)


def _run_then_report(run, folder: str, as_json: bool) -> None:
    """Run a sweep, then print its report. Failed trials are listed first (the report
    could fail too), then the report, then ``main`` says how the sweep ended."""
    from orchestrator.sweep import SweepFailed, SweepInterrupted, failure_lines

    try:
        run()
    except SweepInterrupted as stopped:
        for line in failure_lines(stopped.trials):
            log.info(line)
        raise
    except SweepFailed as failed:
        for line in failure_lines(failed.trials):
            log.info(line)
        _print_report(folder, as_json, trackers=_sweep_trackers(folder))
        raise
    _print_report(folder, as_json, trackers=_sweep_trackers(folder))


def _sweep_trackers(folder: str) -> list[dict]:
    """The trackers a sweep ran with (its sweep.json), its own runs in them included."""
    from orchestrator.results import sweep_base

    return sweep_base(folder).trackers


def _print_report(sweep_dir: str, as_json: bool, baseline: str | None = None,
                  plot: bool = True, trackers: list[dict] = ()) -> None:
    """Print the report; then its files go to the sweep's run in each of ``trackers``."""
    from orchestrator import report as reports

    sweep_dir = storage.resolve(sweep_dir)
    result = reports.make(sweep_dir, baseline=baseline, with_plots=plot)
    markdown = reports.to_markdown(result)
    click.echo(json.dumps(result, default=str) if as_json else markdown)
    if trackers:
        from orchestrator.trackers import attach_report

        attach_report(sweep_dir, list(trackers), result, markdown,
                      sweep_specs=_sweep_trackers(sweep_dir))


# --- options typed on the command line -------------------------------------------------


def _typed(ctx: click.Context) -> list[click.Parameter]:
    """The command's parameters the user typed (not defaults, not the environment)."""
    return [param for param in ctx.command.params
            if ctx.get_parameter_source(param.name) == click.core.ParameterSource.COMMANDLINE]


def _resume_command(ctx: click.Context, run_name: str) -> str:
    """``dotsim train`` with the options the user gave on the command line (not those
    from the environment, which the next shell has too) and the run's name."""
    from orchestrator.trackers import without_userinfo

    words = ["dotsim", ctx.info_name]
    for param in _typed(ctx):
        value = ctx.params.get(param.name)
        if param.name == "run_name" or value is None:
            continue
        if param.is_flag:
            flags = param.opts if value else param.secondary_opts
            words += flags[:1]
        else:
            for one in value if param.multiple else [value]:
                words += [param.opts[0], str(one)]
    # a tracker URI's user:password is not printed back: the command to type again reads
    # them where MLflow does (MLFLOW_TRACKING_USERNAME/PASSWORD)
    return shlex.join(without_userinfo(word) for word in [*words, "--run-name", run_name])


RESUME_OPTIONS = ("resume_dir", "address", "dashboard", "as_json")


def _refuse_options_besides_resume() -> None:
    """``sweep --resume`` continues a sweep as it was defined (its sweep.json and Tune's
    state): an option that would change it must not be silently ignored."""
    given = [param.opts[0] for param in _typed(click.get_current_context())
             if param.name not in RESUME_OPTIONS]
    if given:
        raise InputError(f"--resume continues a sweep with the options it was started with; "
                         f"drop {', '.join(given)} (start a new sweep to change them)")


# --- messages and exit codes -----------------------------------------------------------


class _Lines(logging.Formatter):
    """dotsim's notes as ``dotsim: ...``; progress lines as they are."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        return text if record.name == "dotsim.progress" else f"dotsim: {text}"


class _ToStderr(logging.Handler):
    """Writes through click to the stderr of the moment (a test's capture included)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(self.format(record), err=True)


def _log_to_stderr() -> None:
    """The orchestrator's notes and progress (logger ``dotsim``) on stderr, once."""
    logger = logging.getLogger("dotsim")
    if not any(isinstance(h, _ToStderr) for h in logger.handlers):
        handler = _ToStderr()
        handler.setFormatter(_Lines())
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


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
    """Entry point: run the group; print how it ended on stderr and exit with its code."""
    from orchestrator.auth import token_mode_for_ray

    token_mode_for_ray()  # before any command imports Ray
    try:
        cli.main(args=argv, prog_name="dotsim", standalone_mode=False)
    except click.Abort:
        click.echo("dotsim: aborted", err=True)
        sys.exit(130)
    except _Outcome as ended:
        click.echo(f"dotsim: {ended.format_message()}", err=True)
        sys.exit(ended.exit_code)
    except click.exceptions.NoArgsIsHelpError as bare:  # `dotsim`, `dotsim job`: the help
        click.echo(bare.ctx.get_help())
        sys.exit(0)
    except click.ClickException as err:  # Click's own usage errors: exit 2, one line
        click.echo(f"dotsim: error: {err.format_message()}".splitlines()[0], err=True)
        sys.exit(err.exit_code)
