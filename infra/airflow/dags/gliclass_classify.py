"""
### gliclass_classify

Scheduled GLiClass classification of a table into a lakehouse sink, on Ray or on Spark.

1. **prepare_spec** loads the job spec (the same YAML the jobs take: inline param `spec`, a file
   `spec_path`, or the Variable `gliclass_spec_path`), applies `overrides` (`key.path=value`, the
   jobs' `--set`) and writes it to a run folder.
2. **check_for_new_data** skips the run when a Delta input has no version newer than the one the
   last successful run saw (kept in an Airflow Variable). Other inputs always run.
3. **choose_engine** follows the param `engine`:
   - **submit_ray_job** submits `jobs/ray_classify.py` with the Ray Jobs API to the cluster named
     by the connection `ray_conn_id` (or the Variable `gliclass_ray_address`), uploads the run
     folder as the job's working directory, streams the job's logs and waits up to
     `ray_job_timeout_s`;
   - **submit_spark_job** runs `jobs/spark_classify.py` with `spark-submit` (connection
     `spark_default`); `run_root` must then be a folder the Spark driver can read and write.
4. **validate_result** fails the run unless rows out = rows in, the per-status counts add up, the
   share of bad statuses (`error: ...` and any in `bad_statuses`) is at most `max_bad_ratio`, and
   (Delta sink) the rows the run's commit added match the summary.
5. **record_progress** stores the input version that this run covered.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import BaseHook, Param, TriggerRule, Variable, dag, get_current_context, task

_DAGS_DIR = str(Path(__file__).resolve().parent)
if _DAGS_DIR not in sys.path:  # the bundle folder is on sys.path in Airflow; make sure for other loaders
    sys.path.append(_DAGS_DIR)

from gliclass_airflow import checks, jobspec, ray_jobs  # noqa: E402

logger = logging.getLogger(__name__)

DAG_ID = "gliclass_classify"
SPARK_CONN_ID = "spark_default"
SPARK_JOB_SCRIPT = "spark_classify.py"
IMAGE_JOBS_DIR = "/opt/gliclass-dist/jobs"  # where the container image puts jobs/ (infra/docker/Dockerfile)

PARAMS = {
    "engine": Param("ray", enum=["ray", "spark"], description="run the job on Ray (Jobs API) or Spark"),
    "spec": Param(None, type=["object", "null"], description="the job spec inline (as in job.yaml)"),
    "spec_path": Param("", type="string", description="a job spec YAML readable by the Airflow worker"),
    "overrides": Param([], type="array", description="key.path=value overrides, as the jobs' --set"),
    "ray_conn_id": Param("ray_default", type="string", description="connection to the Ray dashboard"),
    "python": Param("python", type="string", description="python on the Ray cluster that runs the job"),
    "jobs_dir": Param(IMAGE_JOBS_DIR, type="string", description="folder holding jobs/*.py on the cluster"),
    "runtime_env": Param({}, type="object", description="extra Ray runtime_env (env_vars, pip, ...)"),
    "ray_job_timeout_s": Param(6 * 3600, type="integer", minimum=60, description="stop the Ray job after this"),
    "spark_conf": Param({}, type="object", description="extra spark-submit --conf settings"),
    "run_root": Param(
        os.path.join(tempfile.gettempdir(), "gliclass-airflow"),
        type="string",
        description="folder for run folders (rendered spec, Spark summary); shared with Spark drivers",
    ),
    "max_bad_ratio": Param(0.01, type="number", minimum=0, maximum=1, description="allowed share of bad rows"),
    "bad_statuses": Param([], type="array", description="statuses counted as bad besides error: ..."),
    "skip_without_new_data": Param(True, type="boolean", description="skip when a Delta input has no new version"),
}


def _params() -> dict[str, Any]:
    return dict(get_current_context()["params"])


def ray_dashboard_address(conn_id: str) -> tuple[str, dict[str, str]]:
    """The Ray dashboard URL and HTTP headers: connection ``conn_id``, else Variable, else RAY_ADDRESS."""
    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception:  # not defined: fall back below
        conn = None
    if conn is not None and conn.host:
        headers = dict((conn.extra_dejson or {}).get("headers", {}))
        if conn.password:  # a Ray cluster with token authentication
            headers.setdefault("Authorization", f"Bearer {conn.password}")
        return ray_jobs.dashboard_url(conn.host, conn.port, conn.schema or None), headers
    address = Variable.get("gliclass_ray_address", default=None) or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ValueError(
            f"no Ray cluster: define the Airflow connection {conn_id!r} (host and port of the Ray "
            "dashboard), or the Variable 'gliclass_ray_address', or RAY_ADDRESS"
        )
    return ray_jobs.dashboard_url(address), {}


def _drop_stale_summary(context: Any) -> None:
    prepared = context["ti"].xcom_pull(task_ids="prepare_spec")
    Path(prepared["summary_file"]).unlink(missing_ok=True)


@dag(
    dag_id=DAG_ID,
    schedule="@hourly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # runs of one input → sink pair must not overlap
    params=PARAMS,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=2)},
    tags=["gliclass", "classification"],
    doc_md=__doc__,
)
def gliclass_classify() -> None:
    @task
    def prepare_spec() -> dict[str, Any]:
        """Load the spec, apply overrides, write it to this run's folder."""
        params = _params()
        spec_path = params["spec_path"] or (None if params["spec"] else Variable.get("gliclass_spec_path", None))
        spec = jobspec.render_spec(jobspec.load_spec(params["spec"], spec_path), params["overrides"])
        folder = jobspec.write_run_folder(params["run_root"], get_current_context()["run_id"], spec)
        facts = jobspec.spec_facts(spec)
        return {
            "run_dir": str(folder.path),
            "spec_file": str(folder.spec_file),
            "summary_file": str(folder.summary_file),
            "spec": spec,
            "progress_key": facts.progress_key(),
            "spark_conf": {str(k): str(v) for k, v in params["spark_conf"].items()},
        }

    @task.short_circuit
    def check_for_new_data(prepared: dict[str, Any]) -> dict[str, Any] | bool:
        """Delta input: go on only if it has a version the last successful run did not see."""
        facts = jobspec.spec_facts(prepared["spec"])
        if facts.input.format != "delta":
            logger.info("input format %s: no version to compare, running", facts.input.format)
            return {"input_version": None}
        current = checks.delta_version(facts.input)
        if current is None:
            raise FileNotFoundError(f"input Delta table {facts.input.uri} does not exist")
        last = Variable.get(prepared["progress_key"], default=None, deserialize_json=True)
        last_version = last.get("input_version") if isinstance(last, dict) else None
        if not _params()["skip_without_new_data"] or checks.new_input_versions(current, last_version):
            logger.info("input %s at version %s (last processed: %s): running", facts.input.uri, current, last_version)
            return {"input_version": current}
        logger.info("input %s has no version after %s: nothing to do", facts.input.uri, last_version)
        return False

    @task.branch
    def choose_engine() -> str:
        return "submit_ray_job" if _params()["engine"] == "ray" else "submit_spark_job"

    @task(execution_timeout=timedelta(hours=24))
    def submit_ray_job(prepared: dict[str, Any]) -> dict[str, Any]:
        """Submit jobs/ray_classify.py with the Jobs API, follow its logs, return its summary."""
        from ray.job_submission import JobSubmissionClient

        params = _params()
        context = get_current_context()
        address, headers = ray_dashboard_address(params["ray_conn_id"])
        runtime_env = dict(params["runtime_env"])
        if "working_dir" in runtime_env:
            raise ValueError("runtime_env.working_dir is set by the DAG (the run folder with job.yaml)")
        runtime_env["working_dir"] = prepared["run_dir"]
        client = JobSubmissionClient(address, headers=headers or None)
        outcome = ray_jobs.run_ray_job(
            client,
            entrypoint=ray_jobs.build_entrypoint(params["python"], params["jobs_dir"]),
            submission_id=ray_jobs.submission_id_for(context["dag"].dag_id, context["run_id"]),
            runtime_env=runtime_env,
            metadata={"airflow_dag": context["dag"].dag_id, "airflow_run": context["run_id"]},
            timeout_s=params["ray_job_timeout_s"],
        )
        return {"submission_id": outcome.submission_id, "reused": outcome.reused, "summary": outcome.summary}

    @task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS, retries=0)  # a bad result stays bad
    def validate_result(prepared: dict[str, Any]) -> dict[str, Any]:
        """Fail loudly unless the result adds up (see the DAG doc)."""
        params = _params()
        ti = get_current_context()["ti"]
        if params["engine"] == "ray":
            summary = (ti.xcom_pull(task_ids="submit_ray_job") or {}).get("summary")
        else:
            path = Path(prepared["summary_file"])
            summary = json.loads(path.read_text()) if path.is_file() else None
        facts = jobspec.spec_facts(prepared["spec"])
        report = checks.validate_result(
            summary,
            facts.sink,
            max_bad_ratio=float(params["max_bad_ratio"]),
            bad_statuses=params["bad_statuses"],
        )
        return report.as_dict()

    @task
    def record_progress(prepared: dict[str, Any], report: dict[str, Any]) -> None:
        """Remember the input version this run covered, for the next run's new-data check."""
        ti = get_current_context()["ti"]
        seen = ti.xcom_pull(task_ids="check_for_new_data") or {}
        # The version the job itself read, when it reports one (the input may have moved since the check).
        summary = (ti.xcom_pull(task_ids="submit_ray_job") or {}).get("summary") or {}
        input_version = summary.get("input_version", seen.get("input_version"))
        if input_version is None:
            return
        value = {
            "input_version": input_version,
            "table_version": report.get("table_version"),
            "run_id": get_current_context()["run_id"],
        }
        Variable.set(prepared["progress_key"], value, serialize_json=True)
        logger.info("recorded progress %s = %s", prepared["progress_key"], value)

    prepared = prepare_spec()
    submit_spark_job = SparkSubmitOperator(
        task_id="submit_spark_job",
        conn_id=SPARK_CONN_ID,
        application="{{ params.jobs_dir }}/" + SPARK_JOB_SCRIPT,
        application_args=["--spec", prepared["spec_file"], "--summary-json", prepared["summary_file"]],
        conf=prepared["spark_conf"],
        name="gliclass-classify",
        on_execute_callback=_drop_stale_summary,
        execution_timeout=timedelta(hours=24),
    )
    ray_job = submit_ray_job(prepared)
    report = validate_result(prepared)
    check_for_new_data(prepared) >> choose_engine() >> [ray_job, submit_spark_job] >> report
    record_progress(prepared, report)


gliclass_classify()
