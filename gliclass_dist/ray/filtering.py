"""The classifier as a filter stage in Ray Data pipelines (the rule itself: ``gliclass_dist.filtering``).

    filter_dataset(ds, ["spam"], threshold=0.9, action="drop")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gliclass_dist.filtering import Action, Require, filter_results, label_thresholds, passing_mask

__all__ = ["Action", "Require", "filter_dataset", "filter_results", "passing_mask"]


def filter_dataset(
    ds: Any,
    labels: Sequence[str] | Mapping[str, float],
    *,
    threshold: float = 0.5,
    require: Require = "any",
    action: Action = "keep",
    keep_unscored: bool = False,
) -> Any:
    """A Ray ``Dataset`` stage running ``filter_results`` on every batch of classified rows."""
    label_thresholds(labels, threshold)  # fail on the driver, not in a task
    labels = dict(labels) if isinstance(labels, Mapping) else list([labels] if isinstance(labels, str) else labels)
    return ds.map_batches(
        filter_results,
        batch_format="pyarrow",
        batch_size=None,
        fn_kwargs={
            "labels": labels,
            "threshold": threshold,
            "require": require,
            "action": action,
            "keep_unscored": keep_unscored,
        },
    )
