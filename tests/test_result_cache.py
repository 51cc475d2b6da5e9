"""No repeated work: rows with the same model input are scored once per call, and an optional LRU cache
answers rows seen in earlier calls; either way the output is the one of the plain path, row for row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from gliclass_dist.calibration import Calibration
from gliclass_dist.engine import Classifier
from gliclass_dist.labels import LabelSpec
from gliclass_dist.result_cache import ResultCache, row_key

LONG = "the vote in parliament went on late into the night " * 12  # longer than the window below

# Repeats on purpose: the same row twice, the same text with a reordered or a cleaned label set, a long
# (truncated) text twice, rows that are never scored, and upper-case labels next to the same lower-case ones.
TEXTS = [
    "a match today", "a match today", "a match today", "a match today", LONG, LONG, None, "  ",
    "new phone chip", "new phone chip", "stock prices fell", "a match today",
]
ROW_LABELS = [
    ["sports", "politics", "tech"],
    ["sports", "politics", "tech"],
    ["tech", "sports", "politics"],  # other order: another model input
    ["sports", "sports", "politics", "tech"],  # cleaned to the first row's set: status labels_cleaned
    ["politics", "business"],
    ["politics", "business"],
    ["sports"],
    ["sports"],
    ["tech", "business"],
    ["Tech", "Business"],  # the tiny tokenizer lower-cases: same ids, the row keeps its own names
    None,
    ["sports", "politics", "tech"],
]


@pytest.fixture()
def fresh(tiny_model: Path) -> Classifier:
    """A classifier of its own (stats and cache start empty), with a short window so LONG is truncated."""
    return Classifier.from_pretrained(tiny_model, device="cpu", max_length=48)


def table(texts: list, labels: list) -> pa.Table:
    return pa.table(
        {
            "id": list(range(len(texts))),
            "text": pa.array(texts, pa.string()),
            "labels": pa.array(labels, pa.list_(pa.string())),
        }
    )


def assert_same(got: list[dict], expected: list[dict]) -> None:
    """Row for row the same result: every column equal, scores equal up to float32 rounding noise.

    A row's logits do not depend on its batch-mates, but the float rounding of a forward pass can move by
    one unit in the last place with the batch's shape (a row scored alone vs with others).
    """
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        scoreless = ("scores", "top_score")
        assert {k: v for k, v in g.items() if k not in scoreless} == {k: v for k, v in e.items() if k not in scoreless}
        assert [s["label"] for s in g["scores"]] == [s["label"] for s in e["scores"]]
        assert [s["score"] for s in g["scores"]] == pytest.approx([s["score"] for s in e["scores"]], abs=1e-6)
        assert (g["top_score"] is None) == (e["top_score"] is None)
        if g["top_score"] is not None:
            assert g["top_score"] == pytest.approx(e["top_score"], abs=1e-6)


def plain(clf: Classifier, data: pa.Table, spec: LabelSpec) -> list[dict]:
    """The output with every row scored: no de-duplication, no cache."""
    dedup, rows = clf.deduplicate, clf.result_cache_rows
    clf.deduplicate, clf.result_cache_rows = False, 0
    try:
        return clf.classify_arrow(data, spec, keep=["id"]).to_pylist()
    finally:
        clf.deduplicate, clf.result_cache_rows = dedup, rows


@pytest.mark.parametrize("mode", ["multi-label", "single-label"])
def test_duplicates_in_a_batch_are_scored_once_with_the_plain_output(fresh: Classifier, mode: str) -> None:
    data = table(TEXTS, ROW_LABELS)
    spec = LabelSpec(column="labels", mode=mode, threshold=0.4)
    expected = plain(fresh, data, spec)
    plain_tokens = fresh.stats["tokens"]

    fresh.stats["tokens"] = 0
    got = fresh.classify_arrow(data, spec, keep=["id"]).to_pylist()
    assert_same(got, expected)
    statuses = [r["status"] for r in got]
    assert statuses[3] == "labels_cleaned" and statuses[4] == statuses[5] == "truncated"
    assert statuses[6:8] == ["empty_text", "empty_text"] and statuses[10] == "no_labels"
    assert [s["label"] for s in got[9]["scores"]] == ["Tech", "Business"]  # its own names, the twin's logits
    assert [s["score"] for s in got[9]["scores"]] == [s["score"] for s in got[8]["scores"]]
    # rows 1, 3 and 11 repeat row 0, row 5 repeats row 4, row 9 repeats row 8
    assert fresh.stats["duplicate_rows"] == 5
    assert 0 < fresh.stats["tokens"] < plain_tokens


def test_the_cache_answers_rows_of_earlier_calls_with_the_plain_output(fresh: Classifier) -> None:
    spec = LabelSpec(column="labels")
    first, second = table(TEXTS[:6], ROW_LABELS[:6]), table(TEXTS, ROW_LABELS)
    expected = [plain(fresh, first, spec), plain(fresh, second, spec)]

    fresh.result_cache_rows = 100
    passes = fresh.stats["forward_passes"]
    got_first = fresh.classify_arrow(first, spec, keep=["id"]).to_pylist()
    passes_first = fresh.stats["forward_passes"] - passes
    got_second = fresh.classify_arrow(second, spec, keep=["id"]).to_pylist()
    assert_same(got_first + got_second, expected[0] + expected[1])
    # the first call scored 3 distinct inputs (rows 0, 2, 4); the second finds them and scores only row 8
    assert fresh.stats["cache_hits"] == 3
    assert len(fresh.result_cache) == 4
    assert fresh.stats["forward_passes"] - passes - passes_first >= 1


def test_cached_logits_are_calibrated_and_thresholded_per_call(fresh: Classifier) -> None:
    data = table(TEXTS, ROW_LABELS)
    fresh.result_cache_rows = 100
    raw = fresh.classify_arrow(data, LabelSpec(column="labels"), keep=["id"]).to_pylist()
    fresh.calibration = Calibration(scale=2.0, bias=-0.5)
    strict = LabelSpec(column="labels", threshold=0.9)
    expected = plain(fresh, data, strict)
    hits = fresh.stats["cache_hits"]
    got = fresh.classify_arrow(data, strict, keep=["id"]).to_pylist()
    assert fresh.stats["cache_hits"] > hits
    assert_same(got, expected)
    assert [r["scores"] for r in got] != [r["scores"] for r in raw]  # the calibration was applied to cached rows


def test_a_failed_row_is_not_cached(fresh: Classifier) -> None:
    def fail(_tokens: int) -> None:
        raise RuntimeError("drill")

    data = table(TEXTS[:2], ROW_LABELS[:2])
    spec = LabelSpec(column="labels")
    fresh.result_cache_rows = 100
    fresh.fault_hook = fail
    failed = fresh.classify_arrow(data, spec).column("status").to_pylist()
    assert failed == ["error: RuntimeError: drill"] * 2
    assert len(fresh.result_cache) == 0
    fresh.fault_hook = None
    assert fresh.classify_arrow(data, spec).column("status").to_pylist() == ["ok", "ok"]


def test_the_cache_stays_within_its_rows_across_calls(fresh: Classifier) -> None:
    fresh.result_cache_rows = 3
    spec = LabelSpec(labels=["sports", "politics"])
    texts = ["a match today", "the vote", "new phone chip", "stock prices fell", "the vote in parliament",
             "a phone today", "match prices", "new vote"]  # 8 distinct model inputs (the tiny vocabulary has no digits)
    assert len({row_key(r.chunks) for r in fresh.builder.encode(texts, [spec.fixed] * 8)}) == 8
    expected = plain(fresh, pa.table({"id": list(range(8)), "text": texts}), spec)
    got = []
    for i in range(0, 8, 2):
        got += fresh.classify_arrow(pa.table({"id": [i, i + 1], "text": texts[i : i + 2]}), spec, keep=["id"]).to_pylist()
        assert len(fresh.result_cache) <= 3
    assert_same(got, expected)
    assert fresh.result_cache.evictions == 5
    # the last three texts are still there; the first ones were evicted
    again = fresh.classify_arrow(pa.table({"text": texts[5:] + texts[:1]}), spec)
    assert fresh.stats["cache_hits"] == 3
    assert again.column("status").to_pylist() == ["ok"] * 4


def test_classify_and_call_use_the_same_path(fresh: Classifier) -> None:
    fresh.result_cache_rows = 10
    labels = ["sports", "politics", "tech"]
    preds = fresh.classify(["a match today", "a match today", "the vote"], labels, batch_size=1)
    assert fresh.stats["cache_hits"] == 1  # the second batch (one row) found the first one's result
    assert preds[0] == preds[1]
    one = fresh("a match today", labels)
    assert one == preds[0]
    assert fresh(["the vote"], labels) == [preds[2]]


# -- the cache itself ---------------------------------------------------------------------------------
def test_lru_eviction_order_and_row_bound() -> None:
    cache = ResultCache(3)
    keys = [row_key([[i, 2, 3]]) for i in range(5)]
    for key in keys[:3]:
        cache.put(key, np.zeros(2, dtype=np.float32))
    assert cache.get(keys[0]) is not None  # now the most recently used
    cache.put(keys[3], np.ones(2, dtype=np.float32))
    assert keys[1] not in cache and keys[0] in cache and len(cache) == 3
    cache.put(keys[4], np.ones(2, dtype=np.float32))
    assert keys[2] not in cache and len(cache) == 3 and cache.evictions == 2
    assert cache.hits == 1


def test_byte_bound_and_read_only_values() -> None:
    logits = np.zeros(100, dtype=np.float32)
    key = row_key([[1]])
    size = ResultCache.entry_bytes(key, logits)
    cache = ResultCache(1000, max_bytes=3 * size)
    for i in range(10):
        cache.put(row_key([[i]]), logits)
        assert cache.nbytes <= 3 * size
    assert len(cache) == 3
    cache.put(row_key([[99]]), np.zeros(10_000, dtype=np.float32))  # larger than the whole cache: not stored
    assert row_key([[99]]) not in cache and len(cache) == 3
    stored = cache.get(row_key([[9]]))
    assert stored is not None and not stored.flags.writeable
    with pytest.raises(ValueError, match="max_rows"):
        ResultCache(0)


def test_row_key_separates_chunks() -> None:
    assert row_key([[1, 2], [3]]) != row_key([[1], [2, 3]])
    assert row_key([[1, 2, 3]]) == row_key([[1, 2, 3]])
    assert len(row_key([[1]])) == 16


# -- the Python API over the same path ----------------------------------------------------------------
def test_classify_batches_and_progress_bar(fresh: Classifier, capsys: pytest.CaptureFixture[str]) -> None:
    texts = ["a match today", "the vote", "new phone chip", None, "stock prices fell"]
    labels = ["sports", "politics", "tech"]
    whole = fresh.classify(texts, labels, show_progress_bar=False)
    capsys.readouterr()
    in_twos = fresh.classify(texts, labels, batch_size=2, show_progress_bar=True)
    assert [p.status for p in in_twos] == [p.status for p in whole] == ["ok", "ok", "ok", "empty_text", "ok"]
    for a, b in zip(in_twos, whole):
        assert a.labels == b.labels and list(a.scores) == list(b.scores)
        assert list(a.scores.values()) == pytest.approx(list(b.scores.values()), abs=1e-6)
    assert "5/5" in capsys.readouterr().err  # tqdm's bar on stderr, over the rows
    fresh.classify(texts, labels, batch_size=2)  # default: no bar (not logging at INFO, not a terminal)
    assert "5/5" not in capsys.readouterr().err
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            fresh.classify(texts, labels, batch_size=bad)
    assert fresh.classify([], labels) == []
    with pytest.raises(ValueError, match="prompt"):
        fresh.classify([], labels, prompt="<<LABEL>>")  # checked even without texts, as before


def test_classify_arrow_takes_a_plain_label_list(fresh: Classifier) -> None:
    data = pa.table({"text": ["a match today", "the vote"]})
    labels = ["sports", "politics"]
    assert fresh.classify_arrow(data, labels).to_pylist() == fresh.classify_arrow(data, LabelSpec(labels=labels)).to_pylist()
    with pytest.raises(ValueError, match="list of label strings"):
        fresh.classify_arrow(data, "sports")
