"""Lakehouse connectors on real Delta / Iceberg (SQLite catalog) / Parquet tables in tmp dirs."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

from gliclass_dist import connectors as conn
from gliclass_dist.schema import SCORE_TYPE, output_schema
from gliclass_dist.spec import InputSpec, SinkSpec

FORMATS = ["delta", "iceberg", "parquet"]
INPUT_SCHEMA = pa.schema([("id", pa.int64()), ("text", pa.string())])
OUT_SCHEMA = output_schema(INPUT_SCHEMA, ["id"])


def results(first_id: int, n: int, label: str | None = "billing") -> pa.Table:
    """``n`` rows in the output schema with ids ``first_id..``."""
    ids = list(range(first_id, first_id + n))
    return pa.table(
        {
            "id": ids,
            "labels": [[label]] * n,
            "scores": pa.array(
                [[{"label": label, "score": 0.9}, {"label": "other", "score": 0.1}]] * n, pa.list_(SCORE_TYPE)
            ),
            "top_label": [label] * n,
            "top_score": pa.array([0.9] * n, pa.float32()),
            "status": ["ok"] * n,
            "model": ["tiny"] * n,
            "label_set": ["topics@1"] * n,
        },
        schema=OUT_SCHEMA,
    )


def make_sink(fmt: str, root: Path, **kw) -> SinkSpec:
    if fmt == "iceberg":
        catalog = {
            "type": "sql",
            "uri": f"sqlite:///{root}/catalog.db",
            "warehouse": f"file://{root}/warehouse",
        }
        return SinkSpec(format="iceberg", table="gliclass.results", catalog=catalog, **kw)
    return SinkSpec(format=fmt, path=str(root / f"{fmt}_sink"), **kw)


def as_input(sink: SinkSpec, **kw) -> InputSpec:
    return InputSpec(format=sink.format, path=sink.path, table=sink.table, catalog=sink.catalog, **kw)


def read_back(sink: SinkSpec) -> pa.Table:
    return conn.read_source(as_input(sink)).read_all().sort_by("id")


def table_state(sink: SinkSpec):
    """Something that changes with every commit: Delta version, Iceberg snapshot ids, parquet run folders."""
    if sink.format == "delta":
        return DeltaTable(sink.path).version()
    if sink.format == "iceberg":
        from gliclass_dist.connectors.iceberg import open_table

        return [s.snapshot_id for s in open_table(sink).snapshots()]
    return sorted(p.name for p in Path(sink.path).iterdir())


def data_files(sink: SinkSpec) -> list[int]:
    """Row counts of the data files currently in the table."""
    if sink.format == "delta":
        return pa.table(DeltaTable(sink.path).get_add_actions()).column("num_records").to_pylist()
    if sink.format == "iceberg":
        from gliclass_dist.connectors.iceberg import open_table

        return open_table(sink).inspect.files().column("record_count").to_pylist()
    return [pq.ParquetFile(p).metadata.num_rows for p in ds.dataset(sink.path).files]


@pytest.fixture(params=FORMATS)
def sink(request, tmp_path: Path) -> SinkSpec:
    return make_sink(request.param, tmp_path)


# ---------------------------------------------------------------------------------------------- sinks


def test_round_trip_keeps_rows_and_output_schema(sink: SinkSpec):
    data = results(0, 7)
    result = conn.commit(sink, data, app_id="job-a", version=1)
    assert result.committed and result.rows == 7 and result.key == "job-a@v1"
    assert result.skipped_reason is None
    back = read_back(sink)
    assert back.schema.equals(OUT_SCHEMA)
    assert back.to_pylist() == data.to_pylist()
    assert conn.table_schema(sink).equals(OUT_SCHEMA)
    if sink.format == "delta":
        assert result.table_version == 0 and DeltaTable(sink.path).transaction_version("job-a") == 1
    if sink.format == "iceberg":
        assert result.table_version == table_state(sink)[-1]


def test_same_key_twice_leaves_table_unchanged(sink: SinkSpec, caplog):
    conn.commit(sink, results(0, 5), app_id="job", version=3)
    before = table_state(sink)
    with caplog.at_level("INFO"):
        again = conn.commit(sink, results(0, 5), app_id="job", version=3)
        older = conn.commit(sink, results(100, 5), app_id="job", version=2)
    assert not again.committed and not older.committed
    assert "already committed version 3" in again.skipped_reason
    assert "already committed" in caplog.text
    assert table_state(sink) == before
    assert read_back(sink).num_rows == 5
    assert conn.last_committed(sink, "job") == 3
    assert conn.last_committed(sink, "another-job") is None


def test_new_version_appends(sink: SinkSpec):
    conn.commit(sink, results(0, 4), app_id="job", version=1)
    second = conn.commit(sink, results(4, 3), app_id="job", version=2)
    assert second.committed and second.rows == 3
    assert read_back(sink)["id"].to_pylist() == list(range(7))
    assert conn.last_committed(sink, "job") == 2


def test_incompatible_schema_names_the_columns(sink: SinkSpec):
    conn.commit(sink, results(0, 3), app_id="job", version=1)
    before = table_state(sink)
    bad = results(3, 2).drop_columns(["model"]).append_column("lang", pa.array(["en", "fr"]))
    bad = bad.set_column(0, "id", pa.array(["3", "4"]))
    with pytest.raises(conn.SinkSchemaError) as err:
        conn.commit(sink, bad, app_id="job", version=2)
    message = str(err.value)
    assert "'model'" in message and "'lang'" in message and "'id' is string" in message
    assert table_state(sink) == before
    assert conn.last_committed(sink, "job") == 1


def test_overwrite_replaces_rows_and_keeps_keys(tmp_path: Path, sink: SinkSpec):
    conn.commit(sink, results(0, 10), app_id="job", version=1)
    replace = sink.model_copy(update={"mode": "overwrite"})
    result = conn.commit(replace, results(50, 3), app_id="job", version=2)
    assert result.committed
    assert read_back(sink)["id"].to_pylist() == [50, 51, 52]
    assert not conn.commit(sink, results(0, 10), app_id="job", version=1).committed
    assert read_back(sink).num_rows == 3


def test_streamed_batches_and_empty_runs(sink: SinkSpec):
    batches = (b for t in (results(0, 3), results(3, 4)) for b in t.to_batches())
    assert conn.commit(sink, batches, app_id="job", version=1).rows == 7
    empty = conn.commit(sink, iter(()), app_id="job", version=2, schema=OUT_SCHEMA)
    assert empty.committed and empty.rows == 0 and empty.files == 0
    assert conn.last_committed(sink, "job") == 2
    assert read_back(sink).num_rows == 7
    with pytest.raises(ValueError, match="schema"):
        conn.commit(sink, iter(()), app_id="job", version=3)


def test_output_files_are_sized_by_target_rows(tmp_path: Path, sink: SinkSpec):
    sized = sink.model_copy(update={"target_file_rows": 10})
    small_batches = [b for i in range(25) for b in results(i, 1).to_batches()]  # 25 one-row batches
    result = conn.commit(sized, small_batches, app_id="job", version=1)
    counts = data_files(sized)
    assert result.files == len(counts) == math.ceil(25 / 10)
    assert sorted(counts) == [5, 10, 10]


def test_distributed_stage_then_one_commit(sink: SinkSpec):
    conn.commit(sink, results(0, 2), app_id="job", version=1)
    state_before = table_state(sink)
    conn.prepare(sink, OUT_SCHEMA)
    parts = [results(100, 3), results(200, 4), results(300, 5)]
    staged = [conn.stage_files(sink, part) for part in parts]  # one call per "worker"
    # worker 1 is retried: its second attempt writes another copy that the driver never collects
    retried = conn.stage_files(sink, parts[1])
    collected = staged[0] + staged[1] + staged[2] + staged[0]  # a result collected twice
    assert not any(f.path in {g.path for g in retried} for f in collected)
    result = conn.commit_files(sink, collected, app_id="job", version=2, schema=OUT_SCHEMA)
    assert result.committed and result.rows == 12 and result.files == 3
    ids = read_back(sink)["id"].to_pylist()
    assert ids == [0, 1, *range(100, 103), *range(200, 204), *range(300, 305)]  # no duplicates of 200..203
    after = table_state(sink)
    if sink.format == "delta":
        assert after == state_before + 1
    elif sink.format == "iceberg":
        assert len(after) == len(state_before) + 1
    else:
        assert len(after) == len(state_before) + 1
    # the driver retrying the same commit is a no-op, and deletes the files it was handed
    late = conn.stage_files(sink, results(900, 2))
    assert not conn.commit_files(sink, late, app_id="job", version=2).committed
    assert not any(Path(f.path.removeprefix("file://")).exists() for f in late)
    assert table_state(sink) == after


def test_distributed_commit_creates_the_table(sink: SinkSpec):
    staged = [f for part in (results(0, 3), results(3, 3)) for f in conn.stage_files(sink, part)]
    result = conn.commit_files(
        sink, staged, app_id="job", version=7, schema=OUT_SCHEMA, extra_metadata={"gliclass.input_version": 7}
    )
    assert result.committed and result.rows == 6
    assert read_back(sink)["id"].to_pylist() == list(range(6))
    assert conn.last_committed(sink, "job") == 7


def test_commit_metadata_is_recorded(tmp_path: Path):
    delta = make_sink("delta", tmp_path)
    conn.commit(delta, results(0, 2), app_id="job", version=4, extra_metadata={"gliclass.input_version": 4})
    info = DeltaTable(delta.path).history(1)[0]
    assert info["gliclass.app_id"] == "job" and info["gliclass.input_version"] == 4
    iceberg = make_sink("iceberg", tmp_path)
    conn.commit(iceberg, results(0, 2), app_id="job", version=4, extra_metadata={"gliclass.input_version": 4})
    from gliclass_dist.connectors.iceberg import open_table

    table = open_table(iceberg)
    assert table.current_snapshot().summary.get("gliclass.input_version") == "4"
    assert table.properties["gliclass.commit.job"] == "4"
    parquet = make_sink("parquet", tmp_path)
    conn.commit(parquet, results(0, 2), app_id="job/with spaces", version=4)
    (folder,) = [p for p in Path(parquet.path).iterdir() if not p.name.startswith("_")]
    marker = json.loads((folder / "_COMMITTED").read_text())
    assert marker["gliclass.app_id"] == "job/with spaces" and marker["version"] == 4 and marker["rows"] == 2
    assert conn.last_committed(parquet, "job/with spaces") == 4


def test_same_key_from_concurrent_writers_lands_once(sink: SinkSpec):
    conn.commit(sink, results(0, 1), app_id="seed", version=0)
    outcomes: list = []

    def run(worker: int) -> None:
        try:
            outcomes.append(conn.commit(sink, results(100 * worker, 3), app_id="job", version=1))
        except Exception as exc:  # a crash must fail the assertion below, not vanish with the thread
            outcomes.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(o.committed for o in outcomes) == [False, False, False, True], outcomes
    assert read_back(sink).num_rows == 1 + 3


def test_delta_partitioned_sink(tmp_path: Path):
    sink = make_sink("delta", tmp_path, partition_by=["top_label"])
    data = pa.concat_tables([results(0, 3, "billing"), results(3, 2, "a b/c"), results(5, 1, None)])
    conn.commit(sink, data, app_id="job", version=1)
    table = DeltaTable(sink.path)
    assert table.metadata().partition_columns == ["top_label"]
    parts = pa.table(table.get_add_actions()).column("partition").to_pylist()
    assert sorted(p["top_label"] or "" for p in parts) == ["", "a b/c", "billing"]
    assert read_back(sink).to_pylist() == data.to_pylist()
    filtered = conn.read_source(as_input(sink, filter="top_label = 'a b/c'")).read_all()
    assert sorted(filtered["id"].to_pylist()) == [3, 4]


def test_optimize_compacts_and_keeps_keys(tmp_path: Path):
    for fmt in ("delta", "iceberg"):
        sink = make_sink(fmt, tmp_path, target_file_rows=100)
        for version in range(1, 6):
            conn.commit(sink, results(version * 10, 2), app_id="job", version=version)
        assert len(data_files(sink)) == 5
        conn.optimize(sink)
        assert len(data_files(sink)) == 1
        assert read_back(sink).num_rows == 10
        assert conn.last_committed(sink, "job") == 5
        assert not conn.commit(sink, results(0, 1), app_id="job", version=5).committed
    assert conn.optimize(make_sink("parquet", tmp_path))["compacted"] is False


# ---------------------------------------------------------------------------------------------- sources


def test_file_sources_with_filter(tmp_path: Path):
    table = pa.table({"id": [1, 2, 3, 4], "text": ["a", "b", None, "d"], "lang": ["en", "fr", "en", "de"]})
    pq.write_table(table, tmp_path / "in.parquet")
    pacsv.write_csv(table, tmp_path / "in.csv")
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in table.to_pylist()) + "\n")
    for fmt, name in (("parquet", "in.parquet"), ("csv", "in.csv"), ("jsonl", "in.jsonl")):
        spec = InputSpec(format=fmt, path=str(tmp_path / name), filter="lang in ('en', 'de') and id > 1")
        got = conn.read_source(spec).read_all()
        assert got["id"].to_pylist() == [3, 4], fmt
        assert conn.source_version(got) is None
    with pytest.raises(ValueError, match="input.filter"):
        conn.read_source(InputSpec(format="parquet", path=str(tmp_path / "in.parquet"), filter="id >>> 2"))


def test_iceberg_source_records_snapshot(tmp_path: Path):
    sink = make_sink("iceberg", tmp_path)
    conn.commit(sink, results(0, 6), app_id="job", version=1)
    reader = conn.read_source(as_input(sink, filter="id >= 4"), columns=["id", "top_label"])
    got = reader.read_all()
    assert sorted(got["id"].to_pylist()) == [4, 5] and got.column_names == ["id", "top_label"]
    assert conn.source_version(got) == table_state(sink)[-1]


def delta_input(root: Path) -> str:
    path = str(root / "input")
    write_deltalake(path, pa.table({"id": [1, 2, 3], "text": ["a", "b", "c"]}, schema=INPUT_SCHEMA))  # v0
    write_deltalake(
        path, pa.table({"id": [4, 5], "text": ["d", "e"]}, schema=INPUT_SCHEMA), mode="append"
    )  # v1
    return path


def test_read_delta_changes_returns_only_new_rows(tmp_path: Path):
    path = delta_input(tmp_path)
    everything, latest = conn.read_delta_changes(path, None)
    assert latest == 1 and sorted(everything.read_all()["id"].to_pylist()) == [1, 2, 3, 4, 5]
    DeltaTable(path).optimize.compact()  # v2: rewrites files, adds no rows
    write_deltalake(path, pa.table({"id": [6], "text": ["f"]}, schema=INPUT_SCHEMA), mode="append")  # v3
    new, latest = conn.read_delta_changes(path, 1)
    got = new.read_all()
    assert latest == 3 and got["id"].to_pylist() == [6]
    assert got.schema.equals(INPUT_SCHEMA) and conn.source_version(got) == 3
    nothing, latest = conn.read_delta_changes(path, 3)
    assert latest == 3 and nothing.read_all().num_rows == 0
    filtered, _ = conn.read_delta_changes(path, 0, filter="id > 4")
    assert sorted(filtered.read_all()["id"].to_pylist()) == [5, 6]
    pinned, last = conn.read_delta_changes(path, 0, until_version=2)  # a range split over several readers
    assert last == 2 and sorted(pinned.read_all()["id"].to_pylist()) == [4, 5]
    snapshot, last = conn.read_delta_changes(path, None, until_version=0)
    assert last == 0 and sorted(snapshot.read_all()["id"].to_pylist()) == [1, 2, 3]


def test_read_delta_changes_across_a_schema_change(tmp_path: Path):
    path = delta_input(tmp_path)
    wider = pa.table({"id": [6], "text": ["f"], "lang": ["en"]})
    write_deltalake(path, wider, mode="append", schema_mode="merge")  # v2 carries a metadata action
    write_deltalake(path, pa.table({"id": [7], "text": ["g"], "lang": ["fr"]}), mode="append")  # v3
    new, latest = conn.read_delta_changes(path, 1)  # the change feed cannot start at v2
    got = new.read_all().sort_by("id")
    assert latest == 3 and got.to_pylist() == [
        {"id": 6, "text": "f", "lang": "en"},
        {"id": 7, "text": "g", "lang": "fr"},
    ]
    first, latest = conn.read_delta_changes(path, 0)
    assert sorted(first.read_all()["id"].to_pylist()) == [4, 5, 6, 7]


def test_incremental_job_classifies_each_record_once(tmp_path: Path):
    path = delta_input(tmp_path)
    source = InputSpec(format="delta", path=path, incremental=True)
    sink = make_sink("delta", tmp_path)

    def run_job() -> conn.CommitResult | None:
        since = conn.last_committed(sink, "incremental-job")
        reader = conn.read_source(source, since_version=since)
        latest = conn.source_version(reader)
        rows = reader.read_all()
        if since is not None and latest <= since:
            return None
        classified = results(0, rows.num_rows).set_column(0, "id", rows["id"])  # stand-in for the model
        return conn.commit(
            sink,
            classified,
            app_id="incremental-job",
            version=latest,
            extra_metadata={"gliclass.input_version": latest},
        )

    first = run_job()
    assert first.committed and first.rows == 5
    assert run_job() is None  # nothing new
    write_deltalake(path, pa.table({"id": [6, 7], "text": ["f", "g"]}, schema=INPUT_SCHEMA), mode="append")
    second = run_job()
    assert second.committed and second.rows == 2
    # a retry of the same run (same input version) lands nothing
    assert not conn.commit(sink, results(6, 2), app_id="incremental-job", version=2).committed
    assert read_back(sink)["id"].to_pylist() == [1, 2, 3, 4, 5, 6, 7]
    assert conn.last_committed(sink, "incremental-job") == DeltaTable(path).version()


def test_bad_keys_and_specs_are_rejected(tmp_path: Path):
    sink = make_sink("delta", tmp_path)
    with pytest.raises(ValueError, match="version"):
        conn.commit(sink, results(0, 1), app_id="job", version=-1)
    with pytest.raises(ValueError, match="app_id"):
        conn.commit(sink, results(0, 1), app_id="", version=1)
    with pytest.raises(ValueError, match="since_version needs a delta input"):
        conn.read_source(InputSpec(format="parquet", path=str(tmp_path)), since_version=1)
    with pytest.raises(ValueError, match="partition"):
        conn.commit(
            make_sink("iceberg", tmp_path, partition_by=["status"]), results(0, 1), app_id="j", version=1
        )
