"""``dotsim sweep``: Ray Tune over loss variants x seeds (x any other config field).

Each trial is a Tune function that runs ``launch`` (the same path as ``dotsim train``)
with ``TuneReportCallback``, which forwards every epoch's metrics to Tune (Ray 2.60,
Train V2: a Tuner takes no Trainer). The Train run of a trial is named after the
trial's fields, so a restored sweep finds each trial's checkpoints and continues it. The
sweep folder's files and the trial outcomes are described in ``orchestrator.results``.

    sweep = orchestrator.plan.plan_sweep(RunConfig(epochs=3), variants=["cosine"], seeds=2)
    outcomes = start(sweep)                # what `dotsim sweep` does before its report
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import sys

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.search import Searcher, SearchGenerator

from orchestrator import trackers
from orchestrator.cluster import HEAD_RESOURCE
from orchestrator.estimate import estimate
from orchestrator.launch import quiet, ray_session, run_history
from orchestrator.plan import (
    SCHEDULERS,
    SweepPlan,
    concurrency,
    fit_study,
    local_cpus,
    plan_trackers,
)
from orchestrator.progress import SweepProgress, plan_line
from orchestrator.race import Race, RaceSpec, accepted, decision_line
from orchestrator.results import (
    RECORD_FILE,
    RESULTS_FILE,
    RUNS_NAME,
    SWEEP_FILE,
    TUNE_NAME,
    TrialOutcome,
    check_new_sweep,
    read_definition,
    session_ended,
    session_started,
    sweep_base,
    write_results,
)
from orchestrator.variants import trial_name
from workers import lease, phases, storage
from workers.config import RunConfig
from workers.errors import InputError, Interrupted, Reported
from workers.metrics import (
    FSKIL_DETAIL,
    PREEMPTION_REPORT,
    SELECTION_METRIC,
    SELECTION_MODE,
    comparison_metrics,
    is_finished,
)

log = logging.getLogger("dotsim")


# --- running -------------------------------------------------------------------------


class EpochsToTune(TuneReportCallback):
    """Ray's TuneReportCallback for the epochs only: the checkpoint a run saves on a
    preemption notice is not a result (a scheduler would count it as an iteration)."""

    def after_report(self, run_context, metrics, checkpoint):
        if PREEMPTION_REPORT not in metrics[0]:
            super().after_report(run_context, metrics, checkpoint)


def _run_trial(config: dict) -> None:
    """One Tune trial: ``launch`` of base config + this trial's fields. A run that had
    finished already (the sweep's driver died before Tune recorded it) trains nothing:
    its last epoch is reported to Tune, which needs a result from every trial."""
    from orchestrator.launch import launch

    phases.mark("trial start")
    cfg = _trial_config(config["base"], config["trial"], config["sweep_dir"])
    summary = launch(cfg, callbacks=[EpochsToTune()], progress=False)
    phases.mark("trial end")
    if not is_finished(summary["history"], cfg.epochs):
        # a trial is a whole run: one that returned short is an ERROR (re-run by
        # --resume), never a seed with a partly trained value
        raise RuntimeError(f"run {cfg.run_name} returned after {len(summary['history'])} of "
                           f"{cfg.epochs} epochs")
    if summary["already_finished"]:
        tune.report({k: v for k, v in summary["metrics"].items() if k != FSKIL_DETAIL})


def _trial_config(base: dict, trial: dict, sweep_dir: str) -> RunConfig:
    cfg = RunConfig.from_dict({**base, **trial})
    return cfg.replace(run_name=trial_name(cfg, trial),
                       storage_path=storage.join(sweep_dir, RUNS_NAME))


def trial_resources() -> dict[str, float]:
    """What a trial, the driver of its Train run, asks for. It only waits on its
    TorchTrainer: no CPU (Tune needs some resource in the request, so a token of memory),
    leaving every CPU to the Train workers. On a cluster from cluster.yaml, one unit of the
    head's own resource too, so that the trial and its Train controller (which Ray pins to
    the driver's node) never sit on a GPU node the autoscaler removes."""
    resources = {"CPU": 0, "memory": 2**20}
    if ray.cluster_resources().get(HEAD_RESOURCE):
        resources[HEAD_RESOURCE] = 1
    return resources


def start(plan: SweepPlan, *, address: str | None = None,
          dashboard: bool = False) -> list[TrialOutcome]:
    """Connect to ``address`` (or start a local Ray) and run ``plan`` to the end."""
    with ray_session(address, num_cpus=local_cpus(plan.base), dashboard=dashboard):
        # a cluster behind --address may autoscale: its resources now are not its limit
        return run_sweep(plan, elastic=bool(address))


def run_sweep(plan: SweepPlan, *, elastic: bool = False) -> list[TrialOutcome]:
    """Start the sweep of ``plan`` in its folder (Ray connected) and run it to the end;
    returns every trial's outcome (results.parquet is written). Raises
    ``SweepInterrupted`` or ``SweepFailed`` after writing the results when trials are
    left over or failed. The sweep holds its folder's lease (``workers.lease``) from
    before it is checked until Tune ends: another sweep there is refused."""
    with lease.held(plan.folder, "sweep"):
        check_new_sweep(plan.folder)  # again: the folder may have filled since it was planned
        plan = fit_study(plan, ray.cluster_resources())
        at_once = concurrency(plan.base, plan.possible_trials(), ray.cluster_resources(),
                              plan.max_concurrent, elastic=elastic)
        if plan.base.trackers:  # the sweep's own tracker runs, its trials grouped under them
            plan = dataclasses.replace(plan, base=plan.base.replace(
                trackers=trackers.open_sweep(plan.base.trackers, plan.folder,
                                             plan.base.to_dict())))
        with trackers.sweep_run(plan.base.trackers):  # ends the sweep's tracker runs, however
            tuner = build_tuner(plan, at_once)
            expected = _estimate(plan, at_once)
            storage.write_json(storage.join(plan.folder, SWEEP_FILE), plan.definition())
            log.info(plan_line(len(plan.possible_trials()), at_once, plan.folder,
                               race=plan.race))
            for line in expected.get("lines", ()):
                log.info("  " + line)
            session_started(plan.folder, expected)
            return _fit(tuner, plan.folder)


def _estimate(plan: SweepPlan, at_once: int) -> dict:
    """The sweep's estimate; a storage that cannot be read for it (another sweep writing
    there, say) costs the estimate, not the sweep."""
    try:
        return estimate(plan, at_once)
    except Exception as err:  # noqa: BLE001 - any failure to read earlier runs
        log.warning(f"no time estimate: earlier runs in {plan.base.storage_path} could not "
                    f"be read ({err})")
        return {}


def resume(sweep_dir: str, *, address: str | None = None,
           dashboard: bool = False) -> list[TrialOutcome]:
    """Connect and continue the sweep in ``sweep_dir`` as it was defined."""
    storage.check_reachable(sweep_dir)
    base = sweep_base(sweep_dir)
    lease.check_free(storage.resolve(sweep_dir), "sweep")  # now, not after Ray has started
    plan_trackers(specs=base.trackers)
    with ray_session(address, num_cpus=local_cpus(base), dashboard=dashboard):
        return resume_sweep(sweep_dir)


def resume_sweep(sweep_dir: str) -> list[TrialOutcome]:
    """Continue a sweep (Ray connected): finished trials stay; unfinished and errored
    ones continue from their last checkpoint (their Train run names are stable). Holds
    the sweep folder's lease while Tune runs, as ``run_sweep`` does."""
    sweep_dir = storage.resolve(sweep_dir)
    # read first: a clear error for a folder that is not a sweep
    specs = sweep_base(sweep_dir).trackers
    tune_dir = storage.join(sweep_dir, TUNE_NAME)
    if not tune.Tuner.can_restore(tune_dir):
        raise InputError(f"{tune_dir} holds no Tune state to resume; start the sweep again")
    with lease.held(sweep_dir, "sweep"):  # before Tune reads its state
        tuner = tune.Tuner.restore(tune_dir,
                                   tune.with_resources(_run_trial, trial_resources()),
                                   resume_unfinished=True, resume_errored=True)
        log.info(f"Resuming the sweep in {sweep_dir}")
        with trackers.sweep_run(specs, resumed=True):
            session_started(sweep_dir)
            return _fit(tuner, sweep_dir)


def build_tuner(plan: SweepPlan, at_once: int) -> tune.Tuner:
    """The Tuner of ``plan``, ``at_once`` trials at a time, with the progress lines: over
    the grid of its trials, or, for a race, as its searcher suggests them."""
    trainable = tune.with_resources(_run_trial, trial_resources())
    constant = {"base": plan.base.to_dict(), "sweep_dir": plan.folder}
    if plan.race is None:
        space, search = {**constant, "trial": tune.grid_search(plan.trials)}, {}
        metric = comparison_metrics(plan.base.protocol)[0]
    else:  # the race limits its own concurrency: Tune's limiter wraps only a Searcher
        race = RaceGenerator(RaceSearcher(plan.race, at_once, plan.base))
        space, metric = constant, plan.race.metric
        search = {"search_alg": race, "num_samples": len(plan.possible_trials())}
    progress = SweepProgress(total=len(plan.possible_trials()), epochs=plan.base.epochs,
                             metric=metric, concurrency=at_once, name=_dirname,
                             at_most=plan.race is not None)
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=SELECTION_METRIC, mode=SELECTION_MODE,
            scheduler=_scheduler(plan.scheduler, plan.base),
            max_concurrent_trials=None if plan.race else at_once,
            trial_dirname_creator=_dirname, trial_name_creator=_dirname, **search,
            # a trial's process (dotsim, Ray Train and torch imported) runs the next
            # trial: about 4 s less per trial
            reuse_actors=True,
        ),
        # max_failures=0: a trial whose Train run failed (after its own restarts) is an
        # ERROR at once, reported and re-run by --resume, not silently retried
        run_config=tune.RunConfig(name=TUNE_NAME, storage_path=plan.folder,
                                  failure_config=tune.FailureConfig(max_failures=0),
                                  callbacks=[progress], verbose=0),
    )


def _dirname(trial) -> str:
    config = trial.config
    cfg = RunConfig.from_dict({**config["base"], **config["trial"]})
    return trial_name(cfg, config["trial"])


def _scheduler(name: str, base: RunConfig):
    if name == "fifo":
        return tune.schedulers.FIFOScheduler()
    if name == "asha":
        # exploratory grids only: stopped trials are marked and left out of comparisons
        return tune.schedulers.ASHAScheduler(time_attr="epoch", max_t=base.epochs,
                                             grace_period=max(1, base.epochs // 4))
    raise InputError(f"unknown scheduler {name!r}; allowed: {', '.join(SCHEDULERS)}")


class SweepInterrupted(Interrupted):
    """The sweep stopped before every trial ended (Ctrl-C); it can be resumed. ``trials``:
    those that had failed by then."""

    def __init__(self, message: str, trials: list[TrialOutcome]):
        super().__init__(message)
        self.trials = trials


class SweepFailed(Reported):
    """Some trials failed; everything else is written, and --resume re-runs them."""

    def __init__(self, message: str, trials: list[TrialOutcome]):
        super().__init__(message)
        self.trials = trials


def failure_lines(trials: list[TrialOutcome]) -> list[str]:
    """One line per failed trial: its name and its error's last line."""
    return [f"trial {o.name} failed: {o.error}" for o in trials]


def _fit(tuner: tune.Tuner, sweep_dir: str) -> list[TrialOutcome]:
    """Run the Tuner (Tune stops gracefully on SIGINT, saving its state first); write
    results.parquet; then say what did not finish."""
    phases.mark("sweep start")
    with _tune_output_silenced():
        tuner.fit()
    phases.mark("sweep end")
    session_ended(sweep_dir)  # Tune ended, whether every trial did or not
    outcomes = trial_outcomes(sweep_dir)
    write_results(sweep_dir, outcomes)
    for line in tracker_gaps(outcomes):
        log.warning(line)
    left = [o.name for o in outcomes if o.status == "UNFINISHED"]
    failed = [o for o in outcomes if o.status == "ERROR"]
    if left:
        raise SweepInterrupted(f"sweep interrupted with {len(left)} of {len(outcomes)} trials "
                               f"unfinished; continue it: dotsim sweep --resume {sweep_dir}",
                               failed)
    if _race_wants_more(sweep_dir, outcomes):  # Ctrl-C between two of a race's trials
        raise SweepInterrupted(f"race interrupted before its comparisons were decided; "
                               f"continue it: dotsim sweep --resume {sweep_dir}", failed)
    if failed:
        raise SweepFailed(f"{len(failed)} of {len(outcomes)} trials failed; their errors are "
                          f"in {RESULTS_FILE} and the report; after fixing the cause, re-run "
                          f"them: dotsim sweep --resume {sweep_dir}", failed)
    return outcomes


def _race_wants_more(sweep_dir: str, outcomes: list[TrialOutcome]) -> bool:
    """A race whose trials, as they ended, still call for another trial."""
    race = read_definition(sweep_dir).get("race")
    if not race:
        return False
    spec = RaceSpec.from_dict(race)
    return Race.of_outcomes(spec, [
        (spec.arm_of(o.trial), o.trial["seed"], o.status,
         o.history[-1].get(spec.metric) if o.history else None) for o in outcomes
    ]).next_trial() is not None


def _tune_output_silenced():
    """stdout while Tune runs goes to stderr (stdout is for results: --json), less Tune's
    own pointers: even at verbose=0 it prints where its state is and a TensorBoard hint
    that names Ray's session folder rather than the sweep folder where the curves are.
    What else arrives (worker output on a cluster) is kept."""
    return contextlib.redirect_stdout(_WithoutTuneHints())


class _WithoutTuneHints(io.TextIOBase):
    """A stdout that forwards whole lines to stderr, but Tune's own and blank ones."""

    # where Tune keeps its state, its TensorBoard hint, and its box of the search and
    # scheduler (the sweep's own first line says how many trials, where)
    HINTS = ("View detailed results here:", "To visualize your results with TensorBoard",
             "╭", "│", "├", "╰")

    def __init__(self):
        self.pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            if line.strip() and not line.lstrip().startswith(self.HINTS):
                sys.stderr.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()


# --- a race (--until-decided) -------------------------------------------------------


class RaceSearcher(Searcher):
    """The race as Tune's searcher: a suggestion is one trial's fields (Tune adds them to
    the sweep's constant config under ``trial``)."""

    def __init__(self, spec: RaceSpec, at_once: int, base):
        super().__init__()
        self.race = Race(spec, at_once)
        self.base = base  # the sweep's RunConfig, to name arms in progress lines
        self.trials: dict[str, tuple[int, int]] = {}  # Tune trial id -> (arm, seed)

    def suggest(self, trial_id: str) -> dict | None:
        chosen = self.race.next_trial()
        if chosen is None:
            return None  # Tune asks again later; RaceGenerator says when it is over
        self.race.start(*chosen)
        self.trials[trial_id] = chosen
        return {"trial": self.race.spec.trial(*chosen)}

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id not in self.trials:
            return
        arm, seed = self.trials[trial_id]
        spec = self.race.spec
        before = self.race.decisions()
        value = None if error else accepted((result or {}).get(spec.metric))
        if not error and value is None:
            # a run ends only with every epoch (_run_trial); a metric that is not a finite
            # number (a diverged run) cannot count as a seed
            trial = spec.trial(arm, seed)
            name = trial_name(self.base.replace(**trial), trial)
            got = (result or {}).get(spec.metric)
            log.warning(f"trial {name} ended with {spec.metric} {got!r}: its arm gets no "
                        "further seeds")
        self.race.finish(arm, seed, value)
        for other, decision in self.race.decisions().items():
            if decision.decision != "undecided" and before[other] != decision:
                log.info("[race] " + decision_line(spec, other, decision, self.base))

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump({"race": self.race.to_state(), "trials": self.trials}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            saved = json.load(f)
        # a failed trial stays failed until Tune re-runs it (resume_errored) and reports
        # it again under the same id
        self.race = Race.from_state(saved["race"])
        self.trials = {k: tuple(v) for k, v in saved["trials"].items()}


class RaceGenerator(SearchGenerator):
    """Tune's SearchGenerator, finished exactly when the race is: the base class ends
    only after ``num_samples`` trials (a race ends when decided) or after a FINISHED
    suggestion, a flag it saves and restores, so that a resumed race whose failed trial,
    once re-run, makes more seeds worth running would end at once."""

    def is_finished(self) -> bool:
        return self.searcher.race.done()


# --- outcomes ------------------------------------------------------------------------


def trial_outcomes(sweep_dir: str) -> list[TrialOutcome]:
    """Every trial of the sweep's definition with its status and epoch history: the
    status from Tune's saved experiment state (``ExperimentAnalysis``), the history from
    the trial's Train run (``history.json`` of its newest checkpoint)."""
    definition = read_definition(sweep_dir)
    tune_states = _tune_states(sweep_dir)
    # a race's trials are those it started (Tune knows each), a grid's are all defined
    trials = ([fields for _, _, fields in tune_states.values()] if definition.get("race")
              else definition["trials"])
    outcomes = []
    for trial in trials:
        cfg = _trial_config(definition["base"], trial, sweep_dir)
        history = run_history(storage.join(cfg.storage_path, cfg.run_name))
        tune_status, error, _ = tune_states.get(cfg.run_name, ("PENDING", None, trial))
        status, error = _status(tune_status, error, history, cfg.epochs,
                                definition["scheduler"])
        outcomes.append(TrialOutcome(cfg.run_name, cfg, trial, status, error, history))
    return outcomes


def _status(tune_status: str, error: str | None, history: list[dict], epochs: int,
            scheduler: str) -> tuple[str, str | None]:
    """(status, error) of a trial from Tune's status and its run's history."""
    if tune_status == "ERROR":
        return "ERROR", error
    if is_finished(history, epochs):
        return "FINISHED", None
    if tune_status == "TERMINATED":  # ended without its last epoch
        if scheduler == "asha":
            return "STOPPED", None  # the scheduler stopped it early
        return "ERROR", (f"the trial ended after {len(history)} of {epochs} epochs without an "
                         "error, and no scheduler stops trials early in this sweep")
    return "UNFINISHED", None


def _tune_states(sweep_dir: str) -> dict[str, tuple[str, str | None, dict]]:
    """Trial name -> (Tune status, last line of its error, the trial's fields) from
    Tune's latest saved state, in the order Tune created them, read with Ray's public
    ``ExperimentAnalysis`` ({} before Tune saved any)."""
    fs, path = storage.filesystem(storage.join(sweep_dir, TUNE_NAME))
    try:
        # quiet: it warns of every trial that has reported no metrics yet
        with quiet("ray.tune", logging.ERROR):
            analysis = tune.ExperimentAnalysis(path, storage_filesystem=fs)
    except ValueError as err:
        # Tune has not saved its state yet (Ray says so only in this ValueError's text);
        # any other problem with the state is not "no trials yet"
        if "No experiment snapshot" not in str(err):
            raise
        return {}
    states = {}
    for trial in analysis.trials:
        cfg = RunConfig.from_dict({**trial.config["base"], **trial.config["trial"]})
        error = trial.get_error() if trial.status == "ERROR" else None
        name = trial_name(cfg, trial.config["trial"])
        if name in states:  # two Tune trials, one Train run folder: neither can be trusted
            raise RuntimeError(f"Tune's state in {sweep_dir} holds trial {name} twice")
        states[name] = (trial.status, last_line(error), trial.config["trial"])
    return states


def tracker_gaps(outcomes: list[TrialOutcome]) -> list[str]:
    """What of each trial's epochs did not reach the sweep's trackers, by the trials' run
    records (the trials run elsewhere; what they said there is not seen here)."""
    lines = []
    for o in outcomes:
        record_path = storage.join(o.cfg.storage_path, o.cfg.run_name, RECORD_FILE)
        if not o.cfg.trackers or not o.history or not storage.exists(record_path):
            continue
        lines += trackers.gaps(o.cfg.trackers, storage.read_json(record_path),
                               [int(h["epoch"]) for h in o.history], o.name,
                               resend=f"in the sweep's {RESULTS_FILE}")
    return lines


def last_line(text) -> str | None:
    """The last non-empty line of an error's text (where Python names the exception)."""
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    return lines[-1] if lines else None
