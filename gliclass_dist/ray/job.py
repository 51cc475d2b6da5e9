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

import logging
import os
import time
from pathlib import Path
from typing import Any

import ray
import ray.data

from gliclass_dist import connectors
from gliclass_dist.connectors.base import plain_schema
from gliclass_dist.model.loading import resolve_model_ref
from gliclass_dist.ray.io import StagedCommitDatasink, apply_filter, read_input
from gliclass_dist.ray.predictor import FAULT_AFTER_ENV, FAULT_MARKER_ENV, GLiClassPredictor, tokenize_batch
from gliclass_dist.run import RunSummary, input_columns, merge_counts, model_display_name, plan_run
from gliclass_dist.schema import output_schema
from gliclass_dist.spec import JobSpec
from gliclass_dist.worker import OMP_WAIT_POLICY

logger = logging.getLogger(__name__)

FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE", FAULT_AFTER_ENV, FAULT_MARKER_ENV)


def worker_env(threads: float) -> dict[str, str]:
    """Environment of the stage workers.

    ``TOKENIZERS_PARALLELISM``: the Rust tokenizer's own thread pool only where a worker owns several CPUs;
    with one CPU per worker, Ray already runs one worker per core and extra threads would oversubscribe.
    ``OMP_WAIT_POLICY``: passive unless the driver sets one (``gliclass_dist.worker``). Hub settings and the
    fault hook (tests) are forwarded from the driver.
    """
    env = {
        "TOKENIZERS_PARALLELISM": "true" if threads >= 2 else "false",
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", OMP_WAIT_POLICY),  # before the worker loads torch
    }
    for name in FORWARDED_ENV:
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


def classify_dataset(ds: Any, spec: JobSpec, *, model_path: str | os.PathLike[str] | None = None) -> Any:
    """``ds`` (rows with the spec's id/text/passthrough/label columns) -> rows in the output schema.

    Adds the tokenize stage (CPU tasks, when ``resources.tokenize_stage``) and the model stage (an actor
    pool of ``min_actors..max_actors`` actors with ``gpus_per_actor`` GPUs and ``cpus_per_actor`` CPUs).
    ``model_path`` is the checkpoint folder resolved on the driver (resolved here when not given).
    """
    res = spec.resources
    check_fits_cluster(spec)
    resolved = Path(model_path) if model_path is not None else resolve_model_ref(spec.model.ref, spec.model.revision)
    path = str(resolved.resolve())  # absolute: workers need not share the driver's working directory
    keep = list(spec.keep_columns)
    device = spec.model.device
    if res.gpus_per_actor == 0 and device == "auto":
        device = "cpu"  # no GPU was reserved for the actor: never use one Ray did not hand out
    # Blocks of one batch each: a large input block would otherwise go to a single actor whole, leaving the
    # rest of the pool idle (Ray Data hands out blocks, not batches). Streaming: no shuffle, no barrier.
    ds = ds.repartition(target_num_rows_per_block=res.batch_rows)
    if res.tokenize_stage:
        ds = ds.map_batches(
            tokenize_batch,
            batch_format="pyarrow",
            batch_size=res.batch_rows,
            num_cpus=1,
            fn_kwargs={
                "model_path": path,
                "max_length": spec.model.max_length,
                "label_spec": spec.labels,
                "text_column": spec.input.text_column,
                "keep": keep,
                "model_ref": spec.model.ref,
                "revision": spec.model.revision,
            },
            runtime_env={"env_vars": worker_env(1)},
            udf_modifying_row_count=False,
        )
    return ds.map_batches(
        GLiClassPredictor,
        batch_format="pyarrow",
        batch_size=res.batch_rows,
        compute=ray.data.ActorPoolStrategy(min_size=res.min_actors, max_size=res.max_actors),
        num_cpus=res.cpus_per_actor,
        num_gpus=res.gpus_per_actor or None,
        fn_constructor_kwargs={
            "model_path": path,
            "label_spec": spec.labels,
            "text_column": spec.input.text_column,
            "keep": keep,
            "model_ref": spec.model.ref,
            "revision": spec.model.revision,
            "model_name": model_display_name(spec.model.ref),
            "device": device,
            "dtype": spec.model.dtype,
            "max_length": spec.model.max_length,
            "token_budget": res.token_budget,
            "allow_pickle": spec.model.allow_pickle,
        },
        runtime_env={"env_vars": worker_env(res.cpus_per_actor)},
        udf_modifying_row_count=False,
    )


def check_fits_cluster(spec: JobSpec) -> None:
    """Fail fast when the model actors would hold every CPU (or need more GPUs than exist) of the cluster.

    Read, tokenize and write tasks need CPUs too: actors holding all of them would wait forever.
    """
    if not ray.is_initialized():
        return
    res = spec.resources
    total = ray.cluster_resources()
    cpus, gpus = float(total.get("CPU", 0)), float(total.get("GPU", 0))
    need_cpus = res.min_actors * res.cpus_per_actor
    if need_cpus > cpus - 1:
        raise ValueError(
            f"resources: min_actors={res.min_actors} x cpus_per_actor={res.cpus_per_actor} = {need_cpus:g} CPUs, "
            f"but the cluster has {cpus:g} and the read/tokenize/write tasks need at least one: lower "
            "resources.min_actors or resources.cpus_per_actor (max_actors may stay higher; the pool grows as "
            "resources appear)"
        )
    if res.gpus_per_actor and res.min_actors * res.gpus_per_actor > gpus:
        raise ValueError(
            f"resources: min_actors={res.min_actors} x gpus_per_actor={res.gpus_per_actor} GPUs, but the "
            f"cluster has {gpus:g} GPUs"
        )


def ensure_ray(address: str | None = None) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``, e.g. under ``ray job submit``), else start local Ray."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    logger.info("connecting to Ray at %s", address)
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)


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
    classify_dataset(ds, spec, model_path=model_path).write_datasink(sink)
    seconds = time.perf_counter() - classify_started
    if sink.result is None:  # Ray returned without calling on_write_complete: nothing was committed
        raise RuntimeError(f"the write to {summary.sink!r} ended without a commit")
    summary.landed(
        sink.result, rows=sum(p.rows for p in sink.parts), status_counts=merge_counts(p.status_counts for p in sink.parts),
        classify_s=seconds, rows_in=rows_in,
    ).finish(started)
    logger.info("job %s done: %s", plan.job_key, summary)
    return summary.to_dict()


__all__ = ["classify_dataset", "ensure_ray", "run_job"]
