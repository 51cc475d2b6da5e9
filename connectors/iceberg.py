"""Iceberg input and sink through ``pyiceberg`` (any catalog; a SQL catalog on SQLite for local use).

Catalog properties come from the spec's ``catalog`` mapping (``name`` picks the catalog name, the rest go to
``pyiceberg.catalog.load_catalog``), e.g. ``{"type": "sql", "uri": "sqlite:////tmp/cat.db",
"warehouse": "file:///tmp/warehouse"}``. An empty mapping uses pyiceberg's own configuration.

Guarantees of the sink:
- Data files are written first (parquet, ``target_file_rows`` rows each, uuid names, under the table's data
  folder), then ONE catalog commit (one pyiceberg transaction) adds exactly the listed files with
  ``add_files``, sets the table property ``gliclass.commit.<app_id> = <version>`` and tags the snapshot
  summary with ``gliclass.app_id`` / ``gliclass.version`` (and ``extra_metadata``). The table property is
  the durable record (it survives snapshot expiry); the summary is the audit trail. A run whose version is
  <= the recorded one commits nothing. The catalog commit is optimistic: if another writer committed first
  it fails, and the run re-reads the table, skips if its key is now there, else retries.
- pyiceberg's own commit retry (it re-applies a failed append onto the new table head) is turned off for
  these commits, on our in-memory copy of the table only: a blind re-apply would skip the key check. Our
  loop re-loads the table, re-checks the key and commits again (up to ``MAX_COMMIT_ATTEMPTS``).
- ``table_version`` in the result is the id of the snapshot THIS commit made, taken from the metadata the
  catalog returned for the commit (never the table's current snapshot, which another writer may have moved).
- ``mode: overwrite`` deletes all rows and adds the new files in the same transaction (two snapshots,
  one atomic commit).
- Why ``add_files`` and not ``Table.append``: the same primitive serves a single writer and many distributed
  writers (workers write files, the driver commits the list), and we control file sizes by rows.
  The files carry no Iceberg field ids; pyiceberg maps them by name (``schema.name-mapping.default``).
- Files of a failed or retried writer are never referenced. pyiceberg 0.12 has no orphan-file clean-up
  (only ``expire_snapshots``): remove them with an engine's ``remove_orphan_files`` or by hand.
- Partitioned Iceberg sinks are not supported yet (``add_files`` infers partitions from file statistics and
  our files drop partition columns); the sink refuses them with a clear error.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError, TableAlreadyExistsError
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.table import Table, TableProperties

from gliclass_dist.predicate import to_iceberg
from gliclass_dist.spec import InputSpec, SinkSpec

from .base import (
    APP_ID_PROP,
    VERSION_PROP,
    Commit,
    CommitResult,
    SinkData,
    StagedFile,
    as_reader,
    check_compatible,
    check_files_exist,
    conform,
    filter_reader,
    plain_schema,
    scan_columns,
    with_version,
    write_files,
)
from .interface import Sink, Source

logger = logging.getLogger(__name__)

COMMIT_PROP_PREFIX = "gliclass.commit."
MAX_COMMIT_ATTEMPTS = 5


def catalog(properties: dict[str, str]) -> Catalog:
    """The pyiceberg catalog described by ``properties`` (``name`` + ``load_catalog`` properties)."""
    props = dict(properties)
    name = props.pop("name", "default")
    return load_catalog(name, **props)


def open_table(spec: InputSpec | SinkSpec) -> Table | None:
    try:
        return catalog(spec.catalog).load_table(spec.table)
    except NoSuchTableError:
        return None


def arrow_schema(table: Table) -> pa.Schema:
    return table.schema().as_arrow()


# ---------------------------------------------------------------------------------------------- reading


class IcebergSource(Source):
    """Iceberg inputs: the current snapshot, its id recorded as the version read."""

    def read(
        self, spec: InputSpec, *, columns: Sequence[str] | None = None, since_version: int | None = None
    ) -> pa.RecordBatchReader:
        """Stream the table's current snapshot (``filter`` pushed into the scan); the snapshot id is recorded."""
        table = open_table(spec)
        if table is None:
            raise FileNotFoundError(f"no Iceberg table {spec.table!r} in the input catalog")
        snapshot = table.current_snapshot()
        tree = spec.predicate  # pushed down where Iceberg has an exact equivalent, then applied in Arrow
        fields = scan_columns(tree, columns)
        scan = table.scan(
            row_filter=to_iceberg(tree) if tree else AlwaysTrue(),
            selected_fields=tuple(fields) if fields else ("*",),
            snapshot_id=snapshot.snapshot_id if snapshot else None,
        )
        reader = with_version(scan.to_arrow_batch_reader(), snapshot.snapshot_id if snapshot else None)
        return filter_reader(reader, tree, columns) if tree else reader


# ---------------------------------------------------------------------------------------------- writing


def committed_version(table: Table, app_id: str) -> int | None:
    """The highest version ``app_id`` committed: the table property, or the snapshot summaries."""
    versions = []
    if (prop := table.properties.get(COMMIT_PROP_PREFIX + app_id)) is not None:
        versions.append(int(prop))
    for snapshot in table.snapshots():
        summary = snapshot.summary
        if summary is not None and summary.get(APP_ID_PROP) == app_id and summary.get(VERSION_PROP):
            versions.append(int(summary.get(VERSION_PROP)))
    return max(versions) if versions else None


def ensure_table(sink: SinkSpec, schema: pa.Schema) -> Table:
    """Load the sink table, or create it (and its namespace) with ``schema``; check ``schema`` against it."""
    if sink.partition_by:
        raise ValueError("sink.partition_by is not supported for Iceberg sinks yet; leave it empty")
    cat = catalog(sink.catalog)
    try:
        table = cat.load_table(sink.table)
    except NoSuchTableError:
        namespace = sink.table.rsplit(".", 1)[0] if "." in sink.table else None
        if namespace:
            cat.create_namespace_if_not_exists(namespace)
        try:
            table = cat.create_table(sink.table, schema=plain_schema(schema))
            logger.info("created Iceberg table %s", sink.table)
        except TableAlreadyExistsError:  # created concurrently
            table = cat.load_table(sink.table)
    if table.spec().fields:
        raise ValueError(
            f"Iceberg sink {sink.table!r} is partitioned; partitioned Iceberg sinks are not supported"
        )
    check_compatible(arrow_schema(table), schema, f"iceberg sink {sink.table!r}")
    return table


def _data_dir(table: Table) -> str:
    return table.properties.get("write.data.path", table.location().rstrip("/") + "/data")


class IcebergSink(Sink):
    """Iceberg sinks: one catalog commit per run, keyed by a table property (see the module docstring)."""

    def describe(self, sink: SinkSpec) -> str:
        return f"iceberg {sink.table!r}"

    def prepare(self, sink: SinkSpec, schema: pa.Schema) -> None:
        """Check ``schema`` against the table, creating the table (and its namespace) if there is none yet."""
        ensure_table(sink, schema)

    def last_committed(self, sink: SinkSpec, app_id: str) -> int | None:
        table = open_table(sink)
        return None if table is None else committed_version(table, app_id)

    def table_schema(self, sink: SinkSpec) -> pa.Schema | None:
        table = open_table(sink)
        return None if table is None else plain_schema(arrow_schema(table))

    def stage(self, sink: SinkSpec, data: SinkData, schema: pa.Schema | None = None) -> list[StagedFile]:
        """Write ``data`` as parquet files under the table's data folder (not yet committed); run on the workers."""
        reader = as_reader(data, schema)
        table = ensure_table(sink, reader.schema)
        # The data's own (plain) types in the table's column order: files must not carry Iceberg field ids.
        plain = plain_schema(reader.schema)
        file_schema = pa.schema([plain.field(name) for name in arrow_schema(table).names])
        return write_files(conform(reader, file_schema), _data_dir(table), target_file_rows=sink.target_file_rows)

    def commit_staged(self, sink: SinkSpec, commit: Commit) -> CommitResult:
        """One catalog commit adding exactly the files, tagged ``(app_id, version)`` (see the module docstring)."""
        app_id, version, files, schema = commit.app_id, commit.version, commit.files, commit.schema
        where = self.describe(sink)
        properties = {k: str(v) for k, v in commit.properties().items()}
        for attempt in range(1, MAX_COMMIT_ATTEMPTS + 1):
            table = ensure_table(sink, schema) if schema is not None else open_table(sink)
            if table is None:
                raise ValueError(f"{where} does not exist yet: pass schema= to create it")
            done = committed_version(table, app_id)
            if done is not None and done >= version:
                return self.skipped(sink, commit, done)
            check_files_exist(files)
            try:
                tx = _without_client_retries(table).transaction()
                if sink.mode == "overwrite":
                    tx.delete(AlwaysTrue(), snapshot_properties=properties)
                tx.add_files([f.path for f in files], snapshot_properties=properties)
                tx.set_properties({COMMIT_PROP_PREFIX + app_id: str(version)})
                committed = tx.commit_transaction()  # the table as THIS commit left it (the catalog's answer)
                break
            except CommitFailedException as exc:
                if attempt == MAX_COMMIT_ATTEMPTS:
                    raise
                logger.warning(
                    "%s: commit of %s conflicted (%s); re-checking", where, commit.key, exc
                )
                time.sleep(random.uniform(0.05, 0.2) * attempt)
        return self.committed(sink, commit, _snapshot_of(committed, app_id, version))

    def optimize(self, sink: SinkSpec, *, expire_older_than_hours: float | None = None) -> dict[str, Any]:
        """Rewrite the current snapshot into ``target_file_rows``-sized files in one commit (pyiceberg 0.12 has no
        compaction of its own); the commit fails instead of losing rows if another writer committed meanwhile.
        With ``expire_older_than_hours``, also expire older snapshots (their files stay until an orphan clean-up).
        """
        table = open_table(sink)
        if table is None:
            raise FileNotFoundError(f"no Iceberg table {sink.table!r}")
        snapshot = table.current_snapshot()
        data_files = table.inspect.files()
        rows = sum(data_files.column("record_count").to_pylist()) if len(data_files) else 0
        metrics: dict[str, Any] = {"files_before": len(data_files), "files_after": len(data_files)}
        if snapshot is not None and len(data_files) > math.ceil(rows / sink.target_file_rows):
            reader = table.scan(snapshot_id=snapshot.snapshot_id).to_arrow_batch_reader()
            file_schema = plain_schema(reader.schema).remove_metadata()  # no field ids in the files
            files = write_files(
                conform(reader, file_schema), _data_dir(table), target_file_rows=sink.target_file_rows
            )
            properties = {"gliclass.operation": "optimize"}
            with table.transaction() as tx:
                tx.delete(AlwaysTrue(), snapshot_properties=properties)
                tx.add_files([f.path for f in files], snapshot_properties=properties)
            metrics["files_after"] = len(files)
        if expire_older_than_hours is not None:
            table = open_table(sink)
            cutoff = datetime.now(UTC) - timedelta(hours=expire_older_than_hours)
            table.maintenance.expire_snapshots().older_than(cutoff).commit()
        logger.info("iceberg %s optimized: %s", sink.table, metrics)
        return metrics


def _without_client_retries(table: Table) -> Table:
    """A copy of ``table`` whose in-memory properties say ``commit.retry.num-retries = 0`` (not written back)."""
    properties = {**table.metadata.properties, TableProperties.COMMIT_NUM_RETRIES: "0"}
    local = copy.copy(table)
    local.metadata = table.metadata.model_copy(update={"properties": properties})
    return local


def _snapshot_of(committed: Table, app_id: str, version: int) -> int | None:
    """The id of the snapshot our commit made: the current one of the metadata it committed (None if that
    snapshot is not tagged with our key, e.g. when the commit added no snapshot)."""
    snapshot = committed.current_snapshot()
    summary = snapshot.summary if snapshot is not None else None
    if summary is not None and summary.get(APP_ID_PROP) == app_id and summary.get(VERSION_PROP) == str(version):
        return snapshot.snapshot_id
    return None
