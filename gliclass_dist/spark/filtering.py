"""The classifier as a filter stage in Spark pipelines (the rule itself: ``gliclass_dist.filtering``).

::

    # keep the rows that are complaints about billing, with all their columns and the result columns
    complaints = filter_dataframe(df, "/models/gliclass", ["complaint", "billing", "praise"],
                                  {"complaint": 0.7, "billing": 0.5}, require="all")
    # or filter rows that classify_dataframe already scored
    spam_free = filter_classified(scored, ["spam"], threshold=0.9, action="drop")

A row passes when ``require="any"`` (default) of the given labels, or ``"all"`` of them, has a score >= its
threshold; the rule is the Ray one (``filter_results``), applied per Arrow batch in ``mapInArrow``. Rows
that were not classified (empty text, no labels, errors) never pass: with ``action="keep"`` they are
dropped unless ``keep_unscored=True``; with ``action="drop"`` they stay.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Unpack

import pyarrow as pa

from gliclass_dist.filtering import FilterOptions, FilterRule
from gliclass_dist.labels import LabelSpec
from gliclass_dist.schema import RESULT_COLUMNS
from gliclass_dist.spark.udf import (
    ModelOptions,
    arrow_output_schema,
    check_columns,
    classify_batches,
    make_config,
    spark_output_schema,
)

if TYPE_CHECKING:
    from pyspark.resource import ResourceProfile
    from pyspark.sql import DataFrame


def filter_classified(
    df: DataFrame,
    labels: Sequence[str] | Mapping[str, float],
    **options: Unpack[FilterOptions],
) -> DataFrame:
    """Rows of an already classified DataFrame (with a ``scores`` column) that pass (or, ``action="drop"``,
    fail) the label thresholds; same columns."""
    if "scores" not in df.columns:
        raise KeyError(f"filter_classified needs a classified DataFrame with a 'scores' column (got {df.columns})")
    rule = FilterRule.of(labels, **options)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield from rule.apply(batch).to_batches()

    return df.mapInArrow(run, df.schema)


def filter_dataframe(
    df: DataFrame,
    model: str | ModelOptions,
    label_spec: LabelSpec | Sequence[str],
    labels: Sequence[str] | Mapping[str, float],
    *,
    text_column: str = "text",
    keep: Sequence[str] | None = None,
    batch_rows: int | None = None,
    profile: ResourceProfile | None = None,
    **options: Unpack[FilterOptions],
) -> DataFrame:
    """Classify ``df`` against ``label_spec`` and keep (or drop) the rows passing ``labels``' thresholds, in one
    ``mapInArrow`` stage. Output: the ``keep`` columns (default: every input column that does not clash with
    a result column) and the result columns. ``options``: ``threshold``, ``require``, ``action``,
    ``keep_unscored`` (``gliclass_dist.filtering.FilterOptions``)."""
    if keep is None:
        keep = [c for c in df.columns if c not in RESULT_COLUMNS]
    config = make_config(model, label_spec, text_column=text_column, keep=keep, batch_rows=batch_rows)
    check_columns(df, config)
    rule = FilterRule.of(labels, **options)
    target = arrow_output_schema(df.schema, config.keep)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in classify_batches(batches, config):
            for out in rule.apply(batch).to_batches():
                yield out.cast(target)

    return df.mapInArrow(run, spark_output_schema(df.schema, config.keep), profile=profile)


__all__ = ["filter_classified", "filter_dataframe"]
