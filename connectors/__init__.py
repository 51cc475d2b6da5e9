"""Lakehouse I/O for gliclass-dist: read job inputs, land results exactly once (Delta, Iceberg, Parquet).

Reading::

    reader = read_source(job.input)                      # a pyarrow RecordBatchReader (streams)
    source_version(reader)                               # Delta version / Iceberg snapshot read, else None

Writing from one process (one commit per job run, tagged with a deterministic key)::

    result = commit(job.sink, results, app_id=job.job_key, version=v)
    result.committed, result.skipped_reason, result.table_version, result.rows, result.files

Writing from many workers (Ray tasks, Spark executors), committed once by the driver::

    prepare(job.sink, schema)                            # driver: check the schema, create an Iceberg table
    files = [stage_files(job.sink, part) for part in parts]   # workers: write parquet, return StagedFile lists
    commit_files(job.sink, [f for fs in files for f in fs], app_id=job.job_key, version=v, schema=schema)

Only the files in the list the driver passes are committed: a retried worker's extra files are never
referenced (Delta ``vacuum`` / Iceberg orphan clean-up remove them; a skipped commit deletes its list).

The key contract. ``(app_id, version)``: ``app_id`` is stable for a job (``JobSpec.job_key``), ``version``
an int that grows with each run. A commit whose version is <= the last committed one for that ``app_id``
writes nothing and returns ``committed=False`` with the reason. Where the key lives:
Delta = the app transaction in the Delta log (``DeltaTable.transaction_version``); Iceberg = the table
property ``gliclass.commit.<app_id>`` plus the snapshot summary ``gliclass.app_id``/``gliclass.version``;
Parquet = the key-named folder with its ``_COMMITTED`` marker. See each module for its guarantees.

Incremental jobs over a Delta input (each input row classified and landed exactly once)::

    since = last_committed(job.sink, job.job_key)         # None on the first run
    reader = read_source(job.input, since_version=since)  # rows of input versions > since (all rows if None)
    latest = source_version(reader)                       # the input version read, pinned at the start
    if since is None or latest > since:
        commit(job.sink, classify(reader), app_id=job.job_key, version=latest,
               extra_metadata={"gliclass.input_version": latest})

The committed version IS the input table version. A run that dies before its commit leaves nothing, and
the next run re-reads the same versions; a run retried after its commit finds ``latest <= since`` and
skips. Rows committed to the input while a run is going are picked up by the next run. (Classification
compute is at-least-once; landing is exactly once.) ``read_delta_changes`` is the same read as a function;
``connectors.delta.read_versions`` reads a bounded range ``first..last`` (parallel readers split a range with it).

The functions here dispatch by format to a ``Source`` or ``Sink`` (``connectors.interface``, where the
guarantees every implementation keeps are written down); ``source_for``/``sink_for`` return them and
``register_source``/``register_sink`` add a format. See connectors/README.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from gliclass_dist.spec import InputSpec, SinkSpec

from .base import (
    CommitResult,
    SinkData,
    SinkSchemaError,
    StagedFile,
    as_reader,
    commit_key,
    source_version,
)
from .interface import Sink, Source, register_sink, register_source, sink_for, source_for

__all__ = [
    "CommitResult",
    "Sink",
    "SinkSchemaError",
    "Source",
    "StagedFile",
    "commit",
    "commit_files",
    "commit_key",
    "input_version",
    "last_committed",
    "optimize",
    "prepare",
    "read_delta_changes",
    "read_source",
    "register_sink",
    "register_source",
    "sink_for",
    "source_for",
    "source_version",
    "stage_files",
    "table_schema",
]


def read_source(
    input_spec: InputSpec, *, since_version: int | None = None, columns: Sequence[str] | None = None
) -> pa.RecordBatchReader:
    """Stream the job input with ``input_spec.filter`` applied; plain Arrow types (string, list, binary).

    For Delta, ``since_version`` returns only rows added in later versions; ``source_version(reader)`` gives
    the Delta version (or Iceberg snapshot id) read. ``columns`` projects the input.
    """
    source = source_for(input_spec.format)
    if since_version is not None and not source.incremental:
        raise ValueError(f"since_version needs a delta input, not {input_spec.format}")
    return source.read(input_spec, columns=columns, since_version=since_version)


def input_version(input_spec: InputSpec) -> int:
    """The current version of a Delta input table (``FileNotFoundError`` naming the path if there is none)."""
    return source_for(input_spec.format).version(input_spec)


def read_delta_changes(
    path: str,
    since_version: int | None,
    *,
    storage_options: dict[str, str] | None = None,
    filter: str | None = None,
    until_version: int | None = None,
) -> tuple[pa.RecordBatchReader, int]:
    """``(rows added in versions > since_version, last version read)`` of a Delta table (all rows if None).

    The last version is ``until_version`` when given, else the latest version when the call starts.
    """
    from . import delta

    return delta.read_changes(
        path, since_version, storage_options=storage_options, predicate=filter, until_version=until_version
    )


def last_committed(sink_spec: SinkSpec, app_id: str) -> int | None:
    """The highest version ``app_id`` has committed to the sink, or None."""
    return sink_for(sink_spec.format).last_committed(sink_spec, app_id)


def table_schema(sink_spec: SinkSpec) -> pa.Schema | None:
    """The Arrow schema of the sink table, or None before the first commit."""
    return sink_for(sink_spec.format).table_schema(sink_spec)


def prepare(sink_spec: SinkSpec, schema: pa.Schema) -> None:
    """Driver-side check before distributed writes: raise ``SinkSchemaError`` if ``schema`` does not fit the
    table; create an Iceberg table that does not exist yet (Delta and Parquet tables start at the commit)."""
    sink_for(sink_spec.format).prepare(sink_spec, schema)


def stage_files(sink_spec: SinkSpec, data: SinkData, *, schema: pa.Schema | None = None) -> list[StagedFile]:
    """Worker side: write ``data`` as parquet files of ``target_file_rows`` rows where the sink will commit
    them, without committing. Returns small picklable ``StagedFile`` records for the driver."""
    return sink_for(sink_spec.format).stage(sink_spec, as_reader(data, schema))


def commit_files(
    sink_spec: SinkSpec,
    files: Sequence[StagedFile],
    *,
    app_id: str,
    version: int,
    schema: pa.Schema | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> CommitResult:
    """Driver side: commit exactly ``files`` (from ``stage_files``) in ONE commit tagged ``(app_id, version)``.

    ``schema`` is the data's Arrow schema: needed to create a table that does not exist yet. An empty list
    still records the key (a run with no new rows is done too).
    """
    return sink_for(sink_spec.format).commit_files(
        sink_spec, files, app_id=app_id, version=version, schema=schema, extra_metadata=extra_metadata
    )


def commit(
    sink_spec: SinkSpec,
    data: SinkData,
    *,
    app_id: str,
    version: int,
    extra_metadata: dict[str, Any] | None = None,
    schema: pa.Schema | None = None,
) -> CommitResult:
    """Write ``data`` (a Table, RecordBatchReader or iterable of RecordBatches, streamed) and commit it once,
    atomically, tagged ``(app_id, version)``. Already committed (version <= last) => nothing written,
    ``committed=False``. Creates the table on first write; appends need a matching schema
    (``SinkSchemaError`` names the columns); ``sink_spec.mode == "overwrite"`` replaces the rows.
    ``schema`` is only needed for an empty iterable of batches.
    """
    return sink_for(sink_spec.format).commit(
        sink_spec, data, app_id=app_id, version=version, extra_metadata=extra_metadata, schema=schema
    )


def optimize(sink_spec: SinkSpec, **options: Any) -> dict[str, Any]:
    """Compact a sink fed by many small runs. Delta: ``optimize.compact()`` (``vacuum_retention_hours=`` to
    also vacuum). Iceberg: rewrite into ``target_file_rows`` files (``expire_older_than_hours=`` to expire
    snapshots). Parquet: nothing (reported in the result)."""
    return sink_for(sink_spec.format).optimize(sink_spec, **options)
