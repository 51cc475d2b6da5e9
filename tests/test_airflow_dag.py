"""The Airflow DAG (infra/airflow/dags): it imports cleanly, its checks catch bad results, and a real
``dag.test()`` run submits ``jobs/ray_classify.py`` to a real local Ray head.

Airflow lives in its own virtualenv (``.venv-airflow``, made by ``make test-airflow``) because its
pins clash with the main one; under any other interpreter this module is skipped. The Ray head and
the job run on the main venv's Python (torch, gliclass_dist), as they would on a real cluster whose
image differs from the Airflow worker's. Airflow's state lives in a temporary AIRFLOW_HOME (SQLite).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

if importlib.util.find_spec("airflow") is None:
    pytest.skip(
        "Airflow is not installed here: these tests run under .venv-airflow (make test-airflow)",
        allow_module_level=True,
    )

REPO = Path(__file__).resolve().parents[1]
DAGS_DIR = REPO / "infra" / "airflow" / "dags"
MAIN_PYTHON = Path(os.environ.get("GLICLASS_MAIN_PYTHON", REPO / ".venv" / "bin" / "python"))
DAG_ID = "gliclass_classify"

# Airflow reads its configuration when first imported: point it at a throwaway home first.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="airflow-home-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "HF_HUB_OFFLINE": "1",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "disabled",
    }
)
if str(DAGS_DIR) not in sys.path:
    sys.path.insert(0, str(DAGS_DIR))

import pyarrow as pa  # noqa: E402
from airflow.sdk import TriggerRule  # noqa: E402
from cluster_helpers import RayHead  # noqa: E402
from deltalake import DeltaTable, write_deltalake  # noqa: E402
from gliclass_airflow import checks, jobspec, ray_jobs  # noqa: E402

# --------------------------------------------------------------------------- DAG parsing


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_DIR))


def test_dagbag_imports_without_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert DAG_ID in dagbag.dags
    dag = dagbag.dags[DAG_ID]
    assert set(dag.task_ids) == {
        "prepare_spec",
        "check_for_new_data",
        "choose_engine",
        "submit_ray_job",
        "submit_spark_job",
        "validate_result",
        "record_progress",
    }
    assert dag.max_active_runs == 1
    assert dag.params["engine"] == "ray"
    validate = dag.get_task("validate_result")
    assert validate.upstream_task_ids == {"prepare_spec", "submit_ray_job", "submit_spark_job"}
    assert validate.trigger_rule == TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS
    spark = dag.get_task("submit_spark_job")
    assert spark.application.endswith("/spark_classify.py")
    assert "prepare_spec" in spark.upstream_task_ids  # the rendered spec travels by XCom


# --------------------------------------------------------------------------- the checks on their own


GOOD = {"rows_in": 10, "rows_out": 10, "status_counts": {"ok": 8, "empty_text": 1, "error: boom": 1}}


def test_check_summary_accepts_a_sound_result() -> None:
    report = checks.check_summary(GOOD, max_bad_ratio=0.1)
    assert report.problems == []
    assert report.bad_rows == 1 and report.bad_ratio == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("summary", "max_bad_ratio", "bad_statuses", "message"),
    [
        ({**GOOD, "rows_out": 9, "status_counts": {"ok": 9}}, 1.0, (), "rows were lost"),
        ({**GOOD, "rows_out": 11, "status_counts": {"ok": 11}}, 1.0, (), "rows were duplicated"),
        ({**GOOD, "status_counts": {"ok": 3}}, 1.0, (), "add up to 3"),
        (GOOD, 0.05, (), "above the allowed 5.00%"),
        (GOOD, 0.1, ("empty_text",), "2 of 10 rows"),
        ({"rows_in": 3}, 1.0, (), "lacks ['rows_out', 'status_counts']"),
        (None, 1.0, (), "left no summary"),
    ],
)
def test_check_summary_rejects_a_bad_result(summary, max_bad_ratio, bad_statuses, message) -> None:
    sink = jobspec.TableRef(format="parquet", path="/nowhere")
    with pytest.raises(checks.ResultInvalid, match=message.replace("[", r"\[").replace("]", r"\]")):
        checks.validate_result(summary, sink, max_bad_ratio=max_bad_ratio, bad_statuses=bad_statuses)


def _status_table(statuses: list[str], start: int = 0) -> pa.Table:
    return pa.table({"id": list(range(start, start + len(statuses))), "status": statuses})


def test_delta_check_compares_the_commit_with_the_summary(tmp_path: Path) -> None:
    uri = str(tmp_path / "sink")
    write_deltalake(uri, _status_table(["ok"] * 5))
    write_deltalake(uri, _status_table(["ok", "ok", "error: x"], start=5), mode="append")
    sink = jobspec.TableRef(format="delta", path=uri)
    summary = {"rows_in": 3, "rows_out": 3, "status_counts": {"ok": 2, "error: x": 1}, "table_version": 1}
    report = checks.validate_result(summary, sink, max_bad_ratio=0.5)
    assert report.table_checked and report.rows_out == 3

    # The summary claims statuses the commit does not hold.
    lying = {**summary, "status_counts": {"ok": 3}}
    with pytest.raises(checks.ResultInvalid, match="holds statuses"):
        checks.validate_result(lying, sink, max_bad_ratio=0.5)
    # The summary names the wrong commit (version 0 added 5 rows).
    with pytest.raises(checks.ResultInvalid, match="added 5 rows"):
        checks.validate_result({**summary, "table_version": 0}, sink, max_bad_ratio=0.5)
    # A version the table never reached.
    with pytest.raises(checks.ResultInvalid, match="before the job's 7"):
        checks.validate_result({**summary, "table_version": 7}, sink, max_bad_ratio=0.5)
    # An idempotent re-run that committed nothing is fine.
    assert not checks.validate_result({**summary, "committed": False}, sink, max_bad_ratio=0.5).table_checked


def test_new_data_check() -> None:
    assert checks.new_input_versions(3, None)
    assert checks.new_input_versions(4, 3)
    assert not checks.new_input_versions(3, 3)
    assert not checks.new_input_versions(None, None)


def test_spec_rendering_and_overrides(tmp_path: Path) -> None:
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(
        "name: news\ninput: {format: delta, path: /in}\nlabels: {labels: [a, b]}\n"
        "model: {ref: /m}\nsink: {format: delta, path: /out}\n"
    )
    spec = jobspec.render_spec(
        jobspec.load_spec(None, str(spec_file)), ["sink.path=/elsewhere", "resources.max_actors=4", "input.incremental=true"]
    )
    assert spec["sink"]["path"] == "/elsewhere" and spec["resources"]["max_actors"] == 4
    facts = jobspec.spec_facts(spec)
    assert facts.incremental and facts.input.format == "delta" and facts.sink.uri == "/elsewhere"
    # the key names the input -> sink pair: resources do not change it, another sink does
    key = facts.progress_key()
    assert jobspec.spec_facts({**spec, "resources": {"max_actors": 8}}).progress_key() == key
    assert jobspec.spec_facts({**spec, "sink": {**spec["sink"], "path": "/other"}}).progress_key() != key
    with pytest.raises(jobspec.SpecProblem, match="not both"):
        jobspec.load_spec(spec, str(spec_file))
    with pytest.raises(jobspec.SpecProblem, match="does not exist"):
        jobspec.load_spec(None, str(tmp_path / "missing.yaml"))
    with pytest.raises(jobspec.SpecProblem, match="key.path=value"):
        jobspec.render_spec(spec, ["no-equals-sign"])
    folder = jobspec.write_run_folder(tmp_path / "runs", "manual__2026-01-01T00:00:00+00:00", spec)
    assert folder.spec_file.name == "job.yaml" and ":" not in folder.path.name


def test_ray_job_helpers() -> None:
    entrypoint = ray_jobs.build_entrypoint("/venv/bin/python", "/opt/gliclass-dist/jobs")
    assert entrypoint.startswith("/venv/bin/python /opt/gliclass-dist/jobs/ray_classify.py --spec job.yaml ")
    assert "--summary-json summary.json" in entrypoint
    logs = f"noise\n{ray_jobs.SUMMARY_BEGIN}\n{json.dumps(GOOD, indent=2)}\n\n{ray_jobs.SUMMARY_END}\n"
    assert ray_jobs.parse_summary_from_logs(logs) == GOOD
    assert ray_jobs.parse_summary_from_logs("no summary here") is None
    assert ray_jobs.dashboard_url("ray-head") == "http://ray-head:8265"
    assert ray_jobs.dashboard_url("https://ray.example", 443) == "https://ray.example:443"
    assert ray_jobs.dashboard_url("http://10.0.0.1:8265", 9999) == "http://10.0.0.1:8265"
    sid = ray_jobs.submission_id_for("gliclass_classify", "manual__2026-01-01T00:00:00+00:00")
    assert sid == "gliclass-gliclass_classify-manual__2026-01-01T00-00-00-00-00"  # stable across processes
    assert ray_jobs.submission_id_for("gliclass_classify", "manual__2026-01-02T00:00:00+00:00") != sid
    assert all(c.isalnum() or c in "-_" for c in sid)


# --------------------------------------------------------------------------- a real run


@dataclass
class LiveStack:
    dashboard: str  # http://127.0.0.1:PORT of the Ray head
    checkpoint: Path  # a tiny real GLiClass checkpoint


@pytest.fixture(scope="module")
def live_stack(tmp_path_factory: pytest.TempPathFactory):
    """A real Ray head (``ray start --head --block`` from the main venv, on 127.0.0.1), a tiny checkpoint
    built by the main venv (the Airflow venv has no torch) and a migrated Airflow DB, started side by side."""
    head = RayHead.start(MAIN_PYTHON.parent / "ray", Path(tempfile.mkdtemp(prefix="rayaf-", dir="/tmp")))
    try:
        checkpoint = tmp_path_factory.mktemp("tiny-bert")
        code = "import sys; from gliclass_dist.model.tiny import build_tiny_checkpoint; build_tiny_checkpoint(sys.argv[1])"
        builder = subprocess.Popen([str(MAIN_PYTHON), "-c", code, str(checkpoint)])
        migrate = subprocess.Popen(
            [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        assert builder.wait(timeout=300) == 0, "building the tiny checkpoint failed"
        _, err = migrate.communicate(timeout=300)
        assert migrate.returncode == 0, f"airflow db migrate failed: {err[-2000:]}"
        head.wait_ready()
        yield LiveStack(head.address, checkpoint)
    finally:
        head.stop()


def _texts(n: int, start: int = 0) -> pa.Table:
    topics = ["the match ended in a late goal", "shares fell after the earnings call", "a new phone was released"]
    return pa.table(
        {"id": pa.array(range(start, start + n), pa.int64()), "text": [topics[i % 3] + f" #{i}" for i in range(n)]}
    )


def _run_dag(dag, conf: dict) -> tuple[str, dict[str, str]]:
    """One ``dag.test()`` run: the run's state and each task's state."""
    from airflow import settings
    from airflow.models.taskinstance import TaskInstance

    dag_run = dag.test(run_conf=conf)
    session = settings.Session()
    tis = session.query(TaskInstance).filter(TaskInstance.dag_id == dag.dag_id, TaskInstance.run_id == dag_run.run_id)
    return _value(dag_run.state), {ti.task_id: _value(ti.state) for ti in tis}


def _value(state) -> str | None:
    return getattr(state, "value", state)


def _variable(key: str):
    from airflow.models.variable import Variable

    value = Variable.get(key, default_var=None)
    return json.loads(value) if value else None


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ray_dag_end_to_end(live_stack: LiveStack, dagbag, tmp_path: Path, monkeypatch) -> None:
    """Three scheduled runs against a real Ray head: classify, skip (no new data), fail validation."""
    if not (REPO / "jobs" / "ray_classify.py").is_file():
        pytest.fail("jobs/ray_classify.py does not exist: the DAG has nothing to submit")
    input_uri, sink_uri = str(tmp_path / "input"), str(tmp_path / "sink")
    write_deltalake(input_uri, _texts(12))
    spec = {
        "name": "airflow-test",
        "input": {"format": "delta", "path": input_uri, "incremental": True},
        "labels": {"labels": ["sports", "business", "technology"]},
        "model": {"ref": str(live_stack.checkpoint), "device": "cpu"},
        "sink": {"format": "delta", "path": sink_uri},
        "resources": {"batch_rows": 8},
    }
    monkeypatch.setenv(
        "AIRFLOW_CONN_RAY_DEFAULT",
        json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": int(live_stack.dashboard.rsplit(":", 1)[1])}),
    )
    conf = {
        "engine": "ray",
        "spec": spec,
        "python": str(MAIN_PYTHON),
        "jobs_dir": str(REPO / "jobs"),
        "run_root": str(tmp_path / "runs"),
        "runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}},
        "ray_job_timeout_s": 600,
        "max_bad_ratio": 0.0,
    }
    dag = dagbag.dags[DAG_ID]
    for task in dag.tasks:  # a failure here is final: no 2-minute retry waits inside the test
        monkeypatch.setattr(task, "retries", 0)  # the DAG bag is shared by the module: restored after
    progress_key = jobspec.spec_facts(spec).progress_key()

    # 1. New input: the job runs on Ray, the result validates, progress is recorded.
    state, tis = _run_dag(dag, conf)
    assert tis["submit_ray_job"] == "success", tis
    assert tis["submit_spark_job"] == "skipped"
    assert tis["validate_result"] == "success" and tis["record_progress"] == "success", tis
    assert state == "success"
    assert DeltaTable(sink_uri).to_pyarrow_table().num_rows == 12
    assert _variable(progress_key)["input_version"] == 0

    # 2. No new input version: the run stops at the new-data check and submits nothing.
    sink_version = DeltaTable(sink_uri).version()
    state, tis = _run_dag(dag, conf)
    assert tis["check_for_new_data"] == "success"
    assert tis["submit_ray_job"] == "skipped" and tis["validate_result"] == "skipped", tis
    assert state == "success"
    assert DeltaTable(sink_uri).version() == sink_version

    # 3. A crafted bad result: the new rows are empty texts and this run counts `empty_text` as bad.
    empty = pa.table({"id": pa.array(range(100, 104), pa.int64()), "text": ["", "   ", "", " "]})
    write_deltalake(input_uri, empty, mode="append")
    state, tis = _run_dag(dag, {**conf, "bad_statuses": ["empty_text"]})
    assert tis["submit_ray_job"] == "success", tis
    assert tis["validate_result"] == "failed", tis
    assert tis["record_progress"] == "upstream_failed"
    assert state == "failed"
    assert _variable(progress_key)["input_version"] == 0  # the failed run did not advance progress
    # The job itself worked (it landed the 4 new rows, as empty_text): validation is what failed.
    statuses = DeltaTable(sink_uri).to_pyarrow_table(columns=["status"])["status"].to_pylist()
    assert len(statuses) == 16 and statuses.count("empty_text") == 4


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_spark_branch_end_to_end(live_stack: LiveStack, dagbag, tmp_path: Path, monkeypatch) -> None:
    """engine=spark: SparkSubmitOperator runs jobs/spark_classify.py (local[2]) on the rendered spec."""
    if not (REPO / "jobs" / "spark_classify.py").is_file():
        pytest.fail("jobs/spark_classify.py does not exist: the DAG has nothing to submit")
    import pyarrow.parquet as pq

    (tmp_path / "input").mkdir()
    pq.write_table(_texts(9), tmp_path / "input" / "part-0.parquet")
    spec = {
        "name": "airflow-spark-test",
        "input": {"format": "parquet", "path": str(tmp_path / "input")},
        "labels": {"labels": ["sports", "business", "technology"]},
        "model": {"ref": str(live_stack.checkpoint), "device": "cpu"},
        "sink": {"format": "delta", "path": str(tmp_path / "sink")},
    }
    # spark-submit from the main venv (pyspark's own), driver and workers on its Python.
    monkeypatch.setenv("AIRFLOW_CONN_SPARK_DEFAULT", json.dumps({"conn_type": "spark", "host": "local[2]"}))
    monkeypatch.setenv("PATH", f"{MAIN_PYTHON.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("PYSPARK_PYTHON", str(MAIN_PYTHON))
    monkeypatch.setenv("PYSPARK_DRIVER_PYTHON", str(MAIN_PYTHON))
    monkeypatch.setenv("SPARK_LOCAL_IP", "127.0.0.1")
    conf = {
        "engine": "spark",
        "spec": spec,
        "jobs_dir": str(REPO / "jobs"),
        "run_root": str(tmp_path / "runs"),
        "spark_conf": {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1", "spark.ui.enabled": "false"},
        "max_bad_ratio": 0.0,
    }
    dag = dagbag.dags[DAG_ID]
    for task in dag.tasks:
        monkeypatch.setattr(task, "retries", 0)
    state, tis = _run_dag(dag, conf)
    assert tis["submit_ray_job"] == "skipped"
    assert tis["submit_spark_job"] == "success", tis
    assert tis["validate_result"] == "success", tis
    assert state == "success"
    assert DeltaTable(str(tmp_path / "sink")).to_pyarrow_table().num_rows == 9
    summary = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
    assert summary["rows_out"] == 9
