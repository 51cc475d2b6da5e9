"""Classify new files (Parquet / JSON lines / CSV landing in a folder) or Kafka records with Spark Structured
Streaming; every micro-batch lands in the sink exactly once, keyed by ``(job_key, batch_id)``.

    spark-submit jobs/spark_stream.py --spec job.yaml --checkpoint /chk/job [--trigger available-now]
    python jobs/spark_stream.py --spec job.yaml --checkpoint /chk/job --trigger "processing-time=30 seconds" \\
        --timeout 600

Keep the checkpoint between runs: a restart resumes from it and a micro-batch that was already committed
is skipped. Options: ``--max-files-per-trigger N``, ``--schema DDL``, ``--source kafka --kafka-bootstrap
host:9092 --kafka-topic T`` (needs ``--packages org.apache.spark:spark-sql-kafka-0-10_2.13:<spark version>``),
``--summary-json PATH``; see ``--help`` and ``gliclass_dist/spark/stream.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from gliclass_dist.spark.stream import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
