"""The shared job runner (``gliclass_dist.run``): run planning on real Delta tables, the summary's fields (the
contract the Airflow checks read), status counting. No Ray or Spark: these are the parts every engine shares."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from gliclass_dist import connectors
from gliclass_dist.run import (
    INPUT_VERSION_PROP,
    RunSummary,
    format_summary,
    input_columns,
    merge_counts,
    model_display_name,
    plan_run,
    status_counts,
)
from gliclass_dist.spec import JobSpec

ROOT = Path(__file__).resolve().parent.parent
CHECKS = ROOT / "infra" / "airflow" / "dags" / "gliclass_airflow" / "checks.py"


def spec_for(tmp_path: Path, *, incremental: bool = False, **inp: object) -> JobSpec:
    return JobSpec.from_dict(
        {
            "name": "t",
            "input": {"format": "delta", "path": str(tmp_path / "in"), "incremental": incremental, **inp},
            "labels": {"labels": ["a", "b"]},
            "model": {"ref": "org/some-model"},
            "sink": {"format": "delta", "path": str(tmp_path / "out")},
        }
    )


def add_input(tmp_path: Path, ids: list[int]) -> None:
    write_deltalake(str(tmp_path / "in"), pa.table({"id": ids, "text": [f"t{i}" for i in ids]}), mode="append")


def land(spec: JobSpec, version: int) -> connectors.CommitResult:
    """Commit one result row under ``(spec.job_key, version)``, as a job's driver would."""
    rows = pa.table({"id": [version], "status": ["ok"]})
    return connectors.commit(spec.sink, rows, app_id=spec.job_key, version=version)


def test_plan_plain_run_skips_a_committed_key(tmp_path: Path) -> None:
    add_input(tmp_path, [1, 2])
    add_input(tmp_path, [3])
    spec = spec_for(tmp_path)
    plan = plan_run(spec)
    assert (plan.skipped, plan.version, plan.input_version, plan.since_version) == (False, 0, 1, None)
    assert plan.commit_key == f"{spec.job_key}@v0"
    assert plan.commit_metadata("m", "t") == {"gliclass.model": "m", "gliclass.job": "t", INPUT_VERSION_PROP: "1"}

    assert land(spec, plan.version).committed
    again = plan_run(spec)
    assert again.skipped and "already committed" in (again.skipped_reason or "")
    assert again.commit_key == plan.commit_key


def test_plan_incremental_run_reads_new_versions_once(tmp_path: Path) -> None:
    add_input(tmp_path, [1])
    add_input(tmp_path, [2])
    spec = spec_for(tmp_path, incremental=True)
    first = plan_run(spec)
    assert (first.skipped, first.version, first.since_version) == (False, 1, None)  # all rows, up to version 1
    land(spec, first.version)

    retried = plan_run(spec)  # a retry after the commit: nothing new
    assert retried.skipped and "no version after 1" in (retried.skipped_reason or "")
    assert retried.commit_key == f"{spec.job_key}@v1"

    add_input(tmp_path, [3])
    second = plan_run(spec)
    assert (second.skipped, second.version, second.input_version, second.since_version) == (False, 2, 2, 1)


def test_plan_of_a_missing_input_table_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "in"))):
        plan_run(spec_for(tmp_path))


def test_summary_json_has_the_fields_airflow_and_the_jobs_read(tmp_path: Path) -> None:
    add_input(tmp_path, [1, 2, 3])
    spec = spec_for(tmp_path)
    plan = plan_run(spec)
    summary = RunSummary.for_run(spec, plan, engine="spark")
    summary.landed(land(spec, plan.version), rows=3, status_counts={"ok": 2, "empty_text": 1}, classify_s=1.5)
    summary.details = {"tasks": 2}
    data = json.loads(json.dumps(summary.finish(0.0).to_dict()))

    required = next(  # the Airflow package must not import gliclass_dist: read its contract from the source
        ast.literal_eval(node.value) for node in ast.parse(CHECKS.read_text()).body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "REQUIRED_SUMMARY_KEYS"
    )
    assert set(required) <= set(data)
    assert data["job_key"] == spec.job_key and data["commit_key"] == f"{spec.job_key}@v0"
    assert data["committed"] is True and data["skipped_reason"] is None and data["table_version"] == 0
    assert (data["rows_in"], data["rows_out"], data["files"], data["input_version"]) == (3, 3, 1, 0)
    assert data["status_counts"] == {"ok": 2, "empty_text": 1}
    assert data["rows_per_s"] == 2.0 and data["classify_s"] == 1.5 and data["elapsed_s"] > 0
    assert (data["sink"], data["model"], data["engine"], data["tasks"]) == (spec.sink.path, "org/some-model", "spark", 2)

    text = format_summary(summary)
    assert f"job {spec.job_key} -> {spec.sink.path}" in text
    assert "rows in: 3  rows out: 3  files: 1" in text and "rows per status: ok=2, empty_text=1" in text
    assert format_summary(data) == text


def test_summary_of_a_skipped_run(tmp_path: Path) -> None:
    add_input(tmp_path, [1])
    spec = spec_for(tmp_path)
    land(spec, 0)
    plan = plan_run(spec)
    data = RunSummary.for_run(spec, plan, engine="ray").finish(0.0).to_dict()
    assert data["committed"] is False and "already committed" in data["skipped_reason"]
    assert (data["rows_in"], data["rows_out"], data["status_counts"], data["table_version"]) == (0, 0, {}, None)
    assert "skipped: job key" in format_summary(data)


def test_rows_in_default_to_rows_out_and_a_zero_time_has_no_rate(tmp_path: Path) -> None:
    add_input(tmp_path, [1])
    spec = spec_for(tmp_path)
    result = connectors.CommitResult(committed=True, key="k@v0", table_version=4, files=2)
    summary = RunSummary.for_run(spec, plan_run(spec), engine="ray")
    summary.landed(result, rows=5, status_counts={"ok": 5}, classify_s=0.0, rows_in=None)
    assert (summary.rows_in, summary.rows_out, summary.rows_per_s, summary.table_version) == (5, 5, 0.0, 4)
    summary.landed(result, rows=5, status_counts={"ok": 5}, classify_s=1.0, rows_in=6)
    assert (summary.rows_in, summary.rows_out) == (6, 5)  # kept as counted: the checks flag the difference


def test_status_counts_and_merge() -> None:
    table = pa.table({"status": ["ok", "empty_text", "ok", "error: x"], "id": [1, 2, 3, 4]})
    assert status_counts(table) == {"ok": 2, "empty_text": 1, "error: x": 1}
    assert status_counts(table.to_batches()[0]) == status_counts(table)
    assert status_counts(table.slice(0, 0)) == {}
    merged = merge_counts([{"ok": 2, "truncated": 1}, {}, {"ok": 3, "empty_text": 1}])
    assert merged == {"empty_text": 1, "ok": 5, "truncated": 1} and list(merged) == sorted(merged)


def test_input_columns_and_display_name(tmp_path: Path) -> None:
    spec = JobSpec.from_dict(
        {
            "input": {"format": "parquet", "path": str(tmp_path), "id_column": "doc", "text_column": "body",
                      "passthrough": ["lang", "doc"]},
            "labels": {"column": "row_labels"},
            "model": {"ref": "org/some-model"},
            "sink": {"format": "parquet", "path": str(tmp_path / "out")},
        }
    )
    assert input_columns(spec) == ["doc", "lang", "body", "row_labels"]
    (tmp_path / "my-model").mkdir()
    assert model_display_name(str(tmp_path / "my-model")) == "my-model"
    assert model_display_name("org/some-model") == "org/some-model"
