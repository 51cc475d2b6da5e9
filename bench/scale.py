"""Scale (issue item 4): 100k and 1M short synthetic rows through the Ray job and the Spark job, tiny model.

For each size and engine: rows/s over the classification phase, whole-process wall time, and the
peak RSS of the driver and of the largest single worker (Ray: a ``ray::`` worker process; Spark:
a Python worker; the JVM separately), sampled twice a second over the whole process tree. Memory
must not grow with the row count: nothing is collected on the driver, rows stream through.

The tiny model (``gliclass_dist.model.tiny``, 2 layers, hidden 32) makes the frameworks, not the
model, the cost: these runs measure the plumbing's throughput and memory at scale.

Writes ``bench/results/scale.json`` and ``scale.png``.

    python bench/scale.py --rows 100000 1000000      # the issue's sizes (~20+ min on 2 cores)
    python bench/scale.py --rows 20000 100000        # what `make bench` runs
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import jobs_harness as jh  # noqa: E402

logger = logging.getLogger("bench.scale")

LABELS = ["complaint", "praise", "question", "sport", "politics"]


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for engine in ("ray", "spark"):
        pts = sorted((r["rows"], r) for r in runs if r["engine"] == engine and r.get("rows_per_s"))
        if not pts:
            continue
        xs = [p[0] for p in pts]
        ax1.plot(xs, [p[1]["rows_per_s"] for p in pts], marker="o", label=engine)
        ax2.plot(xs, [p[1]["driver_rss_mb"] for p in pts], marker="o", label=f"{engine} driver")
        ax2.plot(xs, [p[1]["worker_rss_mb"] for p in pts], marker="s", linestyle="--", label=f"{engine} worker")
        if engine == "spark":
            ax2.plot(xs, [p[1]["jvm_rss_mb"] for p in pts], marker="^", linestyle=":", label="spark JVM")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("rows")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax1.set_ylabel("rows/s (classification phase)")
    ax2.set_ylabel("peak RSS (MB)")
    ax1.set_title("Throughput at scale (tiny model, 2 cores)")
    ax2.set_title("Peak memory: must stay flat")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--engines", nargs="+", default=["ray", "spark"], choices=["ray", "spark"])
    parser.add_argument("--batch-rows", type=int, default=1024)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--out", default="scale")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = time.perf_counter()
    from gliclass_dist.model.tiny import build_tiny_checkpoint

    work = Path(tempfile.mkdtemp(prefix="gliclass_bench_scale_"))
    model = build_tiny_checkpoint(work / "tiny-model", backbone="bert", seed=0)
    resources = {"batch_rows": args.batch_rows, "token_budget": 2048}
    runs: list[dict[str, Any]] = []
    try:
        for rows in args.rows:
            data = jh.write_synthetic_parquet(work / f"input-{rows}", rows)
            for engine in args.engines:
                run_dir = work / f"{engine}-{rows}"
                run_dir.mkdir()
                if engine == "ray":
                    res = {**resources, "min_actors": 2, "max_actors": 2, "cpus_per_actor": 0.5}
                    spec = jh.job_spec(f"scale-ray-{rows}", data, run_dir / "sink", model, LABELS, res)
                    result = jh.run_ray_job(spec, run_dir, args.timeout, threads=1)
                else:
                    spec = jh.job_spec(f"scale-spark-{rows}", data, run_dir / "sink", model, LABELS, dict(resources))
                    result = jh.run_spark_job(spec, run_dir, args.timeout, threads=1)
                keep = ("wall_s", "exit_code", "rows_out", "rows_per_s", "classify_s", "driver_rss_mb",
                        "jvm_rss_mb", "worker_rss_mb", "tree_rss_mb", "driver_private_mb", "worker_private_mb",
                        "largest_worker", "files", "status_counts")
                runs.append({"engine": engine, "rows": rows, **{k: result.get(k) for k in keep}})
                logger.info("%s %d rows: %s", engine, rows, runs[-1])
                shutil.rmtree(run_dir / "sink", ignore_errors=True)
            shutil.rmtree(data, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    growth = []
    for engine in args.engines:
        mine = sorted((r for r in runs if r["engine"] == engine and r.get("rows_out")), key=lambda r: r["rows"])
        if len(mine) >= 2:
            small, large = mine[0], mine[-1]
            growth.append(
                {
                    "engine": engine,
                    "rows": [small["rows"], large["rows"]],
                    "driver_rss_growth": round(large["driver_rss_mb"] / max(small["driver_rss_mb"], 1), 3),
                    "worker_rss_growth": round(large["worker_rss_mb"] / max(small["worker_rss_mb"], 1), 3),
                    "jvm_rss_growth": round(large["jvm_rss_mb"] / max(small["jvm_rss_mb"], 1), 3) if engine == "spark" else None,
                    "driver_private_growth": round(large["driver_private_mb"] / max(small["driver_private_mb"], 1), 3),
                    "worker_private_growth": round(large["worker_private_mb"] / max(small["worker_private_mb"], 1), 3),
                    "flat_rss": large["driver_rss_mb"] <= 1.2 * small["driver_rss_mb"] + 50
                    and large["worker_rss_mb"] <= 1.2 * small["worker_rss_mb"] + 50,
                    "flat": large["driver_private_mb"] <= 1.2 * small["driver_private_mb"] + 50
                    and large["worker_private_mb"] <= 1.2 * small["worker_private_mb"] + 50,
                }
            )
    machine = common.machine_info(threads=os.cpu_count() or 1)
    machine["load_average_at_end"] = list(os.getloadavg())
    machine["seconds"] = round(time.perf_counter() - started, 1)
    payload = {
        "machine": machine,
        "model": "tiny BERT GLiClass (2 layers, hidden 32; gliclass_dist.model.tiny)",
        "input": "synthetic short rows (6-14 words), parquet files of 100k rows",
        "labels": LABELS,
        "resources": resources,
        "runs": runs,
        "memory_growth": growth,
        "flat_rule": "peak private memory (RSS minus shared pages) at the largest size <= 1.2 x the smallest + 50 MB, "
                     "for driver and worker ('flat'); the same on plain RSS ('flat_rss')",
    }
    common.write_json(f"{args.out}.json", payload)
    plot(runs, common.RESULTS / f"{args.out}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
