"""The classifier as a filter (engine-neutral; Ray and Spark stages wrap it): keep (or drop) classified rows whose scores pass given labels/thresholds.

Works on result tables (the output schema's ``scores`` column), in pyarrow.compute only::

    passing_mask(results, ["complaint"], threshold=0.7)                 # one bool per row
    filter_results(results, {"complaint": 0.7, "billing": 0.5}, require="all")

A row passes when ``require="any"`` (default) of the given labels, or ``"all"`` of them, has a score
>= its threshold. Rows that were not classified (no scores: empty text, no labels, errors) never pass;
with ``action="keep"`` they are dropped unless ``keep_unscored=True``, with ``action="drop"`` they stay.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict, Unpack

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gliclass_dist.labels import check_threshold

Require = Literal["any", "all"]
Action = Literal["keep", "drop"]


class FilterOptions(TypedDict, total=False):
    """The keyword options of a filter (``FilterRule.of``, ``filter_dataset``, ``filter_dataframe``, ...)."""

    threshold: float  # the threshold of every label given as a list (default 0.5)
    require: Require  # "any" (default) or "all" of the labels must pass
    action: Action  # "keep" (default) or "drop" the passing rows
    keep_unscored: bool  # with action="keep": also keep rows that got no scores (default False)


def label_thresholds(labels: Sequence[str] | Mapping[str, float], threshold: float) -> dict[str, float]:
    """The labels to filter on, each with its threshold (a number within [0, 1]); ``ValueError`` naming a bad one."""
    if isinstance(labels, Mapping):
        chosen = {str(k): check_threshold(v, f"threshold of {k!r}") for k, v in labels.items()}
    elif isinstance(labels, str):
        chosen = {labels: check_threshold(threshold)}
    else:
        chosen = {str(label): check_threshold(threshold) for label in labels}
    if not chosen:
        raise ValueError("give at least one label to filter on")
    return chosen


def passing_mask(
    results: pa.Table | pa.RecordBatch,
    labels: Sequence[str] | Mapping[str, float],
    *,
    threshold: float = 0.5,
    require: Require = "any",
) -> pa.BooleanArray:
    """Per row: do the row's scores pass (``labels`` a list with one ``threshold``, or ``{label: threshold}``)?"""
    if require not in ("any", "all"):
        raise ValueError(f"require must be 'any' or 'all', got {require!r}")
    chosen = label_thresholds(labels, threshold)
    scores = results.column("scores")
    if isinstance(scores, pa.ChunkedArray):
        scores = scores.combine_chunks()
    n = len(scores)
    flat = pc.list_flatten(scores)
    parents = pc.list_parent_indices(scores).to_numpy(zero_copy_only=False)
    names = pa.array(list(chosen), pa.string())
    limits = pa.array(list(chosen.values()), pa.float64())
    position = pc.index_in(pc.struct_field(flat, "label"), value_set=names)
    limit = pc.take(limits, position)  # null where the label is not one we filter on
    hit = pc.fill_null(pc.greater_equal(pc.cast(pc.struct_field(flat, "score"), pa.float64()), limit), False)
    hits_per_row = np.bincount(parents[hit.to_numpy(zero_copy_only=False)], minlength=n)
    if require == "any":
        return pa.array(hits_per_row > 0)
    return pa.array(hits_per_row >= len(chosen))


@dataclass(frozen=True)
class FilterRule:
    """Which rows pass: per-label thresholds, ``require`` any/all of them, then ``action`` keep/drop them.

    Build it with ``FilterRule.of`` on the driver (every argument is checked there, not in a task) and hand
    ``rule.apply`` to the engine's batch map (Ray ``map_batches``, Spark ``mapInArrow``).
    """

    thresholds: Mapping[str, float]
    require: Require = "any"
    action: Action = "keep"
    keep_unscored: bool = False

    @classmethod
    def of(cls, labels: Sequence[str] | Mapping[str, float], **options: Unpack[FilterOptions]) -> FilterRule:
        """The rule for ``labels`` (a list with one ``threshold``, or ``{label: threshold}``) and ``options``
        (``FilterOptions``); ``ValueError`` names a bad label, threshold, ``require``, ``action`` or option."""
        unknown = sorted(set(options) - set(FilterOptions.__annotations__))
        if unknown:
            raise ValueError(f"unknown filter option(s) {unknown} (known: {', '.join(FilterOptions.__annotations__)})")
        threshold = options.get("threshold", 0.5)
        require, action = options.get("require", "any"), options.get("action", "keep")
        keep_unscored = options.get("keep_unscored", False)
        if require not in ("any", "all"):
            raise ValueError(f"require must be 'any' or 'all', got {require!r}")
        if action not in ("keep", "drop"):
            raise ValueError(f"action must be 'keep' or 'drop', got {action!r}")
        return cls(label_thresholds(labels, threshold), require, action, bool(keep_unscored))

    def apply(self, results: pa.Table | pa.RecordBatch) -> pa.Table:
        """``results`` with the passing rows kept (``action="keep"``) or removed (``action="drop"``)."""
        if isinstance(results, pa.RecordBatch):
            results = pa.Table.from_batches([results])
        mask = passing_mask(results, dict(self.thresholds), require=self.require)
        if self.action == "drop":
            mask = pc.invert(mask)
        elif self.keep_unscored:
            unscored = pc.equal(pc.list_value_length(results.column("scores")), 0)
            mask = pc.or_(mask, pc.fill_null(unscored, True))
        return results.filter(mask)


def filter_results(
    results: pa.Table, labels: Sequence[str] | Mapping[str, float], **options: Unpack[FilterOptions]
) -> pa.Table:
    """``results`` with the passing rows kept (``action="keep"``) or removed (``action="drop"``)."""
    return FilterRule.of(labels, **options).apply(results)
