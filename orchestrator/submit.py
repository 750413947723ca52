"""``dotsim submit`` and ``dotsim job``: the same CLI, sent to a cluster as a Ray Job."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
import time
from pathlib import Path

from ray.job_submission import JobStatus, JobSubmissionClient

from orchestrator.auth import ray_auth_token
from orchestrator.versions import CODE_VERSION_ENV, code_version
from workers.errors import InputError

# Not uploaded with the working directory: what .gitignore lists (Ray's upload honours it,
# as the cluster's rsync does: one list for both), and git's own folder.
EXCLUDES = [".git"]


def auth_headers() -> dict[str, str]:
    """The Authorization header for the Jobs API, when a Ray token is configured."""
    token = ray_auth_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def client(address: str | None) -> JobSubmissionClient:
    if not address:
        raise InputError("no cluster address: pass --address http://HEAD:8265 or set "
                         "RAY_ADDRESS")
    try:
        return JobSubmissionClient(address, headers=auth_headers())
    except (ConnectionError, RuntimeError) as err:
        raise InputError(f"cannot reach the Ray Jobs API at {address}: "
                         f"{str(err).splitlines()[0]}") from err


def submit(address: str | None, args: list[str], *,
           working_dir: str | None = ".") -> tuple[JobSubmissionClient, str]:
    """Submit ``dotsim ARGS`` as a job; returns the client and the job's id at once."""
    if not args:
        raise InputError("nothing to submit: add the dotsim command after --, e.g. "
                         "dotsim submit -- train --epochs 3")
    if any(re.search(r"://[^/@\s]+@", arg) for arg in args):
        # a job's command line is stored on the cluster and shown by `ray job list`
        raise InputError("a URL with user:password in the submitted command would be stored "
                         "on the cluster and shown with the job; give credentials in the "
                         "cluster's environment instead (e.g. MLFLOW_TRACKING_USERNAME/"
                         "PASSWORD)")
    jobs = client(address)
    return jobs, _submit_when_ready(jobs, entrypoint="dotsim " + shlex.join(args),
                                    runtime_env=runtime_env(working_dir))


def runtime_env(working_dir: str | None) -> dict | None:
    """The job's runtime environment: ``working_dir`` uploaded (less EXCLUDES and what its
    .gitignore lists), and the commit it holds, since .git stays here."""
    if not working_dir:
        return None
    ignored = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE") == "1"  # the user's choice
    if Path(working_dir).is_dir() and not (Path(working_dir) / ".gitignore").is_file() \
            and not ignored:
        raise InputError(f"{working_dir} has no .gitignore: the job's upload leaves out what "
                         "that file lists (environments, data, results), so without one it "
                         "would send them all; add one (dotsim's own is a start) or pass "
                         "--working-dir ''")
    return {"working_dir": working_dir, "excludes": EXCLUDES,
            "env_vars": {CODE_VERSION_ENV: code_version()}}


def job_commands(job_id: str, address: str | None) -> str:
    """The lines that say how to follow, inspect and stop a submitted job."""
    where = f" --address {shlex.quote(address)}" if address else ""
    return "\n".join([f"Job {job_id} submitted.",
                      f"  status: dotsim job status {job_id}{where}",
                      f"  logs:   dotsim job logs {job_id}{where}",
                      f"  stop:   dotsim job stop {job_id}{where}"])


def _submit_when_ready(jobs: JobSubmissionClient, *, attempts: int = 30, pause_s: float = 2.0,
                      **job) -> str:
    """submit_job, retried while a just-started cluster has no job agent ready yet (the
    Jobs API answers 500 "No available agent" for the first seconds)."""
    for attempt in range(attempts):
        try:
            return jobs.submit_job(**job)
        except RuntimeError as err:
            if "No available agent" not in str(err) or attempt == attempts - 1:
                raise
            time.sleep(pause_s)
    raise AssertionError("unreachable")


def follow(jobs: JobSubmissionClient, job_id: str) -> JobStatus:
    """Stream the job's logs to stdout; return its final status."""

    async def tail():
        async for chunk in jobs.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    asyncio.run(tail())
    return jobs.get_job_status(job_id)
