"""Runs and sweeps in the researcher's experiment tracker: MLflow and Weights & Biases.

``--tracker mlflow[:URI]`` and ``--tracker wandb`` name them; ``resolve`` turns those words
into tracker specs (plain dicts: where each tracker is, never a secret) that ride in the run
config's ``trackers`` field, and ``check`` reaches each before anything runs.

Each dotsim run is one tracker run, named like its run folder, tagged with its run key,
variant and seed, with every config field, the code version and the package versions of
its run record as parameters, and every epoch's metrics (the final ones with the last
epoch) at the epoch as step. A sweep's trials are grouped under the sweep: an MLflow parent
run, a W&B group; the report's files go to the sweep's own run (``attach_report``).

Everything is sent from the process that launched the run (``dotsim train``, or the Tune
trial), from rank 0's report of each epoch, in a thread of its own (``RunTracking``): a
tracker that is slow or gone never holds training or its progress lines. A call is tried
``ATTEMPTS`` times; a tracker that still does not answer is given up on with one warning
(later epochs are tried once each, so a tracker that comes back gets them), and the run
ends saying which epochs did not reach it. The run record (``dotsim_run.json``) keeps each
tracker's run id and the epochs it holds, so a resumed run continues the same tracker run,
sends what is missing and never sends an epoch twice.

MLflow and wandb are the optional extra ``track``: this module imports them only when a
tracker is asked for.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import queue
import re
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from workers import storage
from workers.config import RunConfig
from workers.errors import InputError, Interrupted
from workers.metrics import FSKIL_DETAIL

log = logging.getLogger("dotsim")

INSTALL = "pip install -e '.[track]'"
DEFAULT_PROJECT = "dotsim"  # MLflow experiment and W&B project unless the environment names one

# A tracker call is tried this many times, waiting BACKOFF_S, then twice that, in between.
ATTEMPTS = 3
BACKOFF_S = 1.0
# At a run's end, how long its trackers may take to catch up and close their runs.
CLOSE_WAIT_S = 60

# MLflow settings dotsim needs unless the user set them. dotsim retries tracker calls itself
# (``Link``): MLflow's own retries (7, with exponential back-off) and its 120 s timeout
# would hold a run's end, and a sweep's start, for minutes once a server is gone. MLflow
# prints a run's URL on stdout when the run ends, which is for results (--json); dotsim
# says where the run is on stderr.
MLFLOW_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
                   "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
MLFLOW_PARAM_LIMIT = 6000  # characters of a parameter value MLflow stores
MLFLOW_BATCH = 100  # parameters per log_batch call MLflow accepts
WANDB_TAG_LIMIT = 64  # characters of a W&B tag

# Environment variables whose values are secrets: never written, logged or reported.
SECRET_ENV = ("WANDB_API_KEY", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
_secrets: set[str] = set()  # secrets seen in a URI this process was given


# --- secrets -------------------------------------------------------------------------


def scrub(text: str) -> str:
    """``text`` with every secret dotsim knows of replaced by ``***``: the values of
    SECRET_ENV, passwords given in a URI, and the user:password part of any URL."""
    secrets = _secrets | {os.environ.get(name) or "" for name in SECRET_ENV}
    for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, "***")
    return re.sub(r"(\b[a-zA-Z][\w+.-]*://)[^/@\s]+@", r"\1***@", text)


def without_userinfo(text: str) -> str:
    """``text`` with the user:password part of any URL in it taken out (a command to type
    again: the credentials go where MLflow reads them, MLFLOW_TRACKING_USERNAME/PASSWORD)."""
    return re.sub(r"(\b[a-zA-Z][\w+.-]*://)[^/@\s]+@", r"\1", scrub(text))


def _without_credentials(uri: str) -> str:
    """``uri`` without its user:password part, which goes into the environment variables
    MLflow reads them from (MLFLOW_TRACKING_USERNAME/PASSWORD): a local Ray started after
    this hands them to the trials, and the URI that is saved holds no secret."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    if parts.username:
        os.environ["MLFLOW_TRACKING_USERNAME"] = urllib.parse.unquote(parts.username)
    if parts.password:
        password = urllib.parse.unquote(parts.password)
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password
        _secrets.add(password)
        _secrets.add(parts.password)
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


# --- the user's words -> tracker specs -------------------------------------------------


def resolve(words: Iterable[str]) -> list[dict]:
    """Tracker specs for ``--tracker`` words: ``mlflow`` (MLFLOW_TRACKING_URI), ``mlflow:URI``,
    ``wandb`` (W&B's usual environment). Duplicates count once. InputError for a word that
    names no tracker, a tracker whose package is missing, or MLflow without a URI."""
    specs: dict[str, dict] = {}
    for word in words:
        kind, _, rest = word.partition(":")
        if kind == "mlflow":
            spec = _mlflow_spec(rest or os.environ.get("MLFLOW_TRACKING_URI", ""))
        elif kind == "wandb" and not rest:
            spec = _wandb_spec()
        else:
            raise InputError(f"unknown tracker {scrub(word)!r}; allowed: mlflow, mlflow:URI, "
                             "wandb")
        specs.setdefault(key(spec), spec)
    return list(specs.values())


def _mlflow_spec(uri: str) -> dict:
    _require("mlflow")
    if not uri:
        raise InputError("--tracker mlflow needs the tracking server: set MLFLOW_TRACKING_URI "
                         "(e.g. http://127.0.0.1:5000) or write --tracker mlflow:URI")
    return {"kind": "mlflow", "uri": _without_credentials(uri.rstrip("/")),
            "experiment": os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT}


def _wandb_spec() -> dict:
    """W&B as its environment says: online with WANDB_API_KEY, else offline (said here), or
    WANDB_MODE; WANDB_PROJECT, WANDB_ENTITY; run files under WANDB_DIR (else the current
    folder), made absolute so that sweep trials, in other folders, write there too."""
    _require("wandb")
    mode = os.environ.get("WANDB_MODE") or (
        "online" if os.environ.get("WANDB_API_KEY") else "offline")
    mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)
    if mode not in ("online", "offline", "disabled"):
        raise InputError(f"WANDB_MODE={mode!r}: W&B knows online, offline and disabled")
    folder = os.path.abspath(os.environ.get("WANDB_DIR") or os.getcwd())
    if mode == "offline":
        why = "WANDB_MODE=offline" if os.environ.get("WANDB_MODE") else "no WANDB_API_KEY"
        log.info(f"W&B: {why}, so runs are kept offline in {folder}/wandb; upload them "
                 f"later with: wandb sync {folder}/wandb/offline-run-*")
    return {"kind": "wandb", "project": os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            "entity": os.environ.get("WANDB_ENTITY") or None, "mode": mode, "dir": folder}


def key(spec: dict) -> str:
    """Which tracker a spec names (its kind and where), e.g. ``mlflow http://host:5000``:
    the key of its entry in a run record."""
    if spec["kind"] == "mlflow":
        return f"mlflow {spec['uri']}"
    entity = f"{spec['entity']}/" if spec.get("entity") else ""
    return f"wandb {entity}{spec['project']}"


def describe(spec: dict) -> str:
    """The tracker in words, for messages: ``MLflow at http://...``,
    ``W&B project dotsim (offline)``."""
    if spec["kind"] == "mlflow":
        return f"MLflow at {spec['uri']}"
    return f"W&B project {key(spec).split(' ', 1)[1]} ({spec['mode']})"


def _label(spec: dict) -> str:
    return "MLflow" if spec["kind"] == "mlflow" else f"W&B ({spec['mode']})"


def check(spec: dict) -> None:
    """Reach the tracker before anything runs: InputError (one line) when it cannot be used."""
    try:
        if spec["kind"] == "mlflow":
            _Mlflow(spec).client.search_experiments(max_results=1)
        elif spec["mode"] == "online":
            wandb = _require("wandb")
            wandb.Api(timeout=15).viewer  # noqa: B018 (the request is the check)
        elif spec["mode"] == "offline":
            Path(spec["dir"]).mkdir(parents=True, exist_ok=True)
    except InputError:
        raise
    except Exception as err:  # whatever the client raises, the tracker cannot be used
        hint = ("is the server up, and is MLFLOW_TRACKING_URI (or --tracker mlflow:URI) right?"
                if spec["kind"] == "mlflow" else
                "check WANDB_API_KEY and WANDB_BASE_URL, or set WANDB_MODE=offline")
        raise InputError(f"cannot use {describe(spec)} ({reason(err)}); {hint}") from err


def reason(err: BaseException) -> str:
    """A short, secret-free account of a client's error: the OS's words when a connection
    failed (``Connection refused``), else the error's first line."""
    text = scrub(str(err))
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if found:
        return found.group(1).strip()
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = first if len(first) <= 200 else first[:197] + "..."
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def _require(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise InputError(f"--tracker {name} needs the {name} package, in dotsim's extra "
                         f"'track': {INSTALL}") from err


# --- what a tracker receives -----------------------------------------------------------


def params(config: dict, launch: dict) -> dict[str, Any]:
    """A run's parameters: every config field (``trackers`` aside: where a run is tracked is
    not one of its settings), the code version and every package version of ``launch`` (an
    entry of the run record's launches)."""
    out = {name: value for name, value in config.items() if name != "trackers"}
    out["code_version"] = launch.get("code_version")
    out |= {f"packages.{name}": version
            for name, version in (launch.get("packages") or {}).items()}
    return out


def param_text(value: Any) -> str:
    """A parameter value as the text MLflow stores: strings as they are, anything else as
    JSON (lists and dicts included), cut to MLflow's limit."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:MLFLOW_PARAM_LIMIT]


def metrics_of(report: dict) -> dict[str, float]:
    """The numbers of an epoch's report (the last epoch's final ones included), as metrics.
    Bookkeeping that is not a number (the FSKIL per-episode detail, a missing value) is not
    a metric."""
    return {name: float(value) for name, value in report.items()
            if name != FSKIL_DETAIL and isinstance(value, int | float)
            and not isinstance(value, bool)}


def run_tags(record: dict, spec: dict) -> dict[str, str]:
    """The tags of a run's tracker run: its run key, variant and seed (so the tracker groups
    runs by them), and the sweep it belongs to."""
    cfg = RunConfig.from_dict(record["config"])
    tags = {"run_key": record["run_key"], "variant": cfg.variant, "seed": str(cfg.seed)}
    if spec.get("sweep"):
        tags["sweep"] = spec["sweep"]
    return tags


def epoch_ranges(epochs: Iterable[int]) -> str:
    """``[2, 3, 4, 7]`` -> ``"2-4, 7"``."""
    spans: list[list[int]] = []
    for epoch in sorted(set(epochs)):
        if spans and epoch == spans[-1][1] + 1:
            spans[-1][1] = epoch
        else:
            spans.append([epoch, epoch])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def to_send(history: list[dict], delivered: set[int], *, monotonic: bool) -> list[dict]:
    """The epochs of ``history`` a tracker that holds ``delivered`` still needs, in order.
    A ``monotonic`` tracker (W&B: steps only grow) takes none at or before the last epoch it
    holds."""
    last = max(delivered, default=0)
    return [h for h in history if int(h["epoch"]) not in delivered
            and not (monotonic and int(h["epoch"]) <= last)]


RESEND = "launching the run again sends what is missing"


def gaps(specs: list[dict], record: dict, epochs: list[int], run_name: str, *,
         resend: str = RESEND) -> list[str]:
    """One line per tracker of ``specs`` that lacks some of ``epochs`` by the run record:
    which epochs did not reach it, that they are safe in the run folder, and ``resend``."""
    lines = []
    entries = record.get("trackers", {})
    for spec in specs:
        entry = entries.get(key(spec))
        held = set(entry.get("epochs", [])) if entry else set()
        missing = [e for e in epochs if e not in held]
        if not missing:
            continue
        final = " (with the final metrics)" if epochs[-1] in missing else ""
        what = (f"no epoch of run {run_name} reached it" if len(missing) == len(epochs) else
                f"epochs {epoch_ranges(missing)}{final} of run {run_name} did not reach it")
        lines.append(f"{describe(spec)}: {what}; every metric is kept in the run folder, "
                     f"and {resend}")
    return lines


# --- one call to a tracker, retried ----------------------------------------------------


class Link:
    """A tracker's calls from this process: each tried ``attempts`` times with a growing
    wait; once a call has failed that often the tracker is given up on (one warning), and
    later calls are tried once each until one succeeds again."""

    def __init__(self, name: str, *, attempts: int = ATTEMPTS, backoff_s: float = BACKOFF_S,
                 sleep: Callable[[float], None] = time.sleep,
                 say: Callable[[str], None] = log.warning):
        self.name, self.attempts, self.backoff_s = name, attempts, backoff_s
        self.sleep, self.say = sleep, say
        self.down = False
        self.error: str | None = None

    def call(self, what: str, action: Callable[[], Any]) -> bool:
        """Run ``action`` (a tracker call); whether it succeeded."""
        tries = 1 if self.down else self.attempts
        for attempt in range(tries):
            try:
                action()
            except Exception as err:  # whatever it is, a tracker must never stop a run
                self.error = reason(err)
                if attempt + 1 < tries:
                    self.sleep(self.backoff_s * 2 ** attempt)
                continue
            if self.down:
                self.say(f"{self.name} answers again ({what})")
                self.down = False
            return True
        if not self.down:
            self.say(f"{self.name} did not answer ({what}) after {tries} tries: {self.error}; "
                     "dotsim goes on without it")
        self.down = True
        return False


# --- the trackers' clients -------------------------------------------------------------


class _Mlflow:
    """An MLflow run through ``MlflowClient`` (no global state of the ``mlflow`` module)."""

    monotonic = False  # MLflow takes any step at any time

    def __init__(self, spec: dict):
        _require("mlflow")
        for name, value in MLFLOW_DEFAULTS.items():
            os.environ.setdefault(name, value)
        from mlflow import MlflowClient

        self.spec, self.client = spec, MlflowClient(tracking_uri=spec["uri"])
        self.run_id: str | None = None
        self.experiment_id: str | None = None

    def experiment(self) -> str:
        """The experiment's id, created on first use."""
        from mlflow.exceptions import MlflowException

        if self.experiment_id is None:
            name = self.spec["experiment"]
            found = self.client.get_experiment_by_name(name)
            if found is None:
                try:
                    self.experiment_id = self.client.create_experiment(name)
                except MlflowException as err:  # another trial created it just now
                    if err.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                    found = self.client.get_experiment_by_name(name)
            if found is not None:
                self.experiment_id = found.experiment_id
        return self.experiment_id

    def known_epochs(self, run_id: str) -> set[int]:
        """The epochs the server holds for ``run_id`` (each epoch is one batch with the
        ``epoch`` metric): the truth even when a launch died before recording them; none
        of a run it does not know (``open`` starts a new one)."""
        from mlflow.exceptions import MlflowException

        try:
            return {m.step for m in self.client.get_metric_history(run_id, "epoch")}
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return set()

    def open(self, run_id: str | None, name: str, tags: dict[str, str], values: dict,
             job: str) -> str:
        """Continue ``run_id`` (unless the server lost it) or create the run; add the
        parameters it lacks (MLflow keeps a parameter's first value)."""
        from mlflow.entities import Param, RunTag
        from mlflow.exceptions import MlflowException

        if self.run_id is None and run_id:
            try:
                found = self.client.get_run(run_id).info
                if found.lifecycle_stage != "deleted":
                    self.run_id, self.experiment_id = run_id, found.experiment_id
            except MlflowException as err:
                if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
            if self.run_id is None:
                log.warning(f"{describe(self.spec)} no longer holds run {run_id}; "
                            f"{name} starts a new one")
        if self.run_id is None:
            system = {"mlflow.parentRunId": self.spec["parent_run_id"]} if (
                job == "trial" and self.spec.get("parent_run_id")) else {}
            commit = values.get("code_version") or ""
            if re.fullmatch(r"[0-9a-f]{7,40}(-dirty)?", commit):
                system["mlflow.source.git.commit"] = commit.removesuffix("-dirty")
            self.run_id = self.client.create_run(self.experiment(), run_name=name,
                                                 tags={**tags, **system}).info.run_id
        else:
            self.client.update_run(self.run_id, status="RUNNING")
        held = self.client.get_run(self.run_id).data.params
        new = [Param(k, param_text(v)) for k, v in values.items() if k not in held]
        for start in range(0, len(new), MLFLOW_BATCH):
            self.client.log_batch(self.run_id, params=new[start:start + MLFLOW_BATCH],
                                  synchronous=True)
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()],
                              synchronous=True)
        return self.run_id

    def opened_epochs(self) -> set[int]:
        return set()  # known_epochs asked the server already

    def log(self, epoch: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, synchronous=True, metrics=[
            Metric(name, value, now, epoch) for name, value in metrics.items()])

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)

    def attach(self, folder: str, sweep: str) -> None:
        self.client.log_artifacts(self.run_id, folder, artifact_path="report")

    def where(self) -> str:
        base = self.spec["uri"]
        if base.startswith(("http://", "https://")) and self.experiment_id:
            return f"{base}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"{base}, run {self.run_id}"


class _Wandb:
    """A W&B run through ``wandb.init`` (its own Run object; W&B's output kept quiet)."""

    monotonic = True  # W&B drops a step below the run's current one

    def __init__(self, spec: dict):
        self.spec, self.wandb = spec, _require("wandb")
        self.run = None
        self.run_id: str | None = None

    def known_epochs(self, run_id: str) -> set[int]:
        return set()  # W&B says so only once the run is open: opened_epochs

    def open(self, run_id: str | None, name: str, tags: dict[str, str], values: dict,
             job: str) -> str:
        if self.run is None:
            self.run_id = self.run_id or run_id or new_run_id()
            settings = self.wandb.Settings(silent=True, console="off", disable_git=True,
                                           save_code=False, x_disable_stats=True)
            self.run = self.wandb.init(
                id=self.run_id, resume="allow", name=name, project=self.spec["project"],
                entity=self.spec.get("entity"), group=self.spec.get("sweep"), job_type=job,
                tags=[f"{k}:{v}"[:WANDB_TAG_LIMIT] for k, v in tags.items()],
                config=values, mode=self.spec["mode"], dir=self.spec["dir"],
                reinit="create_new", settings=settings)
        return self.run_id

    def opened_epochs(self) -> set[int]:
        """Online, a resumed run starts after the last step the server holds."""
        if self.run is not None and self.run.resumed:
            return set(range(1, self.run.starting_step))
        return set()

    def log(self, epoch: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=epoch)

    def close(self, status: str) -> None:
        run, self.run = self.run, None
        run.finish(exit_code=0 if status == "FINISHED" else 1)

    def attach(self, folder: str, sweep: str) -> None:
        name = re.sub(r"[^\w.-]", "_", f"report-{sweep}")
        artifact = self.wandb.Artifact(name, type="report")
        for path in sorted(Path(folder).iterdir()):  # add_dir would print a line of its own
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def where(self) -> str:
        if self.spec["mode"] == "online":
            return self.run.url if self.run is not None else f"run {self.run_id}"
        return f"run {self.run_id} in {self.spec['dir']}/wandb"


def _client(spec: dict):
    return (_Mlflow if spec["kind"] == "mlflow" else _Wandb)(spec)


def new_run_id() -> str:
    """A tracker run id made here, so that the record holds it before the tracker run
    exists (W&B takes the id it is given; 12 hex digits are unique enough in a project)."""
    return uuid.uuid4().hex[:12]


def run_status(err: BaseException | None) -> str:
    """A tracker run's status for how a launch or a sweep ended."""
    if err is None:
        return "FINISHED"
    if isinstance(err, Interrupted | KeyboardInterrupt | SystemExit):
        return "KILLED"
    return "FAILED"


# --- one run's tracking --------------------------------------------------------------


class _Destination:
    """One tracker of one run during one launch: its client, its entry in the run record,
    the epochs it holds and those still to send."""

    def __init__(self, spec: dict, entry: dict | None):
        self.spec, self.key = spec, key(spec)
        self.link = Link(describe(spec))
        self.entry = entry
        self.delivered = set(entry.get("epochs", [])) if entry else set()
        self.pending: dict[int, dict] = {}
        self.client = None
        self.opened = False


class _End:
    """The last item of a launch's queue: the status its tracker runs end with."""

    def __init__(self, status: str):
        self.status = status


class RunTracking:
    """The trackers of one launch of a run. ``start`` opens a thread that opens (or
    continues) each tracker run and sends the epochs the run folder holds but the
    tracker lacks; ``send`` hands it each new epoch's report without waiting; ``close`` lets it
    finish, ends the tracker runs and says which epochs did not reach a tracker."""

    def __init__(self, specs: list[dict], record_path: str, history: list[dict], *,
                 finished: bool):
        self.specs, self.record_path = list(specs), record_path
        self.history, self.finished = list(history), finished
        self.record: dict = {}
        self.destinations: list[_Destination] = []
        self.queue: queue.Queue = queue.Queue()
        self.thread: threading.Thread | None = None
        self.seen: list[int] = [int(h["epoch"]) for h in history]

    @property
    def active(self) -> bool:
        return bool(self.specs)

    def start(self) -> None:
        self.record = storage.read_json(self.record_path)
        entries = self.record.setdefault("trackers", {})
        self.destinations = [_Destination(spec, entries.get(key(spec))) for spec in self.specs]
        self.thread = threading.Thread(target=self._work, name="dotsim-trackers", daemon=True)
        self.thread.start()

    def send(self, report: dict) -> None:
        epoch = int(report["epoch"])
        if epoch not in self.seen:  # here, not in the thread: a stuck tracker still counts it
            self.seen.append(epoch)
        self.queue.put(report)

    def close(self, status: str) -> list[dict]:
        """Let the thread send what it can and end the tracker runs with ``status``, for
        CLOSE_WAIT_S at most (a tracker that hangs must not hold the run's end), then say
        what is missing; returns ``outcome``."""
        self.queue.put(_End(status))
        if self.thread is not None:
            self.thread.join(timeout=CLOSE_WAIT_S)
            if self.thread.is_alive():
                log.warning(f"the trackers had not caught up {CLOSE_WAIT_S} s after the run "
                            "ended; dotsim stops waiting for them")
        if self.finished or status == "FINISHED":
            for d in self.destinations:
                if d.opened and not d.pending:
                    log.info(f"tracked in {_label(d.spec)}: {d.client.where()}")
        for line in gaps(self.specs, self.record, self.seen, self.record["run_name"]):
            log.warning(line)
        return self.outcome()

    def outcome(self) -> list[dict]:
        """Per tracker: where, its run id, and the epochs that did not reach it."""
        return [{"tracker": d.spec["kind"], "where": d.key.split(" ", 1)[1],
                 "run_id": d.client.run_id if d.client else None,
                 "not_logged": sorted(e for e in self.seen if e not in d.delivered)}
                for d in self.destinations]

    # --- the thread -------------------------------------------------------------------

    def _work(self) -> None:
        try:
            for d in self.destinations:
                self._begin(d)
            while not isinstance(item := self.queue.get(), _End):
                self._take(item)
                # all that has queued up meanwhile first: a tracker that is down then costs
                # one try per wake-up, not one per epoch waiting
                while not self.queue.empty() and not isinstance(self.queue.queue[0], _End):
                    self._take(self.queue.get())
                for d in self.destinations:
                    self._flush(d)
            for d in self.destinations:
                if d.opened:
                    d.link.call("closing the run", lambda d=d: d.client.close(item.status))
        except Exception as err:  # whatever it is, a tracker must never stop a run
            log.warning(f"tracking stopped: {reason(err)}")

    def _take(self, report: dict) -> None:
        epoch = int(report["epoch"])
        for d in self.destinations:
            if epoch not in d.delivered:
                d.pending[epoch] = report

    def _begin(self, d: _Destination) -> None:
        """Make the client, learn what the tracker holds, queue what it lacks, and open the
        tracker run unless a finished run's tracker has everything already."""
        if not d.link.call("starting", lambda: setattr(d, "client", _client(d.spec))):
            return
        if d.entry:
            held: set[int] = set()
            d.link.call("reading the run", lambda: held.update(
                d.client.known_epochs(d.entry["run_id"])))
            d.delivered |= held
        for h in to_send(self.history, d.delivered, monotonic=d.client.monotonic):
            d.pending[int(h["epoch"])] = h
        if d.entry is None or d.pending or not self.finished:
            self._open(d)
            self._flush(d)

    def _open(self, d: _Destination) -> bool:
        if d.opened:
            return True
        launches = self.record.get("launches") or [{}]
        values = params(self.record["config"], launches[-1])
        tags = run_tags(self.record, d.spec)
        job = "trial" if d.spec.get("sweep") else "train"
        run_id = d.entry["run_id"] if d.entry else None
        if not d.link.call("opening the run", lambda: d.client.open(
                run_id, self.record["run_name"], tags, values, job)):
            return False
        d.opened = True
        if d.entry and d.client.run_id != d.entry["run_id"]:  # a new run: it holds nothing
            d.delivered = set()
            d.pending = {int(h["epoch"]): h for h in self.history} | d.pending
        d.delivered |= d.client.opened_epochs()
        for epoch in [e for e in d.pending if e in d.delivered]:
            del d.pending[epoch]
        self._remember(d)
        return True

    def _flush(self, d: _Destination) -> None:
        """Send the pending epochs in order; stop at the first that does not get through (a
        monotonic tracker must not get a later epoch first)."""
        if d.client is None or not d.pending or not self._open(d):
            return
        for epoch in sorted(d.pending):
            if d.client.monotonic and epoch <= max(d.delivered, default=0):
                del d.pending[epoch]  # W&B would drop it
                continue
            metrics = metrics_of(d.pending[epoch])
            if not d.link.call(f"epoch {epoch}", lambda e=epoch, m=metrics: d.client.log(e, m)):
                return
            del d.pending[epoch]
            d.delivered.add(epoch)
            self._remember(d)

    def _remember(self, d: _Destination) -> None:
        """The tracker's run id and the epochs it holds, into the run record (so a resumed
        run continues that tracker run and skips those epochs)."""
        self.record["trackers"][d.key] = {"kind": d.spec["kind"], "run_id": d.client.run_id,
                                          "epochs": sorted(d.delivered)}
        storage.write_json(self.record_path, self.record)


@contextlib.contextmanager
def tracking(specs: list[dict], record_path: str, history: list[dict], *, finished: bool):
    """``RunTracking`` of a launch, closed with the status the launch ended in."""
    session = RunTracking(specs, record_path, history, finished=finished)
    if not session.active:
        yield session
        return
    session.start()
    status = "FINISHED"
    try:
        yield session
    except BaseException as err:
        status = run_status(err)
        raise
    finally:
        session.close(status)


# --- a sweep -------------------------------------------------------------------------


def sweep_name(folder: str) -> str:
    return folder.rstrip("/").rsplit("/", 1)[-1]


def open_sweep(specs: list[dict], folder: str, base: dict) -> list[dict]:
    """``specs`` for a new sweep's trials: each names the sweep (an MLflow tag, a W&B group)
    and its parent run (MLflow: created now, with the base config as parameters; W&B: an id
    for the run that ``attach_report`` opens)."""
    from orchestrator.versions import code_version, package_versions

    name = sweep_name(folder)
    values = params(base, {"code_version": code_version(), "packages": package_versions()})
    out = []
    for spec in specs:
        spec = {**spec, "sweep": name}
        if spec["kind"] == "wandb":
            spec["parent_run_id"] = new_run_id()
        else:
            client = _Mlflow(spec)
            if Link(describe(spec)).call("creating the sweep's run", lambda c=client: c.open(
                    None, name, {"sweep": name}, values, "sweep")):
                spec["parent_run_id"] = client.run_id
        out.append(spec)
    return out


def _sweep_runs(specs: list[dict]):
    for spec in specs:
        if spec["kind"] == "mlflow" and spec.get("parent_run_id"):
            client = _client(spec)
            client.run_id = spec["parent_run_id"]
            yield spec, client


@contextlib.contextmanager
def sweep_run(specs: list[dict], *, resumed: bool = False):
    """The sweep's MLflow parent run is running while inside, and ends with the sweep's
    status (FINISHED, FAILED when a trial failed, KILLED when interrupted)."""
    if resumed:
        for spec, client in _sweep_runs(specs):
            Link(describe(spec)).call("resuming the sweep's run", lambda c=client: (
                c.client.update_run(c.run_id, status="RUNNING")))
    status = "FINISHED"
    try:
        yield
    except BaseException as err:
        status = run_status(err)
        raise
    finally:
        for spec, client in _sweep_runs(specs):
            Link(describe(spec)).call("ending the sweep's run",
                                      lambda c=client: c.close(status))


def attach_report(folder: str, specs: list[dict], report: dict, markdown: str,
                  sweep_specs: list[dict] = ()) -> None:
    """The report's Markdown, JSON and plots as files of the sweep's run in each tracker of
    ``specs``: the parent run the sweep made in that tracker (``sweep_specs``, from its
    sweep.json), else a new run named like the sweep folder. A tracker that cannot take them
    is warned about; the report stands."""
    name = sweep_name(folder)
    made = {key(s): s for s in sweep_specs}
    with tempfile.TemporaryDirectory(prefix="dotsim-report-") as files:
        Path(files, "report.md").write_text(markdown)
        Path(files, "report.json").write_text(json.dumps(report, indent=1, default=str))
        for plot in (report.get("plot"), report.get("sessions_plot")):
            if plot:
                Path(files, plot.rstrip("/").rsplit("/", 1)[-1]).write_bytes(
                    storage.read_bytes(plot))
        for spec in specs:
            spec = {**made.get(key(spec), spec), "sweep": name}
            client, link = _client(spec), Link(describe(spec))
            if link.call("sending the report", lambda c=client, s=spec: _send_report(
                    c, s, name, files)):
                log.info(f"report sent to {_label(spec)}: {client.where()}")


def _send_report(client, spec: dict, name: str, files: str) -> None:
    """The files to the sweep's run: MLflow's parent run as it is (its status stays the
    sweep's), else a new run for them; W&B's sweep run, opened for them."""
    if spec["kind"] == "mlflow" and spec.get("parent_run_id"):
        if client.run_id is None:
            client.experiment_id = client.client.get_run(
                spec["parent_run_id"]).info.experiment_id
            client.run_id = spec["parent_run_id"]
        client.attach(files, name)
        return
    client.open(spec.get("parent_run_id"), name, {"sweep": name}, {}, "sweep")
    client.attach(files, name)
    client.close("FINISHED")
