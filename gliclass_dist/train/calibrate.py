"""Post-hoc calibration and per-label thresholds, fitted on a few labelled rows.

    python -m gliclass_dist.train calibrate --model DIR --data rows.jsonl            # writes DIR/calibration.json
    python -m gliclass_dist.train suggest-thresholds --model DIR --data rows.jsonl \\
        --out labels.yaml --name topics                                              # a label-set file for jobs

Rows use the training record format (``{"text", "all_labels", "true_labels"}``, optional ``unknown_labels``,
``prompt``, ``examples``; see ``gliclass_dist.train.data``); unknown labels are left out of every fit.

- ``fit_calibration`` maps each label's raw logit ``z`` to ``scale * z + bias`` (``gliclass_dist.calibration``):
  ``temperature`` (one scale), ``platt`` (one scale and bias) or ``per-label-platt`` (a pair per label with at
  least ``min_label_support`` positives and as many negatives, pulled towards the shared pair by a Gaussian
  prior of weight ``shrinkage``; other labels use the shared pair). The fit minimises the log loss of the
  sigmoid (multi-label) or of the softmax over each row's labels (single-label) with L-BFGS, starting from
  the identity and with a weak prior towards it. ``method="auto"`` picks the method (or ``none``) with the
  lowest held-out log loss in k-fold cross-validation over rows, then refits it on every row.
- The logits are the engine's own (``Classifier.score_encoded``: same input builder, chunking and merging),
  taken before any calibration, so refitting a calibrated model replaces its map instead of stacking on it.
- ``suggest_thresholds`` scores the rows as jobs will (multi-label sigmoid, with the model's calibration) and
  picks, per label, the threshold that maximises that label's F1 on the rows: the middle of the widest score
  interval that reaches the best F1. A label with fewer than ``min_support`` positives, or with no negative,
  keeps the job's default threshold and is not written; the report says why, with its highest negative score.
- The reference package's calibrator head (``use_calibrator`` in a checkpoint's config) is part of the model
  and loaded with it; a post-hoc map fitted here applies on top of whatever the model outputs.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from gliclass_dist.calibration import Calibration
from gliclass_dist.encode import prepare_rows
from gliclass_dist.engine import Classifier
from gliclass_dist.labels import check_mode, check_threshold, load_named_label_set, validate_fixed_labels
from gliclass_dist.safe_yaml import load_yaml
from gliclass_dist.train.data import TrainRecord
from gliclass_dist.train.metrics import resolve_eval_mode

logger = logging.getLogger(__name__)

FIT_METHODS = ("temperature", "platt", "per-label-platt")
AUTO = "auto"
ECE_BINS = 15
IDENTITY_PRIOR = 0.1  # pseudo-observations pulling the shared pair towards (1, 0): keeps tiny fits sane
DEFAULT_SHRINKAGE = 2.0  # pseudo-observations pulling a label's pair towards the shared pair


# -- logits of labelled rows ------------------------------------------------------------------------------
@dataclass
class LogitRows:
    """Raw logits of labelled rows: per row its labels, their logits, and targets (1 true, 0 false, NaN unknown)."""

    labels: list[list[str]] = field(default_factory=list)
    logits: list[np.ndarray] = field(default_factory=list)
    targets: list[np.ndarray] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> LogitRows:
        return LogitRows([self.labels[i] for i in indices], [self.logits[i] for i in indices],
                         [self.targets[i] for i in indices])

    def append(self, labels: Sequence[str], logits: np.ndarray, targets: np.ndarray) -> None:
        if not (len(labels) == len(logits) == len(targets)):
            raise ValueError(f"a row has {len(labels)} labels, {len(logits)} logits and {len(targets)} targets")
        self.labels.append(list(labels))
        self.logits.append(np.asarray(logits, dtype=np.float64))
        self.targets.append(np.asarray(targets, dtype=np.float64))


def record_targets(record: TrainRecord) -> np.ndarray:
    """1.0 for a true label, 0.0 for a negative, NaN for an unknown one, in ``all_labels`` order."""
    truth, unknown = set(record.true_labels), set(record.unknown_labels)
    return np.array([math.nan if lb in unknown else float(lb in truth) for lb in record.all_labels])


def _groups(records: Sequence[TrainRecord]) -> list[list[int]]:
    """Record indices grouped by (prompt, examples): each group is encoded in one call."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, rec in enumerate(records):
        groups.setdefault((rec.prompt, repr(rec.examples)), []).append(i)
    return list(groups.values())


def collect_logits(clf: Classifier, records: Sequence[TrainRecord]) -> LogitRows:
    """The engine's raw (uncalibrated) logits of each record against its ``all_labels``.

    Rows the engine cannot score (a label longer than the window, a failed forward pass) are left out with a
    warning; a ``ValueError`` is raised when none is left.
    """
    per_record: dict[int, np.ndarray] = {}
    skipped: list[str] = []
    for members in _groups(records):
        first = records[members[0]]
        statuses, encoded = prepare_rows(
            clf.builder, [records[i].text for i in members], [records[i].all_labels for i in members],
            first.prompt, first.examples,
        )
        scorable = [(i, row) for i, row in zip(members, encoded) if row is not None]
        skipped += [f"row {i + 1}: {s}" for i, s, row in zip(members, statuses, encoded) if row is None]
        for (i, row), logits in zip(scorable, clf.score_encoded([row for _, row in scorable])):
            if isinstance(logits, Exception) or list(row.labels) != records[i].all_labels:
                skipped.append(f"row {i + 1}: {logits if isinstance(logits, Exception) else 'labels changed'}")
            else:
                per_record[i] = logits
    if skipped:
        logger.warning("%d of %d rows could not be scored and are left out: %s", len(skipped), len(records),
                       "; ".join(skipped[:5]))
    out = LogitRows()
    for i in sorted(per_record):
        out.append(records[i].all_labels, per_record[i], record_targets(records[i]))
    if not len(out):
        raise ValueError("no labelled row could be scored; nothing to fit on")
    return out


# -- fitting ----------------------------------------------------------------------------------------------
def _label_support(rows: LogitRows, mode: str) -> dict[str, tuple[int, int]]:
    """(positives, negatives) per label among the rows' known labels (single-label: usable rows only)."""
    support: dict[str, list[int]] = {}
    for labels, targets in zip(rows.labels, rows.targets):
        if mode == "single-label" and not _single_target(targets):
            continue
        for label, t in zip(labels, targets):
            if not math.isnan(t):
                support.setdefault(label, [0, 0])[0 if t == 1.0 else 1] += 1
    return {label: (p, n) for label, (p, n) in support.items()}


def _single_target(targets: np.ndarray) -> bool:
    """A row usable for the single-label (softmax) loss: exactly one true label and no unknown one."""
    return not np.isnan(targets).any() and int(targets.sum()) == 1


class _Problem:
    """The rows as tensors, each logit tagged with its parameter slot (a label's own, or the shared slot 0)."""

    def __init__(self, rows: LogitRows, mode: str, own_slot: Mapping[str, int]) -> None:
        self.mode = mode
        if mode == "multi-label":
            z, y, slot = [], [], []
            for labels, logits, targets in zip(rows.labels, rows.logits, rows.targets):
                for label, value, t in zip(labels, logits, targets):
                    if not math.isnan(t):
                        z.append(value)
                        y.append(t)
                        slot.append(own_slot.get(label, 0))
            self.count = len(z)
            self.z = torch.tensor(z, dtype=torch.float64)
            self.y = torch.tensor(y, dtype=torch.float64)
            self.slot = torch.tensor(slot, dtype=torch.long)
        else:
            usable = [i for i, t in enumerate(rows.targets) if _single_target(t)]
            width = max((len(rows.labels[i]) for i in usable), default=1)
            z = torch.zeros(len(usable), width, dtype=torch.float64)
            mask = torch.zeros(len(usable), width, dtype=torch.bool)
            slot = torch.zeros(len(usable), width, dtype=torch.long)
            target = torch.zeros(len(usable), dtype=torch.long)
            for r, i in enumerate(usable):
                k = len(rows.labels[i])
                z[r, :k] = torch.from_numpy(rows.logits[i])
                mask[r, :k] = True
                slot[r, :k] = torch.tensor([own_slot.get(label, 0) for label in rows.labels[i]])
                target[r] = int(np.argmax(rows.targets[i]))
            self.count = len(usable)
            self.z, self.mask, self.slot, self.target = z, mask, slot, target

    def nll(self, log_scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Summed negative log-likelihood of the calibrated logits."""
        calibrated = self.z * torch.exp(log_scale[self.slot]) + bias[self.slot]
        if self.mode == "multi-label":
            return torch.nn.functional.binary_cross_entropy_with_logits(calibrated, self.y, reduction="sum")
        calibrated = calibrated.masked_fill(~self.mask, -math.inf)
        return torch.nn.functional.cross_entropy(calibrated, self.target, reduction="sum")


def _fit(rows: LogitRows, method: str, mode: str, min_label_support: int, shrinkage: float) -> Calibration:
    """One calibration of ``method`` fitted on every row (see the module docstring for the objective)."""
    own: list[str] = []
    if method == "per-label-platt":
        support = _label_support(rows, mode)
        own = sorted(lb for lb, (p, n) in support.items() if p >= min_label_support and n >= min_label_support)
    slots = {label: k + 1 for k, label in enumerate(own)}
    problem = _Problem(rows, mode, slots)
    if problem.count == 0:
        raise ValueError(f"no usable labelled pairs for a {mode} fit"
                         + (" (single-label needs rows with exactly one true label)" if mode == "single-label" else ""))
    log_scale = torch.zeros(len(own) + 1, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(len(own) + 1, dtype=torch.float64, requires_grad=method != "temperature")
    params = [log_scale] + ([bias] if method != "temperature" else [])
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-12,
                                  line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = problem.nll(log_scale, bias) + IDENTITY_PRIOR * (log_scale[0] ** 2 + bias[0] ** 2)
        if own:
            loss = loss + shrinkage * (((log_scale[1:] - log_scale[0]) ** 2).sum() + ((bias[1:] - bias[0]) ** 2).sum())
        loss.backward()
        return loss

    optimizer.step(objective)
    scales, biases = torch.exp(log_scale).tolist(), bias.tolist()
    return Calibration(
        scale=scales[0],
        bias=biases[0],
        per_label={label: (scales[k], biases[k]) for label, k in slots.items()},
        method=method,
        mode=mode,
    )


def mean_log_loss(rows: LogitRows, calibration: Calibration | None, mode: str) -> float:
    """Mean log loss of ``rows`` after ``calibration`` (None: raw): per known pair, or per usable row (single)."""
    calibration = calibration or Calibration(method="none")
    adjusted = LogitRows()
    for labels, logits, targets in zip(rows.labels, rows.logits, rows.targets):
        adjusted.append(labels, calibration.apply(labels, logits), targets)
    problem = _Problem(adjusted, mode, {})
    if problem.count == 0:
        return math.nan
    zero = torch.zeros(1, dtype=torch.float64)
    return float(problem.nll(zero, zero)) / problem.count


@dataclass
class CalibrationFit:
    """A fitted calibration and how it was chosen."""

    calibration: Calibration
    method: str
    mode: str
    rows: int
    heldout_log_loss: dict[str, float] = field(default_factory=dict)  # per candidate method (auto only)
    log_loss_before: float = math.nan  # on the fitting rows
    log_loss_after: float = math.nan

    def summary(self) -> dict[str, Any]:
        cal = self.calibration
        return {
            "method": self.method, "mode": self.mode, "rows": self.rows,
            "default": [round(cal.scale, 6), round(cal.bias, 6)],
            "per_label": {lb: [round(s, 6), round(b, 6)] for lb, (s, b) in cal.per_label.items()},
            "heldout_log_loss": {k: round(v, 6) for k, v in self.heldout_log_loss.items()},
            "log_loss_before": round(self.log_loss_before, 6), "log_loss_after": round(self.log_loss_after, 6),
        }


def fit_calibration(
    rows: LogitRows,
    *,
    method: str = AUTO,
    mode: str = "multi-label",
    folds: int = 5,
    seed: int = 0,
    min_label_support: int = 3,
    shrinkage: float = DEFAULT_SHRINKAGE,
) -> CalibrationFit:
    """Fit a calibration of ``method`` (``auto``: chosen by k-fold held-out log loss among ``none`` and
    ``FIT_METHODS``) on ``rows``; ``mode`` is the mode the jobs will run (``multi-label``: sigmoid per label,
    ``single-label``: softmax over each row's labels, where one shared bias cancels, so ``platt`` is skipped)."""
    mode = check_mode(mode)
    if method != AUTO and method not in ("none", *FIT_METHODS):
        raise ValueError(f"calibration method must be one of auto, none, {', '.join(FIT_METHODS)}; got {method!r}")
    if min_label_support < 1 or shrinkage < 0:
        raise ValueError(f"min_label_support must be >= 1 and shrinkage >= 0; got {min_label_support}, {shrinkage}")

    def fit(subset: LogitRows, name: str) -> Calibration:
        if name == "none":
            return Calibration(method="none", mode=mode)
        return _fit(subset, name, mode, min_label_support, shrinkage)

    heldout: dict[str, float] = {}
    chosen = method
    if method == AUTO:
        if len(rows) < 4:
            raise ValueError(f"method=auto needs at least 4 labelled rows for cross-validation, got {len(rows)}; "
                             "give a method (temperature needs the fewest rows)")
        candidates = ["none", *(m for m in FIT_METHODS if not (mode == "single-label" and m == "platt"))]
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        k = max(2, min(folds, len(rows)))
        parts = [order[f::k] for f in range(k)]
        for name in candidates:
            total = count = 0.0
            for f in range(k):
                train = rows.subset([i for g, part in enumerate(parts) if g != f for i in part])
                test = rows.subset(parts[f])
                n = _Problem(test, mode, {}).count
                if n == 0:
                    continue
                loss = mean_log_loss(test, fit(train, name), mode)
                total, count = total + loss * n, count + n
            heldout[name] = total / count if count else math.nan
        chosen = min(candidates, key=lambda m: (heldout[m], candidates.index(m)))  # ties: the simpler method
        logger.info("held-out log loss by method: %s -> %s",
                    ", ".join(f"{m} {v:.4f}" for m, v in heldout.items()), chosen)
    calibration = fit(rows, chosen)
    info = {"rows": len(rows), "heldout_log_loss": {m: round(v, 6) for m, v in heldout.items()}}
    calibration = Calibration(scale=calibration.scale, bias=calibration.bias, per_label=calibration.per_label,
                              method=calibration.method, mode=mode, info=info)
    return CalibrationFit(
        calibration=calibration, method=chosen, mode=mode, rows=len(rows), heldout_log_loss=heldout,
        log_loss_before=mean_log_loss(rows, None, mode), log_loss_after=mean_log_loss(rows, calibration, mode),
    )


def calibrate(
    model: str | os.PathLike[str],
    records: Sequence[TrainRecord],
    *,
    method: str = AUTO,
    mode: str = "auto",
    save: bool = True,
    device: str = "cpu",
    max_length: int | None = None,
    **fit_options: Any,
) -> CalibrationFit:
    """Fit a calibration for the model in folder ``model`` on ``records`` and (``save``) write it beside the
    weights as ``calibration.json``, where every front end's ``Classifier.from_pretrained`` picks it up.

    ``mode="auto"`` is single-label when every record has exactly one true label and no unknown label.
    """
    folder = Path(model)
    if save and not (folder / "config.json").is_file():
        raise ValueError(f"calibrate writes calibration.json beside the weights: {str(folder)!r} is not a local "
                         "model folder (download or copy the model first)")
    clf = Classifier.from_pretrained(folder, device=device, dtype="float32", max_length=max_length)
    mode = resolve_eval_mode(records, mode)
    result = fit_calibration(collect_logits(clf, records), method=method, mode=mode, **fit_options)
    if save:
        path = result.calibration.save(folder)
        logger.info("wrote %s (%s, %s)", path, result.method, mode)
    return result


# -- metrics ----------------------------------------------------------------------------------------------
def expected_calibration_error(confidence: Sequence[float], correct: Sequence[float], bins: int = ECE_BINS) -> float:
    """ECE with ``bins`` equal-width bins over [0, 1]: sum over bins of |mean outcome - mean confidence| x share.

    For sigmoid scores pass every (row, label) score and whether the label is true; for single-label pass the
    top score of each row and whether the top label is right.
    """
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    if conf.shape != hit.shape or conf.size == 0:
        raise ValueError(f"need as many outcomes as confidences (> 0), got {conf.shape} and {hit.shape}")
    which = np.clip((conf * bins).astype(int), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, weights=hit, minlength=bins) - np.bincount(which, weights=conf, minlength=bins))
    return float(gap[counts > 0].sum() / conf.size)


# -- thresholds -------------------------------------------------------------------------------------------
@dataclass
class ThresholdSuggestion:
    """Suggested per-label thresholds and, per label, the evidence (positives, negatives, F1s, reason)."""

    thresholds: dict[str, float]
    labels: list[str]
    report: dict[str, dict[str, Any]]
    default: float


def best_threshold(scores: Sequence[float], truth: Sequence[bool]) -> tuple[float, float]:
    """(threshold, F1) maximising the F1 of ``score >= threshold`` over the given rows.

    Every threshold within one gap between consecutive distinct scores gives the same predictions; among the
    gaps that reach the best F1, consecutive ones are merged and the middle of the widest span is returned,
    rounded to the fewest decimals (4 at least) that keep it inside the span, so the stored value cuts as found.
    """
    values = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(truth, dtype=bool)
    levels = np.unique(values)
    # cut k keeps the scores >= levels[k] (the last cut keeps none); any threshold in (edges[k], edges[k+1]] does
    edges = np.concatenate([[0.0], levels, [1.0]])
    kept = values[None, :] >= np.append(levels, np.inf)[:, None]
    tp = (kept & positive).sum(axis=1)
    f1 = 2 * tp / np.maximum(kept.sum(axis=1) + positive.sum(), 1)
    best = np.isclose(f1, f1.max(), rtol=0, atol=1e-12)
    spans: list[tuple[int, int]] = []
    for k in np.flatnonzero(best):
        if spans and spans[-1][1] == k - 1:
            spans[-1] = (spans[-1][0], int(k))
        else:
            spans.append((int(k), int(k)))
    lo, hi = max(spans, key=lambda span: edges[span[1] + 1] - edges[span[0]])
    low, high = float(edges[lo]), float(edges[hi + 1])
    middle = (low + high) / 2
    threshold = next((r for r in (round(middle, d) for d in range(4, 18)) if low < r <= high), middle)
    return threshold, float(f1.max())


def suggest_thresholds(
    clf: Classifier,
    records: Sequence[TrainRecord],
    *,
    min_support: int = 3,
    default: float = 0.5,
) -> ThresholdSuggestion:
    """Per-label thresholds for multi-label jobs, maximising each label's F1 on ``records`` (scores as the
    engine gives them, calibration included). Labels below ``min_support`` positives, or without a negative,
    keep ``default`` and get no entry in ``thresholds``."""
    default = check_threshold(default, "default threshold")
    if min_support < 1:
        raise ValueError(f"min_support must be >= 1, got {min_support}")
    scores: dict[str, list[float]] = {}
    truth: dict[str, list[bool]] = {}
    order: list[str] = []
    for members in _groups(records):
        first = records[members[0]]
        preds = clf.classify([records[i].text for i in members], [records[i].all_labels for i in members],
                             mode="multi-label", prompt=first.prompt, examples=first.examples)
        for i, pred in zip(members, preds):
            rec = records[i]
            if not pred.scores:
                logger.warning("row %d was not scored (%s); left out", i + 1, pred.status)
                continue
            for label in rec.all_labels:
                if label in rec.unknown_labels:
                    continue
                if label not in scores:
                    order.append(label)
                scores.setdefault(label, []).append(pred.scores[label])
                truth.setdefault(label, []).append(label in rec.true_labels)
    if not order:
        raise ValueError("no labelled row could be scored; no thresholds to suggest")
    thresholds: dict[str, float] = {}
    report: dict[str, dict[str, Any]] = {}
    for label in order:
        s, t = np.array(scores[label]), np.array(truth[label])
        pos, neg = int(t.sum()), int((~t).sum())
        f1_default = best = None
        entry: dict[str, Any] = {"positives": pos, "negatives": neg}
        if pos:
            kept = s >= default
            f1_default = 2 * int((kept & t).sum()) / (int(kept.sum()) + pos)
            entry["f1_at_default"] = round(f1_default, 4)
        if neg:
            entry["max_negative_score"] = round(float(s[~t].max()), 4)
        if pos < min_support:
            entry["kept_default"] = f"{pos} positive(s) < min_support {min_support}"
        elif neg == 0:
            entry["kept_default"] = "no negative row"
        else:
            threshold, best = best_threshold(s, t)
            thresholds[label] = threshold
            entry.update(threshold=thresholds[label], f1_at_threshold=round(best, 4))
        report[label] = entry
    return ThresholdSuggestion(thresholds=thresholds, labels=order, report=report, default=default)


def write_label_set(
    path: str | os.PathLike[str],
    name: str,
    labels: Sequence[str],
    thresholds: Mapping[str, float],
    *,
    version: str | None = None,
    header: str | None = None,
) -> str:
    """Write (or replace) label set ``name`` in the YAML file ``path`` (other sets are kept); returns its version.

    ``version`` defaults to the entry's version + 1 when it is a whole number, else "1". The file is read back
    with ``load_named_label_set`` before this returns, so a job spec ``labels: {file: path, name: name}`` loads it.
    """
    path = Path(path)
    labels = validate_fixed_labels(list(labels), f"label set {name!r}")
    unknown = sorted(set(thresholds) - set(labels))
    if unknown:
        raise ValueError(f"thresholds for labels not in the set: {unknown}")
    data: dict[str, Any] = {"label_sets": {}}
    if path.exists():
        data = load_yaml(path.read_text(encoding="utf-8"), "label set files") or {}
        if not isinstance(data, dict) or not isinstance(data.get("label_sets", {}), dict):
            raise ValueError(f"{path}: not a label-set file (expected a top-level 'label_sets' mapping)")
        data.setdefault("label_sets", {})
    previous = data["label_sets"].get(name)
    if version is None:
        old = str(previous.get("version", "")) if isinstance(previous, dict) else ""
        version = str(int(old) + 1) if old.isdigit() else "1"
    entry: dict[str, Any] = {"version": str(version), "labels": list(labels)}
    if thresholds:
        entry["thresholds"] = {label: float(thresholds[label]) for label in labels if label in thresholds}
    data["label_sets"][name] = entry
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    load_named_label_set(path, name, str(version))
    return str(version)


__all__ = [
    "AUTO",
    "ECE_BINS",
    "FIT_METHODS",
    "CalibrationFit",
    "LogitRows",
    "ThresholdSuggestion",
    "best_threshold",
    "calibrate",
    "collect_logits",
    "expected_calibration_error",
    "fit_calibration",
    "mean_log_loss",
    "record_targets",
    "suggest_thresholds",
    "write_label_set",
]
