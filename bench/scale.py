"""Scale (issue 16, item 1): 1M and 5M short synthetic rows through the Ray job and the Spark job, tiny model.

For each size and engine: rows/s over the classification phase, whole-process wall time, and the peak
private memory (RSS minus shared pages: Ray workers map the shared object store) of the driver, of the
largest single worker (Ray: a ``ray::`` worker process; Spark: a Python worker), of the JVM and of the
largest other process (raylet, GCS), sampled twice a second over the whole process tree; plain RSS too.
Memory must not grow with the row count: nothing is collected on the driver, rows stream through
(``memory_growth``: largest size over smallest, ``flat`` when every private ratio is <= 1.10).

The tiny model (``gliclass_dist.model.tiny``, 2 layers, hidden 32) makes the frameworks, not the
model, the cost: these runs measure the plumbing's throughput and memory at scale.

Writes ``bench/results/scale.json`` and ``scale.png``.

    python bench/scale.py --rows 1000000 5000000     # the issue's sizes (hours on 2 shared cores)
    python bench/scale.py --rows 10000 50000         # what `make bench` runs
    # one engine per process, then merged (what produced scale.json on the shared 2-core box):
    python bench/scale.py --rows 200000 1000000 --engines ray --out scale_ray_h16
    python bench/scale.py --rows 200000 1000000 --engines spark --out scale_spark_h16
    python bench/scale.py --combine scale_ray_h16 scale_spark_h16 --out scale
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
        ax2.plot(xs, [p[1]["driver_private_mb"] for p in pts], marker="o", label=f"{engine} driver")
        ax2.plot(xs, [p[1]["worker_private_mb"] for p in pts], marker="s", linestyle="--", label=f"{engine} worker")
        if engine == "spark":
            ax2.plot(xs, [p[1]["jvm_private_mb"] for p in pts], marker="^", linestyle=":", label="spark JVM")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("rows")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax1.set_ylabel("rows/s (classification phase)")
    ax2.set_ylabel("peak private memory (MB)")
    ax1.set_title("Throughput at scale (tiny model, 2 cores)")
    ax2.set_title("Peak memory: must stay flat")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


GROWTH_LIMIT = 1.10  # the target: private memory within +10% from the smallest to the largest size


def ratio(large: float | None, small: float | None) -> float | None:
    return round(large / small, 3) if large and small else None


def steady_mb(run: dict[str, Any], role: str) -> float | None:
    """The median private memory of ``role`` over the second half of a run (its level once the pipeline
    is full, without the start-up burst that can set the peak)."""
    samples = run.get("samples_private_mb") or []
    if not samples:
        return None
    half = samples[-1]["t"] / 2
    values = sorted(x[role] for x in samples if x["t"] >= half and x.get(role))
    return round(values[len(values) // 2], 1) if values else None


def memory_growth(runs: list[dict[str, Any]], engines: list[str]) -> list[dict[str, Any]]:
    """Per engine: peak private memory at the largest size over the smallest (driver, largest worker, JVM, the
    rest of the tree), the same on plain RSS (``*_plain_rss_growth``), ``flat``: every private ratio <= 1.10,
    and the same ratio of levels over each run's second half (``*_steady_growth``, a diagnosis)."""
    growth = []
    for engine in engines:
        mine = sorted((r for r in runs if r["engine"] == engine and r.get("rows_out")), key=lambda r: r["rows"])
        if len(mine) < 2:
            continue
        small, large = mine[0], mine[-1]
        entry: dict[str, Any] = {"engine": engine, "rows": [small["rows"], large["rows"]]}
        for role in ("driver", "worker", "jvm", "other"):
            entry[f"{role}_rss_growth"] = ratio(large.get(f"{role}_private_mb"), small.get(f"{role}_private_mb"))
        for role in ("driver", "worker", "jvm"):
            entry[f"{role}_plain_rss_growth"] = ratio(large.get(f"{role}_rss_mb"), small.get(f"{role}_rss_mb"))
        private = [entry[f"{role}_rss_growth"] for role in ("driver", "worker", "jvm", "other")]
        entry["flat"] = all(g <= GROWTH_LIMIT for g in private if g is not None)
        for role in ("driver", "worker", "jvm"):  # a diagnosis beside the peaks: does a start-up burst drive them?
            entry[f"{role}_steady_growth"] = ratio(steady_mb(large, role), steady_mb(small, role))
        growth.append(entry)
    return growth


def thin(samples: list[dict[str, float]], points: int = 120) -> list[dict[str, float]]:
    """At most ``points`` of a run's memory samples, evenly spaced, the last one kept."""
    step = max(1, -(-len(samples) // points))
    return samples[::step] + (samples[-1:] if samples and (len(samples) - 1) % step else [])


def combine(paths: list[str], out: str) -> int:
    """One result file from per-engine runs (``--engines ray --out a`` and ``--engines spark --out b``)."""
    import json

    parts = [json.loads((common.RESULTS / f"{p}.json").read_text()) for p in paths]
    payload = {**parts[0], "runs": [r for part in parts for r in part["runs"]], "combined_from": paths}
    payload["memory_growth"] = memory_growth(payload["runs"], sorted({r["engine"] for r in payload["runs"]}))
    common.write_json(f"{out}.json", payload)
    plot(payload["runs"], common.RESULTS / f"{out}.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--engines", nargs="+", default=["ray", "spark"], choices=["ray", "spark"])
    parser.add_argument("--batch-rows", type=int, default=1024)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--out", default="scale")
    parser.add_argument("--combine", nargs="+", metavar="NAME",
                        help="only merge these result files (bench/results/NAME.json) into --out")
    args = parser.parse_args(argv)
    if args.combine:
        return combine(args.combine, args.out)
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
                        "jvm_private_mb", "other_private_mb", "tree_private_mb", "largest_worker", "worker_peak_at_s",
                        "largest_other", "files", "status_counts")
                runs.append({"engine": engine, "rows": rows, **{k: result.get(k) for k in keep},
                             "samples_private_mb": thin(result.get("samples") or [])})
                logger.info("%s %d rows: %s", engine, rows, runs[-1])
                shutil.rmtree(run_dir / "sink", ignore_errors=True)
            shutil.rmtree(data, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    growth = memory_growth(runs, args.engines)
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
        "flat_rule": "peak private memory (RSS minus shared pages, sampled twice a second over the process tree) "
                     f"at the largest size <= {GROWTH_LIMIT} x the smallest, for the driver, the largest worker, "
                     "the JVM and the rest of the tree ('*_rss_growth'; '*_plain_rss_growth': the same on RSS)",
    }
    common.write_json(f"{args.out}.json", payload)
    plot(runs, common.RESULTS / f"{args.out}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
