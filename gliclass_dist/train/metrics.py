"""Evaluation of a model on records: micro/macro F1 through the same ``Classifier`` used for inference."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gliclass_dist.engine import Classifier
from gliclass_dist.model.inputs import InputBuilder
from gliclass_dist.model.modeling import GLiClassModel
from gliclass_dist.train.data import TrainRecord


def macro_f1_over(per_label_f1: Mapping[str, float], labels: Sequence[str]) -> float:
    """Mean F1 over exactly ``labels`` (a label absent from ``per_label_f1`` counts 0), as scikit-learn's
    ``f1_score(labels=..., average="macro")``: a prediction outside ``labels`` still costs its row's true
    label the recall."""
    labels = list(dict.fromkeys(labels))
    return sum(per_label_f1.get(label, 0.0) for label in labels) / len(labels) if labels else 0.0


def f1_scores(records: Sequence[TrainRecord], predicted: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Micro and macro F1 of predicted label sets against ``true_labels`` (unknown labels ignored).

    Macro-F1 averages over the labels that occur as a true or predicted label at least once (so a label
    that is only ever predicted wrongly adds a 0); ``predicted_counts`` counts the rows each label was
    predicted for.
    """
    tp: dict[str, int] = {}
    fp: dict[str, int] = {}
    fn: dict[str, int] = {}
    for rec, pred in zip(records, predicted):
        unknown = set(rec.unknown_labels)
        truth = set(rec.true_labels)
        guess = {p for p in pred if p not in unknown}
        for label in guess & truth:
            tp[label] = tp.get(label, 0) + 1
        for label in guess - truth:
            fp[label] = fp.get(label, 0) + 1
        for label in truth - guess:
            fn[label] = fn.get(label, 0) + 1
    labels = sorted(set(tp) | set(fp) | set(fn))
    per_label = {}
    for label in labels:
        t, f_p, f_n = tp.get(label, 0), fp.get(label, 0), fn.get(label, 0)
        per_label[label] = 2 * t / (2 * t + f_p + f_n) if (t + f_p + f_n) else 0.0
    total_tp, total_fp, total_fn = sum(tp.values()), sum(fp.values()), sum(fn.values())
    denom = 2 * total_tp + total_fp + total_fn
    return {
        "micro_f1": 2 * total_tp / denom if denom else 0.0,
        "macro_f1": macro_f1_over(per_label, labels),
        "per_label_f1": per_label,
        "predicted_counts": {label: tp.get(label, 0) + fp.get(label, 0) for label in labels
                             if tp.get(label, 0) + fp.get(label, 0)},
        "n": len(records),
    }


def resolve_eval_mode(records: Sequence[TrainRecord], mode: str = "auto") -> str:
    """``auto``: single-label when every record has exactly one true label and no unknown labels."""
    if mode != "auto":
        if mode not in ("single-label", "multi-label"):
            raise ValueError(f"eval mode must be auto, single-label or multi-label, got {mode!r}")
        return mode
    single = all(len(r.true_labels) == 1 and not r.unknown_labels for r in records)
    return "single-label" if single else "multi-label"


def evaluate(
    model: GLiClassModel,
    builder: InputBuilder,
    records: Sequence[TrainRecord],
    mode: str = "auto",
    threshold: float = 0.5,
    device: str = "cpu",
    token_budget: int | None = None,
) -> dict[str, Any]:
    """Score ``records`` with the engine (labels in their given order) and return F1 figures.

    The model is left in eval mode on ``device``.
    """
    mode = resolve_eval_mode(records, mode)
    clf = Classifier(model, builder, model_name="training", device=device, dtype="float32", token_budget=token_budget)
    predicted: list[list[str]] = [[] for _ in records]
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, rec in enumerate(records):
        groups.setdefault((rec.prompt, repr(rec.examples)), []).append(i)
    for members in groups.values():
        first = records[members[0]]
        preds = clf.classify(
            [records[i].text for i in members],
            [records[i].all_labels for i in members],
            mode="single-label" if mode == "single-label" else "multi-label",
            threshold=threshold,
            prompt=first.prompt,
            examples=first.examples,
        )
        for i, pred in zip(members, preds):
            predicted[i] = list(pred.labels)
    result = f1_scores(records, predicted)
    result["mode"] = mode
    return result
