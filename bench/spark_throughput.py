"""Rows/s of the Spark front end against the engine alone, same model, same text, same cores.

    .venv/bin/python bench/spark_throughput.py [--rows 400] [--repeats 3] [--labels 5]

- ``engine``: one process, ``Classifier.classify_arrow`` over batches of ``--batch-rows`` rows, torch on all
  ``--cores`` threads (the CLI / a single Ray actor).
- ``spark_arrow``: ``classify_dataframe`` (``mapInArrow``) on ``local[cores]``: one Python worker per task
  slot, each with its own model and ``spark.task.cpus`` (1) torch thread.
- ``spark_pandas``: the pandas UDF (``classify_udf``) on the same session.

Models are loaded (and Spark's Python workers started) in a warm-up pass that is not timed; the input is
cached in Spark before timing; the Spark runs end in the ``noop`` sink, so no write is measured. Approaches
are interleaved, ``--repeats`` rounds, medians reported. Writes ``bench/results/spark_throughput_<text set>.json``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

os.environ["PYSPARK_PYTHON"] = sys.executable
os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

from common import label_set, machine_info, median, text_sets, throughput_checkpoint, write_json  # noqa: E402

logger = logging.getLogger("bench.spark")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--labels", type=int, default=5)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--batch-rows", type=int, default=256)
    parser.add_argument("--text-set", default="bbc_mixed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import pyarrow as pa
    import torch
    from pyspark.sql import SparkSession

    from gliclass_dist.engine import Classifier
    from gliclass_dist.labels import LabelSpec
    from gliclass_dist.spark.udf import ModelOptions, classify_dataframe, classify_udf

    model = throughput_checkpoint()
    texts = text_sets()[args.text_set][: args.rows]
    labels = label_set(args.labels)
    spec = LabelSpec(labels=labels)
    table = pa.table({"id": list(range(len(texts))), "text": texts})
    info = machine_info(args.cores)

    torch.set_num_threads(args.cores)
    engine = Classifier.from_pretrained(model, device="cpu")

    def run_engine() -> int:
        rows = 0
        for batch in table.to_batches(max_chunksize=args.batch_rows):
            rows += engine.classify_arrow(batch, spec, keep=["id"]).num_rows
        return rows

    spark = (
        SparkSession.builder.master(f"local[{args.cores}]")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.python.worker.reuse", "true")
        .config("spark.executorEnv.TOKENIZERS_PARALLELISM", "false")
        .config("spark.executorEnv.HF_HUB_OFFLINE", "1")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    df = spark.createDataFrame(table).repartition(args.cores * 2).cache()
    df.count()
    options = ModelOptions(ref=str(model), device="cpu", token_budget=engine.token_budget)
    arrow_out = classify_dataframe(df, options, spec, keep=["id"], batch_rows=args.batch_rows)
    pandas_out = df.select("id", classify_udf(options, spec, batch_rows=args.batch_rows)("text").alias("r"))

    def run_spark(out) -> int:
        out.write.format("noop").mode("overwrite").save()
        return len(texts)

    approaches = {
        "engine": run_engine,
        "spark_arrow": lambda: run_spark(arrow_out),
        "spark_pandas": lambda: run_spark(pandas_out),
    }
    for name, fn in approaches.items():  # warm-up: models loaded, workers started
        started = time.perf_counter()
        fn()
        logger.info("warm-up %s: %.1fs", name, time.perf_counter() - started)
    seconds: dict[str, list[float]] = {name: [] for name in approaches}
    for round_ in range(args.repeats):
        for name, fn in approaches.items():
            started = time.perf_counter()
            rows = fn()
            elapsed = time.perf_counter() - started
            seconds[name].append(elapsed)
            logger.info("round %d %s: %d rows in %.2fs (%.1f rows/s)", round_, name, rows, elapsed, rows / elapsed)
    spark.stop()
    results = {
        name: {"median_s": median(s), "rows_per_s": round(len(texts) / median(s), 2), "runs_s": s}
        for name, s in seconds.items()
    }
    base = results["engine"]["rows_per_s"]
    for value in results.values():
        value["vs_engine"] = round(value["rows_per_s"] / base, 3)
    payload = {
        "benchmark": "spark_throughput",
        "model": str(model.name),
        "text_set": args.text_set,
        "rows": len(texts),
        "labels": len(labels),
        "cores": args.cores,
        "batch_rows": args.batch_rows,
        "machine": {**info, "load_average_at_end": list(os.getloadavg())},
        "results": results,
    }
    path = write_json(f"spark_throughput_{args.text_set}.json", payload)
    for name, value in results.items():
        print(f"{name:13s} {value['rows_per_s']:8.1f} rows/s  ({value['vs_engine']:.2f}x engine)")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
