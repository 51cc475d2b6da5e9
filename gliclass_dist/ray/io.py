"""Ray Data reads and writes for classification jobs, on top of ``gliclass_dist.connectors``.

Reading: Ray's own readers where they do the job (``read_parquet``/``read_csv``/``read_json``,
``read_delta`` at a pinned table version, ``read_iceberg``), plus ``DeltaChangesDatasource`` for
incremental runs: rows added to a Delta table in versions ``(since, until]``, read by parallel tasks.

Writing: ``StagedCommitDatasink``. Ray's write tasks stage parquet files where the sink will commit them
(``connectors.stage_files``, ``target_file_rows`` rows per file) and return small ``StagedFile`` records;
the driver then commits exactly that list ONCE, tagged with the job's key (``connectors.commit_files``).
A retried write task's files are never in the list, so a job lands every row exactly once, and the
driver never holds the rows themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import ray.data
from ray.data import Datasink, Datasource, ReadTask
from ray.data.block import BlockAccessor, BlockMetadata

from gliclass_dist import connectors
from gliclass_dist.connectors import CommitResult, StagedFile
from gliclass_dist.predicate import Predicate
from gliclass_dist.run import merge_counts, status_counts
from gliclass_dist.spec import InputSpec, SinkSpec

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- reading

# Read tasks (and an input filter, fused into them) get a runtime env of their own, which gives them worker
# processes of their own: reading one 100k-row Parquet file lifted a worker's private memory by 170-225 MB for
# half a second, and where that worker also held the tokenize stage's level every later read stacked on it (the
# largest worker's peak grew 1.34x from 1M to 5M rows; 1.03x with reads apart: bench/README.md, Scale).
READ_STAGE_ENV = {"GLICLASS_RAY_STAGE": "read"}


def read_remote_args() -> dict[str, Any]:
    """Ray remote args of the job's read tasks (a fresh dict: Ray may keep and change the one it is given)."""
    return {"runtime_env": {"env_vars": dict(READ_STAGE_ENV)}}


def read_input(
    spec: InputSpec,
    *,
    since_version: int | None = None,
    until_version: int | None = None,
    columns: Sequence[str] | None = None,
    parallelism: int = -1,
) -> Any:
    """The job input as a Ray ``Dataset``, before ``apply_filter`` (its schema is known without reading rows).

    For Delta, ``until_version`` pins the table version read (default: the latest) and ``since_version``
    keeps only rows added after it (incremental runs). ``columns`` projects the input; with a filter the
    projection waits for ``apply_filter`` (the filter may use other columns). The read tasks run with
    ``read_remote_args()``, in worker processes of their own.
    """
    fmt = spec.format
    cols = list(columns) if columns and not spec.filter else None
    if fmt == "iceberg":
        from pyiceberg.expressions import AlwaysTrue

        from gliclass_dist.predicate import to_iceberg

        tree = spec.predicate
        return ray.data.read_iceberg(
            table_identifier=spec.table,
            catalog_kwargs=dict(spec.catalog),
            row_filter=to_iceberg(tree) if tree else AlwaysTrue(),  # push-down; apply_filter is exact
            selected_fields=tuple(cols) if cols else ("*",),
            ray_remote_args=read_remote_args(),
        )
    if fmt == "delta":
        version = connectors.input_version(spec) if until_version is None else until_version
        if since_version is None:
            return ray.data.read_delta(
                spec.path, version=version, storage_options=spec.storage_options or None, columns=cols,
                ray_remote_args=read_remote_args(),
            )
        source = DeltaChangesDatasource(
            spec.path, since_version, version, storage_options=spec.storage_options, columns=cols
        )
        return ray.data.read_datasource(source, override_num_blocks=None if parallelism < 0 else parallelism,
                                        ray_remote_args=read_remote_args())
    if fmt == "parquet":
        return ray.data.read_parquet(spec.path, columns=cols, ray_remote_args=read_remote_args())
    if fmt == "csv":
        ds = ray.data.read_csv(spec.path, ray_remote_args=read_remote_args())
    elif fmt == "jsonl":
        ds = ray.data.read_json(spec.path, lines=True, ray_remote_args=read_remote_args())
    else:  # the spec's Literal makes this unreachable; kept for a clear message
        raise ValueError(f"unsupported input.format {fmt!r}")
    return ds.select_columns(cols) if cols else ds


def apply_filter(ds: Any, spec: InputSpec, columns: Sequence[str] | None = None) -> Any:
    """``ds`` from ``read_input`` with ``spec.filter`` applied (fused into the read tasks) and projected.

    The filter travels to the tasks as the tree ``JobSpec`` validation parsed (``gliclass_dist.predicate``);
    a filter naming a missing column, or comparing mismatched types, fails here, on the driver.
    """
    from gliclass_dist.predicate import FilterError, check_schema

    tree = spec.predicate
    if tree is None:
        return ds
    schema = ds.schema(fetch_if_missing=True)
    try:
        check_schema(tree, getattr(schema, "base_schema", schema))
    except FilterError as exc:
        raise ValueError(f"input.filter {spec.filter!r}: {exc}") from None
    ds = ds.map_batches(filter_batch, batch_format="pyarrow", batch_size=None, fn_kwargs={"predicate": tree},
                        **read_remote_args())  # the read's remote args: fused into the read tasks
    return ds.select_columns(list(columns)) if columns else ds


def filter_batch(batch: pa.Table, *, predicate: Predicate) -> pa.Table:
    """Rows of ``batch`` for which ``predicate`` is true (SQL logic: unknown drops the row)."""
    from gliclass_dist.predicate import to_arrow

    return batch.filter(to_arrow(predicate))


class DeltaChangesDatasource(Datasource):
    """Rows added to a Delta table in versions ``(since_version, until_version]``.

    Each read task covers a contiguous range of versions and reads it with Delta's change data feed
    (inserts and update post-images), or, for a version the feed cannot start at (the create, a schema
    change), the data files that version added.
    """

    def __init__(
        self,
        path: str,
        since_version: int,
        until_version: int,
        *,
        storage_options: dict[str, str] | None = None,
        columns: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if since_version > until_version:
            raise ValueError(
                f"delta input {path!r}: the last committed input version {since_version} is newer than the "
                f"table's version {until_version}: was the table re-created? Use a new idempotency_key."
            )
        self.path = path
        self.since_version = since_version
        self.until_version = until_version
        self.storage_options = dict(storage_options or {})
        from gliclass_dist.connectors.delta import schema_at

        try:
            self.schema = schema_at(path, until_version, storage_options=self.storage_options, columns=columns)
        except FileNotFoundError:
            raise FileNotFoundError(f"no Delta table at input.path {path!r}") from None

    def get_name(self) -> str:
        return "DeltaChanges"

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None):
        versions = list(range(self.since_version + 1, self.until_version + 1))
        if not versions:
            return []
        parts = max(1, min(parallelism if parallelism > 0 else len(versions), len(versions)))
        size = -(-len(versions) // parts)
        tasks = []
        for start in range(0, len(versions), size):
            first, last = versions[start], versions[min(start + size, len(versions)) - 1]
            meta = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None)
            tasks.append(
                ReadTask(
                    _version_range_reader(self.path, first, last, self.storage_options, self.schema),
                    meta,
                    schema=self.schema,
                    per_task_row_limit=per_task_row_limit,
                )
            )
        return tasks


def _version_range_reader(path: str, first: int, last: int, storage_options: dict[str, str], target: pa.Schema):
    """A read task's function: the rows added in versions ``first..last``, as tables of ``target``."""

    def read() -> Iterator[pa.Table]:
        from gliclass_dist.connectors.delta import read_versions

        for batch in read_versions(path, first, last, storage_options=storage_options, schema=target):
            if batch.num_rows:
                yield pa.Table.from_batches([batch], schema=target)

    return read


# ---------------------------------------------------------------------------------------------- blocks


def model_blocks(ds: Any, rows: int) -> Any:
    """``ds`` cut into blocks of at most ``rows`` rows, the unit Ray Data hands to one model actor.

    A large input block would otherwise go to a single actor whole, leaving the rest of the pool idle. Added
    right after a ``map_batches`` stage (the tokenize stage), Ray Data fuses the cut into that stage's tasks
    (``MapBatches -> StreamingRepartition``): no stage, task or copy of its own; streaming, no shuffle.
    """
    return ds.repartition(target_num_rows_per_block=rows)


# ---------------------------------------------------------------------------------------------- writing


@dataclass
class StagedPart:
    """What one write task returns: the files it staged and the rows per status it wrote."""

    files: list[StagedFile] = field(default_factory=list)
    rows: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)


class StagedCommitDatasink(Datasink):
    """Workers stage files, the driver commits them once with ``(app_id, version)``.

    After ``Dataset.write_datasink`` returns, ``result`` holds the ``CommitResult`` and ``parts`` the
    per-task ``StagedPart`` records (files, rows, status counts).
    """

    def __init__(
        self,
        sink: SinkSpec,
        schema: pa.Schema,
        *,
        app_id: str,
        version: int,
        extra_metadata: dict[str, Any] | None = None,
    ) -> None:
        self.sink = sink
        self.schema = schema
        self.app_id = app_id
        self.version = version
        self.extra_metadata = dict(extra_metadata or {})
        self.result: CommitResult | None = None
        self.parts: list[StagedPart] = []

    def get_name(self) -> str:
        return f"Stage{self.sink.format.capitalize()}Files"

    @property
    def min_rows_per_write(self) -> int | None:
        return self.sink.target_file_rows

    def on_write_start(self, schema: pa.Schema | None = None) -> None:
        logger.info("writing %s sink %s: staging files, then one commit as %s", self.sink.format,
                    self.sink.path or self.sink.table, connectors.commit_key(self.app_id, self.version))

    def write(self, blocks: Any, ctx: Any) -> StagedPart:
        # One block at a time: a write task gathers up to ``target_file_rows`` rows (Ray's
        # ``min_rows_per_write``), which must not all sit in the worker's memory at once.
        part = StagedPart()
        counts: list[dict[str, int]] = []

        def batches() -> Iterator[pa.RecordBatch]:
            for block in blocks:
                table = _as_arrow(block)
                if not table.num_rows:
                    continue
                part.rows += table.num_rows
                counts.append(status_counts(table))
                yield from table.select(self.schema.names).cast(self.schema).to_batches()

        part.files = connectors.stage_files(self.sink, batches(), schema=self.schema)
        part.status_counts = merge_counts(counts)
        return part

    def on_write_complete(self, write_result: Any) -> None:
        self.parts = [p for p in write_result.write_returns if isinstance(p, StagedPart)]
        files = [f for p in self.parts for f in p.files]
        self.result = connectors.commit_files(
            self.sink, files, app_id=self.app_id, version=self.version, schema=self.schema,
            extra_metadata=self.extra_metadata,
        )

    def on_write_failed(self, error: Exception) -> None:
        logger.error("write to %s failed before the commit (nothing committed): %s",
                     self.sink.path or self.sink.table, error)


def _as_arrow(block: Any) -> pa.Table:
    if isinstance(block, pa.Table):
        return block
    return BlockAccessor.for_block(block).to_arrow()
