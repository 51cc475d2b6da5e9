"""The output schema: one definition, used by every front end and sink.

A classified row carries the input's id column and any passthrough columns, then the
``RESULT_FIELDS`` below. A row that cannot be classified is still written, with its status.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

SCORE_TYPE = pa.struct([pa.field("label", pa.string()), pa.field("score", pa.float32())])

RESULT_FIELDS: tuple[pa.Field, ...] = (
    pa.field("labels", pa.list_(pa.string())),
    pa.field("scores", pa.list_(SCORE_TYPE)),
    pa.field("top_label", pa.string()),
    pa.field("top_score", pa.float32()),
    pa.field("status", pa.string()),
    pa.field("model", pa.string()),
    pa.field("label_set", pa.string()),
)
RESULT_COLUMNS: tuple[str, ...] = tuple(f.name for f in RESULT_FIELDS)
RESULT_SCHEMA = pa.schema(list(RESULT_FIELDS))


class Status:
    """Per-row status values. Anything else starts with ``error: ``."""

    OK = "ok"
    TRUNCATED = "truncated"  # text cut to fit the window; every label still scored
    EMPTY_TEXT = "empty_text"  # null, empty, or nothing readable (whitespace, control/zero-width, markers)
    INVALID_TEXT = "invalid_text"  # not a string (binary, number, ...)
    NO_LABELS = "no_labels"  # the row's label set is null or empty
    INVALID_LABELS = "invalid_labels"  # malformed label column value
    INVALID_EXAMPLES = "invalid_examples"  # malformed few-shot examples column value (LabelSpec.examples_column)
    LABELS_CLEANED = "labels_cleaned"  # classified; empty/duplicate labels were dropped from the row's set
    NON_FINITE = "error: non-finite scores"  # the model gave NaN/inf logits (e.g. fp16 overflow); no scores

    CLASSIFIED = frozenset({OK, TRUNCATED, LABELS_CLEANED})

    @staticmethod
    def error(reason: str) -> str:
        return f"error: {reason}"[:500]


def output_schema(input_schema: pa.Schema | None = None, keep: Iterable[str] = ()) -> pa.Schema:
    """The output schema: ``keep`` columns (id, passthrough) taken from ``input_schema``, then the results."""
    fields: list[pa.Field] = []
    for name in keep:
        if input_schema is None or input_schema.get_field_index(name) < 0:
            raise KeyError(f"column {name!r} is not in the input (columns: {input_schema and input_schema.names})")
        if name in RESULT_COLUMNS:
            raise ValueError(f"column {name!r} clashes with a result column; rename it first")
        fields.append(input_schema.field(name))
    return pa.schema(fields + list(RESULT_FIELDS))


def empty_results(n: int, status: str, model: str = "", label_set: str = "") -> pa.Table:
    """``n`` result rows with no scores and the given status (for rows that could not be classified)."""
    return pa.table(
        {
            "labels": pa.array([[]] * n, pa.list_(pa.string())),
            "scores": pa.array([[]] * n, pa.list_(SCORE_TYPE)),
            "top_label": pa.nulls(n, pa.string()),
            "top_score": pa.nulls(n, pa.float32()),
            "status": pa.array([status] * n, pa.string()),
            "model": pa.array([model] * n, pa.string()),
            "label_set": pa.array([label_set] * n, pa.string()),
        },
        schema=RESULT_SCHEMA,
    )
