"""The Ray Data stages of a classification job: a CPU tokenize stage and the model stage.

``GLiClassPredictor`` is a callable class for ``Dataset.map_batches``: each actor loads the ``Classifier``
once (in ``__init__``) from a checkpoint folder resolved on the driver, then turns Arrow batches into
Arrow batches in the output schema (``gliclass_dist.schema.output_schema``), one row per input row.

With ``tokenize_batch`` as an earlier stage (plain Ray tasks on CPUs), the model actors receive token ids
instead of text: the CPU work of tokenizing no longer holds a GPU actor. The two halves reproduce the
engine's ``classify_arrow`` exactly (same statuses, same scores); ``tests/test_ray_job.py`` checks it.

Metrics (``ray.util.metrics``, exported by Ray's metrics agent): ``gliclass_rows`` (tag ``status``),
``gliclass_batches`` and the histogram ``gliclass_batch_seconds``.

Fault hook for tests and drills (off by default): with ``GLICLASS_FAULT_AFTER_BATCHES=N`` in an actor's
environment, the actor that finishes its N-th batch first ends its process (``os._exit``) before
returning that batch, once per marker file ``GLICLASS_FAULT_MARKER``. Ray restarts the actor and retries
the batch; the job must still land every row exactly once.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa

from gliclass_dist.labels import LabelSpec
from gliclass_dist.model.inputs import EncodedRow, InputBuilder
from gliclass_dist.schema import Status, output_schema

logger = logging.getLogger(__name__)

# Columns the tokenize stage adds (and the model stage removes). A row with a null ``chunks`` value is
# not scored: its ``pre_status`` is final. Otherwise ``pre_status`` is ``ok`` or ``labels_cleaned``.
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

FAULT_AFTER_ENV = "GLICLASS_FAULT_AFTER_BATCHES"
FAULT_MARKER_ENV = "GLICLASS_FAULT_MARKER"


def configure_worker_logging() -> None:
    """INFO logs of this package on a Ray worker (workers start with an unconfigured root logger)."""
    package = logging.getLogger("gliclass_dist")
    if not package.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        package.addHandler(handler)
    package.setLevel(logging.INFO)


def _as_table(batch: pa.Table | pa.RecordBatch) -> pa.Table:
    return pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch


# ---------------------------------------------------------------------------------------------- tokenize


def local_model_path(model_path: str, model_ref: str | None, revision: str | None) -> str:
    """``model_path`` when this node sees it; else the hub reference resolved on this node (its hub cache)."""
    if Path(model_path).is_dir() or not model_ref:
        return model_path
    from gliclass_dist.model.loading import resolve_model_ref

    logger.info("model folder %s is not on this node; resolving %s here", model_path, model_ref)
    return str(resolve_model_ref(model_ref, revision))


@lru_cache(maxsize=4)
def load_builder(
    model_path: str, max_length: int | None, model_ref: str | None = None, revision: str | None = None
) -> InputBuilder:
    """The checkpoint's input builder (tokenizer + config, no weights), once per worker process."""
    from gliclass_dist.model.loading import load_config, load_tokenizer

    path = local_model_path(model_path, model_ref, revision)
    config = load_config(Path(path))
    return InputBuilder(load_tokenizer(path, config), config, max_length)


def tokenize_batch(
    batch: pa.Table,
    *,
    model_path: str,
    max_length: int | None,
    label_spec: LabelSpec,
    text_column: str,
    keep: list[str],
    model_ref: str | None = None,
    revision: str | None = None,
) -> pa.Table:
    """CPU stage: ``keep`` columns plus the encoded rows (token id chunks, their labels, status so far)."""
    from gliclass_dist.engine import text_values

    batch = _as_table(batch)
    if text_column not in batch.column_names:
        raise KeyError(f"text column {text_column!r} is not in the input (columns: {batch.column_names})")
    texts = text_values(batch.column(text_column))
    if label_spec.column is not None:
        if label_spec.column not in batch.column_names:
            raise KeyError(f"label column {label_spec.column!r} is not in the input (columns: {batch.column_names})")
        row_labels = batch.column(label_spec.column).to_pylist()
    else:
        row_labels = [label_spec.fixed] * batch.num_rows
    from gliclass_dist.engine import prepare_rows

    builder = load_builder(model_path, max_length, model_ref, revision)
    statuses, encoded = prepare_rows(builder, texts, row_labels, label_spec.prompt)
    columns = {name: batch.column(name) for name in keep}
    columns[PRE_STATUS] = pa.array(statuses, pa.string())
    columns[CHUNKS] = pa.array([row.chunks if row else None for row in encoded], ENCODED_FIELDS[1].type)
    columns[CHUNK_LABELS] = pa.array([row.chunk_labels if row else None for row in encoded], ENCODED_FIELDS[2].type)
    columns[TRUNCATED] = pa.array([row.truncated if row else False for row in encoded], pa.bool_())
    return pa.table(columns)


def is_encoded(schema: pa.Schema) -> bool:
    return schema.get_field_index(CHUNKS) >= 0


# ---------------------------------------------------------------------------------------------- model


class GLiClassPredictor:
    """Callable class for ``Dataset.map_batches``: one ``Classifier`` per actor, Arrow in, Arrow out."""

    def __init__(
        self,
        model_path: str,
        label_spec: LabelSpec,
        *,
        text_column: str = "text",
        keep: list[str] | tuple[str, ...] = (),
        model_ref: str | None = None,
        revision: str | None = None,
        model_name: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        max_length: int | None = None,
        token_budget: int | None = None,
        allow_pickle: bool = False,
    ) -> None:
        from gliclass_dist.engine import Classifier

        configure_worker_logging()
        path = local_model_path(model_path, model_ref, revision)  # no shared file system: the node's hub cache
        self.classifier = Classifier.from_pretrained(
            path,
            device=device,
            dtype=dtype,
            max_length=max_length,
            token_budget=token_budget,
            allow_pickle=allow_pickle,
            model_name=model_name,
        )
        self.label_spec = label_spec
        self.text_column = text_column
        self.keep = list(keep)
        self.batches = 0
        self._fault_after = int(os.environ.get(FAULT_AFTER_ENV, "0") or 0)
        self._metrics = _Metrics.create()
        logger.info(
            "GLiClassPredictor ready on node %s (pid %d): device=%s",
            _node_id(),
            os.getpid(),
            self.classifier.device,
        )

    def __call__(self, batch: pa.Table | pa.RecordBatch) -> pa.Table:
        started = time.perf_counter()
        batch = _as_table(batch)
        if is_encoded(batch.schema):
            result = self._score_encoded(batch)
        else:
            result = self.classifier.classify_arrow(batch, self.label_spec, text_column=self.text_column, keep=self.keep)
        if result.num_rows != batch.num_rows:  # the engine's contract; never land a partial batch
            raise RuntimeError(f"model stage returned {result.num_rows} rows for {batch.num_rows}")
        self.batches += 1
        self._metrics.record(result, time.perf_counter() - started)
        self._maybe_fault()
        return result

    def _score_encoded(self, batch: pa.Table) -> pa.Table:
        from gliclass_dist.engine import Prediction, fill_prediction, predictions_to_arrow

        spec = self.label_spec
        statuses = batch.column(PRE_STATUS).to_pylist()
        chunks = batch.column(CHUNKS).to_pylist()
        chunk_labels = batch.column(CHUNK_LABELS).to_pylist()
        truncated = batch.column(TRUNCATED).to_pylist()
        preds = [Prediction(status=status) for status in statuses]
        scored = [i for i, c in enumerate(chunks) if c is not None]
        rows = [EncodedRow(chunks=chunks[i], chunk_labels=chunk_labels[i], truncated=truncated[i]) for i in scored]
        logits = self.classifier.score_encoded(rows)
        for i, row, row_logits in zip(scored, rows, logits):
            if isinstance(row_logits, Exception):
                preds[i].status = Status.error(f"{type(row_logits).__name__}: {row_logits}")
                continue
            fill_prediction(preds[i], row.labels, row_logits, spec.mode, spec.threshold, spec.thresholds, row.truncated)
        self.classifier.stats["rows"] += len(preds)
        results = predictions_to_arrow(preds, self.classifier.model_name, spec.label_set_id)
        schema = output_schema(batch.schema, self.keep)
        return pa.Table.from_arrays([batch.column(name) for name in self.keep] + results.columns, schema=schema)

    def _maybe_fault(self) -> None:
        if not self._fault_after or self.batches < self._fault_after:
            return
        marker = os.environ.get(FAULT_MARKER_ENV) or os.path.join(tempfile.gettempdir(), "gliclass-fault.marker")
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, f"pid {os.getpid()} after {self.batches} batches\n".encode())
        os.close(fd)
        logger.warning("fault hook: ending actor process %d after %d batches", os.getpid(), self.batches)
        logging.shutdown()
        os._exit(17)


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    except Exception:  # noqa: BLE001 - diagnostics only
        return "unknown"


class _Metrics:
    """Ray metrics of the model stage; a no-op outside a Ray worker."""

    def __init__(self, rows: Any, batches: Any, seconds: Any) -> None:
        self.rows, self.batches, self.seconds = rows, batches, seconds

    @classmethod
    def create(cls) -> _Metrics:
        try:
            import ray
            from ray.util import metrics

            if not ray.is_initialized():
                return cls(None, None, None)
            return cls(
                metrics.Counter("gliclass_rows", "rows classified, by status", tag_keys=("status",)),
                metrics.Counter("gliclass_batches", "batches classified"),
                metrics.Histogram(
                    "gliclass_batch_seconds",
                    "model stage latency per batch",
                    boundaries=[0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
                ),
            )
        except Exception as exc:  # noqa: BLE001 - metrics must never fail a job
            logger.warning("Ray metrics unavailable: %s", exc)
            return cls(None, None, None)

    def record(self, result: pa.Table, seconds: float) -> None:
        if self.rows is None:
            return
        import pyarrow.compute as pc

        for item in pc.value_counts(result.column("status")).to_pylist():
            status = item["values"] if not str(item["values"]).startswith("error") else "error"
            self.rows.inc(int(item["counts"]), tags={"status": status})
        self.batches.inc(1)
        self.seconds.observe(seconds)
