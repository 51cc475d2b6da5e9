"""Submit ``jobs/ray_classify.py`` to a Ray cluster through the Ray Jobs API and follow it to the end.

Only ``ray.job_submission.JobSubmissionClient`` is used (an HTTP client of the Ray dashboard), so
the Airflow worker needs ``ray[default]`` but no Ray runtime, no GPU and no model. The submission
id is derived from the DAG run, so a retried Airflow task re-attaches to a job that is still
running, or reuses one that already succeeded, instead of classifying the same data twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import posixpath
import re
import shlex
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from gliclass_airflow.jobspec import SPEC_FILE_NAME, SUMMARY_FILE_NAME

logger = logging.getLogger(__name__)

RAY_JOB_SCRIPT = "ray_classify.py"
SUMMARY_BEGIN = "----- gliclass job summary (json) -----"
SUMMARY_END = "----- end of gliclass job summary -----"
DEFAULT_DASHBOARD_PORT = 8265
ACTIVE = ("PENDING", "RUNNING")


class RayJobFailed(RuntimeError):
    """The Ray job ended in FAILED or STOPPED, or did not finish in time."""


def build_entrypoint(
    python: str,
    jobs_dir: str,
    *,
    script: str = RAY_JOB_SCRIPT,
    spec_file: str = SPEC_FILE_NAME,
    summary_file: str = SUMMARY_FILE_NAME,
) -> str:
    """The shell command the Ray job runs: the job, then its JSON summary between two marker lines.

    Relative paths are relative to the job's working directory (the uploaded run folder).
    """
    job = " ".join(
        [
            shlex.quote(python),
            shlex.quote(posixpath.join(jobs_dir, script)),
            "--spec",
            shlex.quote(spec_file),
            "--summary-json",
            shlex.quote(summary_file),
        ]
    )
    summary = shlex.quote(summary_file)
    return f"{job} && echo {shlex.quote(SUMMARY_BEGIN)} && cat {summary} && echo && echo {shlex.quote(SUMMARY_END)}"


def parse_summary_from_logs(logs: str) -> dict[str, Any] | None:
    """The last JSON summary printed between the marker lines, or None."""
    start = logs.rfind(SUMMARY_BEGIN)
    if start < 0:
        return None
    end = logs.find(SUMMARY_END, start)
    if end < 0:
        return None
    body = logs[start + len(SUMMARY_BEGIN) : end].strip()
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        logger.warning("the job printed a summary that is not JSON: %.500s", body)
        return None
    return value if isinstance(value, dict) else None


def dashboard_url(host: str, port: int | None = None, scheme: str | None = None) -> str:
    """``http://host:8265`` from an Airflow connection's host/port/schema (host may be a full URL)."""
    host = host.strip().rstrip("/")
    if not host:
        raise ValueError("the Ray connection has no host")
    if "://" in host:
        url = host
        if port and not re.search(r":\d+$", host.split("://", 1)[1]):
            url = f"{host}:{port}"
        return url
    return f"{scheme or 'http'}://{host}:{port or DEFAULT_DASHBOARD_PORT}"


def submission_id_for(dag_id: str, run_id: str) -> str:
    """A Ray submission id for one DAG run: stable across task retries, safe in URLs and paths."""
    raw = f"gliclass-{dag_id}-{run_id}"
    return re.sub(r"[^A-Za-z0-9_-]+", "-", raw).strip("-")[:180]


@dataclass
class RayJobOutcome:
    """How a Ray job ended: its id, final status, full logs and the summary parsed from them."""

    submission_id: str
    status: str
    logs: str
    summary: dict[str, Any] | None
    reused: bool = False


def _job_status_or_none(client: Any, submission_id: str) -> str | None:
    try:
        return str(client.get_job_info(submission_id).status)
    except RuntimeError as exc:  # the SDK raises RuntimeError for HTTP errors
        if "404" in str(exc) or "does not exist" in str(exc):
            return None
        raise


def _submit_or_attach(
    client: Any, base_id: str, submit: Callable[[str], None], max_attempts: int = 50
) -> tuple[str, bool]:
    """Attach to a running or succeeded job of this run, else submit under the first unused id."""
    for attempt in range(max_attempts):
        sid = base_id if attempt == 0 else f"{base_id}-r{attempt}"
        status = _job_status_or_none(client, sid)
        if status is None:
            submit(sid)
            logger.info("submitted Ray job %s", sid)
            return sid, False
        if status in ACTIVE:
            logger.info("Ray job %s of this run is already %s: attaching to it", sid, status)
            return sid, True
        if status == "SUCCEEDED":
            logger.info("Ray job %s of this run already SUCCEEDED: reusing its result", sid)
            return sid, True
        logger.info("an earlier Ray job %s of this run ended %s: submitting a new one", sid, status)
    raise RayJobFailed(f"{max_attempts} earlier Ray jobs of this run failed; giving up")


async def _tail(client: Any, submission_id: str, emit: Callable[[str], None]) -> None:
    pending = ""
    async for chunk in client.tail_job_logs(submission_id):
        pending += chunk
        *lines, pending = pending.split("\n")
        for line in lines:
            emit(line)
    if pending:
        emit(pending)


def _follow(client: Any, submission_id: str, deadline: float, poll_s: float, emit: Callable[[str], None]) -> bool:
    """Stream the job's logs until it ends; False when the deadline passed first."""
    remaining = deadline - time.monotonic()
    if remaining > 0:
        try:
            with ThreadPoolExecutor(1) as pool:  # own event loop, whatever the caller runs in
                pool.submit(asyncio.run, asyncio.wait_for(_tail(client, submission_id, emit), remaining)).result()
        except TimeoutError:
            return False
        except Exception as exc:  # a dropped log stream must not lose track of the job
            logger.warning("log streaming of %s stopped (%s); polling the job status instead", submission_id, exc)
    while time.monotonic() < deadline:
        if str(client.get_job_status(submission_id)) not in ACTIVE:
            return True
        time.sleep(poll_s)
    return str(client.get_job_status(submission_id)) not in ACTIVE


def run_ray_job(
    client: Any,
    *,
    entrypoint: str,
    submission_id: str,
    runtime_env: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
    entrypoint_num_cpus: float | None = None,
    timeout_s: float = 6 * 3600,
    poll_s: float = 5.0,
    submit_retry_s: float = 300.0,
    emit: Callable[[str], None] | None = None,
) -> RayJobOutcome:
    """Submit (or re-attach to) the job, stream its logs, wait at most ``timeout_s``, return its outcome.

    Raises ``RayJobFailed`` when the job fails, is stopped, or times out (it is stopped then). A
    cluster not yet ready to take jobs is retried for ``submit_retry_s``.
    """
    emit = emit or (lambda line: logger.info("[ray job] %s", line))

    def submit(sid: str) -> None:
        # A cluster that has just started answers "No available agent to submit job, please try
        # again later" until its job agent registers: retry that for a while, nothing else.
        give_up = time.monotonic() + submit_retry_s
        while True:
            try:
                client.submit_job(
                    entrypoint=entrypoint,
                    submission_id=sid,
                    runtime_env=dict(runtime_env or {}),
                    metadata=dict(metadata or {}),
                    entrypoint_num_cpus=entrypoint_num_cpus,
                    entrypoint_num_gpus=0,  # the driver only plans; the model runs in GPU actors
                )
                return
            except RuntimeError as exc:
                if "try again later" not in str(exc) or time.monotonic() > give_up:
                    raise
                logger.info("the Ray cluster is not ready to take jobs yet (%s); retrying", exc)
                time.sleep(poll_s)

    sid, reused = _submit_or_attach(client, submission_id, submit)
    deadline = time.monotonic() + timeout_s
    if not _follow(client, sid, deadline, poll_s, emit):
        logger.error("Ray job %s did not finish within %.0f s: stopping it", sid, timeout_s)
        client.stop_job(sid)
        raise RayJobFailed(f"Ray job {sid} did not finish within {timeout_s:.0f} s and was stopped")
    info = client.get_job_info(sid)
    status = str(info.status)
    logs = client.get_job_logs(sid)
    if status != "SUCCEEDED":
        tail = "\n".join(logs.splitlines()[-40:])
        raise RayJobFailed(f"Ray job {sid} ended {status}: {info.message}\n--- last log lines ---\n{tail}")
    return RayJobOutcome(sid, status, logs, parse_summary_from_logs(logs), reused)
