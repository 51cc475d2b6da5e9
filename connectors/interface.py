"""The connector interface: ``Source`` reads a job input, ``Sink`` lands results exactly once, and a registry
picks the implementation of a format.

Implementations register by import path (``"module:Class"``) and are imported on first use, so
``deltalake`` and ``pyiceberg`` stay optional: a Parquet job never imports them (the style of pyiceberg's
``FileIO`` registry). ``register_source`` / ``register_sink`` add or replace a format.
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import pyarrow as pa

from gliclass_dist.spec import InputSpec, SinkSpec

from .base import (
    Commit,
    CommitResult,
    SinkData,
    StagedFile,
    as_reader,
    check_compatible,
    check_key,
    dedupe_files,
    delete_files,
    plain_schema,
    skip_result,
)

logger = logging.getLogger(__name__)


class Source(ABC):
    """Reads one input format as a stream of Arrow record batches.

    What every implementation guarantees:

    - ``read`` streams: it returns a ``pa.RecordBatchReader`` and never holds the whole input in memory.
    - Its batches have plain Arrow types (``base.plain_schema``: string, binary, list; no view or large types).
    - ``spec.filter`` is applied with SQL null logic (``gliclass_dist.predicate``), so every format keeps the
      same rows for the same filter; ``columns`` projects the result (the filter may use other columns).
    - A versioned format records the version it read, pinned when the read starts, in the reader's schema
      metadata (``base.with_version``; ``base.source_version`` reads it back).
    - ``incremental`` sources accept ``since_version`` and return exactly the rows added in later versions;
      the others are never called with it (the facade refuses it first).
    """

    incremental: ClassVar[bool] = False

    @abstractmethod
    def read(
        self, spec: InputSpec, *, columns: Sequence[str] | None = None, since_version: int | None = None
    ) -> pa.RecordBatchReader:
        """Stream the input (only rows added after ``since_version`` when given, for incremental sources)."""

    def version(self, spec: InputSpec) -> int:
        """The current version of a versioned input (what an incremental run reads up to)."""
        raise ValueError(f"input_version needs a delta input, not {spec.format}")


class Sink(ABC):
    """Lands result batches in a table, exactly once per key ``(app_id, version)``.

    What every implementation guarantees:

    - Idempotent by key: ``app_id`` is stable for a job, ``version`` an int that grows with each run. Once a
      version is committed for ``app_id``, a commit of that version or an older one writes nothing and
      returns ``committed=False`` with ``skipped_reason``. The key lives in the table itself, so a retry
      from any process sees it (``last_committed`` reads it back).
    - Staged files are never referenced: ``stage`` writes data files (fresh uuid names, ``target_file_rows``
      rows each) that no reader of the table sees until ``commit_files`` lists them. A retried worker's extra
      files stay unreferenced; a skipped ``commit_files`` deletes its list (best effort).
    - One commit: ``commit_files`` adds exactly the listed files (duplicates once) in ONE atomic commit that
      also records the key, or fails and adds nothing. An empty list still records the key. It never commits
      a file that is gone (``FileNotFoundError``). ``result.table_version`` is the version THIS commit made,
      never "the latest" (another writer may have committed since).
    - Schemas: appends need the table's columns and types (``SinkSchemaError`` names the columns); the table
      is created on the first commit (``schema=`` is then required). ``mode == "overwrite"`` replaces the rows.

    Parquet folders keep the atomicity only where a rename is atomic (local, HDFS; not object stores).

    Written here once: ``commit`` (single process: skip if committed, else ``stage`` and ``commit_files``)
    and ``commit_files`` (check the key, list each file once, call the format's ``commit_staged``). A format
    implements ``last_committed``, ``table_schema``, ``stage``, ``commit_staged`` and ``optimize``.
    """

    @abstractmethod
    def last_committed(self, spec: SinkSpec, app_id: str) -> int | None:
        """The highest version ``app_id`` has committed to the table, or None (also when there is no table)."""

    @abstractmethod
    def table_schema(self, spec: SinkSpec) -> pa.Schema | None:
        """The table's Arrow schema with plain types, or None before the first commit."""

    @abstractmethod
    def stage(self, spec: SinkSpec, data: SinkData, schema: pa.Schema | None = None) -> list[StagedFile]:
        """Worker side: write ``data`` as data files where the commit will reference them, without committing."""

    @abstractmethod
    def commit_staged(self, spec: SinkSpec, commit: Commit) -> CommitResult:
        """Make ``commit`` (a checked key, files listed once): skip it with ``skipped`` if its key is already
        committed, else add exactly its files and record its key in one atomic commit, then ``committed``."""

    @abstractmethod
    def optimize(self, spec: SinkSpec, **options: Any) -> dict[str, Any]:
        """Compact a table fed by many small runs; returns what was done."""

    def commit_files(
        self,
        spec: SinkSpec,
        files: Sequence[StagedFile],
        *,
        app_id: str,
        version: int,
        schema: pa.Schema | None = None,
        extra_metadata: dict[str, Any] | None = None,
        begun: Any = None,
    ) -> CommitResult:
        """Driver side: commit exactly ``files`` in one commit tagged ``(app_id, version)``.

        ``begun`` is what ``begin`` returned when the run started (``commit`` passes it; None otherwise).
        """
        check_key(app_id, version)
        commit = Commit(app_id, version, dedupe_files(files), schema, dict(extra_metadata or {}), begun)
        return self.commit_staged(spec, commit)

    def skipped(self, spec: SinkSpec, commit: Commit, committed_version: int) -> CommitResult:
        """The result of a commit whose key is already committed; its staged files are deleted."""
        delete_files(commit.files)
        return skip_result(commit.app_id, commit.version, committed_version, self.describe(spec))

    def committed(self, spec: SinkSpec, commit: Commit, table_version: int | None = None) -> CommitResult:
        """The result (and log line) of a commit made as ``table_version`` (None where the format has none)."""
        result = CommitResult(
            committed=True, key=commit.key, table_version=table_version, rows=commit.rows, files=len(commit.files)
        )
        logger.info(
            "%s: committed %s as table version %s (%d rows, %d files)",
            self.describe(spec), result.key, table_version, result.rows, result.files,
        )
        return result

    def describe(self, spec: SinkSpec) -> str:
        """The table in log lines and messages, e.g. ``delta '/data/out'``."""
        return f"{spec.format} {spec.path!r}"

    def prepare(self, spec: SinkSpec, schema: pa.Schema) -> None:
        """Driver side, before distributed writes: raise ``SinkSchemaError`` if ``schema`` does not fit."""
        existing = self.table_schema(spec)
        if existing is not None:
            check_compatible(existing, schema, f"{spec.format} sink {spec.path!r}")

    def begin(self, spec: SinkSpec) -> Any:
        """State to take when a run starts, handed to ``commit_files(begun=...)`` by ``commit`` (default None)."""
        return None

    def commit(
        self,
        spec: SinkSpec,
        data: SinkData,
        *,
        app_id: str,
        version: int,
        extra_metadata: dict[str, Any] | None = None,
        schema: pa.Schema | None = None,
    ) -> CommitResult:
        """Stage ``data`` (streamed) and commit it once, tagged ``(app_id, version)``; a committed key is skipped
        before anything is written. ``schema`` is only needed for an empty iterable of batches."""
        check_key(app_id, version)
        begun = self.begin(spec)
        done = self.last_committed(spec, app_id)
        if done is not None and done >= version:
            return skip_result(app_id, version, done, self.describe(spec))
        reader = as_reader(data, schema)
        files = self.stage(spec, reader)
        return self.commit_files(
            spec,
            files,
            app_id=app_id,
            version=version,
            schema=plain_schema(reader.schema),
            extra_metadata=extra_metadata,
            begun=begun,
        )


_SOURCES: dict[str, str | type[Source]] = {
    "delta": f"{__package__}.delta:DeltaSource",
    "iceberg": f"{__package__}.iceberg:IcebergSource",
    "parquet": f"{__package__}.parquet:FileSource",
    "csv": f"{__package__}.parquet:FileSource",
    "jsonl": f"{__package__}.parquet:FileSource",
}
_SINKS: dict[str, str | type[Sink]] = {
    "delta": f"{__package__}.delta:DeltaSink",
    "iceberg": f"{__package__}.iceberg:IcebergSink",
    "parquet": f"{__package__}.parquet:ParquetSink",
}
_INSTANCES: dict[tuple[str, str], Any] = {}


def register_source(fmt: str, implementation: str | type[Source]) -> None:
    """Read ``fmt`` inputs with ``implementation``: a ``Source`` class or its ``"module:Class"`` path."""
    _SOURCES[fmt] = implementation
    _INSTANCES.pop(("source", fmt), None)


def register_sink(fmt: str, implementation: str | type[Sink]) -> None:
    """Write ``fmt`` sinks with ``implementation``: a ``Sink`` class or its ``"module:Class"`` path."""
    _SINKS[fmt] = implementation
    _INSTANCES.pop(("sink", fmt), None)


def source_for(fmt: str) -> Source:
    """The ``Source`` of an input format, imported on first use."""
    return _load("source", fmt, _SOURCES, Source)


def sink_for(fmt: str) -> Sink:
    """The ``Sink`` of a sink format, imported on first use."""
    return _load("sink", fmt, _SINKS, Sink)


def _load(kind: str, fmt: str, registry: dict[str, Any], base: type) -> Any:
    instance = _INSTANCES.get((kind, fmt))
    if instance is not None:
        return instance
    if fmt not in registry:
        raise ValueError(f"unknown table format {fmt!r} for a {kind} (known: {sorted(registry)})")
    implementation = registry[fmt]
    if isinstance(implementation, str):
        module, _, name = implementation.partition(":")
        implementation = getattr(importlib.import_module(module), name)
    if not (isinstance(implementation, type) and issubclass(implementation, base)):
        raise TypeError(f"the {kind} registered for {fmt!r} is not a {base.__name__}: {implementation!r}")
    instance = _INSTANCES[(kind, fmt)] = implementation()
    return instance
