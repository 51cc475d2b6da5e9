"""Every CPU benchmark, end to end, at reduced sizes (``make bench``; each step has its own time limit).

Runs each step as its own process (one crash does not stop the others), in this order:

1. ``engine_vs_peers.py``: engine vs reference / NLI cross-encoder / embeddings, 3 text sets x 4 label counts;
2. ``efficiency.py``: model FLOP/s vs the fp32 matmul peak, padding, token-budget sweep, label-cache check;
3. ``cpu_fastpath.py``: the int8 CPU path, speed and BBC macro-F1 change;
4. ``distributed.py``: Ray job and Spark job vs the engine alone on the same cores;
5. ``scale.py``: the Ray and Spark jobs at two input sizes, rows/s and peak memory (reduced sizes here;
   the issue's 100k / 1M rows: ``python bench/scale.py --rows 100000 1000000``);
6. ``dedup.py``: rows/s when half the rows repeat earlier ones (in-batch de-duplication, result cache);
7. ``estimate_bbc.py``: ``gliclass-dist estimate`` on a BBC job (rate per core, padded tokens, projected hours);
8. ``bi_encoder.py``: a bi-encoder at 128 labels vs plain embeddings and the uni-encoder;
9. ``calibration.py`` (``--full`` only, with the demo model): ECE and macro-F1 before/after calibration;
10. ``fewshot_bbc.py --quick`` and ``serve_load.py``, when present.

Each writes its JSON (+ PNG) into ``bench/results/``; this script writes ``run_all.json`` with every
step's exit code and duration. ``--only``/``--skip`` pick steps; ``--full`` runs the issue's sizes.

    python bench/run_all.py [--only engine_vs_peers efficiency] [--full]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"


def steps(full: bool) -> list[tuple[str, list[str], float]]:
    """(name, argv, timeout seconds)."""
    py = sys.executable
    out: list[tuple[str, list[str], float]] = [
        ("engine_vs_peers", [py, "bench/engine_vs_peers.py", "--target-s", "3" if full else "1.0"]
         + ([] if full else ["--rounds", "1", "--min-texts", "16", "--min-pairs", "32"]), 1200),
        ("efficiency", [py, "bench/efficiency.py", "--target-s", "4" if full else "2.5"], 400),
        ("cpu_fastpath", [py, "bench/cpu_fastpath.py", "--target-s", "3" if full else "1.5",
                          "--f1-articles", "40" if full else "20"], 1200),
        ("distributed", [py, "bench/distributed.py", "--rows", "3000" if full else "1000"]
         + ([] if full else ["--ray-configs", "2 actors x 0.5 CPU"]), 900),
        ("scale", [py, "bench/scale.py", "--rows", *(["1000000", "5000000"] if full else ["10000", "50000"])],
         10800 if full else 600),
    ]
    # no repeated work: half the rows repeat earlier ones; the engine (interleaved), and with --full the Ray job
    out.append(("dedup", [py, "bench/dedup.py", "--rows", "1000" if full else "400", "--rounds", "2"]
                + (["--ray"] if full else []), 1800 if full else 600))
    # the cost estimate a user runs before a large job (issue 16 item 4), on BBC rows it writes itself
    out.append(("estimate", [py, "bench/estimate_bbc.py", "--rows", "1000000" if full else "20000",
                             "--sample", "2000" if full else "200"], 600))
    # bi-encoder cost at 128 labels (random-weight MiniLM shapes); calibration needs the demo model (make model)
    out.append(("bi_encoder", [py, "-m", "bench.bi_encoder"] + ([] if full else ["--texts", "128", "--uni-texts", "16",
                                                                          "--rounds", "2"]), 900))
    if full and (ROOT / "models" / "gliclass-minilm-bbc" / "model.safetensors").exists():
        out.append(("calibration", [py, "bench/calibration.py"], 1800))
    if (BENCH / "fewshot_bbc.py").exists():
        out.append(("fewshot_bbc", [py, "bench/fewshot_bbc.py"] + ([] if full else ["--quick"]), 1800))
    if (BENCH / "serve_load.py").exists():
        model = ROOT / "models" / "gliclass-minilm-bbc"
        if not (model / "model.safetensors").exists():
            model = ROOT / "models" / "bench-minilm-gliclass"
        extra = [] if full else ["--requests", "48", "--concurrency", "1", "8"]
        out.append(("serve_load", [py, "bench/serve_load.py", "--model", str(model), *extra], 900))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--skip", nargs="*", default=[])
    parser.add_argument("--full", action="store_true", help="the issue's sizes (well over 20 minutes)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(BENCH))
    import common

    common.bench_checkpoint()  # built once here, not inside a timed step
    common.nli_checkpoint()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = []
    started = time.perf_counter()
    for name, cmd, timeout in steps(args.full):
        if (args.only is not None and name not in args.only) or name in args.skip:
            continue
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        try:
            code = subprocess.run(cmd, cwd=ROOT, env=env, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        seconds = round(time.perf_counter() - t0, 1)
        print(f"== {name}: exit {code} in {seconds}s", flush=True)
        record.append({"step": name, "command": " ".join(cmd[1:]), "exit_code": code, "seconds": seconds})
    total = round(time.perf_counter() - started, 1)
    (RESULTS / "run_all.json").write_text(json.dumps({"total_seconds": total, "steps": record}, indent=2) + "\n")
    print(f"== all done in {total}s; failed: {[r['step'] for r in record if r['exit_code'] != 0] or 'none'}")
    return 0 if all(r["exit_code"] == 0 for r in record) else 1


if __name__ == "__main__":
    raise SystemExit(main())
