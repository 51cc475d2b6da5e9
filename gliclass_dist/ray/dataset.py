"""``classify_dataset``: GLiClass as Ray Data stages over any ``Dataset``, with no sink (the job adds one).

::

    import ray
    from gliclass_dist.ray import classify_dataset

    ds = ray.data.read_parquet("reviews/")
    out = classify_dataset(ds, model="models/gliclass-minilm-bbc", labels=["business", "sport", "tech"],
                           keep=["id"], device="cpu")
    out.write_parquet("topics/")      # or .take(), .to_pandas(), any other Ray Data sink

The stages are the job's (``gliclass_dist.ray.predictor``): a CPU tokenize stage (Ray tasks, the engine's
encoding step) and the model stage (an actor pool of ``GLiClassPredictor``, the scoring step), so results are
exactly ``Classifier.classify_arrow``'s: the ``keep`` columns, then the result columns, one row per input row.
The checkpoint is resolved once here, on the driver (a hub id is downloaded into the driver's hub cache); an
actor on a node that cannot see the folder resolves the hub id itself.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gliclass_dist.labels import LabelSpec
from gliclass_dist.ray.io import model_blocks
from gliclass_dist.ray.predictor import (
    FAULT_AFTER_ENV,
    FAULT_MARKER_ENV,
    GLiClassPredictor,
    as_label_spec,
    check_columns_arg,
    engine_settings,
    tokenize_batch,
)
from gliclass_dist.settings import EngineSettings
from gliclass_dist.spec import ResourceSpec
from gliclass_dist.worker import OMP_WAIT_POLICY

if TYPE_CHECKING:
    import ray.data

FORWARDED_ENV = ("HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE", FAULT_AFTER_ENV, FAULT_MARKER_ENV)
# Default block size, in batches. Ray Data hands an actor whole blocks: one block per batch would balance a
# small job best, but every block costs the driver bookkeeping and a scheduling round trip (at 1,024-row blocks
# the driver grew +124 MB from 100k to 1M rows, bench/README.md "Scale"); 8 batches keep 2 actors busy from
# 16 batches of input on, and a larger input gives every actor many blocks.
BLOCK_BATCHES = 8

# glibc's allocator, per kind of worker, through the environment glibc reads at process start. By default glibc
# raises its mmap threshold (up to 32 MiB) after the first large free, so later multi-MB Arrow buffers come from
# the heap and stay with the process when freed: the Ray job's tokenize worker levelled 1.3x higher at 5M rows
# than at 1M, 1.08x with the threshold fixed at 1 MiB (bench/README.md, Scale). The job asks for that in the I/O
# tasks (``gliclass_dist.ray.job.job_env``); the model actors, where it cost a real model ~10% of its rows/s, get
# glibc's own ceiling instead (fixed 32 MiB, trimming at 64 MiB: as fast as the default, bench/NOTES.md 12).
MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"
IO_ALLOCATOR_ENV = {MMAP_THRESHOLD_ENV: str(1 << 20)}
ENGINE_ALLOCATOR_ENV = {MMAP_THRESHOLD_ENV: str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20)}


def stage_env(threads: float) -> dict[str, str]:
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
    env.update({name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)})
    return env


def actor_env(threads: float) -> dict[str, str]:
    """Environment of the model actors: ``stage_env(threads)``, plus ``ENGINE_ALLOCATOR_ENV`` where the job's
    environment gives the I/O tasks ``IO_ALLOCATOR_ENV`` (a threshold of the user's own is left alone)."""
    import ray

    env = stage_env(threads)
    if ray.is_initialized():
        job_vars = (ray.get_runtime_context().runtime_env or {}).get("env_vars") or {}
        if job_vars.get(MMAP_THRESHOLD_ENV) == IO_ALLOCATOR_ENV[MMAP_THRESHOLD_ENV]:
            env.update(ENGINE_ALLOCATOR_ENV)
    return env


def block_rows(resources: ResourceSpec, num_rows: int | None = None) -> int:
    """Rows per Ray Data block reaching the model stage: ``resources.block_rows``, else ``BLOCK_BATCHES`` batches,
    fewer when ``num_rows`` (the input's rows, when known) would leave an actor of the pool without two blocks:
    actors receive whole blocks, so a 3,000-row input in 2,048-row blocks kept one of two actors busy alone."""
    if resources.block_rows:
        return resources.block_rows
    batch = resources.batch_rows
    rows = BLOCK_BATCHES * batch
    if num_rows:
        per_block = -(-num_rows // (2 * resources.max_actors))  # two blocks per actor, rounded up
        rows = min(rows, max(batch, -(-per_block // batch) * batch))
    return rows


def check_fits_cluster(resources: ResourceSpec) -> None:
    """Fail fast when the model actors would hold every CPU (or need more GPUs than exist) of the cluster.

    Read, tokenize and write tasks need CPUs too: actors holding all of them would wait forever.
    """
    import ray

    if not ray.is_initialized():
        return
    res = resources
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


def classify_dataset(
    ds: ray.data.Dataset,
    *,
    model: str | os.PathLike[str] | EngineSettings,
    labels: LabelSpec | Sequence[str],
    text_column: str = "text",
    keep: Sequence[str] = (),
    resources: ResourceSpec | dict[str, Any] | None = None,
    model_path: str | os.PathLike[str] | None = None,
    num_rows: int | None = None,
    **engine: Any,
) -> ray.data.Dataset:
    """``ds`` classified: the ``keep`` columns, then the result columns (``gliclass_dist.schema``), lazily.

    ``model``: a checkpoint folder, a hub id or ``EngineSettings``; ``engine`` keywords are ``EngineSettings``
    fields (``device``, ``dtype``, ``backend``, ``token_budget``, ...). ``labels``: a list of label names or a
    ``LabelSpec`` (``LabelSpec(column=...)`` reads each row's labels from that column). ``resources``: the
    job spec's ``resources`` section (``batch_rows``, ``min_actors``/``max_actors``, ``cpus_per_actor``,
    ``gpus_per_actor``, ``tokenize_stage``, ``block_rows``); its ``token_budget``/``result_cache_rows`` are
    ignored here (they are engine settings). ``model_path``: the checkpoint folder already resolved on the
    driver. ``num_rows``: the rows of ``ds`` when known (sizes the blocks so that every actor gets work; see
    ``block_rows``). Bad arguments raise ``ValueError`` (``KeyError`` for a missing column) before anything runs.

    The model actors get ``actor_env`` as their runtime env; the tokenize tasks get none (one would keep Ray
    Data from fusing the block cut into them), so they run in the environment ``ray.init`` gave the job
    (``gliclass_dist.ray.job.ensure_ray`` sets ``stage_env(1)`` there).
    """
    import ray.data

    settings = engine_settings(model, **engine)
    label_spec = as_label_spec(labels)
    keep = check_columns_arg(text_column, keep)
    res = resources if isinstance(resources, ResourceSpec) else ResourceSpec.model_validate(resources or {})
    schema = ds.schema(fetch_if_missing=False)
    if schema is not None:
        needed = [text_column, *keep, *label_spec.columns]
        missing = [c for c in needed if c not in schema.names]
        if missing:
            raise KeyError(f"columns {missing} are not in the dataset (columns: {schema.names})")
    check_fits_cluster(res)

    if model_path is None:
        from gliclass_dist.model.loading import resolve_model_ref

        model_path = resolve_model_ref(settings.ref, settings.revision)
    path = str(Path(model_path).resolve())  # absolute: workers need not share the driver's working directory
    device = settings.device
    if res.gpus_per_actor == 0 and device == "auto":
        device = "cpu"  # no GPU was reserved for the actor: never use one Ray did not hand out
    # The display name comes from the reference the user gave (a hub id, not its snapshot folder).
    actor_settings = settings.replace(ref=path, device=device, model_name=settings.display_name)

    if res.tokenize_stage:
        ds = ds.map_batches(
            tokenize_batch,
            batch_format="pyarrow",
            batch_size=res.batch_rows,
            num_cpus=1,
            fn_kwargs={
                "model_path": path,
                "max_length": settings.max_length,
                "label_spec": label_spec,
                "text_column": text_column,
                "keep": keep,
                "model_ref": settings.ref,
                "revision": settings.revision,
            },
            udf_modifying_row_count=False,
        )
    # Blocks of block_rows rows (cut inside the tokenize tasks, no stage of its own): a large input block
    # would otherwise go to a single actor whole, leaving the rest of the pool idle.
    ds = model_blocks(ds, block_rows(res, num_rows))
    return ds.map_batches(
        GLiClassPredictor,
        batch_format="pyarrow",
        batch_size=res.batch_rows,
        compute=ray.data.ActorPoolStrategy(min_size=res.min_actors, max_size=res.max_actors),
        num_cpus=res.cpus_per_actor,
        num_gpus=res.gpus_per_actor or None,
        fn_constructor_args=(actor_settings, label_spec),
        fn_constructor_kwargs={"text_column": text_column, "keep": keep, "model_ref": settings.ref},
        runtime_env={"env_vars": actor_env(res.cpus_per_actor)},
        udf_modifying_row_count=False,
    )


__all__ = [
    "BLOCK_BATCHES",
    "ENGINE_ALLOCATOR_ENV",
    "IO_ALLOCATOR_ENV",
    "MMAP_THRESHOLD_ENV",
    "actor_env",
    "block_rows",
    "check_fits_cluster",
    "classify_dataset",
    "stage_env",
]
