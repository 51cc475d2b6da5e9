"""Reliability of the engine at the edges (issue #13): non-finite weights and scores, argument checks,
marker strings in prompts and few-shot examples, out-of-memory back-off and per-row fault isolation.

Real tiny checkpoints only (``tests/conftest.py``); the out-of-memory path is driven through the engine's
documented ``Classifier.fault_hook`` seam, the per-row failure by real out-of-vocabulary token ids.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file, save_file

from gliclass_dist.engine import RECOVER_AFTER_BATCHES, Classifier
from gliclass_dist.labels import LabelSpec
from gliclass_dist.model.loading import CheckpointError
from gliclass_dist.schema import Status
from gliclass_dist.spec import JobSpec, SpecError

LABELS = ["business", "sport", "politics"]
TEXTS = ["Rates rose.", "The club won the league.", "Parliament passed the budget bill today."]


def job_dict(tmp_path: Path, **labels: object) -> dict:
    return {
        "input": {"path": str(tmp_path / "in.parquet")},
        "labels": {"labels": LABELS, **labels},
        "model": {"ref": str(tmp_path / "model")},
        "sink": {"format": "parquet", "path": str(tmp_path / "out")},
    }


# -- item 6: non-finite weights and scores ------------------------------------------------------------


def test_checkpoint_with_a_nan_tensor_is_refused_naming_it(tiny_model: Path, tmp_path: Path) -> None:
    bad = shutil.copytree(tiny_model, tmp_path / "nan-ckpt")
    state = load_file(str(bad / "model.safetensors"))
    name = "model.text_projector.linear_1.weight"
    state[name][3, 5] = float("nan")
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"{name}.*non-finite|non-finite.*{name}"):
        Classifier.from_pretrained(bad, device="cpu")


def test_run_time_inf_gives_every_row_a_non_finite_status_and_no_scores(tiny_model: Path) -> None:
    clf = Classifier.from_pretrained(tiny_model, device="cpu")  # a clean load: the load check passes
    clf.model.model.classes_projector.linear_2.weight.data.fill_(float("inf"))  # goes bad after load
    texts = [*TEXTS, None]
    for mode in ("multi-label", "single-label"):
        preds = clf.classify(texts, LABELS, mode=mode)
        assert [p.status for p in preds] == [Status.NON_FINITE] * 3 + [Status.EMPTY_TEXT]
        assert Status.NON_FINITE == "error: non-finite scores"
        for p in preds:
            assert p.scores == {} and p.labels == [] and p.top_label is None and p.top_score is None
    out = clf.classify_arrow(pa.table({"text": texts}), LabelSpec(labels=LABELS))
    assert out.column("status").to_pylist() == [Status.NON_FINITE] * 3 + [Status.EMPTY_TEXT]
    assert out.column("scores").to_pylist() == [[]] * 4
    assert out.column("top_score").null_count == 4
    assert not any(isinstance(v, float) and math.isnan(v) for v in out.column("top_score").to_pylist())


# -- item 13: mode and threshold arguments -----------------------------------------------------------


@pytest.mark.parametrize("mode", ["multilabel", "Multi-Label", "", None, 1])
def test_classify_rejects_an_unknown_mode(classifier: Classifier, mode: object) -> None:
    with pytest.raises(ValueError) as info:
        classifier.classify(TEXTS, LABELS, mode=mode)  # type: ignore[arg-type]
    assert str(info.value).startswith("mode") and repr(mode) in str(info.value)


@pytest.mark.parametrize("threshold", [5, -1, float("nan"), float("inf"), "0.5", True, None])
def test_classify_rejects_a_bad_threshold(classifier: Classifier, threshold: object) -> None:
    with pytest.raises(ValueError) as info:
        classifier.classify(TEXTS, LABELS, threshold=threshold)  # type: ignore[arg-type]
    assert str(info.value).startswith("threshold") and repr(threshold) in str(info.value)
    with pytest.raises(ValueError) as info:
        classifier.classify(TEXTS, LABELS, threshold={"business": 0.4, "sport": threshold})  # type: ignore[dict-item]
    assert str(info.value).startswith("threshold['sport']") and repr(threshold) in str(info.value)


def test_valid_modes_and_thresholds_still_work(classifier: Classifier) -> None:
    for mode in ("multi-label", "single-label"):
        for threshold in (0, 1, 0.0, 1.0, 0.3, np.float32(0.5), {"sport": 0}):
            preds = classifier.classify(TEXTS, LABELS, mode=mode, threshold=threshold)
            assert all(p.status == Status.OK for p in preds)
    assert classifier.classify(TEXTS, LABELS, threshold=0)[0].labels == LABELS


@pytest.mark.parametrize("threshold", [5, -1, float("nan"), "0.5", True])
def test_label_spec_and_job_spec_reject_a_bad_threshold(tmp_path: Path, threshold: object) -> None:
    with pytest.raises(ValueError, match="threshold"):
        LabelSpec(labels=LABELS, threshold=threshold)
    with pytest.raises(ValueError, match=r"thresholds\['sport'\]"):
        LabelSpec(labels=LABELS, thresholds={"sport": threshold})
    if isinstance(threshold, float) and math.isnan(threshold):
        return  # not representable in JSON data; the LabelSpec checks above cover it
    with pytest.raises(SpecError, match="labels.threshold"):
        JobSpec.from_dict(job_dict(tmp_path, threshold=threshold))
    with pytest.raises(SpecError, match="labels.thresholds"):
        JobSpec.from_dict(job_dict(tmp_path, thresholds={"sport": threshold}))


def test_label_spec_rejects_a_bad_mode_and_bad_thresholds_from_a_named_set_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode"):
        LabelSpec(labels=LABELS, mode="multilabel")
    sets = tmp_path / "sets.yaml"
    sets.write_text("label_sets:\n  t:\n    labels: [business, sport]\n    thresholds: {sport: 5}\n")
    with pytest.raises(ValueError, match=r"thresholds\['sport'\].*5"):
        LabelSpec(file=str(sets), name="t")
    sets.write_text('label_sets:\n  t:\n    labels: [business, sport]\n    thresholds: {sport: "0.5"}\n')
    with pytest.raises(ValueError, match=r"thresholds\['sport'\]"):
        LabelSpec(file=str(sets), name="t")
    assert LabelSpec(labels=LABELS, threshold=1, thresholds={"sport": 0}).threshold == 1.0


# -- item 14: marker strings in prompts and few-shot examples ------------------------------------------


@pytest.mark.parametrize("marker", ["<<LABEL>>", "<<SEP>>", "<<EXAMPLE>>"])
def test_prompt_with_a_marker_is_rejected_everywhere(
    classifier: Classifier, tmp_path: Path, marker: str
) -> None:
    prompt = f"Classify {marker} the topic"
    with pytest.raises(ValueError, match=rf"prompt.*{marker}"):
        classifier.classify(TEXTS, LABELS, prompt=prompt)
    with pytest.raises(ValueError, match=rf"prompt.*{marker}"):
        LabelSpec(labels=LABELS, prompt=prompt)
    with pytest.raises(SpecError, match=rf"labels.prompt.*{marker}"):
        JobSpec.from_dict(job_dict(tmp_path, prompt=prompt))


@pytest.mark.parametrize("marker", ["<<LABEL>>", "<<SEP>>", "<<EXAMPLE>>"])
def test_examples_with_a_marker_are_rejected(classifier: Classifier, marker: str) -> None:
    for example in (
        {"text": f"an {marker} example", "labels": ["sport"]},
        {"text": "ok", "labels": [f"sp{marker}"]},
    ):
        with pytest.raises(ValueError, match=rf"examples\[0\].*{marker}"):
            classifier.classify(TEXTS, LABELS, examples=[example])
        with pytest.raises(ValueError, match=rf"examples\[0\].*{marker}"):
            classifier.classify_arrow(pa.table({"text": TEXTS}), LabelSpec(labels=LABELS), examples=[example])


def test_clean_prompt_and_examples_still_score_every_label(classifier: Classifier) -> None:
    examples = [{"text": "The striker scored twice.", "labels": ["sport"]}]
    preds = classifier.classify(TEXTS, LABELS, prompt="Classify the topic:", examples=examples)
    assert all(p.status == Status.OK and list(p.scores) == LABELS for p in preds)


# -- item 16: per-row fault isolation and out-of-memory back-off --------------------------------------


def test_a_failing_row_is_isolated_and_its_batch_mates_score_as_alone(tiny_model: Path) -> None:
    clf = Classifier.from_pretrained(tiny_model, device="cpu")
    rows = clf.builder.encode(TEXTS * 3, [LABELS] * 9)
    bad = 4
    vocab = clf.model.config.encoder_config.vocab_size
    rows[bad].chunks[0][2] = vocab + 7  # a real out-of-vocabulary id: the embedding lookup raises
    out = clf.score_encoded(rows)
    assert clf.stats["row_errors"] == 1
    assert isinstance(out[bad], IndexError)
    for i, row in enumerate(rows):
        if i == bad:
            continue
        alone = clf.score_encoded([row])[0]
        assert isinstance(out[i], np.ndarray) and np.abs(out[i] - alone).max() < 1e-5
    # through classify, the bad row's status names the error and the others match classifying alone
    preds = clf.classify(TEXTS, LABELS)
    for text, pred in zip(TEXTS, preds):
        alone_pred = clf.classify([text], LABELS)[0]
        assert max(abs(pred.scores[k] - alone_pred.scores[k]) for k in LABELS) < 1e-5


def _long_texts(n: int) -> list[str]:
    words = "bank rates club league budget vote match striker inflation minister".split()
    return [" ".join(words[(i + j) % len(words)] for j in range(20 + (i * 7) % 60)) for i in range(n)]


def test_out_of_memory_halves_the_budget_for_every_later_batch(tiny_model: Path) -> None:
    budget = 2048
    clf = Classifier.from_pretrained(tiny_model, device="cpu", token_budget=budget)
    texts = _long_texts(120)
    reference = clf.classify(texts, LABELS)
    assert clf.stats["forward_passes"] >= 4  # several full batches

    attempts: list[tuple[int, bool]] = []  # (padded tokens, raised out of memory)

    def fault_hook(padded_tokens: int) -> None:
        too_big = padded_tokens > budget // 2
        attempts.append((padded_tokens, too_big))
        if too_big:
            raise torch.OutOfMemoryError(f"test: out of memory at {padded_tokens} padded tokens")

    clf.fault_hook = fault_hook
    preds = clf.classify(texts, LABELS)
    first_oom = next(i for i, (_, oom) in enumerate(attempts) if oom)
    later = [padded for padded, _ in attempts[first_oom + 1 :]]
    assert later and max(later) <= budget // 2, attempts
    assert sum(oom for _, oom in attempts) == 1  # one back-off, not one per batch
    assert clf.stats["oom_backoffs"] == 1 and clf.active_budget <= budget // 2
    assert [p.status for p in preds] == [p.status for p in reference]
    for a, b in zip(preds, reference):
        assert max(abs(a.scores[k] - b.scores[k]) for k in LABELS) < 1e-5

    # the reduced budget is kept across calls, then recovers slowly (doubling) once batches succeed
    clf.fault_hook = None
    seen: list[int] = []
    clf.fault_hook = seen.append
    clf.classify(texts[:8], LABELS)
    assert max(seen) <= budget // 2 and clf.active_budget <= budget // 2
    for _ in range(4 * RECOVER_AFTER_BATCHES):
        if clf.active_budget == budget:
            break
        clf.classify(texts[:20], LABELS)
    assert clf.active_budget == budget  # back to the configured budget, never above it
    assert clf.token_budget == budget
