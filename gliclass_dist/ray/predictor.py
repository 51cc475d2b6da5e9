"""The Ray Data stages of a classification job: a CPU tokenize stage and the model stage.

``GLiClassPredictor`` is a callable class for ``Dataset.map_batches``: each actor loads the ``Classifier``
once (in ``__init__``) from a checkpoint folder resolved on the driver (or ``EngineSettings``), then turns
batches into batches in the output schema (``gliclass_dist.schema.output_schema``), one row per input row::

    ds.map_batches(GLiClassPredictor, fn_constructor_args=("models/gliclass", ["billing", "delivery"]),
                   fn_constructor_kwargs={"device": "cpu"}, batch_format="pyarrow", concurrency=2)

Any ``batch_format`` works: a ``pyarrow`` batch gives the exact output schema; ``pandas`` and ``numpy`` batches
come back in the same format (Ray's conversions). Bad arguments fail in ``__init__``, before any model load.

With ``tokenize_batch`` as an earlier stage (plain Ray tasks on CPUs), the model actors receive token ids
instead of text: the CPU work of tokenizing no longer holds a GPU actor. The two stages are the engine's
two steps (``gliclass_dist.encode.encode_arrow``, then ``Classifier.score_arrow``), which ``classify_arrow``
composes, so they give exactly its statuses and scores; ``tests/test_ray_job.py`` checks it. Importing this
module loads neither the engine nor torch; the model actor applies ``configure_worker`` before it does.

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
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

# The encoded columns the tokenize stage adds (and the model stage removes) are the encode module's.
from gliclass_dist.encode import ENCODED_COLUMNS, encode_arrow, is_encoded
from gliclass_dist.encode import load_builder as load_checkpoint_builder
from gliclass_dist.labels import LabelSpec
from gliclass_dist.settings import EngineSettings
from gliclass_dist.worker import configure_worker

if TYPE_CHECKING:
    from gliclass_dist.model.inputs import InputBuilder

logger = logging.getLogger(__name__)

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


def as_label_spec(labels: LabelSpec | Sequence[str]) -> LabelSpec:
    """``labels`` as a ``LabelSpec``: a list of label names becomes a fixed label set (checked here)."""
    if isinstance(labels, LabelSpec):
        return labels
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
        raise ValueError(
            f"labels must be a list of label names or a LabelSpec, got {type(labels).__name__} {labels!r:.80}"
        )
    return LabelSpec(labels=list(labels))


def engine_settings(model: str | os.PathLike[str] | EngineSettings, **options: Any) -> EngineSettings:
    """``model`` (a checkpoint folder, hub id or ``EngineSettings``) with engine ``options`` applied and checked."""
    if isinstance(model, EngineSettings):
        return model.replace(**options) if options else model
    if not isinstance(model, (str, os.PathLike)):
        raise ValueError(f"model must be a checkpoint folder, a hub id or EngineSettings, got {type(model).__name__}")
    return EngineSettings(ref=os.fspath(model), **options)


def check_columns_arg(text_column: Any, keep: Any) -> list[str]:
    """``keep`` as a list of column names, after checking it and ``text_column``; ``ValueError`` naming the bad one."""
    if not isinstance(text_column, str) or not text_column:
        raise ValueError(f"text_column must be a column name, got {text_column!r}")
    if isinstance(keep, str) or not all(isinstance(c, str) and c for c in keep):
        raise ValueError(f"keep must be a list of column names, got {keep!r}")
    return list(keep)


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
    return load_checkpoint_builder(local_model_path(model_path, model_ref, revision), max_length)


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
    """CPU stage, the engine's encoding step: ``keep`` columns plus the encoded rows (``EncodedBatch.to_arrow``)."""
    configure_worker()
    builder = load_builder(model_path, max_length, model_ref, revision)
    encoded = encode_arrow(_as_table(batch), builder, label_spec, text_column=text_column, keep=keep)
    return encoded.to_arrow()


# ---------------------------------------------------------------------------------------------- model


class GLiClassPredictor:
    """Callable class for ``Dataset.map_batches``: one ``Classifier`` per actor, batches in, batches out.

    ``model_path``: a checkpoint folder (or hub id), or ``EngineSettings``; ``label_spec``: a ``LabelSpec`` or a
    list of label names. ``engine`` keywords are ``EngineSettings`` fields (``device``, ``dtype``, ``backend``,
    ``max_length``, ``token_budget``, ``threads``, ``revision``, ``allow_pickle``, ``model_name``,
    ``result_cache_rows``); they override those of an ``EngineSettings``. ``model_ref``: the hub id to resolve
    on a node that cannot see ``model_path``. Every argument is checked before the model loads.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | EngineSettings,
        label_spec: LabelSpec | Sequence[str],
        *,
        text_column: str = "text",
        keep: Sequence[str] = (),
        model_ref: str | None = None,
        **engine: Any,
    ) -> None:
        try:
            settings = engine_settings(model_path, **engine)
            self.label_spec = as_label_spec(label_spec)
            self.keep = check_columns_arg(text_column, keep)
        except ValueError as exc:  # pydantic's ValidationError is one too
            raise ValueError(f"GLiClassPredictor: {exc}") from None
        self.text_column = text_column
        configure_worker(threads=settings.threads)  # before the engine's first torch import in this actor
        from gliclass_dist.engine import Classifier

        configure_worker_logging()
        # no shared file system: the node's hub cache
        path = local_model_path(settings.ref, model_ref, settings.revision)
        self.classifier = Classifier.from_settings(settings.replace(ref=path) if path != settings.ref else settings)
        self.batches = 0
        self._fault_after = int(os.environ.get(FAULT_AFTER_ENV, "0") or 0)
        self._metrics = _Metrics.create()
        logger.info(
            "GLiClassPredictor ready on node %s (pid %d): device=%s",
            _node_id(),
            os.getpid(),
            self.classifier.device,
        )

    def __call__(self, batch: Any) -> Any:
        """Classify one batch of any Ray batch format; the result comes back in the same format."""
        started = time.perf_counter()
        table, batch_format = to_arrow(batch)
        if is_encoded(table.schema):
            result = self.classifier.score_arrow(table.select([*self.keep, *ENCODED_COLUMNS]), self.label_spec)
        else:
            result = self.classifier.classify_arrow(table, self.label_spec, text_column=self.text_column, keep=self.keep)
        if result.num_rows != table.num_rows:  # the engine's contract; never land a partial batch
            raise RuntimeError(f"model stage returned {result.num_rows} rows for {table.num_rows}")
        self.batches += 1
        self._metrics.record(result, time.perf_counter() - started)
        self._maybe_fault()
        return result if batch_format == "pyarrow" else from_arrow(result, batch_format)

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


def to_arrow(batch: Any) -> tuple[pa.Table, str]:
    """A Ray batch (Arrow table or record batch, pandas frame, dict of numpy arrays) as an Arrow table, and its
    format's name (``pyarrow``, ``pandas`` or ``numpy``); ``TypeError`` for anything else."""
    if isinstance(batch, (pa.Table, pa.RecordBatch)):
        return _as_table(batch), "pyarrow"
    import pandas as pd

    if isinstance(batch, (pd.DataFrame, dict)):
        from ray.data.block import BlockAccessor, BlockType

        table = BlockAccessor.batch_to_block(batch, block_type=BlockType.ARROW)
        if not isinstance(table, pa.Table):
            table = pa.Table.from_pandas(table, preserve_index=False)
        return table, "pandas" if isinstance(batch, pd.DataFrame) else "numpy"
    raise TypeError(f"GLiClassPredictor: unsupported batch type {type(batch).__name__} (use a Ray batch_format)")


def from_arrow(table: pa.Table, batch_format: str) -> Any:
    """``table`` in a Ray batch format (``pandas`` or ``numpy``)."""
    from ray.data.block import BlockAccessor

    return BlockAccessor.for_block(table).to_batch_format(batch_format)


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
