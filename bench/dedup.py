"""No repeated work (issue 16 item 2): rows/s on BBC rows where half the rows repeat earlier ones.

Input: ``--rows`` BBC rows (title + start of the article, ``--chars`` characters); the first half are
distinct, the second half copies of rows of the first half, all shuffled together (so half of all rows
repeat an earlier row). 5 BBC topics, the MiniLM-L6 GLiClass, fp32, CPU.

- ``engine_plain``: ``Classifier.classify_arrow`` per batch of ``--batch-rows`` rows, every row scored
  (``deduplicate = False``, no result cache): the baseline;
- ``engine_dedup``: the default engine: rows with the same model input in a batch scored once;
- ``engine_dedup_cache``: plus the cross-batch result cache (``result_cache_rows``), empty at the start;
- ``--ray``: ``jobs/ray_classify.py`` (one actor, one thread) on ``--ray-rows`` such rows, with in-batch
  de-duplication only (``ray_job_dedup``) and with ``resources.result_cache_rows`` too
  (``ray_job_dedup_cache``), against the same job on as many distinct BBC rows (``ray_job_distinct``:
  every row scored, the job's ``engine_plain``); ``speedup_over_dedup_only`` compares the two jobs on the
  same input.

Engine approaches run interleaved in one process (``--rounds``), the median rate of each is compared with
the plain one. ``identical``: every row has the plain run's status, labels and top label, and scores within
``SCORE_TOLERANCE`` (a row scored in a batch of another shape can move by one float32 unit in the last
place); ``max_score_diff`` is the largest difference seen. Writes ``bench/results/dedup.json``
(``{"results": [{"approach", "duplicate_share", "speedup", "identical", ...}]}``).

    python bench/dedup.py [--rows 1000] [--rounds 2] [--ray]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

logger = logging.getLogger("bench.dedup")

SCORE_TOLERANCE = 1e-5


def snippets(chars: int, seed: int = 0) -> list[str]:
    """Distinct BBC snippets of ``chars`` characters (whitespace folded), shuffled: each article's start
    (title + first lines) first, then its next ``chars``-long windows, so that there are enough for a
    job-sized input of distinct rows."""
    from gliclass_dist.demo_data import load_bbc

    texts = [" ".join(t.split()) for t in load_bbc().column("text").to_pylist()]
    rng = random.Random(seed)
    rng.shuffle(texts)
    starts = [t[:chars] for t in texts]
    windows = [t[k:k + chars] for t in texts for k in range(chars, len(t) - chars + 1, chars)]
    rng.shuffle(windows)
    return list(dict.fromkeys(starts + windows))  # the corpus repeats a few articles


def duplicated_rows(rows: int, chars: int, seed: int = 0) -> list[str]:
    """``rows`` BBC snippets: ``rows - rows // 2`` distinct ones, the rest copies of them, shuffled together."""
    distinct = snippets(chars, seed)[: rows - rows // 2]
    if len(distinct) < rows - rows // 2:
        raise SystemExit(f"the corpus has only {len(distinct)} distinct snippets; use at most {2 * len(distinct)} rows")
    rng = random.Random(seed + 1)
    out = distinct + [rng.choice(distinct) for _ in range(rows // 2)]
    rng.shuffle(out)
    return out


def distinct_rows(rows: int, chars: int, seed: int = 0) -> list[str]:
    """``rows`` BBC snippets, no two alike: the same kind of rows with nothing to save."""
    out = snippets(chars, seed)[:rows]
    if len(out) < rows:
        raise SystemExit(f"the corpus has only {len(out)} distinct snippets; use --ray-rows {len(out)} or fewer")
    return out


def compare(got: list[dict[str, Any]], plain: list[dict[str, Any]]) -> tuple[bool, float]:
    """(same statuses, labels and top labels with scores within SCORE_TOLERANCE, largest score difference)."""
    same, worst = len(got) == len(plain), 0.0
    for g, p in zip(got, plain):
        if (g["status"], g["labels"], g["top_label"]) != (p["status"], p["labels"], p["top_label"]):
            same = False
        if [s["label"] for s in g["scores"]] != [s["label"] for s in p["scores"]]:
            same = False
            continue
        for a, b in zip(g["scores"], p["scores"]):
            worst = max(worst, abs(a["score"] - b["score"]))
    return same and worst <= SCORE_TOLERANCE, worst


def engine_runs(texts: list[str], model: Path, batch_rows: int, rounds: int) -> list[dict[str, Any]]:
    import pyarrow as pa

    from gliclass_dist.engine import Classifier

    common.set_threads(common.THREADS)
    clf = Classifier.from_pretrained(model, device="cpu")
    table = pa.table({"id": list(range(len(texts))), "text": texts})
    spec = common.BBC_LABELS
    settings = {
        "engine_plain": (False, 0),
        "engine_dedup": (True, 0),
        "engine_dedup_cache": (True, len(texts)),
    }

    def run(name: str) -> tuple[float, list[dict[str, Any]], dict[str, int]]:
        clf.deduplicate, clf.result_cache_rows = settings[name]
        if clf.result_cache is not None:
            clf.result_cache.clear()
        before = dict(clf.stats)
        started = time.perf_counter()
        parts = [clf.classify_arrow(table.slice(i, batch_rows), spec, keep=["id"]) for i in range(0, len(texts), batch_rows)]
        seconds = time.perf_counter() - started
        stats = {k: clf.stats.get(k, 0) - before.get(k, 0) for k in ("forward_passes", "tokens", "duplicate_rows", "cache_hits")}
        return seconds, [row for part in parts for row in part.to_pylist()], stats

    clf.classify_arrow(table.slice(0, 8), spec)  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in settings}
    outputs: dict[str, list[dict[str, Any]]] = {}
    stats: dict[str, dict[str, int]] = {}
    for r in range(rounds):
        for name in settings:
            s, outputs[name], stats[name] = run(name)
            seconds[name].append(s)
            logger.info("round %d %-20s %.2f rows/s", r, name, len(texts) / s)
    base = len(texts) / statistics.median(seconds["engine_plain"])
    results = []
    for name in settings:
        rate = len(texts) / statistics.median(seconds[name])
        identical, worst = compare(outputs[name], outputs["engine_plain"])
        results.append({
            "approach": name,
            "rows": len(texts),
            "duplicate_share": round(1 - len(set(texts)) / len(texts), 3),
            "rows_per_s": round(rate, 2),
            "speedup": round(rate / base, 3),
            "identical": identical,
            "max_score_diff": worst,
            "seconds": [round(s, 2) for s in seconds[name]],
            **stats[name],
        })
    return results


def ray_runs(texts: list[str], distinct: list[str], model: Path, batch_rows: int, timeout: float) -> list[dict[str, Any]]:
    """The Ray job three times: on ``distinct`` rows (every row scored: the job's counterpart of
    ``engine_plain``), then on ``texts`` (half repeats) with in-batch de-duplication only and with the
    result cache too. Speedups are over the distinct run; the cached run's rows are checked against the
    de-duplicated run's (same input)."""
    import jobs_harness as jh
    import pyarrow as pa
    import pyarrow.parquet as pq

    work = Path(tempfile.mkdtemp(prefix="gliclass_bench_dedup_"))
    runs: dict[str, dict[str, Any]] = {}
    outputs: dict[str, list[dict[str, Any]]] = {}
    plan = (("ray_job_distinct", distinct, 0), ("ray_job_dedup", texts, 0), ("ray_job_dedup_cache", texts, len(texts)))
    for name, rows, cache_rows in plan:
        run_dir = work / name
        (run_dir / "input").mkdir(parents=True)
        pq.write_table(pa.table({"id": [f"d{i:07d}" for i in range(len(rows))], "text": rows}),
                       run_dir / "input" / "part-00000.parquet")
        resources = {"batch_rows": batch_rows, "min_actors": 1, "max_actors": 1, "cpus_per_actor": 1.0,
                     "result_cache_rows": cache_rows}
        spec = jh.job_spec(name, run_dir / "input", run_dir / "sink", model, common.BBC_LABELS, resources)
        runs[name] = jh.run_ray_job(spec, run_dir, timeout, threads=1)
        logger.info("%s: %s rows/s (exit %s)", name, runs[name].get("rows_per_s"), runs[name].get("exit_code"))
        files = sorted((run_dir / "sink").rglob("*.parquet"))
        table = pa.concat_tables([pq.read_table(f) for f in files]) if files else None
        outputs[name] = table.sort_by("id").to_pylist() if table is not None else []
    base = runs["ray_job_distinct"].get("rows_per_s")
    dedup_rate = runs["ray_job_dedup"].get("rows_per_s")
    results = []
    for name, _rows, _cache in plan[1:]:
        rate = runs[name].get("rows_per_s")
        identical, worst = compare(outputs[name], outputs["ray_job_dedup"])
        results.append({
            "approach": name,
            "rows": len(texts),
            "duplicate_share": round(1 - len(set(texts)) / len(texts), 3),
            "rows_per_s": rate,
            "baseline": f"ray_job_distinct (the same job on {len(distinct)} distinct rows: every row scored)",
            "baseline_rows_per_s": base,
            "speedup": round(rate / base, 3) if base and rate else None,
            "speedup_over_dedup_only": round(rate / dedup_rate, 3) if dedup_rate and rate else None,
            "identical": identical and bool(outputs["ray_job_dedup"]),
            "identical_to": "ray_job_dedup (same input)",
            "max_score_diff": worst,
            "exit_codes": {n: runs[n].get("exit_code") for n in runs},
        })
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--chars", type=int, default=300)
    parser.add_argument("--batch-rows", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ray", action="store_true", help="also the Ray job: on distinct rows, de-duplicated, and with the result cache")
    parser.add_argument("--ray-rows", type=int, default=8000)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--out", default="dedup", help="results file name in bench/results, without .json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = time.perf_counter()
    machine = common.machine_info()  # here: it records the load average at the start
    model = args.model or common.throughput_checkpoint()
    texts = duplicated_rows(args.rows, args.chars)
    # the Ray inputs are built first, so that too many --ray-rows fails before the engine runs, not after
    ray_inputs = (duplicated_rows(args.ray_rows, args.chars), distinct_rows(args.ray_rows, args.chars)) if args.ray else None
    results = engine_runs(texts, model, args.batch_rows, args.rounds)
    if ray_inputs is not None:
        results += ray_runs(*ray_inputs, model, args.batch_rows, args.timeout)
    machine["load_average_at_end"] = list(os.getloadavg())
    machine["seconds"] = round(time.perf_counter() - started, 1)
    machine["note"] = "2-core machine shared with other jobs: compare approaches within this run (ratios)"
    payload = {
        "machine": machine,
        "input": {"rows": args.rows, "text": f"BBC title + article start, {args.chars} chars, half the rows repeats",
                  "labels": common.BBC_LABELS, "batch_rows": args.batch_rows},
        "model": model.name,
        "score_tolerance": SCORE_TOLERANCE,
        "results": results,
    }
    common.write_json(f"{args.out}.json", payload)
    for r in results:
        logger.info("%-20s speedup %s identical %s", r["approach"], r["speedup"], r["identical"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
