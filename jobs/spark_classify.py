"""Run a classification job (a YAML job spec) on Spark and land it in Delta / Iceberg / Parquet exactly once.

    spark-submit jobs/spark_classify.py --spec job.yaml [--set sink.path=/tmp/out ...] [--summary-json s.json]
    python jobs/spark_classify.py --spec job.yaml          # local[*] Spark from the pyspark package

``spark-submit`` is in the pyspark package's ``bin/`` (``.venv/bin/spark-submit``). Set ``PYSPARK_PYTHON`` to
the Python that has gliclass-dist installed. Options: ``--partitions N``, ``--delta-writer auto|spark|delta-rs``,
``--no-ship-model``, ``--no-count`` (see ``--help`` and ``gliclass_dist/spark/job.py``).
Exit codes: 0 done (also when the job key was already committed: nothing written), 2 bad spec, 1 failure.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from gliclass_dist.spark.job import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
