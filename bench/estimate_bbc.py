"""Know the cost before running (issue 16 item 4): ``gliclass-dist estimate`` on a BBC job, as `make bench` runs it.

Writes ``--rows`` BBC rows (title + the start of the article, 300 characters) as one Parquet file, a job spec over
them (5 topics, single-label, the throughput checkpoint: the demo model when built), and the estimate measured on
a ``--sample``-row sample (1 thread: the per-core rate) to ``bench/results/estimate.json``; prints it too.

    python bench/estimate_bbc.py [--rows 100000] [--sample 500]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import jobs_harness as jh  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the job's input (projected, not run)")
    parser.add_argument("--sample", type=int, default=500, help="rows classified here")
    args = parser.parse_args(argv)

    from gliclass_dist.estimate import estimate, format_estimate
    from gliclass_dist.spec import JobSpec

    machine = common.machine_info()  # first: it records the load average at the start
    work = Path(tempfile.mkdtemp(prefix="gliclass_bench_estimate_"))
    data = jh.write_bbc_parquet(work / "input", args.rows)
    spec = jh.job_spec("estimate-bbc", data, work / "sink", common.throughput_checkpoint(), common.BBC_LABELS, {})
    spec["labels"]["mode"] = "single-label"
    est = estimate(JobSpec.model_validate(spec), sample_rows=args.sample, threads=1)
    print(format_estimate(est))
    payload = {"command": "python bench/estimate_bbc.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "machine": machine, "estimate": est.to_dict()}
    common.write_json("estimate.json", payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
