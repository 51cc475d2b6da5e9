"""The engine alone in one process: parquet in -> ``Classifier.classify_arrow`` batch by batch -> parquet out.

The baseline for the distributed-overhead benchmark: the same input, labels, batch size, token
budget and cores as the Ray and Spark jobs, with no framework around the engine. Streams the input
(``pyarrow.dataset`` batches) and the output (``ParquetWriter``), so memory stays flat.

    python bench/engine_alone.py --input in/ --out out.parquet --model M --labels a b c --summary-json s.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--labels", nargs="+", required=True)
    parser.add_argument("--batch-rows", type=int, default=256)
    parser.add_argument("--token-budget", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--summary-json", required=True)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq
    import torch

    from gliclass_dist.engine import Classifier
    from gliclass_dist.labels import LabelSpec
    from gliclass_dist.schema import output_schema

    torch.set_num_threads(args.threads)
    clf = Classifier.from_pretrained(
        args.model, device="cpu", dtype="float32", token_budget=args.token_budget, backend=args.backend
    )
    spec = LabelSpec(labels=args.labels)
    dataset = ds.dataset(args.input, format="parquet")
    classify_started = time.perf_counter()
    rows = 0
    writer = pq.ParquetWriter(args.out, output_schema(dataset.schema, ["id"]))
    try:
        for batch in dataset.to_batches(batch_size=args.batch_rows):
            if batch.num_rows:
                writer.write_table(clf.classify_arrow(batch, spec, keep=["id"]))
                rows += batch.num_rows
    finally:
        writer.close()
    seconds = time.perf_counter() - classify_started
    summary = {
        "rows_out": rows,
        "classify_s": round(seconds, 3),
        "rows_per_s": round(rows / seconds, 2),
        "elapsed_s": round(time.perf_counter() - started, 3),
        "threads": args.threads,
        "stats": clf.stats,
    }
    Path(args.summary_json).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
