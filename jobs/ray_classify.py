"""Run a classification job (a YAML job spec) on Ray Data and land it in Delta / Iceberg / Parquet exactly once.

    python jobs/ray_classify.py --spec job.yaml [--set sink.path=/tmp/out ...] [--summary-json summary.json]
    ray job submit --working-dir . -- python jobs/ray_classify.py --spec jobs/examples/parquet_to_delta.yaml

Without ``--address`` (or ``RAY_ADDRESS``, which ``ray job submit`` sets) it starts a local Ray.
Exit codes: 0 done (also when the job key was already committed: nothing written), 2 bad spec, 1 failure.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout or a Ray job's working dir without installing
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from gliclass_dist.run import job_parser

    parser = job_parser(__doc__, set_example="resources.max_actors=4", raw_description=True)
    parser.add_argument("--address", help="Ray address (default: RAY_ADDRESS, else a new local Ray)")
    parser.add_argument("--no-count", action="store_true", help="skip the separate count of input rows")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from gliclass_dist.run import format_summary, load_job_spec, write_summary_json

    spec = load_job_spec(args.spec, args.overrides, verbose=args.verbose)
    if spec is None:
        return 2
    from gliclass_dist.ray.job import run_job

    summary = run_job(spec, ray_address=args.address, count_input=not args.no_count)
    print(format_summary(summary), flush=True)
    write_summary_json(summary, args.summary_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
