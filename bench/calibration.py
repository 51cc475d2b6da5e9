"""Calibration on BBC News: expected calibration error and macro-F1 at threshold 0.5, before and after.

    python bench/calibration.py --model models/gliclass-minilm-bbc          # ~10 min on 2 shared cores

The demo model (8-shot GLiClass-MiniLM, ``make model``) is calibrated with ``gliclass_dist.train.calibrate`` on
a few labelled rows and evaluated on held-out rows, for each method (``none`` = before) and for ``auto``:

- ``bbc_single_topic``: BBC articles, one true topic each. Calibration rows: ``--calib-per-topic`` articles per
  topic drawn (per seed) from articles neither in the demo model's training shots nor in the held-out set; held
  out: the few-shot benchmark's fixed test set (``fewshot_split``, 100 per topic). Two views: ``multi_label``
  (sigmoid per label, ECE over every (article, label) score, macro-F1 of the labels scoring >= 0.5; the engine's
  default mode) and ``single_label`` (softmax over the five topics, ECE of the top score, macro-F1 of the top).
- ``bbc_two_topic``: the PPO experiment's multi-label items (``bench/fewshot_bbc.py: mixed_topic_items``: 75%
  join the openings of two articles of different topics, 25% one article); calibration items from the articles
  outside the test set, held-out items from the test set's articles.

Logits are computed once per row by the engine (``collect_logits``) and each fitted map is applied to them;
``engine_check`` reloads a copy of the model with the ``auto`` map saved beside it and compares the engine's
scores on held-out rows with the offline ones. Also reported: per-label thresholds suggested on the calibration
items (``suggest_thresholds``) and the held-out macro-F1 with them. Writes ``bench/results/calibration.json``.
The given model folder is never written to (the engine check uses a copy under a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from fewshot_bbc import mixed_topic_items  # noqa: E402

from gliclass_dist.calibration import Calibration  # noqa: E402
from gliclass_dist.demo_data import BBC_TOPICS, fewshot_split, load_bbc  # noqa: E402
from gliclass_dist.engine import Classifier  # noqa: E402
from gliclass_dist.train.calibrate import (  # noqa: E402
    FIT_METHODS,
    LogitRows,
    collect_logits,
    expected_calibration_error,
    fit_calibration,
    suggest_thresholds,
)
from gliclass_dist.train.data import TrainRecord, records_from_dicts  # noqa: E402
from gliclass_dist.train.metrics import f1_scores  # noqa: E402

logger = logging.getLogger("bench.calibration")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DEMO_MODEL = ROOT / "models" / "gliclass-minilm-bbc"
MAX_LENGTH = 256  # as the few-shot benchmark and the demo model's training
BINS = 15


def article_records(texts: list[str], topics: list[str], indices: list[int]) -> list[TrainRecord]:
    return records_from_dicts([{"text": texts[i], "all_labels": BBC_TOPICS, "true_labels": [topics[i]]}
                               for i in indices])


def probabilities(rows: LogitRows, calibration: Calibration | None, mode: str) -> list[np.ndarray]:
    out = []
    for labels, logits in zip(rows.labels, rows.logits):
        z = calibration.apply(labels, logits) if calibration is not None else logits
        if mode == "single-label":
            e = np.exp(z - z.max())
            out.append(e / e.sum())
        else:
            out.append(1.0 / (1.0 + np.exp(-z)))
    return out


def evaluate(rows: LogitRows, records: list[TrainRecord], calibration: Calibration | None, mode: str,
             thresholds: dict[str, float] | None = None) -> dict[str, float]:
    """ECE (15 bins) and macro-F1 of ``rows`` after ``calibration``: sigmoid pairs at 0.5 (or ``thresholds``),
    or the softmax's top label (single-label)."""
    probs = probabilities(rows, calibration, mode)
    if mode == "single-label":
        tops = [int(np.argmax(p)) for p in probs]
        confidence = [float(p[k]) for p, k in zip(probs, tops)]
        correct = [float(t[k] == 1.0) for t, k in zip(rows.targets, tops)]
        predicted = [[labels[k]] for labels, k in zip(rows.labels, tops)]
    else:
        confidence = [float(v) for p in probs for v in p]
        correct = [float(v) for t in rows.targets for v in t]
        cut = thresholds or {}
        predicted = [[lb for lb, v in zip(labels, p) if v >= cut.get(lb, 0.5)] for labels, p in zip(rows.labels, probs)]
    f1 = f1_scores(records, predicted)
    return {"ece": expected_calibration_error(confidence, correct, BINS), "macro_f1": f1["macro_f1"],
            "micro_f1": f1["micro_f1"]}


def summarise(per_seed: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for method in per_seed[0]:
        out[method] = {}
        for metric in per_seed[0][method]:
            values = [run[method][metric] for run in per_seed]
            out[method][metric] = round(float(np.mean(values)), 4)
            out[method][f"{metric}_per_seed"] = [round(v, 4) for v in values]
    return out


def run_case(name: str, clf: Classifier, calib_sets: list[list[TrainRecord]], test: list[TrainRecord],
             modes: list[str], with_thresholds: bool) -> dict[str, Any]:
    started = time.perf_counter()
    test_rows = collect_logits(clf, test)
    logger.info("%s: held-out logits for %d rows in %.0fs", name, len(test_rows), time.perf_counter() - started)
    result: dict[str, Any] = {"held_out_rows": len(test_rows), "calibration_rows": len(calib_sets[0])}
    calib_rows = [collect_logits(clf, calib) for calib in calib_sets]
    for mode in modes:
        per_seed: list[dict[str, dict[str, float]]] = []
        chosen: list[dict[str, Any]] = []
        for seed, rows in enumerate(calib_rows):
            scores = {"none": evaluate(test_rows, test, None, mode)}
            methods = [m for m in FIT_METHODS if not (mode == "single-label" and m == "platt")]
            for method in methods:
                scores[method] = evaluate(test_rows, test, fit_calibration(rows, method=method, mode=mode).calibration,
                                          mode)
            auto = fit_calibration(rows, method="auto", mode=mode, seed=seed)
            scores["auto"] = evaluate(test_rows, test, auto.calibration, mode)
            chosen.append({"seed": seed, "method": auto.method, **auto.summary()})
            per_seed.append(scores)
        result[mode] = {"methods": summarise(per_seed), "auto_choice": chosen}
        logger.info("%s %s: %s", name, mode, {m: (v["ece"], v["macro_f1"]) for m, v in result[mode]["methods"].items()})
    if with_thresholds:
        result["suggested_thresholds"] = thresholds_case(clf, calib_sets, calib_rows, test, test_rows)
    return result


def thresholds_case(clf: Classifier, calib_sets: list[list[TrainRecord]], calib_rows: list[LogitRows],
                    test: list[TrainRecord], test_rows: LogitRows) -> dict[str, Any]:
    """Per-label thresholds from the calibration items (raw scores, and after the auto map): held-out macro-F1."""
    per_seed = []
    for seed, (calib, rows) in enumerate(zip(calib_sets, calib_rows)):
        auto = fit_calibration(rows, method="auto", mode="multi-label", seed=seed).calibration
        raw_cut = suggest_thresholds(clf, calib, min_support=3).thresholds
        calibrated_clf = Classifier(clf.model, clf.builder, model_name=clf.model_name, device="cpu", dtype="float32",
                                    calibration=auto)
        cal_cut = suggest_thresholds(calibrated_clf, calib, min_support=3).thresholds
        per_seed.append({
            "raw_at_0.5": evaluate(test_rows, test, None, "multi-label"),
            "raw_suggested": evaluate(test_rows, test, None, "multi-label", raw_cut),
            "auto_at_0.5": evaluate(test_rows, test, auto, "multi-label"),
            "auto_suggested": evaluate(test_rows, test, auto, "multi-label", cal_cut),
        })
        per_seed[-1]["thresholds"] = {"raw": raw_cut, "auto": cal_cut}  # type: ignore[assignment]
    cuts = [run.pop("thresholds") for run in per_seed]
    return {"methods": summarise(per_seed), "thresholds_per_seed": cuts}


def engine_check(model: Path, calib: list[TrainRecord], test: list[TrainRecord], mode: str) -> dict[str, Any]:
    """Save the auto map beside a copy of the model, reload it, compare the engine's scores with the offline ones."""
    with tempfile.TemporaryDirectory(prefix="calibration-bench-") as tmp:
        copy = Path(tmp) / model.name
        shutil.copytree(model, copy, ignore=shutil.ignore_patterns("calibration.json"))
        raw = Classifier.from_pretrained(copy, device="cpu", dtype="float32", max_length=MAX_LENGTH)
        fit = fit_calibration(collect_logits(raw, calib), method="auto", mode=mode)
        fit.calibration.save(copy)
        calibrated = Classifier.from_pretrained(copy, device="cpu", dtype="float32", max_length=MAX_LENGTH)
        offline = probabilities(collect_logits(raw, test), fit.calibration, mode)
        preds = calibrated.classify([r.text for r in test], [r.all_labels for r in test], mode=mode)
        diff = max(abs(p.scores[lb] - float(v)) for p, r, o in zip(preds, test, offline)
                   for lb, v in zip(r.all_labels, o))
    return {"rows": len(test), "method": fit.method, "mode": mode, "max_abs_score_diff": diff}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEMO_MODEL, help="demo model folder (make model); never written")
    parser.add_argument("--seeds", type=int, default=3, help="calibration samples (each a different few rows)")
    parser.add_argument("--calib-per-topic", type=int, default=8, help="calibration articles per topic (BBC)")
    parser.add_argument("--calib-items", type=int, default=40, help="calibration items (two-topic)")
    parser.add_argument("--test-per-topic", type=int, default=100, help="held-out articles per topic")
    parser.add_argument("--test-items", type=int, default=200, help="held-out two-topic items")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "calibration.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("gliclass_dist.engine").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    if not (args.model / "config.json").exists():
        parser.error(f"{args.model} is not a model folder; build the demo model first (make model)")
    started = time.perf_counter()
    demo = json.loads((args.model / "demo_model.json").read_text()) if (args.model / "demo_model.json").exists() else {}

    table = load_bbc()
    texts, topics = table.column("text").to_pylist(), table.column("topic").to_pylist()
    ids = table.column("id").to_pylist()
    split = fewshot_split(table, 8, 0, test_per_topic=args.test_per_topic)  # the demo model's split (seed 0)
    trained = set(demo.get("train_articles", [])) | {ids[i] for i in split.train}
    test_set = set(split.test)
    def key(i: int) -> str:
        return " ".join(texts[i].split())

    # the corpus repeats some articles: a copy of a held-out or training article is not spare, and each once
    taken = {key(i) for i in range(len(texts)) if i in test_set or ids[i] in trained}
    unique = {key(i): i for i in range(len(texts)) if key(i) not in taken}
    spare = sorted(unique.values())
    by_topic = {t: [i for i in spare if topics[i] == t] for t in BBC_TOPICS}

    clf = Classifier.from_pretrained(args.model, device="cpu", dtype="float32", max_length=MAX_LENGTH)
    raw = Classifier(clf.model, clf.builder, model_name=clf.model_name, device="cpu", dtype="float32")  # no map
    single_sets = []
    for seed in range(args.seeds):
        rng = random.Random(100 + seed)
        chosen = sorted(i for t in BBC_TOPICS for i in rng.sample(by_topic[t], args.calib_per_topic))
        single_sets.append(article_records(texts, topics, chosen))
    single_test = article_records(texts, topics, split.test)

    rng = random.Random(7)
    two_test = records_from_dicts(mixed_topic_items(texts, topics, split.test, args.test_items, rng))
    two_sets = [records_from_dicts(mixed_topic_items(texts, topics, spare, args.calib_items, random.Random(200 + s)))
                for s in range(args.seeds)]

    payload: dict[str, Any] = {
        "setup": {
            "model": str(args.model), "demo_model_macro_f1": demo.get("macro_f1"), "max_length": MAX_LENGTH,
            "seeds": args.seeds, "ece_bins": BINS, "threshold": 0.5,
            "bbc_single_topic": f"{args.calib_per_topic} calibration articles per topic (not the model's training "
                                f"shots, not held out); held out: {len(single_test)} articles (fewshot_split seed 0)",
            "bbc_two_topic": f"{args.calib_items} calibration items from articles outside the test set; held out: "
                             f"{len(two_test)} items built from the test articles (mixed_topic_items)",
            "machine": f"{platform.machine()}, {args.threads} torch threads, shared with other jobs",
            "torch": torch.__version__,
        },
    }
    payload["bbc_single_topic"] = run_case("bbc_single_topic", raw, single_sets, single_test,
                                           ["multi-label", "single-label"], with_thresholds=False)
    payload["bbc_two_topic"] = run_case("bbc_two_topic", raw, two_sets, two_test, ["multi-label"],
                                        with_thresholds=True)
    payload["engine_check"] = engine_check(args.model, two_sets[0], two_test[:40], "multi-label")
    payload["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    for case in ("bbc_single_topic", "bbc_two_topic"):
        for mode in ("multi-label", "single-label"):
            if mode in payload[case]:
                for method, v in payload[case][mode]["methods"].items():
                    print(f"{case:17s} {mode:12s} {method:16s} ECE {v['ece']:.4f}  macro-F1 {v['macro_f1']:.4f}")
    print("engine check:", payload["engine_check"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
