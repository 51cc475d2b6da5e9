"""Reliability of the sinks under concurrent writers (issue #13), on real Parquet / Delta / Iceberg tables.

Interleavings are forced by ordering the calls (stage, another commit, then commit), or by a hook on the
connector's own ``open_table`` that lets a second writer commit at a chosen point: never by sleeping.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from gliclass_dist.connectors import delta, iceberg

from gliclass_dist import connectors as conn
from gliclass_dist.schema import SCORE_TYPE, output_schema
from gliclass_dist.spec import InputSpec, SinkSpec

OUT_SCHEMA = output_schema(pa.schema([("id", pa.int64()), ("text", pa.string())]), ["id"])


def results(first_id: int, n: int) -> pa.Table:
    """``n`` classified rows in the output schema with ids ``first_id..``."""
    return pa.table(
        {
            "id": list(range(first_id, first_id + n)),
            "labels": [["billing"]] * n,
            "scores": pa.array([[{"label": "billing", "score": 0.9}]] * n, pa.list_(SCORE_TYPE)),
            "top_label": ["billing"] * n,
            "top_score": pa.array([0.9] * n, pa.float32()),
            "status": ["ok"] * n,
            "model": ["tiny"] * n,
            "label_set": ["topics@1"] * n,
        },
        schema=OUT_SCHEMA,
    )


def ids(sink: SinkSpec) -> list[int]:
    spec = InputSpec(format=sink.format, path=sink.path, table=sink.table, catalog=sink.catalog)
    return sorted(conn.read_source(spec).read_all()["id"].to_pylist())


# ---------------------------------------------------------------------------------------------- parquet


@pytest.fixture
def parquet_sinks(tmp_path: Path) -> tuple[SinkSpec, SinkSpec]:
    append = SinkSpec(format="parquet", path=str(tmp_path / "out"))
    return append, append.model_copy(update={"mode": "overwrite"})


def test_parquet_overwrite_keeps_an_append_that_commits_after_it_began(parquet_sinks):
    append, overwrite = parquet_sinks
    conn.commit(append, results(0, 2), app_id="before", version=0)
    staged = conn.stage_files(overwrite, results(100, 3))  # the overwrite job begins (stages its files)
    assert conn.commit(append, results(200, 4), app_id="during", version=0).committed
    result = conn.commit_files(overwrite, staged, app_id="replace", version=0, schema=OUT_SCHEMA)
    assert result.committed and result.rows == 3
    assert ids(append) == [100, 101, 102, 200, 201, 202, 203]  # "before" removed, "during" kept
    for app_id in ("before", "during", "replace"):  # every key stays committed
        assert conn.last_committed(append, app_id) == 0
        assert not conn.commit(append, results(900, 1), app_id=app_id, version=0).committed
    assert ids(append) == [100, 101, 102, 200, 201, 202, 203]


def test_parquet_overwrite_removes_an_append_completed_before_it_began(parquet_sinks):
    append, overwrite = parquet_sinks
    conn.commit(append, results(0, 2), app_id="first", version=0)
    conn.commit(append, results(10, 2), app_id="second", version=0)
    staged = conn.stage_files(overwrite, results(100, 3))
    conn.commit_files(overwrite, staged, app_id="replace", version=0, schema=OUT_SCHEMA)
    assert ids(append) == [100, 101, 102]


def test_parquet_overwrite_began_at_its_first_staging_call(parquet_sinks):
    """Workers stage at different times; the job began when the FIRST of them did."""
    append, overwrite = parquet_sinks
    conn.commit(append, results(0, 2), app_id="before", version=0)
    early = conn.stage_files(overwrite, results(100, 1))
    conn.commit(append, results(200, 1), app_id="during", version=0)
    late = conn.stage_files(overwrite, results(101, 1))  # a later worker sees "during" committed
    conn.commit_files(overwrite, early + late, app_id="replace", version=0, schema=OUT_SCHEMA)
    assert ids(append) == [100, 101, 200]
    # A later overwrite (begun after all of them) replaces everything, "during" included.
    again = conn.commit(overwrite, results(300, 1), app_id="replace", version=1)
    assert again.committed and ids(append) == [300]


def test_parquet_overwrite_without_files_began_at_its_commit(parquet_sinks):
    append, overwrite = parquet_sinks
    conn.commit(append, results(0, 2), app_id="before", version=0)
    result = conn.commit_files(overwrite, [], app_id="empty", version=0, schema=OUT_SCHEMA)
    assert result.committed and result.rows == 0
    assert not list(Path(append.path).rglob("*.parquet"))
    marker = json.loads((Path(append.path) / "empty-v0" / "_COMMITTED").read_text())
    assert marker["replaces"] == ["before-v0"]


# ---------------------------------------------------------------------------------------------- delta


def delta_version_holding(path: str, app_id: str, version: int) -> list[int]:
    """Versions whose commit file in ``_delta_log`` carries the app transaction ``(app_id, version)``."""
    found = []
    for entry in sorted((Path(path) / "_delta_log").glob("*.json")):
        for line in entry.read_text().splitlines():
            txn = json.loads(line).get("txn")
            if txn and txn["appId"] == app_id and txn["version"] == version:
                found.append(int(entry.stem))
    return found


@pytest.mark.parametrize("other_commits", ["before", "after"])
def test_delta_reports_its_own_version_when_another_writer_commits_meanwhile(tmp_path, monkeypatch, other_commits):
    """Another writer commits right after this job loaded the table to commit on it ("before": delta-rs
    puts this job's commit after the other one) or right after this job's commit ("after")."""
    sink = SinkSpec(format="delta", path=str(tmp_path / "out"))
    conn.commit(sink, results(0, 1), app_id="seed", version=0)
    staged = conn.stage_files(sink, results(10, 2))
    real_open = delta.open_table
    other: list[int] = []

    def other_writer_commits() -> None:
        write_deltalake(sink.path, results(100, 1), mode="append")
        other.append(DeltaTable(sink.path).version())

    def open_then_other_writer_commits(path, storage_options=None, version=None):
        table = real_open(path, storage_options, version)
        ours_in = DeltaTable(path).transaction_version("job") == 5
        if not other and ours_in == (other_commits == "after"):
            other_writer_commits()
        return table

    monkeypatch.setattr(delta, "open_table", open_then_other_writer_commits)
    result = conn.commit_files(sink, staged, app_id="job", version=5, schema=OUT_SCHEMA)
    monkeypatch.undo()
    if not other:  # the connector did not look at the table again: the other writer commits after it
        other_writer_commits()
    ours = 2 if other_commits == "before" else 1
    assert result.committed
    assert delta_version_holding(sink.path, "job", 5) == [ours]
    assert result.table_version == ours and other == [3 - ours]
    assert ids(sink) == [0, 10, 11, 100]


def test_delta_reports_version_zero_when_its_commit_created_the_table(tmp_path):
    sink = SinkSpec(format="delta", path=str(tmp_path / "out"))
    staged = conn.stage_files(sink, results(0, 2))
    result = conn.commit_files(sink, staged, app_id="job", version=0, schema=OUT_SCHEMA)
    write_deltalake(sink.path, results(100, 1), mode="append")
    assert result.table_version == 0 == delta_version_holding(sink.path, "job", 0)[0]


# ---------------------------------------------------------------------------------------------- iceberg


def test_iceberg_reports_its_own_snapshot_when_another_writer_commits_meanwhile(tmp_path, monkeypatch):
    catalog = {"type": "sql", "uri": f"sqlite:///{tmp_path}/catalog.db", "warehouse": f"file://{tmp_path}/wh"}
    sink = SinkSpec(format="iceberg", table="gliclass.results", catalog=catalog)
    conn.commit(sink, results(0, 1), app_id="seed", version=0)
    staged = conn.stage_files(sink, results(10, 2))
    real_open = iceberg.open_table
    other: list[int] = []

    def other_writer_commits() -> None:
        table = real_open(sink)
        table.append(results(100, 1))
        other.append(real_open(sink).current_snapshot().snapshot_id)

    def open_then_other_writer_commits(spec):
        table = real_open(spec)
        if not other and table is not None and iceberg.committed_version(table, "job") == 5:
            other_writer_commits()
        return table

    monkeypatch.setattr(iceberg, "open_table", open_then_other_writer_commits)
    result = conn.commit_files(sink, staged, app_id="job", version=5, schema=OUT_SCHEMA)
    monkeypatch.undo()
    if not other:
        other_writer_commits()
    snapshots = real_open(sink).snapshots()
    ours = [s.snapshot_id for s in snapshots if (s.summary or {}).get("gliclass.app_id") == "job"]
    assert result.committed and len(ours) == 1
    assert result.table_version == ours[0] != other[0]
    assert ids(sink) == [0, 10, 11, 100]
