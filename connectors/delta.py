"""Delta Lake input and sink through ``deltalake`` (delta-rs).

Guarantees of the sink:
- One job run = one Delta commit, carrying the app transaction ``(app_id, version)``. Delta records the
  latest version per app id in the table snapshot (it survives overwrites, checkpoints and log clean-up);
  ``DeltaTable.transaction_version(app_id)`` reads it back. A run whose version is <= the recorded one
  commits nothing. Two concurrent runs with the same app id conflict in delta-rs (``CommitFailedError``):
  the loser re-reads the table and reports the key as already committed.
- ``table_version`` in the result is the version of THIS run's commit, whatever other writers commit
  before or after it: deltalake's commit calls return nothing, so it is the first version after the one
  the commit was based on whose snapshot records the app transaction ``(app_id, version)``
  (``commit_version``). It never reads "the latest version" (another writer may have committed since).
- Data files are written first (parquet, ``target_file_rows`` rows each, uuid names) into the table folder,
  then one commit adds exactly the listed files. Files of a failed or retried writer are never referenced
  and are removed by ``vacuum`` (after the retention period, 7 days by default: keep it longer than a job).

Incremental reads use the change data feed (``DeltaTable.load_cdf``), which delta-rs serves for plain
appends/overwrites even without ``delta.enableChangeDataFeed`` (measured with deltalake 1.6.6: inserts of
versions > since come back, OPTIMIZE commits are skipped), except that it refuses to *start* at a version
that carries a metadata action (the create, a schema change). For such a version the rows of the files it
added are read directly, and the feed continues from the next version.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import CommitProperties, DeltaTable, Transaction
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.transaction import AddAction, create_table_with_add_actions

from gliclass_dist.predicate import Predicate
from gliclass_dist.spec import InputSpec, SinkSpec

from .base import (
    Commit,
    CommitResult,
    SinkData,
    StagedFile,
    as_predicate,
    as_reader,
    check_compatible,
    check_files_exist,
    commit_key,
    conform,
    filter_reader,
    plain_schema,
    resolve_fs,
    scan_columns,
    with_version,
    write_files,
)
from .interface import Sink, Source

logger = logging.getLogger(__name__)

NEW_ROW_CHANGES = ("insert", "update_postimage")


def open_table(path: str, storage_options: dict[str, str] | None = None, version: int | None = None):
    """The Delta table at ``path`` (optionally at ``version``), or None when there is none."""
    try:
        return DeltaTable(path, version=version, storage_options=storage_options or None)
    except TableNotFoundError:
        return None


def arrow_schema(table: DeltaTable) -> pa.Schema:
    return pa.schema(table.schema().to_arrow())


# ---------------------------------------------------------------------------------------------- reading


class DeltaSource(Source):
    """Delta inputs: the latest version, or the rows added after a version (``incremental``)."""

    incremental = True

    def read(
        self, spec: InputSpec, *, columns: Sequence[str] | None = None, since_version: int | None = None
    ) -> pa.RecordBatchReader:
        """Stream a Delta input (at its latest version, or only rows added after ``since_version``).

        The schema metadata of the returned reader records the table version read (``source_version``).
        """
        if since_version is not None:
            reader, _ = read_changes(
                spec.path,
                since_version,
                storage_options=spec.storage_options,
                predicate=spec.predicate,
                columns=columns,
            )
            return reader
        table = open_table(spec.path, spec.storage_options)
        if table is None:
            raise FileNotFoundError(f"no Delta table at input.path {spec.path!r}")
        tree = spec.predicate  # applied in Arrow: delta-rs would parse a predicate string as SQL
        raw = table.scan(columns=scan_columns(tree, columns))
        reader = with_version(pa.RecordBatchReader.from_stream(raw), table.version())
        return filter_reader(reader, tree, columns) if tree else reader

    def version(self, spec: InputSpec) -> int:
        table = open_table(spec.path, spec.storage_options)
        if table is None:
            raise FileNotFoundError(f"no Delta table at input.path {spec.path!r}")
        return table.version()


def schema_at(
    path: str,
    version: int | None = None,
    *,
    storage_options: dict[str, str] | None = None,
    columns: Sequence[str] | None = None,
) -> pa.Schema:
    """The plain Arrow schema of the table at ``version`` (default: the latest), projected to ``columns``."""
    table = open_table(path, storage_options, version)
    if table is None:
        raise FileNotFoundError(f"no Delta table at {path!r}")
    schema = plain_schema(arrow_schema(table))
    return pa.schema([schema.field(c) for c in columns]) if columns else schema


def read_versions(
    path: str,
    first: int,
    last: int,
    *,
    storage_options: dict[str, str] | None = None,
    columns: Sequence[str] | None = None,
    schema: pa.Schema | None = None,
) -> pa.RecordBatchReader:
    """Rows added in the table versions ``first..last`` (both included; none when ``first > last``).

    Inserts and update post-images come from Delta's change data feed; a version the feed cannot start at
    (the create, a schema change) is read from the data files it added. The reader has ``schema``'s columns
    and types (default: ``schema_at(path, last, columns=columns)``; a column of ``schema`` the table only
    gained after ``last`` is null) and no version metadata. Readers over adjacent ranges return the rows of
    the whole range exactly once (parallel reads).
    """
    table = open_table(path, storage_options, last)
    if table is None:
        raise FileNotFoundError(f"no Delta table at {path!r}")
    at_last = plain_schema(arrow_schema(table))
    if schema is None:
        schema = pa.schema([at_last.field(c) for c in columns]) if columns else at_last
    # Columns the table gained after ``last`` cannot hold values in these versions: read the others, add nulls.
    target = pa.schema([f for f in schema if f.name in at_last.names])
    parts: list[pa.RecordBatchReader] = []
    version = first
    while version <= last:
        try:
            feed = table.load_cdf(
                starting_version=version,
                ending_version=last,
                columns=[*target.names, "_change_type"],
            )
        except DeltaError as exc:
            if "change data" not in str(exc):
                raise
            logger.info(
                "delta %s: version %d has no change feed (%s); reading its added files", path, version, exc
            )
            parts.append(_added_in_version(path, version, target, storage_options))
            version += 1
            continue
        parts.append(_new_rows(pa.RecordBatchReader.from_stream(feed), target))
        break
    return _with_columns_of(pa.RecordBatchReader.from_batches(target, (b for part in parts for b in part)), schema)


def _with_columns_of(reader: pa.RecordBatchReader, schema: pa.Schema) -> pa.RecordBatchReader:
    """``reader`` in ``schema``'s columns and types; the columns it lacks are all null."""
    if reader.schema.names == schema.names:
        return reader

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in reader:
            columns = [
                batch.column(f.name) if f.name in batch.schema.names else pa.nulls(batch.num_rows, f.type)
                for f in schema
            ]
            yield pa.RecordBatch.from_arrays(columns, schema=schema)

    return pa.RecordBatchReader.from_batches(schema, batches())


def read_changes(
    path: str,
    since_version: int | None,
    *,
    storage_options: dict[str, str] | None = None,
    predicate: str | Predicate | None = None,
    columns: Sequence[str] | None = None,
    until_version: int | None = None,
) -> tuple[pa.RecordBatchReader, int]:
    """Rows added to the table in versions ``> since_version`` and ``<= until_version``, and that last version.

    ``since_version=None`` reads the whole table (as of ``until_version``). ``until_version`` defaults to the
    latest version, pinned when the call starts, so rows committed later are left for the next run (pass
    it to split a range over several readers, or use ``read_versions``). Deleted rows and update pre-images
    are not returned. The reader has plain Arrow types and records the last version in its schema metadata.
    ``predicate`` (``input.filter`` text or tree) is applied in Arrow, never handed to delta-rs as SQL text.
    """
    tree = as_predicate(predicate)
    if tree is not None:
        reader, latest = read_changes(path, since_version, storage_options=storage_options,
                                      columns=scan_columns(tree, columns), until_version=until_version)
        return filter_reader(reader, tree, columns), latest
    table = open_table(path, storage_options, until_version)
    if table is None:
        raise FileNotFoundError(f"no Delta table at {path!r}")
    latest = table.version()
    if since_version is None:
        raw = table.scan(columns=list(columns) if columns else None)
        return with_version(pa.RecordBatchReader.from_stream(raw), latest), latest
    if since_version > latest:
        raise ValueError(
            f"since_version {since_version} is newer than the table's latest version {latest} at {path!r}: "
            "was the table re-created? Reset the job's committed key to re-read it."
        )
    logger.info("delta %s: reading changes of versions %d..%d", path, since_version + 1, latest)
    changes = read_versions(path, since_version + 1, latest, storage_options=storage_options, columns=columns)
    return with_version(changes, latest), latest


def _new_rows(feed: pa.RecordBatchReader, target: pa.Schema) -> pa.RecordBatchReader:
    """Inserted rows and update post-images of a change feed, without the feed's own columns."""
    wanted = pa.array(NEW_ROW_CHANGES)

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in feed:
            keep = pc.is_in(batch.column("_change_type").cast(pa.string()), value_set=wanted)
            yield batch.select(target.names).cast(target).filter(keep)  # view types cannot be filtered

    return pa.RecordBatchReader.from_batches(target, batches())


def _added_in_version(
    path: str, version: int, target: pa.Schema, storage_options: dict[str, str] | None
) -> pa.RecordBatchReader:
    """Rows of the data files that ``version`` added (for versions the change feed refuses to start at)."""
    now = open_table(path, storage_options, version)
    before = set(open_table(path, storage_options, version - 1).file_uris()) if version > 0 else set()
    added = [uri for uri in now.file_uris() if uri not in before]
    filesystem, _ = resolve_fs(path)
    root = now.table_uri.removeprefix("file://").rstrip("/")
    dataset = ds.dataset(
        [resolve_fs(uri)[1] for uri in added],
        schema=plain_schema(arrow_schema(now)),
        format="parquet",
        filesystem=filesystem,
        partitioning=ds.partitioning(
            pa.schema([arrow_schema(now).field(c) for c in now.metadata().partition_columns]), flavor="hive"
        ),
        partition_base_dir=resolve_fs(root)[1],
    )
    return conform(dataset.scanner().to_reader(), target)


# ---------------------------------------------------------------------------------------------- writing


def _file_schema(sink: SinkSpec, data_schema: pa.Schema) -> tuple[pa.Schema, list[str]]:
    """The arrow schema data files must have (the table's, or Delta's mapping of the data's) and the partitions."""
    table = open_table(sink.path, sink.storage_options)
    where = f"delta sink {sink.path!r}"
    if table is None:
        return pa.schema(DeltaSchema.from_arrow(plain_schema(data_schema)).to_arrow()), list(
            sink.partition_by
        )
    schema = arrow_schema(table)
    check_compatible(schema, data_schema, where)
    partitions = list(table.metadata().partition_columns)
    if sink.partition_by and list(sink.partition_by) != partitions:
        raise ValueError(
            f"{where} is partitioned by {partitions}, but sink.partition_by is {sink.partition_by}"
        )
    return schema, partitions


class DeltaSink(Sink):
    """Delta sinks: one Delta commit per run, keyed by the app transaction (see the module docstring)."""

    def last_committed(self, sink: SinkSpec, app_id: str) -> int | None:
        """The version recorded by the app transaction of ``app_id``, or None (also when there is no table)."""
        table = open_table(sink.path, sink.storage_options)
        return None if table is None else table.transaction_version(app_id)

    def table_schema(self, sink: SinkSpec) -> pa.Schema | None:
        table = open_table(sink.path, sink.storage_options)
        return None if table is None else plain_schema(arrow_schema(table))

    def stage(self, sink: SinkSpec, data: SinkData, schema: pa.Schema | None = None) -> list[StagedFile]:
        """Write ``data`` as parquet files into the table folder (not yet committed); run this on the workers."""
        reader = as_reader(data, schema)
        file_schema, partitions = _file_schema(sink, reader.schema)
        return write_files(
            conform(reader, file_schema),
            sink.path,
            target_file_rows=sink.target_file_rows,
            partition_by=partitions,
        )

    def commit_staged(self, sink: SinkSpec, commit: Commit) -> CommitResult:
        """One Delta commit adding exactly the files with the app transaction ``(app_id, version)``.

        ``commit.schema`` (the data's) is required when the table does not exist yet.
        """
        app_id, version, files, schema = commit.app_id, commit.version, commit.files, commit.schema
        where = self.describe(sink)
        properties = CommitProperties(
            custom_metadata=commit.properties(), app_transactions=[Transaction(app_id, version)]
        )
        root = resolve_fs(sink.path)[1].rstrip("/") + "/"
        actions = [
            AddAction(
                _relative(f.path, root),
                f.size,
                f.partition_values,
                f.modification_time or _now_ms(),
                True,
                f.stats,
            )
            for f in files
        ]
        based_on = -1  # the table version the commit starts from (-1: the commit creates the table)
        for attempt in (1, 2):
            table = open_table(sink.path, sink.storage_options)
            based_on = -1 if table is None else table.version()
            done = None if table is None else table.transaction_version(app_id)
            if done is not None and done >= version:
                return self.skipped(sink, commit, done)
            check_files_exist(files)
            try:
                if table is None:
                    if schema is None:
                        raise ValueError(f"{where} does not exist yet: pass schema= to create it")
                    file_schema, partitions = _file_schema(sink, schema)
                    create_table_with_add_actions(
                        sink.path,
                        DeltaSchema.from_arrow(file_schema),
                        actions,
                        mode="error",
                        partition_by=partitions or None,
                        storage_options=sink.storage_options or None,
                        commit_properties=properties,
                    )
                else:
                    if schema is not None:
                        check_compatible(arrow_schema(table), schema, f"delta sink {sink.path!r}")
                    table.create_write_transaction(
                        actions,
                        mode=sink.mode,
                        schema=arrow_schema(table),
                        partition_by=table.metadata().partition_columns or None,
                        commit_properties=properties,
                    )
                break
            except (CommitFailedError, DeltaError) as exc:
                # Retry once when a concurrent writer won the race: it may have committed the same key (then the
                # next pass skips) or created the table first (then the next pass appends to it).
                raced = isinstance(exc, CommitFailedError) or table is None
                if attempt == 2 or not raced:
                    raise
                logger.warning(
                    "%s: commit of %s failed (%s); re-checking", where, commit.key, exc
                )
        written = commit_version(sink.path, app_id, version, after=based_on, storage_options=sink.storage_options)
        return self.committed(sink, commit, written)

    def optimize(self, sink: SinkSpec, *, vacuum_retention_hours: int | None = None) -> dict[str, Any]:
        """Compact small files (``optimize.compact``); with ``vacuum_retention_hours``, also delete unreferenced
        files older than that (never set it below the longest job run: staged files of a running job are
        unreferenced until its commit)."""
        table = open_table(sink.path, sink.storage_options)
        if table is None:
            raise FileNotFoundError(f"no Delta table at sink.path {sink.path!r}")
        metrics: dict[str, Any] = {"compact": table.optimize.compact()}
        if vacuum_retention_hours is not None:
            table = open_table(sink.path, sink.storage_options)
            metrics["vacuumed"] = table.vacuum(
                retention_hours=vacuum_retention_hours, dry_run=False, enforce_retention_duration=False
            )
        logger.info("delta %s optimized: %s", sink.path, metrics["compact"])
        return metrics


def commit_version(
    path: str, app_id: str, version: int, *, after: int, storage_options: dict[str, str] | None = None
) -> int | None:
    """The table version whose commit carries the app transaction ``(app_id, version)``, or None.

    ``after`` is a version known to precede that commit (the one it was based on; -1 if it created the
    table). Only one commit can carry a given key (concurrent commits of the same key conflict), so the
    first later version whose snapshot records it is that commit, whatever was committed around it.
    """
    latest = open_table(path, storage_options)
    if latest is None:
        return None
    for candidate in range(after + 1, latest.version() + 1):
        if open_table(path, storage_options, candidate).transaction_version(app_id) == version:
            return candidate
    logger.warning("delta %s: no commit after version %d carries %s", path, after, commit_key(app_id, version))
    return None


def _relative(path: str, root: str) -> str:
    inner = resolve_fs(path)[1]
    if not inner.startswith(root):
        raise ValueError(f"staged file {path!r} is not inside the table folder {root!r}")
    return inner[len(root) :]


def _now_ms() -> int:
    return int(time.time() * 1000)
