"""The written connector interface: ``Source``/``Sink``, the format registry, the shared commit template and
Delta's bounded per-version reader (what Ray's parallel incremental read uses), on real tables in tmp dirs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from deltalake import write_deltalake
from gliclass_dist.connectors import delta
from gliclass_dist.connectors.base import Commit, CommitResult, StagedFile, write_files

from gliclass_dist import connectors as conn
from gliclass_dist.spec import SinkSpec

INPUT_SCHEMA = pa.schema([("id", pa.int64()), ("text", pa.string())])


def rows(ids: Sequence[int], **extra: list[Any]) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.int64()), "text": [f"t{i}" for i in ids], **extra})


def delta_with_versions(root: Path) -> str:
    """v0 create (1, 2), v1 append (3), v2 schema change (4), v3 append (5, 6), v4 append (7)."""
    path = str(root / "input")
    write_deltalake(path, rows([1, 2]), mode="error")
    write_deltalake(path, rows([3]), mode="append")
    write_deltalake(path, rows([4], lang=["en"]), mode="append", schema_mode="merge")  # a metadata action
    write_deltalake(path, rows([5, 6], lang=["de", "fr"]), mode="append")
    write_deltalake(path, rows([7], lang=["it"]), mode="append")
    return path


def test_read_delta_versions_honours_both_bounds_and_splits_a_range_exactly_once(tmp_path: Path):
    path = delta_with_versions(tmp_path)
    schema = delta.schema_at(path, 4, columns=["id", "lang"])
    assert schema == pa.schema([("id", pa.int64()), ("lang", pa.string())])

    def ids(first: int, last: int) -> list[int]:
        reader = delta.read_versions(path, first, last, schema=schema)
        table = reader.read_all()
        assert table.schema.equals(schema)
        return sorted(table["id"].to_pylist())

    assert ids(1, 1) == [3]  # the upper bound holds although v2..v4 exist
    assert ids(2, 2) == [4]  # the change feed cannot start at v2: its added files are read
    assert ids(3, 3) == [5, 6]
    assert ids(3, 2) == []
    split = ids(0, 1) + ids(2, 3) + ids(4, 4)  # adjacent ranges, as Ray's read tasks split them
    assert sorted(split) == list(range(1, 8))
    whole, latest = conn.read_delta_changes(path, None)
    assert latest == 4 and sorted(whole.read_all()["id"].to_pylist()) == sorted(split)
    # without a schema: the table's at ``last``, projected
    assert delta.read_versions(path, 1, 1, columns=["id"]).schema == pa.schema([("id", pa.int64())])
    with pytest.raises(FileNotFoundError, match="no Delta table"):
        delta.schema_at(str(tmp_path / "missing"))


def test_registry_returns_the_interface_and_imports_formats_lazily(tmp_path: Path):
    for fmt in ("delta", "iceberg", "parquet", "csv", "jsonl"):
        assert isinstance(conn.source_for(fmt), conn.Source)
    for fmt in ("delta", "iceberg", "parquet"):
        assert isinstance(conn.sink_for(fmt), conn.Sink)
    assert conn.source_for("delta").incremental and not conn.source_for("parquet").incremental
    with pytest.raises(ValueError, match="'orc'"):
        conn.sink_for("orc")
    with pytest.raises(TypeError):
        conn.Sink()  # the interface is abstract
    # a parquet run never imports deltalake or pyiceberg (both optional)
    folder = tmp_path / "in"
    folder.mkdir()
    ds.write_dataset(rows([1, 2]), folder, format="parquet")
    script = (
        "import sys\n"
        "from gliclass_dist import connectors as c\n"
        "from gliclass_dist.spec import InputSpec, SinkSpec\n"
        f"data = c.read_source(InputSpec(format='parquet', path={str(folder)!r})).read_all()\n"
        f"sink = SinkSpec(format='parquet', path={str(tmp_path / 'out')!r})\n"
        "assert c.commit(sink, data, app_id='job', version=1).committed\n"
        "print(sorted(m for m in ('deltalake', 'pyiceberg') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


class FolderListSink(conn.Sink):
    """A minimal sink written against the interface alone: files staged with ``write_files``, the committed
    keys kept in memory. Counts its calls so the shared template's order can be checked."""

    def __init__(self) -> None:
        self.keys: dict[str, int] = {}
        self.calls: list[str] = []

    def last_committed(self, spec: SinkSpec, app_id: str) -> int | None:
        self.calls.append("last_committed")
        return self.keys.get(app_id)

    def table_schema(self, spec: SinkSpec) -> pa.Schema | None:
        return None

    def begin(self, spec: SinkSpec) -> Any:
        self.calls.append("begin")
        return "begun-marker"

    def stage(self, spec: SinkSpec, data: Any, schema: pa.Schema | None = None) -> list[StagedFile]:
        self.calls.append("stage")
        return write_files(data, f"{spec.path}/staged", target_file_rows=spec.target_file_rows)

    def commit_staged(self, spec: SinkSpec, commit: Commit) -> CommitResult:
        self.calls.append(f"commit_staged:{commit.begun}:{commit.schema.names}")
        self.keys[commit.app_id] = commit.version
        return self.committed(spec, commit)

    def optimize(self, spec: SinkSpec, **options: Any) -> dict[str, Any]:
        return {}


def test_a_registered_sink_gets_the_shared_commit_template(tmp_path: Path):
    spec = SinkSpec(format="parquet", path=str(tmp_path / "out"))
    conn.register_sink("parquet", type("Registered", (FolderListSink,), {}))
    try:
        registered = conn.sink_for("parquet")
        assert type(registered).__name__ == "Registered"
        first = conn.commit(spec, rows([1, 2, 3]), app_id="job", version=2)  # the facade dispatches to it
        assert first.committed and first.rows == 3
        assert registered.calls == ["begin", "last_committed", "stage", "commit_staged:begun-marker:['id', 'text']"]
        registered.calls.clear()
        again = conn.commit(spec, rows([4]), app_id="job", version=2)
        assert not again.committed and "already committed version 2" in again.skipped_reason
        assert registered.calls == ["begin", "last_committed"]  # skipped before anything was staged
        with pytest.raises(ValueError, match="version"):
            conn.commit(spec, rows([4]), app_id="job", version=-1)
    finally:
        conn.register_sink("parquet", "gliclass_dist.connectors.parquet:ParquetSink")
    assert type(conn.sink_for("parquet")).__name__ == "ParquetSink"
