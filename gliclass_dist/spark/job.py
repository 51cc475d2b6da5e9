"""Batch classification jobs on Spark: read -> classify (``mapInArrow``) -> stage files -> ONE driver commit.

``run_job(spark, spec)`` runs a whole job from a ``JobSpec`` and returns the same summary as the Ray job
(``gliclass_dist.run.RunSummary.to_dict``, with Spark's ``writer``/``tasks``/``task_gpus`` fields)::

    {"job_key": ..., "commit_key": "name-1a2b@v0", "committed": True, "table_version": 3,
     "rows_in": 2225, "rows_out": 2225, "status_counts": {"ok": 2225}, "rows_per_s": 61.2, ...}

``main(argv)`` is the command line (``jobs/spark_classify.py``)::

    spark-submit jobs/spark_classify.py --spec job.yaml [--set key=value ...] [--summary-json PATH]

Reading. Parquet / CSV / JSONL with Spark's readers; Delta with Spark's Delta source when the Delta jars
are on the classpath, else the table's data files at a pinned version (listed by delta-rs) read by Spark's
parquet reader; incremental Delta runs and Iceberg inputs are read through ``gliclass_dist.connectors`` on
the driver and handed to Spark as Arrow (fine for increments and modest tables; put the Iceberg Spark
runtime on the classpath and read ``spark.table(...)`` yourself for large ones).

Writing, exactly once. The run is planned by ``gliclass_dist.run.plan_run``, as in the Ray job: keyed by
``(spec.job_key, version)``, skipped before any work when the key is already committed.

- Delta with the Delta jars (``--delta-writer spark``/``auto``): Spark's own Delta writer with
  ``txnAppId``/``txnVersion`` set to the key, the same app transaction the connectors read back.
- Otherwise (delta-rs, Iceberg, Parquet): every inference task writes its results as parquet files where
  the sink will commit them (``connectors.stage_files``) and returns one small row listing them; the
  driver collects those rows and commits exactly that list once (``connectors.commit_files``). Spark hands
  the driver the result of ONE successful attempt per partition, so the files of a failed, retried or
  speculative attempt are never in the list: no row is lost or duplicated when a task is retried (those
  files stay unreferenced until ``vacuum`` / orphan clean-up).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from gliclass_dist import connectors
from gliclass_dist.connectors import CommitResult, StagedFile
from gliclass_dist.predicate import to_spark
from gliclass_dist.run import (
    RunSummary,
    format_summary,
    input_columns,
    job_parser,
    load_job_spec,
    merge_counts,
    plan_run,
    write_summary_json,
)
from gliclass_dist.spark.resources import profile_for_resources
from gliclass_dist.spark.udf import (
    ClassifyConfig,
    ModelOptions,
    PartitionStats,
    arrow_output_schema,
    check_columns,
    classify_batches,
    classify_dataframe,
    model_loads,
    ship_model,
    task_gpu_addresses,
)
from gliclass_dist.spec import InputSpec, JobSpec

if TYPE_CHECKING:
    from pyspark.resource import ResourceProfile
    from pyspark.sql import DataFrame, SparkSession

logger = logging.getLogger(__name__)

STAGE_ROW_FIELDS = [
    ("partition", pa.int32()),
    ("attempt", pa.int32()),
    ("pid", pa.int32()),
    ("gpus", pa.list_(pa.string())),
    ("model_loads", pa.int32()),
    ("rows", pa.int64()),
    ("seconds", pa.float64()),
    ("status_counts", pa.string()),
    ("files", pa.string()),
]
STAGE_ROW_SCHEMA = pa.schema(STAGE_ROW_FIELDS)
STAGE_ROW_DDL = (
    "partition int, attempt int, pid int, gpus array<string>, model_loads int, rows long, seconds double, "
    "status_counts string, files string"
)


# ---------------------------------------------------------------------------------------------- reading


def jvm_class_available(spark: SparkSession, name: str) -> bool:
    """Whether the driver JVM can load class ``name`` (e.g. the Delta or Kafka data source)."""
    try:
        jvm = spark.sparkContext._jvm  # type: ignore[attr-defined]
        return bool(jvm.org.apache.spark.util.Utils.classIsLoadable(name))
    except Exception:  # noqa: BLE001 - Spark Connect, no JVM access: treat as absent
        return False


def delta_spark_available(spark: SparkSession) -> bool:
    """Whether Spark's own Delta source (delta-spark jars) is on the classpath."""
    return jvm_class_available(spark, "io.delta.tables.DeltaTable")


def _arrow_to_spark(spark: SparkSession, reader: pa.RecordBatchReader, where: str) -> DataFrame:
    table = reader.read_all()
    logger.info("%s: %d rows read on the driver and handed to Spark as Arrow", where, table.num_rows)
    return spark.createDataFrame(table)


def _read_delta_files(spark: SparkSession, spec: InputSpec, version: int) -> DataFrame | None:
    """The Delta table at ``version`` read by Spark's parquet reader from delta-rs's file list, or None when
    the table uses features a plain parquet read would get wrong (deletion vectors, column mapping)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    from gliclass_dist.connectors.base import plain_schema
    from gliclass_dist.connectors.delta import arrow_schema, open_table

    table = open_table(spec.path, spec.storage_options, version)
    protocol = table.protocol()
    features = set(protocol.reader_features or [])
    if features & {"deletionVectors", "columnMapping"} or protocol.min_reader_version == 2:
        logger.info("delta %s uses reader features %s; reading it through delta-rs", spec.path, sorted(features))
        return None
    schema = from_arrow_schema(plain_schema(arrow_schema(table)))
    files = table.file_uris()
    if not files:
        return spark.createDataFrame([], schema)
    root = table.table_uri.rstrip("/")
    return spark.read.schema(schema).option("basePath", root).parquet(*files)


def read_input(
    spark: SparkSession, spec: InputSpec, *, since_version: int | None = None, version: int | None = None
) -> DataFrame:
    """The job input as a Spark DataFrame with ``spec.filter`` applied.

    Delta: ``version`` pins the table version read (default: the latest); ``since_version`` keeps only rows
    added after it (incremental runs, read with the connectors' change reader on the driver).
    """
    fmt = spec.format
    if fmt == "iceberg":
        return _arrow_to_spark(spark, connectors.read_source(spec), f"iceberg {spec.table}")  # filter applied
    if fmt == "delta":
        if since_version is not None:
            reader, _ = connectors.read_delta_changes(
                spec.path, since_version, storage_options=spec.storage_options, filter=spec.filter
            )
            return _arrow_to_spark(spark, reader, f"delta {spec.path} changes after version {since_version}")
        version = connectors.input_version(spec) if version is None else version
        df = None
        if delta_spark_available(spark):
            df = spark.read.format("delta").option("versionAsOf", version).load(spec.path)
        else:
            df = _read_delta_files(spark, spec, version)
        if df is None:
            return _arrow_to_spark(spark, connectors.read_source(spec), f"delta {spec.path}")
    elif fmt == "parquet":
        df = spark.read.parquet(spec.path)
    elif fmt == "csv":
        df = spark.read.option("header", True).option("inferSchema", True).csv(spec.path)
    elif fmt == "jsonl":
        df = spark.read.json(spec.path)
    else:  # the spec's Literal makes this unreachable
        raise ValueError(f"unsupported input.format {fmt!r}")
    return df.where(to_spark(spec.predicate)) if spec.predicate else df  # a Column: no SQL text is parsed


# ---------------------------------------------------------------------------------------------- staging


@dataclass
class StagedParts:
    """The per-task rows of a staged run, merged: files to commit, rows, statuses, where tasks ran."""

    files: list[StagedFile] = field(default_factory=list)
    rows: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)
    tasks: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_rows(cls, rows: Sequence[Any]) -> StagedParts:
        parts = cls()
        counts: list[dict[str, int]] = []
        for row in rows:
            record = row.asDict() if hasattr(row, "asDict") else dict(row)
            parts.files.extend(StagedFile(**f) for f in json.loads(record["files"]))
            parts.rows += int(record["rows"])
            counts.append(json.loads(record["status_counts"]))
            parts.tasks.append({k: v for k, v in record.items() if k not in ("files", "status_counts")})
        parts.status_counts = merge_counts(counts)
        return parts


def stage_partition(
    batches: Iterator[pa.RecordBatch], config: ClassifyConfig, sink: Any, target: pa.Schema
) -> Iterator[pa.RecordBatch]:
    """One inference task: classify its batches, write them as staged files, return ONE row describing them."""
    from pyspark import TaskContext

    stats = PartitionStats()
    classified = (batch.cast(target) for batch in classify_batches(batches, config, stats))
    files = connectors.stage_files(sink, classified, schema=target)
    ctx = TaskContext.get()
    row = {
        "partition": ctx.partitionId() if ctx else -1,
        "attempt": ctx.attemptNumber() if ctx else 0,
        "pid": os.getpid(),
        "gpus": task_gpu_addresses(),
        "model_loads": len(model_loads()),
        "rows": stats.rows,
        "seconds": stats.seconds,
        "status_counts": json.dumps(dict(stats.status_counts)),
        "files": json.dumps([f.__dict__ for f in files]),
    }
    yield pa.RecordBatch.from_pylist([row], schema=STAGE_ROW_SCHEMA)


def stage_classified(
    df: DataFrame, config: ClassifyConfig, sink: Any, *, profile: ResourceProfile | None = None
) -> DataFrame:
    """A lazy DataFrame of one row per inference task: ``df`` classified and staged into ``sink``'s files."""
    check_columns(df, config)
    target = arrow_output_schema(df.schema, config.keep)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return stage_partition(batches, config, sink, target)

    return df.mapInArrow(run, STAGE_ROW_DDL, profile=profile)


def write_classified(
    df: DataFrame,
    config: ClassifyConfig,
    spec: JobSpec,
    *,
    version: int,
    app_id: str | None = None,
    profile: ResourceProfile | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> tuple[CommitResult, StagedParts]:
    """Classify ``df`` and land it in ``spec.sink`` in ONE commit tagged ``(app_id, version)``.

    The tasks stage files, the driver collects their list (one successful attempt per partition) and commits
    it; a key already committed writes nothing (``committed=False``; the staged files are deleted).
    """
    app_id = app_id or spec.job_key
    schema = arrow_output_schema(df.schema, config.keep)
    connectors.prepare(spec.sink, schema)  # a schema clash fails here, before any compute
    rows = stage_classified(df, config, spec.sink, profile=profile).collect()
    parts = StagedParts.from_rows(rows)
    result = connectors.commit_files(
        spec.sink, parts.files, app_id=app_id, version=version, schema=schema, extra_metadata=extra_metadata
    )
    return result, parts


def write_delta_spark(
    df: DataFrame,
    config: ClassifyConfig,
    spec: JobSpec,
    *,
    version: int,
    profile: ResourceProfile | None = None,
) -> tuple[CommitResult, StagedParts]:
    """Classify ``df`` and write it with Spark's own Delta writer, idempotently (``txnAppId``/``txnVersion``).

    ``table_version`` is the version of this write's own commit (the one carrying its app transaction), not
    the table's latest version (another writer may have committed since).
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from gliclass_dist.connectors.delta import commit_version, open_table

    app_id = spec.job_key
    out = classify_dataframe(
        df, config.model, config.labels, text_column=config.text_column, keep=config.keep,
        batch_rows=config.batch_rows, profile=profile,
    ).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts = {r["status"]: int(r["count"]) for r in out.groupBy("status").agg(F.count("*").alias("count")).collect()}
        writer = (
            out.write.format("delta").mode(spec.sink.mode)
            .option("txnAppId", app_id).option("txnVersion", version)
            .option("userMetadata", json.dumps({"gliclass.app_id": app_id, "gliclass.version": str(version)}))
        )
        if spec.sink.partition_by:
            writer = writer.partitionBy(*spec.sink.partition_by)
        before = open_table(spec.sink.path, spec.sink.storage_options)
        based_on = -1 if before is None else before.version()  # our commit comes after this version
        writer.save(spec.sink.path)
    finally:
        out.unpersist()
    key = connectors.commit_key(app_id, version)
    written = commit_version(
        spec.sink.path, app_id, version, after=based_on, storage_options=spec.sink.storage_options
    )
    parts = StagedParts(rows=sum(counts.values()), status_counts=dict(sorted(counts.items())))
    if written is None:  # Delta skips a write whose txnVersion is not newer than the recorded one
        reason = f"delta {spec.sink.path!r}: no commit after version {based_on} carries {key} (already committed)"
        return CommitResult(committed=False, key=key, skipped_reason=reason), parts
    result = CommitResult(committed=True, key=key, table_version=written, rows=parts.rows)
    return result, parts


# ---------------------------------------------------------------------------------------------- the job


def run_job(
    spark: SparkSession,
    spec: JobSpec,
    *,
    partitions: int | None = None,
    delta_writer: str = "auto",
    count_input: bool = True,
    ship: bool | None = None,
) -> dict[str, Any]:
    """Run a whole job: read, classify, land exactly once. Returns the summary (see the module docstring).

    ``partitions`` repartitions the input before the inference stage (default: keep the input's partitions;
    with a GPU profile, ``defaultParallelism``, so the read stage keeps the default profile).
    ``delta_writer``: ``auto`` (Spark's Delta writer when its jars are present, else delta-rs), ``spark`` or
    ``delta-rs``. ``ship``: distribute the model folder with ``addArchive`` (default: when not in local mode).
    """
    started = time.perf_counter()
    plan = plan_run(spec)
    if plan.skipped:
        return RunSummary.for_run(spec, plan, engine="spark").finish(started).to_dict()

    options = ship_model(spark, ModelOptions.from_job(spec), ship=ship)
    config = ClassifyConfig(
        options, spec.labels, text_column=spec.input.text_column, keep=tuple(spec.keep_columns),
        batch_rows=spec.resources.batch_rows,
    )
    summary = RunSummary.for_run(spec, plan, engine="spark", model=options.model_name)
    df = read_input(spark, spec.input, since_version=plan.since_version, version=plan.input_version)
    columns = input_columns(spec)
    check_columns(df, config)
    df = df.select(*columns)
    profile = profile_for_resources(spark, spec.resources)
    if partitions or profile is not None:
        df = df.repartition(partitions or spark.sparkContext.defaultParallelism)
    rows_in = df.count() if count_input else None

    use_spark_delta = spec.sink.format == "delta" and (
        delta_writer == "spark" or (delta_writer == "auto" and delta_spark_available(spark))
    )
    if delta_writer == "spark" and not delta_spark_available(spark):
        raise RuntimeError("--delta-writer spark needs the Delta jars on the classpath (delta-spark)")
    classify_started = time.perf_counter()
    if use_spark_delta:
        result, parts = write_delta_spark(df, config, spec, version=plan.version, profile=profile)
    else:
        extra = plan.commit_metadata(summary.model, spec.name)
        result, parts = write_classified(df, config, spec, version=plan.version, profile=profile, extra_metadata=extra)
    seconds = time.perf_counter() - classify_started
    summary.landed(result, rows=parts.rows, status_counts=parts.status_counts, classify_s=seconds, rows_in=rows_in)
    summary.details = {
        "writer": "spark-delta" if use_spark_delta else "staged",
        "inference_profile": profile is not None,
        "tasks": len(parts.tasks),
        "task_gpus": sorted({g for t in parts.tasks for g in (t.get("gpus") or [])}),
    }
    logger.info("job %s done: %s", plan.job_key, summary.finish(started))
    return summary.to_dict()


# ---------------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = job_parser(
        "Run a classification job (a YAML job spec) on Spark and land it in Delta / Iceberg / Parquet exactly "
        "once. Example: spark-submit jobs/spark_classify.py --spec job.yaml --set sink.path=/tmp/out. "
        "Exit codes: 0 done (also when the job key was already committed), 2 bad spec, 1 failure.",
        prog="spark_classify.py",
    )
    parser.add_argument("--partitions", type=int, default=None,
                        help="repartition the input into N inference tasks (default: the input's partitions)")
    parser.add_argument("--delta-writer", choices=["auto", "spark", "delta-rs"], default="auto",
                        help="Delta sink: Spark's Delta writer (needs delta-spark jars) or delta-rs (default: auto)")
    parser.add_argument("--no-ship-model", action="store_true",
                        help="do not ship the model folder to the executors (it is on storage every executor mounts)")
    parser.add_argument("--no-count", action="store_true", help="skip the separate count of input rows")
    return parser


def get_session(app_name: str) -> tuple[SparkSession, bool]:
    """The active session (``spark-submit``/notebook) or a new one; True when this call created it."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active, False
    return SparkSession.builder.appName(app_name).getOrCreate(), True


def main(argv: Sequence[str] | None = None) -> int:
    """``spark-submit jobs/spark_classify.py --spec job.yaml [--set k=v ...] [--summary-json PATH]``."""
    args = build_parser().parse_args(argv)
    spec = load_job_spec(args.spec, args.overrides, verbose=args.verbose)
    if spec is None:
        return 2
    spark, created = get_session(f"gliclass-{spec.name}")
    try:
        summary = run_job(
            spark, spec, partitions=args.partitions, delta_writer=args.delta_writer,
            count_input=not args.no_count, ship=False if args.no_ship_model else None,
        )
    finally:
        if created:
            spark.stop()
    print(format_summary(summary), flush=True)
    print(json.dumps({k: v for k, v in summary.items() if k != "tasks"}, default=str), flush=True)
    write_summary_json(summary, args.summary_json)
    return 0


__all__ = [
    "StagedParts",
    "delta_spark_available",
    "main",
    "read_input",
    "run_job",
    "stage_classified",
    "write_classified",
]
