"""Classification jobs on Ray Data: read -> tokenize (CPU tasks) -> model (actor pool) -> stage + ONE commit.

``classify_dataset(ds, spec)`` adds the stages to any Ray ``Dataset``; ``run_job(spec)`` runs a whole job
and returns its summary (``gliclass_dist.run.RunSummary.to_dict``)::

    {"job_key": ..., "commit_key": "name-1a2b@v0", "committed": True, "table_version": 3,
     "rows_in": 2225, "rows_out": 2225, "status_counts": {"ok": 2225}, "rows_per_s": 61.2, ...}

Exactly once. The run is planned by ``gliclass_dist.run.plan_run`` (its key, the input version read, a skip
when the key is already committed); the write tasks stage parquet files and the driver commits their list
in one commit tagged with the key (``gliclass_dist.ray.io.StagedCommitDatasink``).
Model actors that die are restarted by Ray Data (actor pools default to ``max_restarts=-1`` and
``max_task_retries=-1``; passing these through ``map_batches`` is deprecated in Ray 2.60) and their
batches retried: classification is at-least-once, landing exactly once.

The model is resolved once, on the driver (a hub id is downloaded into the driver's hub cache), and the
actors get the folder's path: no weights travel in closures. An actor on a node that cannot see the folder
resolves the hub id itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import Any

import ray
import ray.data

from gliclass_dist import connectors
from gliclass_dist.connectors.base import plain_schema
from gliclass_dist.model.loading import resolve_model_ref
from gliclass_dist.ray.dataset import IO_ALLOCATOR_ENV, stage_env
from gliclass_dist.ray.dataset import classify_dataset as classify_stages
from gliclass_dist.ray.io import StagedCommitDatasink, apply_filter, read_input
from gliclass_dist.run import RunSummary, input_columns, merge_counts, plan_run
from gliclass_dist.schema import output_schema
from gliclass_dist.settings import EngineSettings
from gliclass_dist.spec import JobSpec

logger = logging.getLogger(__name__)

# Largest block the job's stages build (Ray's default is 128 MiB). Ray sizes read blocks by bytes, so a
# 1M-row input of short texts was ONE block: one tokenize task, whose worker buffered up to 128 MiB of
# encoded rows before handing on the first block (its private memory grew from 517 MB at 200k rows to
# 927 MB at 1M, bench/NOTES.md 11).
READ_BLOCK_BYTES = 16 * 2**20

# Set by Ray's job manager for a submitted driver: the job's config, with the submitter's runtime env, as JSON.
SUBMITTED_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


# pyarrow's default pool (mimalloc) keeps freed memory for reuse: at 1M rows the job's largest worker (a read or
# write task's) held 775 MB private with it and 579 MB with the system allocator (bench/README.md, Scale).
ARROW_POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"


def job_env() -> dict[str, str]:
    """``stage_env(1)`` with Arrow's system allocator and glibc's mmap threshold fixed for I/O tasks
    (``IO_ALLOCATOR_ENV``; the model actors override it), each unless this process sets it, less the variables a
    ``ray job submit`` runtime env already sets (Ray refuses to merge the same key twice; the submitter's value
    wins)."""
    submitted: dict[str, Any] = {}
    with contextlib.suppress(ValueError, TypeError, AttributeError):  # not under ray job submit, or no env_vars
        config = json.loads(os.environ.get(SUBMITTED_JOB_CONFIG_ENV, "{}"))
        submitted = dict((config.get("runtime_env") or {}).get("env_vars") or {})
    defaults = {ARROW_POOL_ENV: "system", **IO_ALLOCATOR_ENV}
    env = {**stage_env(1), **{name: os.environ.get(name, value) for name, value in defaults.items()}}
    return {k: v for k, v in env.items() if k not in submitted}


def classify_dataset(
    ds: Any, spec: JobSpec, *, model_path: str | os.PathLike[str] | None = None, num_rows: int | None = None
) -> Any:
    """``ds`` (rows with the spec's text/kept/label columns) -> rows in the output schema: the stages of
    ``gliclass_dist.ray.classify_dataset`` with the spec's engine settings, labels and resources.

    ``model_path`` is the checkpoint folder resolved on the driver (resolved there when not given); ``num_rows``
    the rows of ``ds`` when known (block sizing).
    """
    return classify_stages(
        ds,
        model=EngineSettings.from_job(spec),
        labels=spec.labels,
        text_column=spec.input.text_column,
        keep=spec.keep_columns,
        resources=spec.resources,
        model_path=model_path,
        num_rows=num_rows,
    )


def ensure_ray(address: str | None = None) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``, e.g. under ``ray job submit``), else start local Ray.

    The job's tasks get ``job_env()`` (hub settings forwarded from this process, one tokenizer thread, Arrow's
    system allocator, glibc's mmap threshold for I/O tasks).
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    logger.info("connecting to Ray at %s", address)
    # The job's environment: every task gets it (the tokenize stage has no runtime_env of its own).
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True,
             runtime_env={"env_vars": job_env()})


def run_job(spec: JobSpec, *, ray_address: str | None = None, count_input: bool = True) -> dict[str, Any]:
    """Run a whole job: read, classify, land exactly once. Returns the summary (see the module docstring).

    ``count_input`` counts the input rows separately (``rows_in``, a check that no row was lost or
    duplicated; for Parquet/Delta/Iceberg without a filter this reads only metadata).
    """
    started = time.perf_counter()
    ensure_ray(ray_address)
    plan = plan_run(spec)
    summary = RunSummary.for_run(spec, plan, engine="ray")
    if plan.skipped:
        return summary.finish(started).to_dict()

    model_path = resolve_model_ref(spec.model.ref, spec.model.revision)
    logger.info("model %s resolved on the driver to %s", spec.model.ref, model_path)

    columns = input_columns(spec)
    raw = read_input(spec.input, since_version=plan.since_version, until_version=plan.input_version, columns=columns)
    in_schema = raw.schema(fetch_if_missing=True)
    in_schema = plain_schema(in_schema.base_schema if hasattr(in_schema, "base_schema") else in_schema)
    missing = [c for c in columns if in_schema.get_field_index(c) < 0]
    if missing:
        raise KeyError(f"input columns {missing} are not in the input (columns: {in_schema.names})")
    out_schema = output_schema(in_schema, spec.keep_columns)
    connectors.prepare(spec.sink, out_schema)  # a schema clash fails here, before any compute
    # Read blocks of at most READ_BLOCK_BYTES (the context is the dataset's own, shared by its later stages):
    # a worker's memory then follows this bound, not the input's size, and tokenization runs in parallel.
    raw.context.target_max_block_size = min(raw.context.target_max_block_size or READ_BLOCK_BYTES, READ_BLOCK_BYTES)
    ds = apply_filter(raw, spec.input, columns)

    rows_in = None
    if count_input:
        rows_in = ds.count()
        logger.info("input: %d rows", rows_in)
    sink = StagedCommitDatasink(
        spec.sink, out_schema, app_id=plan.job_key, version=plan.version,
        extra_metadata=plan.commit_metadata(summary.model, spec.name),
    )
    classify_started = time.perf_counter()
    classify_dataset(ds, spec, model_path=model_path, num_rows=rows_in).write_datasink(sink)
    seconds = time.perf_counter() - classify_started
    if sink.result is None:  # Ray returned without calling on_write_complete: nothing was committed
        raise RuntimeError(f"the write to {summary.sink!r} ended without a commit")
    summary.landed(
        sink.result, rows=sum(p.rows for p in sink.parts), status_counts=merge_counts(p.status_counts for p in sink.parts),
        classify_s=seconds, rows_in=rows_in,
    ).finish(started)
    logger.info("job %s done: %s", plan.job_key, summary)
    return summary.to_dict()


__all__ = ["READ_BLOCK_BYTES", "classify_dataset", "ensure_ray", "job_env", "run_job"]
