"""The classifier as a filter stage in Ray Data pipelines (the rule itself: ``gliclass_dist.filtering``).

    filter_dataset(ds, ["spam"], threshold=0.9, action="drop")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gliclass_dist.filtering import Action, FilterRule, Require, filter_results, passing_mask

__all__ = ["Action", "FilterRule", "Require", "filter_dataset", "filter_results", "passing_mask"]


def filter_dataset(
    ds: Any,
    labels: Sequence[str] | Mapping[str, float],
    *,
    threshold: float = 0.5,
    require: Require = "any",
    action: Action = "keep",
    keep_unscored: bool = False,
) -> Any:
    """A Ray ``Dataset`` stage keeping (or dropping) the classified rows that pass (``FilterRule``)."""
    rule = FilterRule.of(labels, threshold=threshold, require=require, action=action, keep_unscored=keep_unscored)
    return ds.map_batches(rule.apply, batch_format="pyarrow", batch_size=None)
