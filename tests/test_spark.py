"""The Spark front end on a real local[2] Spark (Java 17): UDFs, mapInArrow, batch job, streaming job.

One SparkSession for the module (``local[2,2]``: two task slots, a failed task is retried once). The model is
the session's tiny real checkpoint; tables are real Delta / Iceberg (SQLite catalog) tables in tmp dirs.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from spark_helpers import spark_session

os.environ["PYSPARK_PYTHON"] = sys.executable
os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

pyspark = pytest.importorskip("pyspark")

from deltalake import DeltaTable, write_deltalake  # noqa: E402

from gliclass_dist import connectors  # noqa: E402
from gliclass_dist.labels import LabelSpec  # noqa: E402
from gliclass_dist.spec import InputSpec, JobSpec  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LABELS = ["sport", "business", "tech"]
TEXTS = [
    "The football club won the league after a dramatic final match.",
    "Shares of the technology company rose after strong quarterly earnings.",
    "A new smartphone with a faster chip and better camera was released.",
    "The central bank raised interest rates to fight inflation.",
    "The tennis champion lost in the semi final.",
]

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]


@pytest.fixture(scope="module")
def load_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-loads")


@pytest.fixture(scope="module")
def spark(load_log: Path):
    conf = {
        "spark.sql.shuffle.partitions": "4",
        "spark.default.parallelism": "2",
        "spark.sql.execution.arrow.maxRecordsPerBatch": "16",
        "spark.executorEnv.GLICLASS_MODEL_LOAD_LOG": str(load_log),
    }
    with spark_session("local[2,2]", "gliclass-tests", conf) as session:
        yield session


def make_rows(n: int, start: int = 0) -> list[dict]:
    return [{"id": i, "text": TEXTS[i % len(TEXTS)] + f" (item {i})", "lang": "en" if i % 2 else "de"}
            for i in range(start, start + n)]


def write_parquet_files(folder: Path, rows: list[dict], files: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-len(rows) // files)
    for k in range(files):
        part = rows[k * size:(k + 1) * size]
        if part:
            pq.write_table(pa.Table.from_pylist(part), folder / f"part-{k}-{part[0]['id']}.parquet")


def delta_sink(path: Path) -> dict:
    return {"format": "delta", "path": str(path)}


def iceberg_sink(root: Path, table: str = "gliclass.results") -> dict:
    return {
        "format": "iceberg",
        "table": table,
        "catalog": {"type": "sql", "uri": f"sqlite:///{root}/catalog.db", "warehouse": f"file://{root}/warehouse"},
    }


def job_dict(model: Path, input_: dict, sink: dict, **extra) -> dict:
    spec = {
        "name": "spark-test",
        "input": input_,
        "labels": {"labels": LABELS},
        "model": {"ref": str(model), "device": "cpu"},
        "sink": sink,
        "resources": {"batch_rows": 8},
    }
    spec.update(extra)
    return spec


def delta_rows(path: Path) -> pa.Table:
    return DeltaTable(str(path)).to_pyarrow_table().sort_by("id")


# ---------------------------------------------------------------------------------------------- UDFs


def test_pandas_udf_matches_engine_and_loads_once_per_worker(spark, tiny_model: Path, classifier, load_log: Path):
    from gliclass_dist.spark.udf import ModelOptions, classify_udf, read_load_log

    rows = make_rows(120)
    df = spark.createDataFrame(rows, "id long, text string, lang string").repartition(8)
    assert df.rdd.getNumPartitions() == 8
    options = ModelOptions(ref=str(tiny_model), device="cpu", token_budget=4096)  # a key only this test loads
    udf = classify_udf(options, LABELS)
    out = df.withColumn("r", udf("text")).select("id", "r.*").collect()

    assert len(out) == len(rows)
    assert sorted(r.id for r in out) == [r["id"] for r in rows]
    expected = classifier.classify([r["text"] for r in rows], LABELS)
    by_id = {r.id: r for r in out}
    for row, pred in zip(rows, expected):
        got = by_id[row["id"]]
        assert got.status == pred.status == "ok"
        assert [s.label for s in got.scores] == LABELS
        assert [s.score for s in got.scores] == pytest.approx([pred.scores[lb] for lb in LABELS], abs=1e-5)
        assert got.top_label == pred.top_label and sorted(got.labels) == sorted(pred.labels)
        assert got.label_set == LabelSpec(labels=LABELS).label_set_id

    loads = [e for e in read_load_log(load_log) if e["options"] == repr(options)]
    pids = [e["pid"] for e in loads]
    assert loads, "the load log recorded nothing"
    assert len(pids) == len(set(pids)), f"a worker loaded the model twice: {pids}"
    assert len(loads) < 8, f"{len(loads)} loads for 8 partitions: the model is not cached per worker"


def test_pandas_udf_per_row_labels_and_bad_rows(spark, tiny_model: Path):
    from gliclass_dist.spark.udf import classify_udf

    data = [
        (1, "The football club won the final.", ["sport", "business"]),
        (2, None, ["sport"]),                                # null text
        (3, "Shares rose after earnings.", []),              # empty label array
        (4, "A new smartphone was released.", None),         # null labels
        (5, "   ", ["tech"]),                                # blank text
        (6, "Interest rates went up.", ["business", "", "business", "tech"]),  # cleaned labels
    ]
    df = spark.createDataFrame(data, "id long, text string, labels array<string>").repartition(2)
    udf = classify_udf(str(tiny_model), LabelSpec(column="labels"))
    out = {r.id: r for r in df.withColumn("r", udf("text", "labels")).select("id", "r.*").collect()}

    assert sorted(out) == [1, 2, 3, 4, 5, 6]
    assert out[1].status == "ok" and [s.label for s in out[1].scores] == ["sport", "business"]
    assert out[2].status == "empty_text" and out[2].scores == [] and out[2].top_score is None
    assert out[3].status == "no_labels" and out[3].top_label is None
    assert out[4].status == "no_labels"
    assert out[5].status == "empty_text"
    assert out[6].status == "labels_cleaned" and [s.label for s in out[6].scores] == ["business", "tech"]
    assert {r.label_set for r in out.values()} == {"column:labels"}


def test_per_row_examples_reach_the_udf_and_map_in_arrow(spark, tiny_model: Path, classifier):
    """An ``examples_column`` is read by the 3-argument UDF and by ``classify_dataframe`` as by the engine."""
    from gliclass_dist.spark.udf import classify_dataframe, classify_udf

    shots = [{"text": "Rates went up.", "labels": ["business"]}]
    data = [
        (1, "The bank raised rates.", ["sport", "business"], shots),
        (2, "The bank raised rates.", ["sport", "business"], None),
        (3, "A final was played.", ["sport"], [{"text": "Goal!", "labels": ["sport", "tech"]}]),
    ]
    schema = "id long, text string, labels array<string>, shots array<struct<text: string, labels: array<string>>>"
    df = spark.createDataFrame(data, schema).repartition(2)
    spec = LabelSpec(column="labels", examples_column="shots", threshold=0.0)
    expected = classifier.classify_arrow(
        pa.table({"text": [r[1] for r in data], "labels": [r[2] for r in data], "shots": [r[3] for r in data]}), spec
    ).to_pylist()
    by_udf = {r.id: r for r in df.withColumn("r", classify_udf(str(tiny_model), spec)("text", "labels", "shots"))
              .select("id", "r.*").collect()}
    by_map = {r.id: r for r in classify_dataframe(df, str(tiny_model), spec, keep=["id"]).collect()}
    for (row_id, *_), want in zip(data, expected):
        for got in (by_udf[row_id], by_map[row_id]):
            assert got.status == want["status"] == "ok"
            assert [s.score for s in got.scores] == pytest.approx([s["score"] for s in want["scores"]], abs=1e-5)
    # the examples change the scores: rows 1 and 2 share text and labels
    assert [s.score for s in by_udf[1].scores] != pytest.approx([s.score for s in by_udf[2].scores], abs=1e-6)


def float32_model(path: Path):
    """The model for tests that compare scores: a path, or on a machine with CUDA, float32 options.

    With CUDA the Spark tasks pick the GPU and ``dtype='auto'`` means bfloat16, whose scores move with
    the batching by more than these tests' tolerances (1e-6 between batchings, thresholds from a CPU engine).
    """
    import torch

    from gliclass_dist.spark.udf import ModelOptions

    return ModelOptions(str(path), dtype="float32") if torch.cuda.is_available() else str(path)


def test_map_in_arrow_keeps_columns_and_agrees_with_the_udf(spark, tiny_model: Path):
    from gliclass_dist.spark.udf import classify_dataframe, classify_udf, spark_output_schema

    rows = make_rows(40) + [{"id": 1000, "text": None, "lang": "en"}]
    df = spark.createDataFrame(rows, "id long, text string, lang string").repartition(3)
    out_df = classify_dataframe(df, float32_model(tiny_model), LABELS, keep=["id", "lang"], batch_rows=5)
    assert out_df.schema == spark_output_schema(df.schema, ["id", "lang"])
    assert out_df.columns == ["id", "lang", "labels", "scores", "top_label", "top_score", "status", "model",
                              "label_set"]
    out = {r.id: r for r in out_df.collect()}
    assert len(out) == len(rows)
    assert out[1000].status == "empty_text" and out[1000].lang == "en"
    assert Counter(r.status for r in out.values()) == {"ok": 40, "empty_text": 1}

    via_udf = {r.id: r for r in df.withColumn("r", classify_udf(float32_model(tiny_model), LABELS)("text"))
               .select("id", "r.*").collect()}
    for key, row in out.items():
        assert [s.score for s in row.scores] == pytest.approx([s.score for s in via_udf[key].scores], abs=1e-6)


def test_filter_stage_keeps_the_rows_the_ray_rule_keeps(spark, tiny_model: Path, classifier):
    from gliclass_dist.engine import Classifier
    from gliclass_dist.filtering import filter_results
    from gliclass_dist.spark.filtering import filter_classified, filter_dataframe
    from gliclass_dist.spark.udf import classify_dataframe

    rows = make_rows(30) + [{"id": 99, "text": None, "lang": "en"}]
    table = pa.Table.from_pylist(rows)
    engine = Classifier.from_pretrained(tiny_model, device="cpu")
    results = engine.classify_arrow(table, LabelSpec(labels=LABELS), keep=["id", "lang", "text"])
    sport = sorted(s["score"] for row in results.column("scores").to_pylist() for s in row if s["label"] == "sport")
    threshold = (sport[len(sport) // 2] + sport[len(sport) // 2 + 1]) / 2  # about half pass; no score sits on it
    expected = set(filter_results(results, {"sport": threshold}).column("id").to_pylist())
    assert 0 < len(expected) < len(rows)

    df = spark.createDataFrame(rows, "id long, text string, lang string").repartition(2)
    kept = filter_dataframe(df, float32_model(tiny_model), LABELS, {"sport": threshold})
    assert kept.columns[:3] == ["id", "text", "lang"] and "scores" in kept.columns
    assert {r.id for r in kept.collect()} == expected

    scored = classify_dataframe(df, float32_model(tiny_model), LABELS, keep=["id"])
    dropped = filter_classified(scored, ["sport"], threshold=threshold, action="drop")
    assert {r.id for r in dropped.collect()} == {r["id"] for r in rows} - expected  # unscored row 99 stays
    with pytest.raises(ValueError):
        filter_classified(scored, {"sport": 1.5})


def test_resource_profile_is_skipped_in_local_mode(spark, caplog):
    from gliclass_dist.spark.resources import inference_profile, stage_level_support

    supported, _, reason = stage_level_support(spark)
    assert not supported and "local" in reason
    with caplog.at_level(logging.WARNING, logger="gliclass_dist.spark.resources"):
        assert inference_profile(spark, gpus_per_task=1) is None
    assert "skipped" in caplog.text and "local mode" in caplog.text
    assert inference_profile(spark) is None  # nothing asked beyond the defaults


# ---------------------------------------------------------------------------------------------- batch job


def test_batch_job_parquet_into_delta_exactly_once(spark, tiny_model: Path, tmp_path: Path):
    from gliclass_dist.spark.job import main

    rows = make_rows(60) + [{"id": 500, "text": None, "lang": "en"}, {"id": 501, "text": "", "lang": "de"}]
    write_parquet_files(tmp_path / "in", rows, files=3)
    spec_path = tmp_path / "job.yaml"
    spec = job_dict(tiny_model, {"format": "parquet", "path": str(tmp_path / "in"), "passthrough": ["lang"]},
                    delta_sink(tmp_path / "out"))
    spec_path.write_text(yaml.safe_dump(spec))
    summary_path = tmp_path / "summary.json"

    assert main(["--spec", str(spec_path), "--summary-json", str(summary_path), "--partitions", "4"]) == 0
    summary = json.loads(summary_path.read_text())
    assert summary["committed"] is True and summary["rows_in"] == summary["rows_out"] == len(rows)
    assert summary["status_counts"] == {"empty_text": 2, "ok": 60}
    assert summary["job_key"] == JobSpec.from_yaml(spec_path).job_key
    out = delta_rows(tmp_path / "out")
    assert out.column("id").to_pylist() == sorted(r["id"] for r in rows)
    assert out.column_names[:2] == ["id", "lang"]
    assert DeltaTable(str(tmp_path / "out")).transaction_version(summary["job_key"]) == 0

    assert main(["--spec", str(spec_path), "--summary-json", str(summary_path)]) == 0  # the same job again
    again = json.loads(summary_path.read_text())
    assert again["committed"] is False and "already committed" in again["skipped_reason"]
    assert delta_rows(tmp_path / "out").num_rows == len(rows)


def test_batch_job_incremental_delta_into_iceberg(spark, tiny_model: Path, tmp_path: Path):
    from gliclass_dist.spark.job import run_job

    source = tmp_path / "source"
    write_deltalake(str(source), pa.Table.from_pylist(make_rows(20)))
    sink = iceberg_sink(tmp_path)
    spec = JobSpec.from_dict(job_dict(tiny_model, {"format": "delta", "path": str(source), "incremental": True},
                                      sink))
    first = run_job(spark, spec)
    assert first["committed"] and first["rows_out"] == 20 and first["input_version"] == 0

    write_deltalake(str(source), pa.Table.from_pylist(make_rows(15, start=20)), mode="append")
    second = run_job(spark, spec)
    assert second["committed"] and second["rows_out"] == 15 and second["input_version"] == 1
    third = run_job(spark, spec)  # nothing new
    assert third["committed"] is False and third["rows_out"] == 0

    table = connectors.read_source(InputSpec(format="iceberg", table=sink["table"], catalog=sink["catalog"]))
    table = table.read_all().sort_by("id")
    assert table.column("id").to_pylist() == list(range(35))
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert connectors.last_committed(spec.sink, spec.job_key) == 1


def test_batch_job_reads_a_delta_table_through_spark(spark, tiny_model: Path, tmp_path: Path):
    """A plain (non-incremental) Delta input: Spark reads the table's files at the pinned version."""
    from gliclass_dist.spark.job import run_job

    source = tmp_path / "source"
    write_deltalake(str(source), pa.Table.from_pylist(make_rows(10)), partition_by=["lang"])
    write_deltalake(str(source), pa.Table.from_pylist(make_rows(6, start=10)), mode="append")
    spec = JobSpec.from_dict(job_dict(
        tiny_model, {"format": "delta", "path": str(source), "filter": "id >= 4", "passthrough": ["lang"]},
        {"format": "parquet", "path": str(tmp_path / "out")},
    ))
    summary = run_job(spark, spec)
    assert summary["committed"] and summary["rows_out"] == 12 and summary["input_version"] == 1
    out = connectors.read_source(InputSpec(format="parquet", path=str(tmp_path / "out"))).read_all().sort_by("id")
    assert out.column("id").to_pylist() == list(range(4, 16))
    assert out.column("lang").to_pylist() == ["en" if i % 2 else "de" for i in range(4, 16)]


def test_retried_task_lands_each_row_once(spark, tiny_model: Path, tmp_path: Path):
    """A task that dies after staging its files is retried; only the retry's files are committed."""
    from pyspark import TaskContext

    from gliclass_dist.spark.job import StagedParts, stage_classified
    from gliclass_dist.spark.udf import ClassifyConfig, ModelOptions

    spec = JobSpec.from_dict(job_dict(tiny_model, {"format": "parquet", "path": "unused"},
                                      delta_sink(tmp_path / "out")))
    rows = make_rows(40)
    df = spark.createDataFrame(rows, "id long, text string, lang string").repartition(2)
    config = ClassifyConfig(ModelOptions(str(tiny_model), device="cpu"), spec.labels, keep=("id",))

    def fail_first_attempt(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        staged = list(batches)  # the staging upstream has written its files by now
        ctx = TaskContext.get()
        if ctx.partitionId() == 0 and ctx.attemptNumber() == 0:
            raise RuntimeError("injected failure after the files were staged")
        yield from staged

    staged_df = stage_classified(df, config, spec.sink)
    parts = StagedParts.from_rows(staged_df.mapInArrow(fail_first_attempt, staged_df.schema).collect())
    assert sorted((t["partition"], t["attempt"]) for t in parts.tasks) == [(0, 1), (1, 0)]
    from gliclass_dist.spark.udf import arrow_output_schema

    result = connectors.commit_files(spec.sink, parts.files, app_id="retry-test", version=0,
                                     schema=arrow_output_schema(df.schema, ["id"]))
    assert result.committed and result.rows == len(rows)
    out = delta_rows(tmp_path / "out")
    assert out.column("id").to_pylist() == list(range(40))  # every row once
    on_disk = list((tmp_path / "out").glob("*.parquet"))
    assert len(on_disk) > result.files  # the failed attempt's files exist, unreferenced


# ---------------------------------------------------------------------------------------------- streaming


def test_stream_processes_new_files_and_restarts_exactly_once(spark, tiny_model: Path, tmp_path: Path):
    from gliclass_dist.spark.stream import StreamSource, main, run_stream

    landing = tmp_path / "landing"
    rows = make_rows(48)
    write_parquet_files(landing, rows[:24], files=2)
    sink = delta_sink(tmp_path / "out")
    spec_dict = job_dict(tiny_model, {"format": "parquet", "path": str(landing)}, sink)
    spec_path = tmp_path / "stream.yaml"
    spec_path.write_text(yaml.safe_dump(spec_dict))
    spec = JobSpec.from_yaml(spec_path)
    checkpoint = tmp_path / "checkpoint"
    source = StreamSource(max_files_per_trigger=1)

    first = run_stream(spark, spec, checkpoint=str(checkpoint), source=source)
    assert first["committed_batches"] == [0, 1] and first["rows_out"] == 24

    write_parquet_files(landing, rows[24:], files=2)  # two new files land; the stream was stopped
    summary_path = tmp_path / "summary.json"
    assert main(["--spec", str(spec_path), "--checkpoint", str(checkpoint), "--max-files-per-trigger", "1",
                 "--summary-json", str(summary_path)]) == 0
    second = json.loads(summary_path.read_text())
    assert second["committed_batches"] == [2, 3] and second["rows_out"] == 24

    # A crash after the sink commit of batch 3 but before Spark recorded it: Spark runs batch 3 again.
    for name in ("3", ".3.crc"):
        (checkpoint / "commits" / name).unlink(missing_ok=True)
    replay = run_stream(spark, spec, checkpoint=str(checkpoint), source=source)
    assert replay["committed_batches"] == [] and replay["skipped_batches"] == [3]

    out = delta_rows(tmp_path / "out")
    assert out.column("id").to_pylist() == list(range(48))  # each row exactly once
    assert DeltaTable(str(tmp_path / "out")).transaction_version(spec.job_key) == 3

    with pytest.raises(RuntimeError, match="checkpoint"):  # a fresh checkpoint would replay ids from 0
        run_stream(spark, spec, checkpoint=str(tmp_path / "fresh"), source=source)


def test_stream_refuses_kafka_without_the_connector(spark, tiny_model: Path, tmp_path: Path):
    from gliclass_dist.spark.stream import StreamSource, parse_trigger, start_stream

    spec = JobSpec.from_dict(job_dict(tiny_model, {"format": "parquet", "path": str(tmp_path)},
                                      delta_sink(tmp_path / "out")))
    with pytest.raises(RuntimeError, match="Kafka connector"):
        start_stream(spark, spec, checkpoint=str(tmp_path / "chk"),
                     source=StreamSource(kind="kafka", kafka_bootstrap="127.0.0.1:9", kafka_topic="t"))
    assert parse_trigger("processing-time=5 seconds") == {"processingTime": "5 seconds"}
    with pytest.raises(ValueError):
        parse_trigger("sometimes")


# ---------------------------------------------------------------------------------------------- spark-submit


def test_spark_submit_runs_the_batch_job_end_to_end(tiny_model: Path, tmp_path: Path):
    spark_submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    rows = make_rows(25)
    write_parquet_files(tmp_path / "in", rows, files=2)
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(job_dict(tiny_model, {"format": "parquet", "path": str(tmp_path / "in")},
                                                 delta_sink(tmp_path / "out"))))
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "SPARK_LOCAL_IP": "127.0.0.1", "HF_HUB_OFFLINE": "1"}
    env.pop("SPARK_HOME", None)
    proc = subprocess.run(
        [str(spark_submit), "--master", "local[1]", "--conf", "spark.ui.enabled=false",
         str(ROOT / "jobs" / "spark_classify.py"), "--spec", str(spec_path),
         "--summary-json", str(tmp_path / "summary.json")],
        env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["committed"] and summary["rows_out"] == 25 and summary["status_counts"] == {"ok": 25}
    assert "rows in: 25" in proc.stdout
    assert delta_rows(tmp_path / "out").column("id").to_pylist() == list(range(25))
