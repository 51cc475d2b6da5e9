"""Streaming classification on Spark Structured Streaming: new files (or Kafka records) -> classified rows in
a Delta / Iceberg / Parquet sink, each micro-batch committed exactly once.

::

    spark-submit jobs/spark_stream.py --spec job.yaml --checkpoint /chk/topics [--trigger available-now]
    spark-submit --packages org.apache.spark:spark-sql-kafka-0-10_2.13:<spark version> jobs/spark_stream.py \\
        --spec job.yaml --checkpoint /chk/topics --source kafka --kafka-bootstrap host:9092 --kafka-topic texts

Sources. ``files`` (default): new Parquet / JSON-lines / CSV files landing in ``input.path`` (the spec's
``input.format``), with the schema of the files already there or ``--schema``; ``kafka`` when Spark's Kafka
connector is on the classpath: the record value is the text (or a JSON object parsed with ``--schema``), the
key (or ``topic-partition-offset``) the id, and ``topic``/``partition``/``offset``/``timestamp`` can be kept
as passthrough columns.

Exactly once. ``foreachBatch`` classifies each micro-batch (the same staged ``mapInArrow`` stage as the
batch job) and commits it with ``(job_key, batch_id)`` as the idempotency key. Spark re-runs a micro-batch
after a restart when the batch's end was not yet recorded in the checkpoint, with the same id and the same
input; the sink then reports the key as committed and the batch writes nothing. A stream started on a FRESH
checkpoint would restart batch ids at 0, so it is refused while the sink already holds commits of the key:
use a new ``idempotency_key`` (or the old checkpoint).

Triggers: ``available-now`` (process what is there, in ``--max-files-per-trigger`` slices, then stop),
``once``, ``processing-time=<interval>`` (e.g. ``processing-time=30 seconds``; runs until stopped or
``--timeout``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from gliclass_dist import connectors
from gliclass_dist.predicate import to_spark
from gliclass_dist.run import (
    RunSummary,
    input_columns,
    job_parser,
    load_job_spec,
    merge_counts,
    model_display_name,
    sink_location,
    write_summary_json,
)
from gliclass_dist.spark.job import get_session, jvm_class_available, write_classified
from gliclass_dist.spark.resources import profile_for_resources
from gliclass_dist.spark.udf import ClassifyConfig, ModelOptions, check_columns, ship_model
from gliclass_dist.spec import JobSpec

if TYPE_CHECKING:
    from pyspark.resource import ResourceProfile
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery

logger = logging.getLogger(__name__)

KAFKA_PROVIDER = "org.apache.spark.sql.kafka010.KafkaSourceProvider"
FILE_FORMATS = {"parquet": "parquet", "jsonl": "json", "csv": "csv"}


@dataclass(frozen=True)
class StreamSource:
    """Where a stream reads: new files in a folder, or a Kafka topic."""

    kind: Literal["files", "kafka"] = "files"
    schema: str | None = None  # DDL; files: default = the schema of the files already there; kafka: JSON values
    max_files_per_trigger: int | None = None
    kafka_bootstrap: str | None = None
    kafka_topic: str | None = None
    starting_offsets: str = "earliest"
    max_offsets_per_trigger: int | None = None


def parse_trigger(text: str) -> dict[str, Any]:
    """Keyword arguments of ``DataStreamWriter.trigger`` for ``available-now``, ``once`` or
    ``processing-time=<interval>``."""
    value = text.strip()
    if value in ("available-now", "availableNow"):
        return {"availableNow": True}
    if value == "once":
        return {"once": True}
    if value.startswith("processing-time="):
        interval = value.split("=", 1)[1].strip()
        if not interval:
            raise ValueError("processing-time needs an interval, e.g. processing-time=30 seconds")
        return {"processingTime": interval}
    raise ValueError(f"unknown trigger {text!r}: use available-now, once or processing-time=<interval>")


def read_stream(spark: SparkSession, spec: JobSpec, source: StreamSource) -> DataFrame:
    """The streaming DataFrame of the job's input (id, text, passthrough and label columns)."""
    from pyspark.sql import functions as F

    if source.kind == "kafka":
        if not jvm_class_available(spark, KAFKA_PROVIDER):
            raise RuntimeError(
                "the Kafka source needs Spark's Kafka connector on the classpath: spark-submit --packages "
                "org.apache.spark:spark-sql-kafka-0-10_2.13:<your Spark version>"
            )
        if not source.kafka_bootstrap or not source.kafka_topic:
            raise ValueError("a kafka source needs --kafka-bootstrap and --kafka-topic")
        reader = (
            spark.readStream.format("kafka")
            .option("kafka.bootstrap.servers", source.kafka_bootstrap)
            .option("subscribe", source.kafka_topic)
            .option("startingOffsets", source.starting_offsets)
        )
        if source.max_offsets_per_trigger:
            reader = reader.option("maxOffsetsPerTrigger", source.max_offsets_per_trigger)
        raw = reader.load()
        fallback_id = F.concat_ws("-", "topic", F.col("partition").cast("string"), F.col("offset").cast("string"))
        columns = [
            F.coalesce(F.col("key").cast("string"), fallback_id).alias(spec.input.id_column),
            F.col("topic"), F.col("partition"), F.col("offset"), F.col("timestamp"),
        ]
        if source.schema:  # JSON values: their fields become columns (the text, labels, passthrough)
            parsed = F.from_json(F.col("value").cast("string"), source.schema).alias("__value")
            df = raw.select(*columns, parsed).select("*", "__value.*").drop("__value")
        else:
            df = raw.select(*columns, F.col("value").cast("string").alias(spec.input.text_column))
        return df.where(to_spark(spec.input.predicate)) if spec.input.predicate else df

    fmt = FILE_FORMATS.get(spec.input.format)
    if fmt is None:
        raise ValueError(f"a file stream reads parquet, jsonl or csv files, not {spec.input.format!r}")
    schema = source.schema
    if schema is None:
        try:
            schema = _batch_reader(spark, fmt).load(spec.input.path).schema
        except Exception as exc:  # noqa: BLE001 - Spark raises AnalysisException for an empty folder
            raise ValueError(
                f"cannot take the schema from the files in {spec.input.path!r} ({type(exc).__name__}); "
                "pass --schema 'id long, text string, ...'"
            ) from None
    reader = _batch_reader(spark.readStream, fmt).schema(schema)  # type: ignore[arg-type]
    if source.max_files_per_trigger:
        reader = reader.option("maxFilesPerTrigger", source.max_files_per_trigger)
    df = reader.load(spec.input.path)
    return df.where(to_spark(spec.input.predicate)) if spec.input.predicate else df  # no SQL text


def _batch_reader(spark_or_reader: Any, fmt: str) -> Any:
    reader = spark_or_reader.read if hasattr(spark_or_reader, "read") else spark_or_reader
    reader = reader.format(fmt)
    if fmt == "csv":
        reader = reader.option("header", True)
    return reader


def checkpoint_is_fresh(checkpoint: str) -> bool:
    """True when the checkpoint has no completed micro-batch yet (no file under ``commits/``)."""
    import pyarrow.fs as pafs

    from gliclass_dist.connectors.base import resolve_fs

    filesystem, root = resolve_fs(checkpoint)
    commits = f"{root.rstrip('/')}/commits"
    if filesystem.get_file_info(commits).type != pafs.FileType.Directory:
        return True
    entries = filesystem.get_file_info(pafs.FileSelector(commits))
    return not any(e.type == pafs.FileType.File and not e.base_name.startswith(".") for e in entries)


@dataclass
class MicroBatchWriter:
    """The ``foreachBatch`` function: classify one micro-batch and commit it as ``(app_id, batch_id)``."""

    spec: JobSpec
    config: ClassifyConfig
    app_id: str
    profile: ResourceProfile | None = None
    partitions: int | None = None
    batches: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, batch_df: DataFrame, batch_id: int) -> None:
        started = time.perf_counter()
        done = connectors.last_committed(self.spec.sink, self.app_id)
        if done is not None and done >= batch_id:
            reason = f"micro-batch {batch_id} is already committed (last committed: {done})"
            logger.info("%s; skipping it", reason)
            self.batches.append({"batch_id": batch_id, "committed": False, "skipped_reason": reason, "rows": 0,
                                 "status_counts": {}, "table_version": None, "files": 0, "seconds": 0.0})
            return
        df = batch_df.select(*input_columns(self.spec))
        if self.partitions or self.profile is not None:
            df = df.repartition(self.partitions or df.sparkSession.sparkContext.defaultParallelism)
        result, parts = write_classified(
            df, self.config, self.spec, version=int(batch_id), app_id=self.app_id, profile=self.profile,
            extra_metadata={"gliclass.job": self.spec.name, "gliclass.stream.batch_id": str(batch_id)},
        )
        record = {
            "batch_id": batch_id,
            "committed": result.committed,
            "skipped_reason": result.skipped_reason,
            "rows": parts.rows,
            "status_counts": parts.status_counts,
            "table_version": result.table_version,
            "files": result.files,
            "seconds": round(time.perf_counter() - started, 3),
        }
        self.batches.append(record)
        logger.info("micro-batch %d: %s", batch_id, record)


def start_stream(
    spark: SparkSession,
    spec: JobSpec,
    *,
    checkpoint: str,
    source: StreamSource | None = None,
    trigger: str = "available-now",
    partitions: int | None = None,
    ship: bool | None = None,
    query_name: str | None = None,
) -> tuple[StreamingQuery, MicroBatchWriter]:
    """Start the streaming query; returns it and its ``MicroBatchWriter`` (per-batch results in ``.batches``)."""
    source = source or StreamSource()
    app_id = spec.job_key
    if checkpoint_is_fresh(checkpoint):
        done = connectors.last_committed(spec.sink, app_id)
        if done is not None:
            raise RuntimeError(
                f"checkpoint {checkpoint!r} is new, but the sink already holds micro-batches up to {done} committed "
                f"under the key {app_id!r}: a fresh checkpoint restarts batch ids at 0 and they would be skipped. "
                "Resume with the old checkpoint, or set a new idempotency_key."
            )
    options = ship_model(spark, ModelOptions.from_job(spec), ship=ship)
    config = ClassifyConfig(
        options, spec.labels, text_column=spec.input.text_column, keep=tuple(spec.keep_columns),
        batch_rows=spec.resources.batch_rows,
    )
    df = read_stream(spark, spec, source)
    check_columns(df, config)
    writer = MicroBatchWriter(spec, config, app_id, profile_for_resources(spark, spec.resources), partitions)
    stream = df.writeStream.foreachBatch(writer).option("checkpointLocation", checkpoint)
    stream = stream.trigger(**parse_trigger(trigger))
    if query_name:
        stream = stream.queryName(query_name)
    query = stream.start()
    logger.info("stream %s started (key %s, checkpoint %s, trigger %s)", query.id, app_id, checkpoint, trigger)
    return query, writer


def run_stream(
    spark: SparkSession,
    spec: JobSpec,
    *,
    checkpoint: str,
    source: StreamSource | None = None,
    trigger: str = "available-now",
    timeout_s: float | None = None,
    partitions: int | None = None,
    ship: bool | None = None,
) -> dict[str, Any]:
    """Run the stream until it ends (available-now, once) or ``timeout_s``; returns a summary of its batches."""
    started = time.perf_counter()
    query, writer = start_stream(
        spark, spec, checkpoint=checkpoint, source=source, trigger=trigger, partitions=partitions, ship=ship
    )
    try:
        finished = query.awaitTermination(timeout_s) if timeout_s else query.awaitTermination()
        if timeout_s and not finished:
            logger.info("stopping the stream after %.0f s", timeout_s)
    finally:
        query.stop()
    return stream_summary(spec, writer.batches, started)


def stream_summary(spec: JobSpec, batches: Sequence[dict[str, Any]], started: float) -> dict[str, Any]:
    """The summary of a stream run: the batch job's fields (over the committed micro-batches) plus the
    micro-batches (``committed_batches``, ``skipped_batches``, ``batches``)."""
    committed = [b for b in batches if b["committed"]]
    rows = sum(b["rows"] for b in committed)
    busy = sum(b["seconds"] for b in committed)
    summary = RunSummary(
        job_key=spec.job_key,
        commit_key=connectors.commit_key(spec.job_key, committed[-1]["batch_id"]) if committed else None,
        committed=bool(committed),
        table_version=committed[-1]["table_version"] if committed else None,
        rows_in=rows,
        rows_out=rows,
        status_counts=merge_counts(b["status_counts"] for b in committed),
        files=sum(b["files"] for b in committed),
        rows_per_s=round(rows / busy, 2) if busy > 0 else 0.0,
        classify_s=round(busy, 3),
        sink=sink_location(spec.sink),
        model=model_display_name(spec.model.ref),
        engine="spark-streaming",
        details={
            "committed_batches": [b["batch_id"] for b in committed],
            "skipped_batches": [b["batch_id"] for b in batches if not b["committed"]],
            "batches": list(batches),
        },
    )
    return summary.finish(started).to_dict()


def build_parser() -> argparse.ArgumentParser:
    parser = job_parser(
        "Classify new files (or Kafka records) as they arrive; each micro-batch lands exactly once.",
        prog="spark_stream.py",
        spec_help="job spec YAML (input.path = the folder new files land in)",
    )
    parser.add_argument("--checkpoint", required=True, help="the stream's checkpoint folder (keep it between runs)")
    parser.add_argument("--trigger", default="available-now",
                        help="available-now (default), once, or processing-time=<interval>")
    parser.add_argument("--timeout", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--source", choices=["files", "kafka"], default="files")
    parser.add_argument("--schema", help="input schema as DDL ('id long, text string'); files: default inferred")
    parser.add_argument("--max-files-per-trigger", type=int, default=None)
    parser.add_argument("--kafka-bootstrap", help="Kafka bootstrap servers (host:port,...)")
    parser.add_argument("--kafka-topic", help="Kafka topic to subscribe to")
    parser.add_argument("--kafka-starting-offsets", default="earliest")
    parser.add_argument("--max-offsets-per-trigger", type=int, default=None)
    parser.add_argument("--partitions", type=int, default=None, help="inference tasks per micro-batch")
    parser.add_argument("--no-ship-model", action="store_true", help="do not ship the model folder to the executors")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``spark-submit jobs/spark_stream.py --spec job.yaml --checkpoint DIR [--trigger ...]``."""
    args = build_parser().parse_args(argv)
    spec = load_job_spec(args.spec, args.overrides, verbose=args.verbose)
    if spec is None:
        return 2
    try:
        parse_trigger(args.trigger)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    source = StreamSource(
        kind=args.source,
        schema=args.schema,
        max_files_per_trigger=args.max_files_per_trigger,
        kafka_bootstrap=args.kafka_bootstrap,
        kafka_topic=args.kafka_topic,
        starting_offsets=args.kafka_starting_offsets,
        max_offsets_per_trigger=args.max_offsets_per_trigger,
    )
    spark, created = get_session(f"gliclass-stream-{spec.name}")
    try:
        summary = run_stream(
            spark, spec, checkpoint=args.checkpoint, source=source, trigger=args.trigger, timeout_s=args.timeout,
            partitions=args.partitions, ship=False if args.no_ship_model else None,
        )
    finally:
        if created:
            spark.stop()
    print(
        f"stream {summary['job_key']} -> {summary['sink']}: committed batches {summary['committed_batches']}, "
        f"skipped {summary['skipped_batches']}, rows {summary['rows_out']}, statuses {summary['status_counts']}",
        flush=True,
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "batches"}, default=str), flush=True)
    write_summary_json(summary, args.summary_json)
    return 0


__all__ = ["MicroBatchWriter", "StreamSource", "main", "parse_trigger", "read_stream", "run_stream", "start_stream"]
