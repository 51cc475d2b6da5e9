"""Shared pieces of the lakehouse connectors: result types, schema checks, the sized file writer, filters.

Nothing here knows about a particular table format; ``delta.py``, ``iceberg.py`` and ``parquet.py`` build on it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from gliclass_dist.predicate import FilterError, Predicate, parse_filter, to_arrow
from gliclass_dist.predicate import columns as filter_columns

logger = logging.getLogger(__name__)

# Schema metadata key on a source reader: the table version (Delta) or snapshot id (Iceberg) that was read.
INPUT_VERSION_KEY = b"gliclass.input_version"
# Commit metadata keys written with every commit (Delta commit info, Iceberg snapshot summary, parquet marker).
APP_ID_PROP = "gliclass.app_id"
VERSION_PROP = "gliclass.version"

SinkData = pa.Table | pa.RecordBatch | pa.RecordBatchReader | Iterable[pa.RecordBatch]


class SinkSchemaError(ValueError):
    """The data does not match the schema of the table it is written to; the message names the columns."""


@dataclass(frozen=True)
class CommitResult:
    """What one ``commit``/``commit_files`` call did.

    ``table_version`` is the Delta table version written, the Iceberg snapshot id, or ``None`` for parquet.
    ``committed`` is False when the key was already committed (``skipped_reason`` says why): nothing was written.
    """

    committed: bool
    key: str
    table_version: int | None = None
    rows: int = 0
    files: int = 0
    skipped_reason: str | None = None


@dataclass(frozen=True)
class StagedFile:
    """A data file written by a worker but not yet part of any table; the driver commits a list of these.

    Picklable and small, so Ray tasks / Spark executors can return it. ``path`` is the full path or URI.
    ``stats`` is Delta's per-file statistics JSON (numRecords, minValues, maxValues, nullCount).
    """

    path: str
    size: int
    rows: int
    partition_values: dict[str, str | None] = field(default_factory=dict)
    modification_time: int = 0  # ms since the epoch
    stats: str = "{}"


@dataclass(frozen=True)
class Commit:
    """One commit a sink is asked to make: exactly ``files``, tagged ``(app_id, version)``.

    ``schema`` is the data's Arrow schema (needed to create a table), ``begun`` what ``Sink.begin`` returned
    when the run started (None when the files were staged and committed separately).
    """

    app_id: str
    version: int
    files: list[StagedFile]
    schema: pa.Schema | None = None
    extra_metadata: dict[str, Any] = field(default_factory=dict)
    begun: Any = None

    @property
    def key(self) -> str:
        return commit_key(self.app_id, self.version)

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    def properties(self) -> dict[str, Any]:
        """The metadata recorded with the commit: the key, then ``extra_metadata``."""
        return {APP_ID_PROP: self.app_id, VERSION_PROP: str(self.version), **self.extra_metadata}


def commit_key(app_id: str, version: int) -> str:
    """The deterministic key of one job run: ``app_id@v<version>``."""
    return f"{app_id}@v{version}"


def check_key(app_id: str, version: int) -> None:
    if not app_id or not isinstance(app_id, str):
        raise ValueError("app_id must be a non-empty string")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"version must be an int >= 0, got {version!r}")


def skip_result(app_id: str, version: int, committed_version: int, where: str) -> CommitResult:
    """The result (and log line) of a run whose key is already committed."""
    reason = f"{where}: app_id {app_id!r} already committed version {committed_version} >= {version}"
    logger.info("commit skipped, %s", reason)
    return CommitResult(committed=False, key=commit_key(app_id, version), skipped_reason=reason)


# ---------------------------------------------------------------------------------------------- schemas


def plain_type(dtype: pa.DataType) -> pa.DataType:
    """``dtype`` with view/large variants replaced by the plain ones (string, binary, list), recursively.

    Field metadata (such as Iceberg's ``PARQUET:field_id``) is dropped.
    """
    if pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype):
        return pa.string()
    if pa.types.is_large_binary(dtype) or pa.types.is_binary_view(dtype):
        return pa.binary()
    if (
        pa.types.is_list(dtype)
        or pa.types.is_large_list(dtype)
        or pa.types.is_list_view(dtype)
        or pa.types.is_large_list_view(dtype)
    ):
        item = dtype.value_field
        return pa.list_(pa.field(item.name, plain_type(item.type), item.nullable))
    if pa.types.is_struct(dtype):
        return pa.struct([pa.field(f.name, plain_type(f.type), f.nullable) for f in dtype])
    if pa.types.is_map(dtype):
        return pa.map_(plain_type(dtype.key_type), plain_type(dtype.item_type))
    return dtype


def plain_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with plain types and no field metadata (see ``plain_type``); the schema metadata is kept."""
    return pa.schema(
        [pa.field(f.name, plain_type(f.type), f.nullable) for f in schema], metadata=schema.metadata
    )


def _comparable(dtype: pa.DataType) -> str:
    """A string that is equal for types a table treats as the same (ignores list child names, nullability)."""
    dtype = plain_type(dtype)
    if pa.types.is_list(dtype):
        return f"list<{_comparable(dtype.value_type)}>"
    if pa.types.is_struct(dtype):
        return "struct<" + ", ".join(f"{f.name}: {_comparable(f.type)}" for f in dtype) + ">"
    if pa.types.is_timestamp(dtype):
        return f"timestamp[tz={dtype.tz is not None}]"  # Delta/Iceberg store us; ns data is cast
    return str(dtype)


def check_compatible(table_schema: pa.Schema, data_schema: pa.Schema, where: str) -> None:
    """Raise ``SinkSchemaError`` naming every missing, extra or differently typed column."""
    table_cols = {f.name: f.type for f in table_schema}
    data_cols = {f.name: f.type for f in data_schema}
    problems = []
    missing = [c for c in table_cols if c not in data_cols]
    extra = [c for c in data_cols if c not in table_cols]
    if missing:
        problems.append(f"columns missing from the data: {missing}")
    if extra:
        problems.append(f"columns not in the table: {extra}")
    for name, dtype in data_cols.items():
        if name in table_cols and _comparable(dtype) != _comparable(table_cols[name]):
            problems.append(f"column {name!r} is {dtype} in the data but {table_cols[name]} in the table")
    if problems:
        raise SinkSchemaError(f"incompatible schema for {where}: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------- data


def as_reader(data: SinkData, schema: pa.Schema | None = None) -> pa.RecordBatchReader:
    """A streaming reader over a Table, a RecordBatch, a RecordBatchReader or an iterable of RecordBatches.

    An iterable is not materialised: its first batch gives the schema unless ``schema`` is given.
    """
    if isinstance(data, pa.RecordBatchReader):
        return data
    if isinstance(data, pa.Table):
        return data.to_reader()
    if isinstance(data, pa.RecordBatch):
        return pa.RecordBatchReader.from_batches(data.schema, [data])
    if hasattr(data, "__arrow_c_stream__") and not isinstance(data, Iterator):
        return pa.RecordBatchReader.from_stream(data)
    batches = iter(data)
    if schema is None:
        first = next(batches, None)
        if first is None:
            raise ValueError("cannot write an empty iterable of batches without a schema (pass schema=...)")
        schema = first.schema

        def chained() -> Iterator[pa.RecordBatch]:
            yield first
            yield from batches

        return pa.RecordBatchReader.from_batches(schema, chained())
    return pa.RecordBatchReader.from_batches(schema, batches)


def conform(reader: pa.RecordBatchReader, target: pa.Schema) -> pa.RecordBatchReader:
    """``reader`` with its columns reordered and cast to ``target`` (types, names and metadata of ``target``)."""
    if reader.schema.equals(target, check_metadata=False):
        return pa.RecordBatchReader.from_batches(target, reader)

    def cast_batches() -> Iterator[pa.RecordBatch]:
        for batch in reader:
            yield batch.select(target.names).cast(target)

    return pa.RecordBatchReader.from_batches(target, cast_batches())


def with_version(reader: pa.RecordBatchReader, version: int | None) -> pa.RecordBatchReader:
    """Plain-typed ``reader`` whose schema metadata records the table version read (``source_version``)."""
    target = plain_schema(reader.schema)
    if version is not None:
        target = target.with_metadata({**(target.metadata or {}), INPUT_VERSION_KEY: str(version).encode()})
    if plain_schema(reader.schema).equals(reader.schema, check_metadata=False):
        return pa.RecordBatchReader.from_batches(target, reader)
    return pa.RecordBatchReader.from_batches(target, (batch.cast(target) for batch in reader))


def source_version(data: pa.Table | pa.RecordBatchReader | pa.Schema) -> int | None:
    """The Delta version / Iceberg snapshot id that ``read_source`` recorded on its result, if any."""
    schema = data if isinstance(data, pa.Schema) else data.schema
    raw = (schema.metadata or {}).get(INPUT_VERSION_KEY)
    return int(raw) if raw is not None else None


# ---------------------------------------------------------------------------------------------- files


def resolve_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it for a local path or URI (credentials from the environment)."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    return pafs.FileSystem.from_uri(uri)


def write_files(
    data: pa.RecordBatchReader,
    base_uri: str,
    *,
    target_file_rows: int,
    partition_by: Iterable[str] = (),
    prefix: str = "part",
) -> list[StagedFile]:
    """Stream ``data`` into parquet files of at most ``target_file_rows`` rows under ``base_uri``.

    Partition columns go into hive-style folders (``col=value/``, values percent-encoded) and out of the
    files, as Delta expects. File names carry a fresh uuid, so a retried writer never replaces another's
    file. Memory stays bounded: at most one row group (``ROW_GROUP_ROWS``) is buffered per open partition
    (``pyarrow.dataset.write_dataset`` was measured to queue far more on wide rows). Returns one
    ``StagedFile`` per file, with Delta-style statistics taken from the parquet footer.
    """
    filesystem, base_path = resolve_fs(base_uri)
    scheme = base_uri.split("://", 1)[0] + "://" if "://" in base_uri else ""
    partition_by = list(partition_by)
    for name in partition_by:
        if data.schema.get_field_index(name) < 0:
            raise SinkSchemaError(
                f"partition column {name!r} is not in the data (columns: {data.schema.names})"
            )
    file_schema = pa.schema([f for f in data.schema if f.name not in partition_by])
    run = uuid.uuid4().hex
    writers: dict[tuple, _RollingFileWriter] = {}
    for batch in data:
        for values, part in _split_by_partition(batch, partition_by):
            writer = writers.get(values)
            if writer is None:
                folder = "/".join(_hive_segment(c, v) for c, v in zip(partition_by, values))
                writer = _RollingFileWriter(
                    filesystem,
                    f"{base_path.rstrip('/')}/{folder}".rstrip("/"),
                    file_schema,
                    target_file_rows,
                    name_prefix=f"{prefix}-{run}-{len(writers)}",
                    partition_values=dict(zip(partition_by, values)),
                    scheme=scheme,
                )
                writers[values] = writer
            writer.add(part.select(file_schema.names))
    staged = [f for writer in writers.values() for f in writer.close()]
    logger.debug("wrote %d files (%d rows) under %s", len(staged), sum(f.rows for f in staged), base_uri)
    return staged


ROW_GROUP_ROWS = 1 << 17
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


class _RollingFileWriter:
    """Parquet files of one partition folder: a new file every ``target_rows`` rows, row groups of
    ``ROW_GROUP_ROWS`` rows (small input batches are buffered up to that)."""

    def __init__(
        self,
        filesystem: pafs.FileSystem,
        folder: str,
        schema: pa.Schema,
        target_rows: int,
        *,
        name_prefix: str,
        partition_values: dict[str, str | None],
        scheme: str,
    ) -> None:
        self.filesystem, self.folder, self.schema = filesystem, folder, schema
        self.target_rows, self.group_rows = target_rows, min(target_rows, ROW_GROUP_ROWS)
        self.name_prefix, self.partition_values, self.scheme = name_prefix, partition_values, scheme
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = 0
        self.file_rows = 0
        self.writer: Any = None
        self.stream: Any = None
        self.path = ""
        self.footers: list[Any] = []
        self.done: list[StagedFile] = []

    def add(self, batch: pa.RecordBatch) -> None:
        while batch.num_rows:
            room = self.target_rows - self.file_rows - self.pending_rows
            taken = batch.slice(0, room)
            self.pending.append(taken)
            self.pending_rows += taken.num_rows
            batch = batch.slice(taken.num_rows)
            if self.file_rows + self.pending_rows >= self.target_rows:
                self._flush()
                self._close_file()
            elif self.pending_rows >= self.group_rows:
                self._flush()

    def close(self) -> list[StagedFile]:
        self._flush()
        self._close_file()
        return self.done

    def _flush(self) -> None:
        if not self.pending_rows:
            self.pending = []
            return
        if self.writer is None:
            self.filesystem.create_dir(self.folder, recursive=True)
            self.path = f"{self.folder}/{self.name_prefix}-{len(self.done)}.parquet"
            self.stream = self.filesystem.open_output_stream(self.path)
            self.footers = []
            self.writer = pq.ParquetWriter(self.stream, self.schema, metadata_collector=self.footers)
        self.writer.write_table(
            pa.Table.from_batches(self.pending, self.schema), row_group_size=self.group_rows
        )
        self.file_rows += self.pending_rows
        self.pending, self.pending_rows = [], 0

    def _close_file(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        size = self.stream.tell()
        self.stream.close()
        footer = self.footers[0]
        self.done.append(
            StagedFile(
                path=self.scheme + self.path,
                size=size,
                rows=footer.num_rows,
                partition_values=dict(self.partition_values),
                modification_time=int(time.time() * 1000),
                stats=delta_stats(footer),
            )
        )
        self.writer, self.stream, self.file_rows = None, None, 0


def _split_by_partition(
    batch: pa.RecordBatch, partition_by: list[str]
) -> Iterator[tuple[tuple, pa.RecordBatch]]:
    """``(partition values as strings or None, rows)`` for each distinct combination in ``batch``."""
    if not partition_by:
        yield (), batch
        return
    keys = (
        pa.Table.from_batches([batch])
        .select(partition_by)
        .group_by(partition_by, use_threads=False)
        .aggregate([])
    )
    for key in keys.to_pylist():
        mask = None
        for name in partition_by:
            column = batch.column(name)
            if key[name] is None:
                match = pc.is_null(column)
            else:
                match = pc.fill_null(pc.equal(column, pa.scalar(key[name], column.type)), False)
            mask = match if mask is None else pc.and_(mask, match)
        values = tuple(
            None
            if key[name] is None
            else pa.scalar(key[name], batch.schema.field(name).type).cast(pa.string()).as_py()
            for name in partition_by
        )
        yield values, batch.filter(mask)


def _hive_segment(column: str, value: str | None) -> str:
    return f"{column}={HIVE_NULL if value is None else quote(value, safe='')}"


def delta_stats(metadata: Any) -> str:
    """Delta ``stats`` JSON of a parquet file: row count, and null counts / min / max of top-level scalar columns."""
    stats: dict[str, Any] = {
        "numRecords": metadata.num_rows,
        "minValues": {},
        "maxValues": {},
        "nullCount": {},
    }
    top_level = {}
    for i in range(metadata.num_columns):
        path = metadata.schema.column(i).path
        if "." not in path:
            top_level[path] = i
    for name, col in top_level.items():
        nulls, lo, hi, exact = 0, None, None, True
        for rg in range(metadata.num_row_groups):
            st = metadata.row_group(rg).column(col).statistics
            if st is None or not st.has_null_count:
                exact = False
                break
            nulls += st.null_count
            if st.has_min_max:
                lo = st.min if lo is None else min(lo, st.min)
                hi = st.max if hi is None else max(hi, st.max)
        if not exact:
            continue
        stats["nullCount"][name] = nulls
        if _json_scalar(lo) and _json_scalar(hi):
            stats["minValues"][name] = lo
            stats["maxValues"][name] = hi
    return json.dumps(stats)


def _json_scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, bool | int | str)


def check_files_exist(files: Iterable[StagedFile]) -> None:
    """Raise ``FileNotFoundError`` naming staged files that are gone (a commit must never point at them)."""
    by_fs: dict[str, list[str]] = {}
    for f in files:
        by_fs.setdefault(f.path.split("://", 1)[0] if "://" in f.path else "", []).append(f.path)
    missing = []
    for paths in by_fs.values():
        filesystem, _ = resolve_fs(paths[0])
        inner = [resolve_fs(p)[1] for p in paths]
        for path, info in zip(paths, filesystem.get_file_info(inner)):
            if info.type != pafs.FileType.File:
                missing.append(path)
    if missing:
        raise FileNotFoundError(f"{len(missing)} staged file(s) do not exist, e.g. {missing[:3]}")


def delete_files(files: Iterable[StagedFile]) -> None:
    """Best-effort removal of staged files that will not be committed."""
    for f in files:
        try:
            filesystem, path = resolve_fs(f.path)
            filesystem.delete_file(path)
        except OSError as exc:  # left for vacuum / orphan clean-up
            logger.warning("could not delete uncommitted file %s: %s", f.path, exc)


def dedupe_files(files: Iterable[StagedFile]) -> list[StagedFile]:
    """``files`` without repeated paths (a result collected twice must not be committed twice)."""
    seen: dict[str, StagedFile] = {}
    for f in files:
        if f.path in seen:
            logger.warning("staged file %s listed twice; committing it once", f.path)
            continue
        seen[f.path] = f
    return list(seen.values())


# ---------------------------------------------------------------------------------------------- filters


def as_predicate(predicate: str | Predicate | None) -> Predicate | None:
    """The tree of an ``input.filter`` string (``gliclass_dist.predicate``'s grammar); trees and None pass."""
    if not isinstance(predicate, str):
        return predicate
    try:
        return parse_filter(predicate)
    except FilterError as exc:
        raise ValueError(f"input.filter: {exc}") from None


def arrow_filter(predicate: str | Predicate) -> pc.Expression:
    """A pyarrow expression for an ``input.filter`` string or tree (``gliclass_dist.predicate``'s grammar).

    ``"lang in ('en', 'de') and id > 10"``: comparisons, [NOT] IN, IS [NOT] NULL, [NOT] LIKE, AND, OR, NOT,
    with SQL null logic, so every input format and engine keeps the same rows for the same filter.
    """
    return to_arrow(as_predicate(predicate))


def filter_reader(reader: pa.RecordBatchReader, predicate: Predicate, columns: Iterable[str] | None = None
                  ) -> pa.RecordBatchReader:
    """``reader``'s rows that satisfy ``predicate``, projected to ``columns`` (schema metadata kept)."""
    expression = to_arrow(predicate)
    names = list(columns) if columns else reader.schema.names
    target = pa.schema([reader.schema.field(c) for c in names], metadata=reader.schema.metadata)

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in reader:
            yield batch.filter(expression).select(names)  # null => dropped, as in SQL

    return pa.RecordBatchReader.from_batches(target, batches())


def scan_columns(predicate: Predicate | None, columns: Iterable[str] | None) -> list[str] | None:
    """The columns a scan must read to apply ``predicate`` and return ``columns`` (None: all)."""
    if not columns:
        return None
    wanted = list(columns)
    return wanted + [c for c in (filter_columns(predicate) if predicate else []) if c not in wanted]
