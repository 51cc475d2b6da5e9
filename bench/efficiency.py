"""Efficiency against the machine (issue item 3), token-budget sweep, and the label-cache identity check.

- Peak: the best fp32 GFLOP/s of a 2048-square matmul on the same threads, measured before and
  after the model runs (the best of the two is the peak).
- Model FLOPs of one sequence of ``n`` tokens: ``2 x non-embedding encoder params x n`` plus
  attention ``4 x layers x n^2 x hidden`` (QK^T and AV). *Useful* FLOPs count the real tokens only;
  *processed* FLOPs count every padded position the model actually computed (from the engine's
  own batch plan, or the reference's batches of 16 padded to their longest row).
- Padding: padded positions / all processed positions, from the engine's counters.
- Engine vs reference on articles: both on the same texts, timed in alternating rounds (the order
  flips every round, so a change in the machine's load hits both); median and range over rounds.
- Token-budget sweep: engine texts/s at several ``token_budget`` values, interleaved.
- Label cache: for BBC texts and label sets, the engine's cached per-label ids concatenated with
  the text ids must equal tokenizing the whole input string (rows that fit the window uncut).

Writes ``bench/results/efficiency.json`` and ``efficiency.png``.

    python bench/efficiency.py [--target-s 4] [--ref-rounds 5] [--ref-texts 16]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import peers  # noqa: E402

logger = logging.getLogger("bench.efficiency")

ANCHOR = {"reference_gflops_articles": 92.0, "matmul_peak_gflops": 139.0}


def chunk_lengths(clf, texts: list[str], labels: list[str]) -> list[int]:
    rows = clf.builder.encode(texts, [labels] * len(texts))
    return [len(chunk) for row in rows for chunk in row.chunks]


def engine_flops(clf, lengths: list[int], shape: dict[str, int]) -> tuple[float, float]:
    """(useful, processed) FLOPs of the engine's own batch plan for these sequence lengths."""
    useful = sum(common.sequence_flops(n, shape) for n in lengths)
    processed = 0.0
    for batch in clf._plan(lengths, clf.token_budget):
        width = max(lengths[i] for i in batch)
        processed += len(batch) * common.sequence_flops(width, shape)
    return useful, processed


def reference_flops(
    tokenizer, texts: list[str], labels: list[str], shape: dict[str, int], prompt_first: bool
) -> tuple[float, float, float]:
    """(useful, processed FLOPs, padding fraction) of the reference: batches of 16 in order, padded to the longest."""
    block = "".join(f"<<LABEL>>{lb}" for lb in labels) + "<<SEP>>"
    strings = [block + t if prompt_first else t + block for t in texts]
    lengths = [len(ids) for ids in tokenizer(strings, truncation=True, max_length=peers.WINDOW)["input_ids"]]
    useful = sum(common.sequence_flops(n, shape) for n in lengths)
    processed = 0.0
    padded_positions = 0
    for start in range(0, len(lengths), peers.BATCH):
        batch = lengths[start : start + peers.BATCH]
        processed += len(batch) * common.sequence_flops(max(batch), shape)
        padded_positions += len(batch) * max(batch)
    return useful, processed, 1.0 - sum(lengths) / padded_positions


def count_for(rate: float, target_s: float, available: int) -> int:
    return max(2, min(available, int(rate * target_s)))


def measure_engine(
    clf, texts: list[str], labels: list[str], target_s: float, shape: dict[str, int], rows_per_call: int = 256
) -> dict[str, Any]:
    """Engine calls of up to ``rows_per_call`` rows (the jobs' default batch), successive slices, for ~``target_s``.

    A call is cut to what fits ``target_s`` (at least 16 rows) when the machine is too slow for 256.
    """
    wall, _, _ = common.timed(clf.classify, texts[:8], labels)  # warm-up and sizing
    rows_per_call = max(16, min(rows_per_call, int(8 / wall * target_s)))
    useful = processed = wall = cpu = 0.0
    tokens = padded = rows = passes = 0
    lengths_all: list[int] = []
    start = 0
    while wall < target_s and start < len(texts):
        chunk = texts[start : start + rows_per_call]
        start += rows_per_call
        lengths = chunk_lengths(clf, chunk, labels)
        u, p = engine_flops(clf, lengths, shape)
        before = dict(clf.stats)
        w, c, _ = common.timed(clf.classify, chunk, labels)
        useful, processed, wall, cpu = useful + u, processed + p, wall + w, cpu + c
        tokens += clf.stats["tokens"] - before["tokens"]
        padded += clf.stats["padded_tokens"] - before["padded_tokens"]
        passes += clf.stats["forward_passes"] - before["forward_passes"]
        rows += len(chunk)
        lengths_all += lengths
    return {
        "texts": rows,
        "rows_per_call": rows_per_call,
        "seconds": round(wall, 3),
        "cpu_seconds": round(cpu, 3),
        "texts_per_s": round(rows / wall, 3),
        "mean_tokens_per_sequence": round(sum(lengths_all) / len(lengths_all), 1),
        "useful_gflops_per_s": round(useful / wall / 1e9, 2),
        "processed_gflops_per_s": round(processed / wall / 1e9, 2),
        "padding_fraction": round(1.0 - tokens / padded, 4) if padded else 0.0,
        "forward_passes": passes,
    }


def spread(values: list[float], digits: int = 3) -> dict[str, float]:
    """Median and range of one measurement over rounds."""
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def interleaved_vs_reference(
    clf, ref, tokenizer, texts: list[str], labels: list[str], shape: dict[str, int], prompt_first: bool, rounds: int
) -> dict[str, Any]:
    """Engine and reference on the same ``texts``, one timed call each per round, in alternating order.

    Even rounds run the engine first, odd rounds the reference first, so neither always meets the
    machine in the same state. Per approach: texts/s and useful GFLOP/s (median, min, max over
    rounds); and the engine ÷ reference ratio of each round.
    """
    n = len(texts)
    ref_useful, ref_processed, ref_padding = reference_flops(tokenizer, texts, labels, shape, prompt_first)
    eng_useful, eng_processed = engine_flops(clf, chunk_lengths(clf, texts, labels), shape)
    approaches = {"engine": clf.classify, "reference": ref.classify}
    for classify in approaches.values():  # warm-up, untimed
        classify(texts[:2], labels)
    walls: dict[str, list[float]] = {name: [] for name in approaches}
    for r in range(rounds):
        order = list(approaches) if r % 2 == 0 else list(reversed(approaches))
        for name in order:
            wall, _, _ = common.timed(approaches[name], texts, labels)
            walls[name].append(wall)
    flops = {"engine": (eng_useful, eng_processed), "reference": (ref_useful, ref_processed)}
    out: dict[str, Any] = {"texts": n, "rounds": rounds, "order": "alternating: engine first in even rounds"}
    for name, series in walls.items():
        useful, processed = flops[name]
        out[name] = {
            "seconds_per_round": [round(w, 3) for w in series],
            "texts_per_s": spread([n / w for w in series]),
            "useful_gflops_per_s": spread([useful / w / 1e9 for w in series], 2),
            "processed_gflops_per_s": spread([processed / w / 1e9 for w in series], 2),
        }
    out["reference"]["padding_fraction"] = round(ref_padding, 4)
    out["engine_over_reference"] = spread([r / e for e, r in zip(walls["engine"], walls["reference"])])
    return out


def budget_sweep(clf, sets, labels, budgets, target_s, rounds=2) -> list[dict[str, Any]]:
    out = []
    original = clf.token_budget
    for set_name in ("bbc_long", "bbc_titles"):
        texts = sets[set_name]
        clf.token_budget = original
        wall, _, _ = common.timed(clf.classify, texts[:16], labels)
        n = count_for(16 / wall, target_s, len(texts))
        timings: dict[int, list[float]] = {b: [] for b in budgets}
        for r in range(rounds):
            for budget in budgets[r % 2 :: 1] + budgets[: r % 2]:
                clf.token_budget = budget
                wall, _, _ = common.timed(clf.classify, texts[:n], labels)
                timings[budget].append(wall)
        for budget in budgets:
            out.append(
                {
                    "text_set": set_name,
                    "labels": len(labels),
                    "token_budget": budget,
                    "texts": n,
                    "texts_per_s": round(n * len(timings[budget]) / sum(timings[budget]), 3),
                }
            )
    clf.token_budget = original
    return out


def label_cache_check(clf, sets, counts=(1, 5, 32), rows=300) -> dict[str, Any]:
    builder = clf.builder
    checked = mismatched = skipped = 0
    texts = sets["bbc_mixed"][:rows]
    for count in counts:
        labels = common.label_set(count)
        for text, row in zip(texts, builder.encode(texts, [labels] * len(texts))):
            if len(row.chunks) != 1 or row.truncated:
                skipped += 1
                continue
            whole = builder.tokenizer(builder.whole_string(text, labels, None, ""), add_special_tokens=True)["input_ids"]
            checked += 1
            mismatched += int(whole != row.chunks[0])
    return {"rows_checked": checked, "mismatched": mismatched, "skipped_cut_or_chunked": skipped, "identical": mismatched == 0}


def plot(payload: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(payload["engine"])
    useful = [payload["engine"][s]["useful_gflops_per_s"] for s in names]
    processed = [payload["engine"][s]["processed_gflops_per_s"] for s in names]
    xs = range(len(names))
    ax1.bar([x - 0.2 for x in xs], useful, width=0.4, label="engine, useful")
    ax1.bar([x + 0.2 for x in xs], processed, width=0.4, label="engine, processed (with padding)")
    ref = payload.get("reference_bbc_long")
    if ref:
        useful_ref = ref["reference"]["useful_gflops_per_s"]
        ax1.bar(
            [len(names)],
            [useful_ref["median"]],
            yerr=[[useful_ref["median"] - useful_ref["min"]], [useful_ref["max"] - useful_ref["median"]]],
            width=0.4,
            label="reference bbc_long, useful (median, range over rounds)",
        )
        names = names + ["reference\nbbc_long"]
    ax1.axhline(payload["matmul_peak_gflops"], color="k", linestyle="--", label="fp32 matmul peak")
    ax1.axhline(0.65 * payload["matmul_peak_gflops"], color="grey", linestyle=":", label="65% of peak")
    ax1.set_xticks(range(len(names)), names)
    ax1.set_ylabel("GFLOP/s (2 threads)")
    ax1.legend(fontsize=7)
    ax1.set_title("Model FLOP/s vs matmul peak, 5 labels")
    for set_name in ("bbc_long", "bbc_titles"):
        pts = [(r["token_budget"], r["texts_per_s"]) for r in payload["token_budget_sweep"] if r["text_set"] == set_name]
        if pts:
            base = pts[-1][1]
            ax2.plot([p[0] for p in pts], [p[1] / base for p in pts], marker="o", label=set_name)
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("token budget (padded tokens per forward pass)")
    ax2.set_ylabel("texts/s relative to the largest budget")
    ax2.set_title("Engine token-budget sweep (CPU)")
    ax2.grid(True, alpha=0.3)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target-s", type=float, default=4.0)
    parser.add_argument("--labels", type=int, default=5)
    parser.add_argument("--budgets", type=int, nargs="+", default=[512, 1024, 2048, 4096, 16384])
    parser.add_argument("--ref-rounds", type=int, default=5, help="alternating engine/reference rounds on articles")
    parser.add_argument("--ref-texts", type=int, default=16, help="articles per call in those rounds")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--out", default="efficiency")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    common.set_threads()
    started = time.perf_counter()
    checkpoint = args.model or common.throughput_checkpoint()
    from gliclass_dist.engine import Classifier

    clf = Classifier.from_pretrained(checkpoint, device="cpu", dtype="float32")
    ref = peers.ReferenceApproach(checkpoint)
    shape = common.encoder_shape(clf.model.config.encoder_config)
    sets = common.text_sets()
    labels = common.label_set(args.labels)
    machine = common.machine_info()
    machine["model"] = checkpoint.name
    peak_before = common.matmul_peak_gflops()
    engine = {name: measure_engine(clf, sets[name], labels, args.target_s, shape) for name in common.TEXT_SETS}
    reference = interleaved_vs_reference(
        clf,
        ref,
        clf.builder.tokenizer,
        sets["bbc_long"][: args.ref_texts],
        labels,
        shape,
        bool(clf.model.config.prompt_first),
        args.ref_rounds,
    )
    peak_after = common.matmul_peak_gflops()
    peak = max(peak_before, peak_after)
    sweep = budget_sweep(clf, sets, labels, args.budgets, args.target_s / 2)
    cache = label_cache_check(clf, sets)
    for result in engine.values():
        result["useful_fraction_of_peak"] = round(result["useful_gflops_per_s"] / peak, 3)
    for result in (reference["engine"], reference["reference"]):
        useful = result["useful_gflops_per_s"]
        result["useful_fraction_of_peak"] = {k: round(v / peak, 3) for k, v in useful.items()}
    payload: dict[str, Any] = {
        "machine": machine,
        "encoder": shape,
        "labels": args.labels,
        "matmul_peak_gflops": round(peak, 2),
        "matmul_peak_before_after": [round(peak_before, 2), round(peak_after, 2)],
        "engine": engine,
        "reference_bbc_long": reference,
        "anchor": ANCHOR,
        "token_budget_sweep": sweep,
        "label_cache": cache,
        "targets": [
            {
                "target": "engine useful FLOP/s on bbc_long >= 65% of the fp32 matmul peak",
                "value": engine["bbc_long"]["useful_fraction_of_peak"],
                "threshold": 0.65,
                "met": engine["bbc_long"]["useful_fraction_of_peak"] >= 0.65,
            }
        ]
        + [
            {
                "target": f"padding <= 10% of processed tokens on {name}",
                "value": result["padding_fraction"],
                "threshold": 0.10,
                "met": result["padding_fraction"] <= 0.10,
            }
            for name, result in engine.items()
        ],
    }
    machine["load_average_at_end"] = list(os.getloadavg())
    machine["seconds"] = round(time.perf_counter() - started, 1)
    common.write_json(f"{args.out}.json", payload)
    plot(payload, common.RESULTS / f"{args.out}.png")
    for name, result in engine.items():
        logger.info("engine %-10s %s", name, result)
    logger.info("reference bbc_long %s", reference)
    logger.info("peak %.1f GFLOP/s; label cache %s; %.0fs", peak, cache, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
