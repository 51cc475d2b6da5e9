"""The classifier as a filter stage in Ray Data pipelines (the rule itself: ``gliclass_dist.filtering``).

    filter_dataset(ds, ["spam"], threshold=0.9, action="drop")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Unpack

from gliclass_dist.filtering import Action, FilterOptions, FilterRule, Require, filter_results, passing_mask

__all__ = ["Action", "FilterOptions", "FilterRule", "Require", "filter_dataset", "filter_results", "passing_mask"]


def filter_dataset(ds: Any, labels: Sequence[str] | Mapping[str, float], **options: Unpack[FilterOptions]) -> Any:
    """A Ray ``Dataset`` stage keeping (or dropping) the classified rows that pass (``FilterRule``; ``options``:
    ``threshold``, ``require``, ``action``, ``keep_unscored``)."""
    rule = FilterRule.of(labels, **options)
    return ds.map_batches(rule.apply, batch_format="pyarrow", batch_size=None)
