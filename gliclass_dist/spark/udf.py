"""The Spark front end's core: one ``Classifier`` per Python worker, shared by the pandas UDF and ``mapInArrow``.

Two ways in, one implementation underneath (``classify_batches``):

- ``classify_udf(model, labels)``: the column function, a pandas UDF of the iterator-of-batches kind that
  returns a struct column with the result fields of the output schema::

      udf = classify_udf("/models/gliclass", ["billing", "delivery", "praise"])
      df.withColumn("gliclass", udf("text"))                       # a fixed label set
      per_row = classify_udf("/models/gliclass", LabelSpec(column="labels"))
      df.withColumn("gliclass", per_row("text", "labels"))         # each row's array<string> of labels

- ``classify_dataframe(df, model, labels, keep=[...])``: a ``mapInArrow`` transform returning the output
  schema (kept columns, then the result columns). It skips the pandas conversion; the batch and streaming
  jobs use it, optionally with a stage-level ``ResourceProfile`` (``gliclass_dist.spark.resources``).

The model is loaded once per Python worker process and kept in a module-level cache keyed by its
``EngineSettings`` (and the GPU the task was given), so a worker that Spark reuses across tasks
(``spark.python.worker.reuse``, on by default) never reloads it. Loads are observable: ``model_loads()``
in the process, and one JSON file per load in the folder named by ``GLICLASS_MODEL_LOAD_LOG`` when set.

Rows per Arrow batch come from ``spark.sql.execution.arrow.maxRecordsPerBatch`` (default 10,000);
``batch_rows`` splits larger batches further before they reach the engine (the engine packs each piece
into token-budgeted forward passes). ``ship_model`` distributes a checkpoint folder as an archive
(``SparkContext.addArchive``) so executors without a shared file system (or hub access) read the driver's copy.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from gliclass_dist.labels import LabelSpec
from gliclass_dist.schema import RESULT_COLUMNS, RESULT_SCHEMA, output_schema
from gliclass_dist.settings import EngineSettings
from gliclass_dist.worker import configure_worker

if TYPE_CHECKING:
    from pyspark.resource import ResourceProfile
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

    from gliclass_dist.engine import Classifier

logger = logging.getLogger(__name__)

LOAD_LOG_ENV = "GLICLASS_MODEL_LOAD_LOG"
SPARK_FILES_PREFIX = "sparkfiles://"

_CLASSIFIERS: dict[tuple[EngineSettings, str], Classifier] = {}
_LOADS: list[dict[str, Any]] = []
_SHIPPED: set[str] = set()  # archives this driver already added
_LOCK = threading.Lock()


# The Spark name of the engine settings (``ref`` may also be ``sparkfiles://<name>``, see ``ship_model``); kept so
# that ``ModelOptions(ref, ...)`` and ``ModelOptions.from_job(spec)`` keep working.
ModelOptions = EngineSettings


@dataclass(frozen=True)
class ClassifyConfig:
    """Everything a Python worker needs to classify batches; small and picklable (sent with each task)."""

    model: EngineSettings
    labels: LabelSpec
    text_column: str = "text"
    keep: tuple[str, ...] = ()
    batch_rows: int | None = None

    def __post_init__(self) -> None:
        if self.batch_rows is not None and self.batch_rows < 1:
            raise ValueError(f"batch_rows must be >= 1, got {self.batch_rows}")


@dataclass
class PartitionStats:
    """What one task classified: rows, rows per status, and where it ran (pid, GPU addresses, model loads)."""

    rows: int = 0
    status_counts: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def record(self, result: pa.Table | pa.RecordBatch, seconds: float) -> None:
        self.rows += result.num_rows
        self.seconds += seconds
        if result.num_rows:
            for item in pc.value_counts(result.column("status")).to_pylist():
                self.status_counts[str(item["values"])] += int(item["counts"])


# ---------------------------------------------------------------------------------------------- the model cache


def task_gpu_addresses() -> list[str]:
    """The GPU addresses Spark assigned to the running task (empty outside a task or without GPUs)."""
    try:
        from pyspark import TaskContext
    except ImportError:  # pragma: no cover - pyspark is the reason this module exists
        return []
    ctx = TaskContext.get()
    if ctx is None:
        return []
    gpu = ctx.resources().get("gpu")
    return list(gpu.addresses) if gpu is not None else []


def _task_cpus() -> int | None:
    try:
        from pyspark import TaskContext
    except ImportError:  # pragma: no cover
        return None
    ctx = TaskContext.get()
    return None if ctx is None else int(ctx.cpus())


def resolve_device(requested: str, gpu_addresses: Sequence[str]) -> str:
    """``cuda:<address>`` for a task that Spark gave a GPU (device auto/cuda); otherwise ``requested``.

    Spark does not set ``CUDA_VISIBLE_DEVICES``; the task's address picks the device. Without a usable CUDA
    device the engine falls back to CPU and logs a warning.
    """
    if requested in ("auto", "cuda") and gpu_addresses:
        return f"cuda:{gpu_addresses[0]}"
    return requested


def resolve_model_path(options: EngineSettings) -> str:
    """The local folder of ``options.ref`` on this process (``sparkfiles://`` refs: the unpacked archive)."""
    if options.ref.startswith(SPARK_FILES_PREFIX):
        from pyspark import SparkFiles

        return SparkFiles.get(options.ref[len(SPARK_FILES_PREFIX):])
    return options.ref


def get_classifier(options: EngineSettings) -> Classifier:
    """This process's ``Classifier`` for ``options``, loaded on first use and kept for later tasks."""
    gpus = task_gpu_addresses()
    device = resolve_device(options.device, gpus)
    key = (options, device)
    with _LOCK:
        clf = _CLASSIFIERS.get(key)
        if clf is not None:
            return clf
        cpus = _task_cpus()
        # before the engine's first torch import in this worker; one worker per task slot: the task's cores
        configure_worker(threads=options.threads, max_threads=cpus if cpus and not device.startswith("cuda") else None)
        from gliclass_dist.engine import Classifier

        started = time.perf_counter()
        clf = Classifier.from_settings(options.replace(ref=resolve_model_path(options), device=device))
        _CLASSIFIERS[key] = clf
        _record_load(options, device, gpus, time.perf_counter() - started, clf)
        return clf


def _record_load(options: EngineSettings, device: str, gpus: list[str], seconds: float, clf: Classifier) -> None:
    entry = {
        "pid": os.getpid(),
        "ref": options.ref,
        "options": repr(options),
        "device_requested": device,
        "device": str(clf.device),
        "task_gpus": gpus,
        "seconds": round(seconds, 3),
        "time": time.time(),
    }
    _LOADS.append(entry)
    logger.info("model %s loaded in worker %d on %s (%.1fs)", options.ref, os.getpid(), clf.device, seconds)
    folder = os.environ.get(LOAD_LOG_ENV)
    if folder:
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"load-{os.getpid()}-{uuid.uuid4().hex[:8]}.json")
        with open(path, "w") as fh:
            json.dump(entry, fh)


def model_loads() -> list[dict[str, Any]]:
    """The model loads of this process (pid, options, device, task GPUs, seconds)."""
    return list(_LOADS)


def read_load_log(folder: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every load recorded in a ``GLICLASS_MODEL_LOAD_LOG`` folder (any process, any node sharing it)."""
    return [json.loads(p.read_text()) for p in sorted(Path(folder).glob("load-*.json"))]


def ship_model(spark: SparkSession, options: EngineSettings, *, ship: bool | None = None) -> EngineSettings:
    """Make the checkpoint reachable from every executor; returns the options the tasks should use.

    A hub id is resolved (downloaded) once, here on the driver. With ``ship`` (default: when the master is
    not ``local``), the folder is zipped once and added with ``SparkContext.addArchive``; every executor
    fetches and unpacks it once and the tasks load it from their SparkFiles folder, so no executor needs hub
    access or a shared file system. Pass ``ship=False`` when the folder is on storage every node mounts.
    """
    from gliclass_dist.model.loading import resolve_model_ref

    if options.ref.startswith(SPARK_FILES_PREFIX):
        return options
    name = options.display_name
    path = resolve_model_ref(options.ref, options.revision)
    if ship is None:
        ship = not spark.sparkContext.master.startswith("local")
    if not ship:
        return options.replace(ref=str(path), model_name=name)
    archive = model_archive(path)
    if archive.name not in _SHIPPED:
        spark.sparkContext.addArchive(str(archive))
        _SHIPPED.add(archive.name)
        logger.info("shipping model folder %s to the executors as %s", path, archive.name)
    return options.replace(ref=SPARK_FILES_PREFIX + archive.name, model_name=name)


def model_archive(path: Path) -> Path:
    """A zip of the checkpoint folder, named by its content (file names, sizes, mtimes); built once."""
    import hashlib
    import shutil
    import tempfile

    path = path.resolve()
    digest = hashlib.sha1(str(path).encode())
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    folder = Path(tempfile.gettempdir()) / "gliclass-spark-models"
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / f"{path.name}-{digest.hexdigest()[:12]}.zip"
    if not archive.exists():
        partial = shutil.make_archive(str(archive.with_suffix("")) + f".{os.getpid()}", "zip", root_dir=path)
        os.replace(partial, archive)
    return archive


# ---------------------------------------------------------------------------------------------- shared core


def _pieces(batch: pa.RecordBatch, rows: int | None) -> Iterator[pa.RecordBatch]:
    if not rows or batch.num_rows <= rows:
        yield batch
        return
    for start in range(0, batch.num_rows, rows):
        yield batch.slice(start, rows)


def classify_batches(
    batches: Iterable[pa.RecordBatch],
    config: ClassifyConfig,
    stats: PartitionStats | None = None,
) -> Iterator[pa.RecordBatch]:
    """Classify a stream of Arrow batches; yields the output schema, one row per input row, in order."""
    clf = get_classifier(config.model)
    for batch in batches:
        for piece in _pieces(batch, config.batch_rows):
            started = time.perf_counter()
            result = clf.classify_arrow(piece, config.labels, text_column=config.text_column, keep=config.keep)
            if result.num_rows != piece.num_rows:  # the engine's contract; never hand Spark a partial batch
                raise RuntimeError(f"classifier returned {result.num_rows} rows for {piece.num_rows}")
            if stats is not None:
                stats.record(result, time.perf_counter() - started)
            yield from result.combine_chunks().to_batches() or [pa.RecordBatch.from_pylist([], result.schema)]


# ---------------------------------------------------------------------------------------------- Spark schemas


def result_struct_type() -> StructType:
    """The Spark type of the result struct (labels, scores, top_label, top_score, status, model, label_set)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(RESULT_SCHEMA)


def spark_output_schema(input_schema: StructType, keep: Sequence[str] = ()) -> StructType:
    """The Spark schema of ``classify_dataframe``'s output for an input schema."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(arrow_output_schema(input_schema, keep))


def arrow_input_schema(input_schema: StructType) -> pa.Schema:
    """The Arrow schema Spark hands to Python for a DataFrame schema."""
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(input_schema)


def arrow_output_schema(input_schema: StructType, keep: Sequence[str] = ()) -> pa.Schema:
    """The Arrow output schema (``schema.output_schema``) for a Spark input schema."""
    return output_schema(arrow_input_schema(input_schema), keep)


def check_columns(df: DataFrame, config: ClassifyConfig) -> None:
    """Fail on the driver, before any task, when a column the job needs is missing."""
    names = set(df.columns)
    needed = [config.text_column, *config.keep, *config.labels.columns]
    missing = [c for c in needed if c not in names]
    if missing:
        raise KeyError(f"columns {missing} are not in the input (columns: {df.columns})")
    clashes = [c for c in config.keep if c in RESULT_COLUMNS]
    if clashes:
        raise ValueError(f"kept columns {clashes} clash with result columns; rename them first")


def make_config(
    model: str | EngineSettings,
    labels: LabelSpec | Sequence[str],
    *,
    text_column: str = "text",
    keep: Sequence[str] = (),
    batch_rows: int | None = None,
) -> ClassifyConfig:
    """A ``ClassifyConfig`` from friendly arguments (a model path or settings; a label list or ``LabelSpec``)."""
    options = model if isinstance(model, EngineSettings) else EngineSettings(ref=str(model))
    spec = labels if isinstance(labels, LabelSpec) else LabelSpec(labels=list(labels))
    return ClassifyConfig(options, spec, text_column=text_column, keep=tuple(keep), batch_rows=batch_rows)


# ---------------------------------------------------------------------------------------------- mapInArrow


def classify_dataframe(
    df: DataFrame,
    model: str | EngineSettings,
    labels: LabelSpec | Sequence[str],
    *,
    text_column: str = "text",
    keep: Sequence[str] = (),
    batch_rows: int | None = None,
    profile: ResourceProfile | None = None,
) -> DataFrame:
    """``df`` classified with ``mapInArrow``: the ``keep`` columns, then the result columns.

    ``profile`` (from ``resources.inference_profile``) applies to this stage only; repartition ``df`` first
    so that reading and earlier CPU work stay in stages with the default profile.
    """
    config = make_config(model, labels, text_column=text_column, keep=keep, batch_rows=batch_rows)
    check_columns(df, config)
    schema = spark_output_schema(df.schema, config.keep)
    target = arrow_output_schema(df.schema, config.keep)

    def classify_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in classify_batches(batches, config):
            yield batch.cast(target)

    return df.mapInArrow(classify_partition, schema, profile=profile)


# ---------------------------------------------------------------------------------------------- pandas UDF


def classify_udf(
    model: str | EngineSettings,
    labels: LabelSpec | Sequence[str],
    *,
    batch_rows: int | None = None,
):
    """A pandas UDF (iterator of batches) returning the result struct for a text column.

    With a fixed label set call it with the text column, ``udf("text")``; with ``LabelSpec(column=...)``
    call it with the text and the labels column, ``udf("text", "labels")`` (an ``array<string>`` per row);
    with ``LabelSpec(examples_column=...)`` add the examples column last (``array<struct<text, labels>>`` or
    its JSON per row). A row that cannot be classified (null text, no labels) gets its status, never an error.
    """
    from pyspark.sql.functions import pandas_udf

    config = make_config(model, labels, text_column="__text", batch_rows=batch_rows)
    converters = {"__text": _arrow_texts}
    if config.labels.column is not None:
        converters[config.labels.column] = _arrow_labels
    if config.labels.examples_column is not None:
        converters[config.labels.examples_column] = _arrow_json
    return_type = result_struct_type()

    def classify_series(columns: Sequence[pd.Series]) -> pd.DataFrame:
        batch = pa.record_batch({name: convert(s) for (name, convert), s in zip(converters.items(), columns)})
        results = pa.Table.from_batches(list(classify_batches([batch], config)))
        return results.select(list(RESULT_COLUMNS)).to_pandas()

    # pandas UDF type hints are read at definition time (one arity per form); pandas and Iterator are globals.
    def classify_one(texts: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        for series in texts:
            yield classify_series([series])

    def classify_two(pairs: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        for pair in pairs:
            yield classify_series(pair)

    def classify_three(triples: Iterator[tuple[pd.Series, pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        for triple in triples:
            yield classify_series(triple)

    function = (classify_one, classify_two, classify_three)[len(converters) - 1]
    return pandas_udf(function, return_type)  # type: ignore[call-overload]


def _arrow_texts(series: pd.Series) -> pa.Array:
    """A pandas text column as Arrow (nulls kept; non-string values become per-row ``invalid_text``)."""
    try:
        return pa.Array.from_pandas(series)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(type(v)) for v in series], pa.binary())


def _arrow_json(series: pd.Series) -> pa.Array:
    """A pandas column of nested values (per-row few-shot examples) as their JSON text; strings are kept."""
    def plain(value: Any) -> Any:
        return value.tolist() if hasattr(value, "tolist") else str(value)

    return pa.array([None if v is None else v if isinstance(v, str) else json.dumps(v, default=plain)
                     for v in series], pa.string())


def _arrow_labels(series: pd.Series) -> pa.Array:
    """A pandas column of per-row label arrays (numpy arrays / lists / None) as ``list<string>``."""
    values = [None if v is None else list(v) if hasattr(v, "__len__") and not isinstance(v, str) else v
              for v in series]
    try:
        return pa.array(values, pa.list_(pa.string()))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # Mixed values (e.g. JSON strings): keep them as text; the engine cleans or flags each row.
        return pa.array([None if v is None else json.dumps(v, default=str) if not isinstance(v, str) else v
                         for v in values], pa.string())


__all__ = [
    "LOAD_LOG_ENV",
    "ClassifyConfig",
    "EngineSettings",
    "ModelOptions",
    "PartitionStats",
    "classify_batches",
    "classify_dataframe",
    "classify_udf",
    "get_classifier",
    "make_config",
    "model_loads",
    "read_load_log",
    "result_struct_type",
    "ship_model",
    "spark_output_schema",
    "task_gpu_addresses",
]
