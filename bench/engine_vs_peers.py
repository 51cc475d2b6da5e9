"""Engine vs peers, same backbone size, same threads, one run (issue item 1).

For each text set (``bbc_long``, ``bbc_titles``, ``bbc_mixed``) and label count (1, 5, 32, 128) every
approach (engine, reference, NLI cross-encoder, embeddings; see ``bench/peers.py``) classifies a
prefix of the same shuffled texts. The approaches are interleaved: each round runs all four, in an
order that rotates from round to round, so load from other processes on this shared machine hits
them alike. Each call is sized (from a short warm-up call) to last about ``--target-s`` seconds.

Writes ``bench/results/engine_vs_peers.json`` (``{"machine", "results": [{approach, text_set,
labels, texts_per_s}]}``), ``engine_vs_peers_ratios.json`` (per-round ratios to the engine, raw
timings, the target checks and the score-equality check) and ``engine_vs_peers.png``.

    python bench/engine_vs_peers.py [--target-s 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import peers  # noqa: E402

logger = logging.getLogger("bench.engine_vs_peers")

APPROACHES = ("engine", "reference", "nli_cross_encoder", "embedding")


MIN_TEXTS = 32
MIN_PAIRS = 64


def min_count(name: str, labels: int, even: bool) -> int:
    """Smallest call: ``MIN_TEXTS`` texts (calls of a handful of rows measure per-call overheads, not
    throughput); for the NLI cross-encoder at least ``MIN_PAIRS`` text-label pairs."""
    n = max(1, MIN_PAIRS // labels) if name == "nli_cross_encoder" else MIN_TEXTS
    return max(2, n + n % 2) if even else n


def pick_count(rate: float, target_s: float, available: int, floor: int, even: bool) -> int:
    n = max(floor, min(available, int(rate * target_s)))
    if even:
        n = max(2, n - n % 2)
    return n


def measure(
    approaches: dict[str, Any],
    sets: dict[str, list[str]],
    label_counts: list[int],
    target_s: float,
    rounds: int,
) -> dict[tuple[str, str, int], dict[str, list[float]]]:
    records: dict[tuple[str, str, int], dict[str, list[float]]] = {}
    names = list(approaches)
    for set_name, texts in sets.items():
        even = set_name == "bbc_mixed"
        for count in label_counts:
            labels = common.label_set(count)
            rates: dict[str, float] = {}
            floors = {name: min_count(name, count, even) for name in names}
            for name in names:  # warm-up call, also sizes the measured calls
                n = min(floors[name], 8)
                wall, _, _ = common.timed(approaches[name].classify, texts[:n], labels)
                rates[name] = n / wall
            for r in range(rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                for name in order:
                    n = pick_count(rates[name], target_s, len(texts), floors[name], even)
                    wall, cpu, _ = common.timed(approaches[name].classify, texts[:n], labels)
                    rates[name] = n / wall
                    rec = records.setdefault((name, set_name, count), {"n": [], "wall": [], "cpu": []})
                    rec["n"].append(n)
                    rec["wall"].append(wall)
                    rec["cpu"].append(cpu)
                    logger.info("%-18s %-10s L=%-3d n=%-4d %.2fs %.2f texts/s", name, set_name, count, n, wall, n / wall)
    return records


def score_check(approaches: dict[str, Any], texts: list[str], count: int = 5, rows: int = 6) -> dict[str, Any]:
    """Engine scores (one batched call) against the reference run one text at a time (it pools without the mask).

    On checkpoints with ``extract_text_features`` + ``avg`` pooling the two differ even one text at a time:
    the reference averages the text tokens over the whole sequence length (bench/NOTES.md).
    """
    labels = common.label_set(count)
    sample = texts[:rows]
    ours = approaches["engine"].classify(sample, labels)
    worst = 0.0
    for text, mine in zip(sample, ours):
        theirs = approaches["reference"].classify([text], labels)[0]
        worst = max(worst, max(abs(mine[lb] - theirs[lb]) for lb in labels))
    return {"text_set": "bbc_mixed", "labels": count, "rows": rows, "max_abs_score_diff": worst, "equal": worst < 1e-4}


def summarise(records: dict[tuple[str, str, int], dict[str, list[float]]]) -> tuple[list[dict], list[dict]]:
    results = []
    ratios = []
    for (name, set_name, count), rec in records.items():
        results.append(
            {"approach": name, "text_set": set_name, "labels": count, "texts_per_s": round(sum(rec["n"]) / sum(rec["wall"]), 4)}
        )
    by_key = {(r["approach"], r["text_set"], r["labels"]): r["texts_per_s"] for r in results}
    for (name, set_name, count), rec in records.items():
        if name == "engine":
            continue
        engine = records.get(("engine", set_name, count))
        if engine is None:
            continue
        per_round = [
            (en / ew) / (pn / pw)
            for en, ew, pn, pw in zip(engine["n"], engine["wall"], rec["n"], rec["wall"])
        ]
        ratios.append(
            {
                "peer": name,
                "text_set": set_name,
                "labels": count,
                "engine_over_peer": round(by_key[("engine", set_name, count)] / by_key[(name, set_name, count)], 3),
                "per_round": [round(x, 3) for x in per_round],
                "engine_over_peer_cpu_time": round(
                    (sum(engine["n"]) / sum(engine["cpu"])) / (sum(rec["n"]) / sum(rec["cpu"])), 3
                ),
            }
        )
    return results, ratios


def check_targets(ratios: list[dict]) -> list[dict[str, Any]]:
    get = {(r["peer"], r["text_set"], r["labels"]): r["engine_over_peer"] for r in ratios}
    checks = []

    def add(name: str, value: float | None, target: float) -> None:
        checks.append({"target": name, "value": value, "threshold": target, "met": value is not None and value >= target})

    add("bbc_mixed, 5 labels: engine / reference", get.get(("reference", "bbc_mixed", 5)), 1.8)
    for set_name in ("bbc_long", "bbc_titles"):
        for count in common.LABEL_COUNTS:
            add(f"{set_name}, {count} labels: engine / reference", get.get(("reference", set_name, count)), 1.0)
    add("bbc_long, 5 labels: engine / reference", get.get(("reference", "bbc_long", 5)), 1.15)
    add("bbc_long, 32 labels: engine / NLI cross-encoder", get.get(("nli_cross_encoder", "bbc_long", 32)), 20.0)
    add("bbc_titles, 32 labels: engine / NLI cross-encoder", get.get(("nli_cross_encoder", "bbc_titles", 32)), 7.0)
    return checks


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [s for s in common.TEXT_SETS if any(r["text_set"] == s for r in results)]
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 4), squeeze=False)
    for ax, set_name in zip(axes[0], sets):
        for name in APPROACHES:
            points = sorted((r["labels"], r["texts_per_s"]) for r in results if r["approach"] == name and r["text_set"] == set_name)
            if points:
                ax.plot(*zip(*points), marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("labels per text")
        ax.set_ylabel("texts / s (CPU, 2 threads, fp32)")
        ax.set_title(set_name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Throughput vs label count: GLiClass engine vs peers (MiniLM-L6 size)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    global MIN_TEXTS, MIN_PAIRS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target-s", type=float, default=3.0, help="seconds per measured call")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--min-texts", type=int, default=MIN_TEXTS, help="smallest call (texts)")
    parser.add_argument("--min-pairs", type=int, default=MIN_PAIRS, help="smallest NLI call (text x label pairs)")
    parser.add_argument("--sets", nargs="+", default=list(common.TEXT_SETS))
    parser.add_argument("--labels", nargs="+", type=int, default=list(common.LABEL_COUNTS))
    parser.add_argument("--approaches", nargs="+", default=list(APPROACHES))
    parser.add_argument("--model", type=Path, default=None, help="GLiClass checkpoint (default: demo model or bench build)")
    parser.add_argument("--out", default="engine_vs_peers")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    MIN_TEXTS, MIN_PAIRS = args.min_texts, args.min_pairs
    common.set_threads()
    started = time.perf_counter()
    checkpoint = args.model or common.throughput_checkpoint()
    from gliclass_dist.demo_data import minilm_path

    all_sets = common.text_sets()
    sets = {name: all_sets[name] for name in args.sets}
    built = peers.build_approaches(checkpoint, common.nli_checkpoint(), minilm_path())
    approaches = {name: built[name] for name in args.approaches}
    machine = common.machine_info()
    machine["model"] = str(checkpoint.name)
    records = measure(approaches, sets, args.labels, args.target_s, args.rounds)
    machine["load_average_at_end"] = list(__import__("os").getloadavg())
    machine["seconds"] = round(time.perf_counter() - started, 1)
    results, ratios = summarise(records)
    common.write_json(f"{args.out}.json", {"machine": machine, "results": results})
    extra: dict[str, Any] = {"machine": machine, "ratios": ratios, "targets": check_targets(ratios)}
    if "engine" in approaches and "reference" in approaches:
        extra["scores_equal"] = score_check(approaches, all_sets["bbc_mixed"])
    extra["raw"] = [
        {"approach": k[0], "text_set": k[1], "labels": k[2], **v} for k, v in records.items()
    ]
    common.write_json(f"{args.out}_ratios.json", extra)
    plot(results, common.RESULTS / f"{args.out}.png")
    for check in extra["targets"]:
        logger.info("%-55s %s (>= %s) %s", check["target"], check["value"], check["threshold"], "met" if check["met"] else "MISSED")
    logger.info("done in %.0fs", time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
