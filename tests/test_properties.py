"""Property tests over random texts and label lists (hypothesis): no exception, labels never
truncated, scores in [0, 1], batch invariance, and cached-piece ids equal whole-string ids."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gliclass_dist.engine import Classifier
from gliclass_dist.labels import clean_row_labels

texts = st.one_of(st.none(), st.text(max_size=400), st.text(alphabet="abc XYZ.,!\n\t0123", max_size=2000))
label_lists = st.lists(st.text(min_size=0, max_size=30), min_size=0, max_size=40)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def small_window(tiny_model):
    return Classifier.from_pretrained(tiny_model, device="cpu", max_length=96, token_budget=1024)


@SETTINGS
@given(text=st.text(max_size=300), labels=st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=30))
def test_builder_keeps_every_label_and_fits_the_window(small_window, text, labels):
    cleaned, _ = clean_row_labels(labels)
    if not cleaned:
        return
    row = small_window.builder.encode([text], [cleaned])[0]
    assert row.labels == cleaned
    assert all(len(chunk) <= small_window.builder.max_length for chunk in row.chunks)


@SETTINGS
@given(text=st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=120), labels=st.lists(st.text(alphabet="abcdef xyz", min_size=1, max_size=12), min_size=1, max_size=5, unique=True))
def test_cached_pieces_equal_whole_string_tokenization(classifier, text, labels):
    builder = classifier.builder
    cleaned, _ = clean_row_labels(labels)
    if not cleaned or not builder.exact:
        return
    from gliclass_dist.model.inputs import scrub_text

    text = scrub_text(text)
    row = builder.encode([text], [cleaned])[0]
    if len(row.chunks) == 1 and not row.truncated:
        whole = builder.tokenizer(builder.whole_string(text, cleaned, None, ""))["input_ids"]
        assert row.chunks[0] == whole


@SETTINGS
@given(rows=st.lists(st.tuples(texts, label_lists), min_size=1, max_size=8))
def test_engine_never_raises_and_scores_are_probabilities(small_window, rows):
    preds = small_window.classify([t for t, _ in rows], [ls for _, ls in rows])
    assert len(preds) == len(rows)
    for pred, (_, labels) in zip(preds, rows):
        cleaned, _ = clean_row_labels(labels)
        if pred.scores:
            assert list(pred.scores) == cleaned
            assert all(0.0 <= s <= 1.0 for s in pred.scores.values())
        else:
            assert pred.status != "ok"


@SETTINGS
@given(others=st.lists(st.text(alphabet="abc de fgh.", max_size=600), min_size=1, max_size=6))
def test_batch_invariance(small_window, others):
    labels = ["alpha", "beta gamma", "delta"]
    target = "The bank raised rates and the club won."
    alone = small_window.classify([target], labels)[0].scores
    mixed = small_window.classify([*others, target], labels)[-1].scores
    assert max(abs(alone[k] - mixed[k]) for k in labels) < 1e-5
