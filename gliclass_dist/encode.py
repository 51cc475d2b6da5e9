"""The encoding step of the one batch path: an Arrow batch and a label spec -> rows ready for the model.

``encode_arrow`` checks every row (null/blank or non-string text, malformed, empty or cleaned label lists,
labels too long for the window) and tokenizes the rows that can be scored; the result, an
``EncodedBatch``, carries each row's status so far, its token id chunks and the ``keep`` columns. The
scoring step, ``Classifier.score_arrow``, turns it into the output schema; ``Classifier.classify_arrow``
is the two composed. Ray runs this step in a CPU stage of its own (``EncodedBatch.to_arrow`` is the
table that stage hands to the model stage).

Importing this module loads neither the engine nor torch nor transformers, and sets nothing in
``os.environ`` (so a worker can import it, then call ``gliclass_dist.worker.configure_worker`` before torch
loads). Loading a checkpoint's tokenizer and config goes through transformers, which imports torch when it
is installed (``transformers.configuration_utils`` does), so a process that encodes rows still loads torch;
it never runs a torch operation.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from gliclass_dist.labels import LabelSpec, check_examples, check_prompt, clean_row_examples, clean_row_labels
from gliclass_dist.schema import Status, output_schema

if TYPE_CHECKING:  # gliclass_dist.model loads transformers (and with it torch): imported where used
    from gliclass_dist.model.inputs import EncodedRow, InputBuilder

# Columns of an encoded batch in Arrow form (besides the kept columns). A row with a null ``chunks``
# value is not scored: its ``pre_status`` is final. Otherwise ``pre_status`` is ``ok`` or ``labels_cleaned``.
ENCODED_PREFIX = "__gliclass_"
PRE_STATUS = ENCODED_PREFIX + "pre_status"
CHUNKS = ENCODED_PREFIX + "chunks"
CHUNK_LABELS = ENCODED_PREFIX + "chunk_labels"
TRUNCATED = ENCODED_PREFIX + "truncated"
ENCODED_FIELDS = (
    pa.field(PRE_STATUS, pa.string()),
    pa.field(CHUNKS, pa.list_(pa.list_(pa.int32()))),
    pa.field(CHUNK_LABELS, pa.list_(pa.list_(pa.string()))),
    pa.field(TRUNCATED, pa.bool_()),
)
ENCODED_COLUMNS = tuple(f.name for f in ENCODED_FIELDS)


@dataclass
class EncodedBatch:
    """Rows ready for the scoring step: per row its status so far and its model input (None: not scored).

    ``kept`` holds the columns carried through to the output (the ``keep`` columns), one row per row.
    """

    statuses: list[str]
    rows: list[EncodedRow | None]
    kept: pa.Table

    @property
    def num_rows(self) -> int:
        return len(self.statuses)

    def to_arrow(self) -> pa.Table:
        """The kept columns, then the encoded columns (``ENCODED_FIELDS``)."""
        rows = self.rows
        columns = dict(zip(self.kept.column_names, self.kept.columns))
        columns[PRE_STATUS] = pa.array(self.statuses, pa.string())
        columns[CHUNKS] = pa.array([r.chunks if r else None for r in rows], ENCODED_FIELDS[1].type)
        columns[CHUNK_LABELS] = pa.array([r.chunk_labels if r else None for r in rows], ENCODED_FIELDS[2].type)
        columns[TRUNCATED] = pa.array([r.truncated if r else False for r in rows], pa.bool_())
        return pa.table(columns)

    @classmethod
    def from_arrow(cls, table: pa.Table | pa.RecordBatch) -> EncodedBatch:
        """The batch ``to_arrow`` wrote; every column that is not an encoded column is a kept column."""
        from gliclass_dist.model.inputs import EncodedRow

        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        missing = [name for name in ENCODED_COLUMNS if name not in table.column_names]
        if missing:
            raise KeyError(f"not an encoded batch: columns {missing} are missing (columns: {table.column_names})")
        chunks = table.column(CHUNKS).to_pylist()
        chunk_labels = table.column(CHUNK_LABELS).to_pylist()
        truncated = table.column(TRUNCATED).to_pylist()
        rows = [
            None if c is None else EncodedRow(chunks=c, chunk_labels=chunk_labels[i], truncated=bool(truncated[i]))
            for i, c in enumerate(chunks)
        ]
        kept = table.drop_columns(list(ENCODED_COLUMNS))
        return cls(table.column(PRE_STATUS).to_pylist(), rows, kept)


def is_encoded(schema: pa.Schema) -> bool:
    """Whether a batch with this schema is an encoded batch (``EncodedBatch.to_arrow``)."""
    return schema.get_field_index(CHUNKS) >= 0


def input_values(data: pa.Table, spec: LabelSpec, text_column: str = "text") -> tuple[list[Any], list[Any]]:
    """Per row: the text (see ``text_values``) and the raw label list (the spec's fixed list, or its column)."""
    if text_column not in data.column_names:
        raise KeyError(f"text column {text_column!r} is not in the input (columns: {data.column_names})")
    texts = text_values(data.column(text_column))
    if spec.column is not None:
        if spec.column not in data.column_names:
            raise KeyError(f"label column {spec.column!r} is not in the input (columns: {data.column_names})")
        return texts, data.column(spec.column).to_pylist()
    return texts, [spec.fixed] * data.num_rows


def example_values(data: pa.Table, spec: LabelSpec) -> list[Any] | None:
    """Per row: the raw few-shot examples of the spec's ``examples_column``; None when the spec names none."""
    if spec.examples_column is None:
        return None
    if spec.examples_column not in data.column_names:
        raise KeyError(
            f"examples column {spec.examples_column!r} is not in the input (columns: {data.column_names})"
        )
    return data.column(spec.examples_column).to_pylist()


def encode_arrow(
    data: pa.Table | pa.RecordBatch,
    builder: InputBuilder,
    spec: LabelSpec,
    *,
    text_column: str = "text",
    keep: Sequence[str] = (),
    examples: Sequence[Mapping[str, Any]] | None = None,
) -> EncodedBatch:
    """The encoding step: ``data`` checked and tokenized row by row (see ``prepare_rows``), ``keep`` carried.

    The spec's ``examples_column`` (if any) gives each row its own few-shot examples; ``examples`` are the
    job-wide ones (used by rows without their own). A missing text, label, examples or kept column raises ``KeyError`` naming it; a kept column clashing with a result
    column raises ``ValueError``.
    """
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    output_schema(data.schema, keep)  # fails on a missing or clashing kept column, before any work
    texts, row_labels = input_values(data, spec, text_column)
    row_examples = example_values(data, spec)
    statuses, rows = prepare_rows(builder, texts, row_labels, spec.prompt, examples, row_examples)
    return EncodedBatch(statuses, rows, data.select(list(keep)))


def has_content(text: str) -> bool:
    """Whether a text has anything to read: a character that is not whitespace, a control or format
    character (zero-width, bidi marks), once GLiClass marker strings are removed."""
    if text.strip() and not text.isspace():
        first = text.lstrip()[0]
        if unicodedata.category(first)[0] not in "CZ" and first not in "<":
            return True  # the common case, decided on the first character
    from gliclass_dist.model.inputs import scrub_text

    return any(unicodedata.category(c)[0] not in "CZ" for c in scrub_text(text))


def prepare_rows(
    builder: InputBuilder,
    texts: Sequence[Any],
    row_labels: Sequence[Any],
    prompt: str | None = None,
    examples: Sequence[Mapping[str, Any]] | None = None,
    row_examples: Sequence[Any] | None = None,
) -> tuple[list[str], list[EncodedRow | None]]:
    """Per row: its status so far and its encoded model input (None when the row is not scored).

    The row checks every front end shares: null/blank text, non-string text, malformed, empty or
    cleaned label lists, and labels too long for the window. Ray runs this in a separate CPU stage.
    A prompt or an example holding a marker string raises ``ValueError`` (see ``check_prompt``).
    ``row_examples`` (raw values of an examples column, one per row) are checked per row: a malformed
    value gives status ``invalid_examples`` (see ``gliclass_dist.labels.clean_row_examples``).
    """
    from gliclass_dist.model.inputs import LabelTooLongError

    check_prompt(prompt)
    check_examples(examples)
    statuses = [Status.OK] * len(texts)
    encoded: list[EncodedRow | None] = [None] * len(texts)
    todo: list[int] = []
    todo_labels: list[list[str]] = []
    todo_examples: list[list[Mapping[str, Any]]] = []
    for i, (text, raw_labels) in enumerate(zip(texts, row_labels)):
        if text is None or (isinstance(text, str) and not has_content(text)):
            statuses[i] = Status.EMPTY_TEXT
            continue
        if not isinstance(text, str):
            statuses[i] = Status.INVALID_TEXT
            continue
        cleaned, was_cleaned = clean_row_labels(raw_labels)
        if cleaned is None:
            statuses[i] = Status.INVALID_LABELS
            continue
        if not cleaned:
            statuses[i] = Status.NO_LABELS
            continue
        if row_examples is not None:
            row_example = clean_row_examples(row_examples[i])
            if row_example is None:
                statuses[i] = Status.INVALID_EXAMPLES
                continue
            todo_examples.append(row_example)
        if was_cleaned:
            statuses[i] = Status.LABELS_CLEANED
        todo.append(i)
        todo_labels.append(cleaned)
    # row_examples only when given: builders of other architectures need not know the keyword
    per_row = {"row_examples": todo_examples} if row_examples is not None else {}
    rows = builder.encode([texts[i] for i in todo], todo_labels, prompt, examples, **per_row) if todo else []
    for i, row in zip(todo, rows):
        if isinstance(row, LabelTooLongError):
            statuses[i] = Status.error(str(row))
        else:
            encoded[i] = row
    return statuses, encoded


def text_values(column: pa.ChunkedArray | pa.Array) -> list[Any]:
    """Python values of a text column; non-string columns become per-row ``invalid_text`` markers."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or pa.types.is_string_view(column.type):
        return column.to_pylist()
    if pa.types.is_null(column.type):
        return [None] * len(column)
    # binary, numbers, structs...: keep nulls as nulls (empty_text), everything else is invalid
    return [None if v is None else _NotText() for v in column.to_pylist()]


class _NotText:
    """Marker for a value that is not a string (the encoding step records ``invalid_text``)."""


@lru_cache(maxsize=4)
def load_builder(model_path: str, max_length: int | None) -> InputBuilder:
    """A checkpoint folder's input builder (tokenizers + config, no weights), once per process."""
    from gliclass_dist.model.loading import load_config, load_input_builder

    config = load_config(Path(model_path))
    return load_input_builder(model_path, config, max_length)


__all__ = [
    "CHUNKS",
    "CHUNK_LABELS",
    "ENCODED_COLUMNS",
    "ENCODED_FIELDS",
    "ENCODED_PREFIX",
    "PRE_STATUS",
    "TRUNCATED",
    "EncodedBatch",
    "encode_arrow",
    "example_values",
    "has_content",
    "input_values",
    "is_encoded",
    "load_builder",
    "prepare_rows",
    "text_values",
]
