"""Smoke tests of the benchmark code and the engine's speed features on tiny models (no timing assertions)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from gliclass_dist.engine import (  # noqa: E402
    MAX_BATCH_ROWS,
    Classifier,
    expected_padding_ratio,
    plan_batches,
)

TEXTS = [
    "The central bank raised interest rates again.",
    "The football club won the league.",
    "A new smartphone with a faster chip was released today, and reviewers praised the camera and battery.",
    "Refund missing",
    "Parliament voted on the new election law after a long debate about taxes and public spending.",
]
LABELS = ["business", "sport", "technology", "politics"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plan_covers_every_row_once_within_the_budget(seed):
    rng = random.Random(seed)
    lengths = [rng.choice([rng.randint(3, 30), rng.randint(200, 512)]) for _ in range(700)]
    budget = 4096
    batches = plan_batches(lengths, budget)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    for batch in batches:
        width = max(lengths[i] for i in batch)
        assert len(batch) == 1 or width * len(batch) <= budget
        assert len(batch) <= MAX_BATCH_ROWS
        assert lengths[batch[0]] == width  # longest first


def test_plan_closes_batches_on_length_spread_once_filled():
    # 400 rows of 20 tokens then 400 of 10: one budget would hold them all, but the second half
    # would be padded 2x; the planner starts a new batch at the drop (the first batch is full enough).
    lengths = [20] * 400 + [10] * 400
    batches = plan_batches(lengths, 1_000_000, min_fill=1000)
    assert len(batches) == 2
    assert expected_padding_ratio(lengths, 1_000_000, min_fill=1000) == 0.0
    # below min_fill it keeps rows together instead (tiny batches cost more than a little padding)
    assert len(plan_batches([20, 10], 1_000_000, min_fill=1000)) == 1
    assert expected_padding_ratio([20, 10], 1_000_000, min_fill=1000) == pytest.approx(0.25)


def test_int8_backend_scores_every_label(tiny_model):
    fp32 = Classifier.from_pretrained(tiny_model, device="cpu")
    int8 = Classifier.from_pretrained(tiny_model, device="cpu", backend="int8")
    assert int8.backend == "int8"
    a = fp32.classify(TEXTS, LABELS)
    b = int8.classify(TEXTS, LABELS)
    for pa_, pb in zip(a, b):
        assert list(pb.scores) == LABELS
        assert all(0.0 <= s <= 1.0 for s in pb.scores.values())
        assert max(abs(pa_.scores[k] - pb.scores[k]) for k in LABELS) < 0.2


def test_int8_backend_rejects_gpu_dtypes_and_unknown_backends(tiny_model):
    with pytest.raises(ValueError, match="float32 only"):
        Classifier.from_pretrained(tiny_model, device="cpu", dtype="bfloat16", backend="int8")
    with pytest.raises(ValueError, match="backend must be one of"):
        Classifier.from_pretrained(tiny_model, device="cpu", backend="tensorrt")


def test_engine_vs_peers_harness_runs_on_a_tiny_model(tiny_model, monkeypatch):
    import engine_vs_peers
    import peers

    approaches = {"engine": peers.EngineApproach(tiny_model), "reference": peers.ReferenceApproach(tiny_model)}
    monkeypatch.setattr(engine_vs_peers, "MIN_TEXTS", 4)
    records = engine_vs_peers.measure(approaches, {"bbc_mixed": TEXTS * 4}, [1, 5], target_s=0.05, rounds=2)
    results, ratios = engine_vs_peers.summarise(records)
    assert {(r["approach"], r["labels"]) for r in results} == {(a, c) for a in approaches for c in (1, 5)}
    assert all(r["texts_per_s"] > 0 for r in results)
    assert {r["peer"] for r in ratios} == {"reference"}
    checks = engine_vs_peers.check_targets(ratios)
    assert any(c["target"].startswith("bbc_mixed, 5 labels") and c["value"] is not None for c in checks)


def test_efficiency_helpers_on_a_tiny_model(tiny_model):
    import common
    import efficiency

    clf = Classifier.from_pretrained(tiny_model, device="cpu")
    shape = common.encoder_shape(clf.model.config.encoder_config)
    assert shape["params"] > 0
    lengths = efficiency.chunk_lengths(clf, TEXTS, LABELS)
    useful, processed = efficiency.engine_flops(clf, lengths, shape)
    assert 0 < useful <= processed
    cache = efficiency.label_cache_check(clf, {"bbc_mixed": TEXTS}, counts=(1, 3), rows=5)
    assert cache["rows_checked"] > 0 and cache["identical"]
    import peers

    ref = peers.ReferenceApproach(tiny_model)
    first = bool(clf.model.config.prompt_first)
    duel = efficiency.interleaved_vs_reference(clf, ref, clf.builder.tokenizer, TEXTS, LABELS, shape, first, rounds=3)
    for name in ("engine", "reference"):
        assert len(duel[name]["seconds_per_round"]) == 3
        rate = duel[name]["texts_per_s"]
        assert 0 < rate["min"] <= rate["median"] <= rate["max"]
    assert 0 <= duel["reference"]["padding_fraction"] < 1
    assert duel["engine_over_reference"]["min"] > 0


def test_gpu_bench_checkpoint_builds_and_classifies(tmp_path):
    import gpu_bench

    path = gpu_bench.build_checkpoint(tmp_path / "deberta", layers=1, hidden=32, vocab=600)
    clf = Classifier.from_pretrained(path, device="cpu")
    texts = gpu_bench.make_texts(clf.builder.tokenizer, 40, 3, seed=0)
    preds = clf.classify(texts, gpu_bench.label_names(10))
    assert len(preds) == 3 and all(len(p.scores) == 10 for p in preds)
