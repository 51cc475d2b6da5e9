"""The faster CPU backends (``int8``, ``onnx-int8``): speed against the reference and fp32, F1 change on BBC.

Speed: engine fp32, engine with each CPU backend and the reference pipeline, 5 labels (the BBC
topics), on ``bbc_long``, ``bbc_titles`` and ``bbc_mixed``, interleaved in rounds (same threads, same run).

Accuracy: single-label BBC topic classification (argmax over the 5 topics) on the held-out test
split of ``gliclass_dist.demo_data.fewshot_split`` (test seed 1234): macro-F1 with fp32 and with
each backend, on article bodies (``--f1-articles`` per topic) and on all test titles; also how many
predictions agree and the largest score difference. Uses the trained demo model
(``models/gliclass-minilm-bbc``) when present, else the benchmark checkpoint (named in the output).

``targets`` are for the fast path (``--backend``, default ``onnx-int8``). Writes ``bench/results/cpu_fastpath.json``.

    python bench/cpu_fastpath.py [--target-s 3] [--f1-articles 40] [--backends int8 onnx-int8]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import peers  # noqa: E402

logger = logging.getLogger("bench.cpu_fastpath")


def macro_f1(gold: list[str], pred: list[str]) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(gold, pred, average="macro"))


def speed(approaches: dict[str, Any], sets: dict[str, list[str]], labels, target_s: float, rounds: int):
    results = []
    for set_name, texts in sets.items():
        rates = {}
        for name, approach in approaches.items():
            wall, _, _ = common.timed(approach.classify, texts[:16], labels)
            rates[name] = 16 / wall
        timing: dict[str, list[tuple[int, float]]] = {name: [] for name in approaches}
        names = list(approaches)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                n = max(32, min(len(texts), int(rates[name] * target_s)))
                n -= n % 2
                wall, _, _ = common.timed(approaches[name].classify, texts[:n], labels)
                rates[name] = n / wall
                timing[name].append((n, wall))
        per = {name: sum(n for n, _ in t) / sum(w for _, w in t) for name, t in timing.items()}
        for name, rate in per.items():
            results.append({"approach": name, "text_set": set_name, "labels": len(labels), "texts_per_s": round(rate, 3)})
        ratios: dict[str, Any] = {"text_set": set_name, "fp32_over_reference": round(per["engine"] / per["reference"], 3)}
        for name in per:
            if name.startswith("engine_"):
                backend = name.removeprefix("engine_")
                ratios[f"{backend}_over_reference"] = round(per[name] / per["reference"], 3)
                ratios[f"{backend}_over_fp32"] = round(per[name] / per["engine"], 3)
        results.append(ratios)
        logger.info("%s %s", set_name, results[-1])
    return results


def accuracy(fp32, backends: dict[str, Any], f1_articles: int) -> dict[str, Any]:
    from gliclass_dist.demo_data import BBC_TOPICS, fewshot_split

    table = common.bbc_table()
    split = fewshot_split(table, shots=8, seed=0, test_per_topic=None)
    topics = table.column("topic").to_pylist()
    out: dict[str, Any] = {"labels": BBC_TOPICS}
    by_topic: dict[str, list[int]] = {}
    for i in split.test:
        by_topic.setdefault(topics[i], []).append(i)
    article_idx = [i for t in sorted(by_topic) for i in by_topic[t][:f1_articles]]
    for kind, column, idx in (("articles", "text", article_idx), ("titles", "title", list(split.test))):
        texts = [table.column(column)[i].as_py() for i in idx]
        gold = [topics[i] for i in idx]
        preds = {}
        scores = {}
        for name, clf in (("fp32", fp32), *backends.items()):
            res = clf.classifier.classify(texts, BBC_TOPICS, mode="single-label")
            preds[name] = [p.top_label for p in res]
            scores[name] = np.array([[p.scores[t] for t in BBC_TOPICS] for p in res])
        f1 = {name: macro_f1(gold, p) for name, p in preds.items()}
        out[kind] = {"texts": len(texts), "macro_f1_fp32": round(f1["fp32"], 4)}
        for name in backends:
            agree = float(np.mean([a == b for a, b in zip(preds["fp32"], preds[name])]))
            out[kind][name] = {
                "macro_f1": round(f1[name], 4),
                "delta_points": round(100 * (f1[name] - f1["fp32"]), 2),
                "prediction_agreement": round(agree, 4),
                "max_abs_score_diff": round(float(np.abs(scores["fp32"] - scores[name]).max()), 4),
            }
        logger.info("F1 %s %s", kind, out[kind])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target-s", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--f1-articles", type=int, default=40, help="test articles per topic for the F1 check")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--out", default="cpu_fastpath")
    parser.add_argument("--backends", nargs="+", default=["int8", "onnx-int8"], help="CPU backends compared")
    parser.add_argument("--backend", default="onnx-int8", help="the fast path the targets are for")
    parser.add_argument("--sets", nargs="+", default=list(common.TEXT_SETS), help="text sets timed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    common.set_threads()
    started = time.perf_counter()
    checkpoint = args.model or common.throughput_checkpoint()
    fp32 = peers.EngineApproach(checkpoint)
    backends = {}
    for backend in args.backends:
        loading = time.perf_counter()
        backends[backend] = peers.EngineApproach(checkpoint, backend=backend)
        logger.info("backend %s ready in %.1fs", backend, time.perf_counter() - loading)
    approaches = {"engine": fp32, **{f"engine_{b}": a for b, a in backends.items()}}
    approaches["reference"] = peers.ReferenceApproach(checkpoint)
    machine = common.machine_info()
    machine["model"] = checkpoint.name
    all_sets = {name: texts for name, texts in common.text_sets().items() if name in args.sets}
    results = speed(approaches, all_sets, common.BBC_LABELS, args.target_s, args.rounds)
    acc = accuracy(fp32, {b: a for b, a in backends.items()}, args.f1_articles)
    fast = args.backend
    ratios = {r["text_set"]: r for r in results if "fp32_over_reference" in r}
    targets = [
        {
            "target": f"{fast} path >= 2x the reference on {s}, 5 labels",
            "value": ratios[s][f"{fast}_over_reference"],
            "threshold": 2.0,
            "met": ratios[s][f"{fast}_over_reference"] >= 2.0,
        }
        for s in ("bbc_long", "bbc_titles")
        if s in ratios
    ] + [
        {
            "target": f"BBC macro-F1 ({kind}) with {fast} within 1 point of fp32",
            "value": acc[kind][fast]["delta_points"],
            "threshold": -1.0,
            "met": acc[kind][fast]["delta_points"] >= -1.0,
        }
        for kind in ("articles", "titles")
    ]
    machine["load_average_at_end"] = list(os.getloadavg())
    machine["seconds"] = round(time.perf_counter() - started, 1)
    common.write_json(
        f"{args.out}.json",
        {"machine": machine, "backend": fast, "backends": args.backends, "speed": results, "accuracy": acc, "targets": targets},
    )
    for t in targets:
        logger.info("%-55s %s %s", t["target"], t["value"], "met" if t["met"] else "MISSED")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
