"""Stage-level resources for the inference stage: GPUs (or more cores) for the model, defaults elsewhere.

``inference_profile(spark, gpus_per_task=0.25)`` builds the ``ResourceProfile`` that ``classify_dataframe``
(``profile=``) attaches to its ``mapInArrow`` stage only, so reading, repartitioning and writing keep the
default profile and every CPU core. It returns ``None`` (and logs why) when the cluster manager cannot honour
it, and the job then runs the inference stage with the default profile.

What Spark supports (Spark >= 3.4 standalone, >= 3.5 YARN/Kubernetes):

- Dynamic allocation OFF (the usual GPU set-up): a *task* profile only. Every executor already has its GPUs
  (``spark.executor.resource.gpu.amount``), and the inference stage asks for ``gpus_per_task`` of one
  (``0.25`` = four model tasks share a GPU, each with its own model copy; ``1`` = one task per GPU).
  Other stages ask for no GPU, so all executor cores run them.
- Dynamic allocation ON: a full profile. Spark starts executors shaped for the inference stage
  (``executor_gpus``, ``executor_cores``, ``executor_memory``) next to the default ones.
- ``local[*]``: no stage-level scheduling at all; the profile is skipped with a log line.

Cluster settings, besides the profile (GPU discovery script: Spark ships
``examples/src/main/scripts/getGpusResources.sh``, which prints ``{"name":"gpu","addresses":["0",...]}``):

- Standalone: workers ``SPARK_WORKER_OPTS="-Dspark.worker.resource.gpu.amount=N
  -Dspark.worker.resource.gpu.discoveryScript=/opt/getGpusResources.sh"``; the application
  ``--conf spark.executor.resource.gpu.amount=1 --conf spark.executor.resource.gpu.discoveryScript=...``
  and ``spark.dynamicAllocation.enabled=false``.
- YARN (3.x with GPU scheduling on, ``yarn.io/gpu`` resource type): ``--conf spark.executor.resource.gpu.amount=1
  --conf spark.executor.resource.gpu.discoveryScript=...``; Spark maps ``gpu`` to ``yarn.io/gpu``. With
  dynamic allocation: ``spark.dynamicAllocation.enabled=true`` and ``spark.shuffle.service.enabled=true``.
- Kubernetes: ``--conf spark.executor.resource.gpu.amount=1 --conf spark.executor.resource.gpu.vendor=nvidia.com
  --conf spark.executor.resource.gpu.discoveryScript=...`` (the pod requests ``nvidia.com/gpu``); with dynamic
  allocation also ``spark.dynamicAllocation.shuffleTracking.enabled=true``.

Spark does not set ``CUDA_VISIBLE_DEVICES`` for a task: the UDF reads the task's GPU address from
``TaskContext.resources()`` and loads the model on ``cuda:<address>`` (``udf.resolve_device``).

In-process model or a node-local model server? With a task profile, each task that holds a GPU share runs
its own model copy, so a GPU is fed by ``1 / gpus_per_task`` Python workers that also tokenize.
Measured (``bench/spark_gpu_sharing.py``, H200, MiniLM-L6-shaped GLiClass in bf16, 5 labels, half short /
half 300-450-word texts, one CPU thread per worker; ``bench/results/spark_gpu_sharing.json``): 1 worker
797 rows/s at ~5 % GPU utilisation, 2 workers 1,122, 4 workers 2,092, 8 workers 2,585, 14 workers 4,218
rows/s at ~30 %; tokenizing and building inputs took 40-49 % of each worker's time. So for small encoders
one worker per GPU wastes the GPU: use small fractions (``gpus_per_task=0.0625`` = 16 tasks per GPU, as
many as the executor has cores to spare, GPU memory permitting one model copy each), and expect the GPU to
stay under-fed even then. That is the case for a node-local pool: one model server process per GPU that
all of the executor's Python workers send token ids to (the per-executor server pattern of NVIDIA's Spark
inference examples), so every core tokenizes and one model copy batches across tasks. It is not
implemented here; pick it over in-process models when the measured GPU utilisation stays low with every
core busy (small models, fast GPUs). Larger encoders spend more of each row on the GPU, so fewer tasks per
GPU should do (not measured here). The Ray front end (actor pools behind a separate tokenize
stage) already has the pool shape.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.resource import ResourceProfile
    from pyspark.sql import SparkSession

    from gliclass_dist.spec import ResourceSpec

logger = logging.getLogger(__name__)


def _conf(spark: SparkSession, key: str, default: str | None = None) -> str | None:
    return spark.sparkContext.getConf().get(key, default)


def stage_level_support(spark: SparkSession) -> tuple[bool, bool, str]:
    """``(supported, dynamic_allocation, reason)`` for stage-level profiles on this session's cluster manager."""
    master = spark.sparkContext.master or ""
    if master.startswith("local"):
        return False, False, f"master {master!r} is local mode, which has no stage-level scheduling"
    if not (master.startswith(("spark://", "yarn", "k8s://"))):
        return False, False, f"master {master!r} is not standalone, YARN or Kubernetes"
    dynamic = (_conf(spark, "spark.dynamicAllocation.enabled", "false") or "false").lower() == "true"
    return True, dynamic, "ok"


def inference_profile(
    spark: SparkSession,
    *,
    gpus_per_task: float = 0.0,
    cpus_per_task: int = 1,
    executor_gpus: int | None = None,
    executor_cores: int | None = None,
    executor_memory: str | None = None,
    discovery_script: str | None = None,
) -> ResourceProfile | None:
    """The ``ResourceProfile`` of the inference stage, or ``None`` when it cannot or need not be applied.

    ``gpus_per_task``: GPUs (or a fraction of one) per model task; ``cpus_per_task``: cores per model task
    (also the torch threads each model uses on CPU). ``executor_*`` only matter with dynamic allocation.
    """
    from pyspark.resource import ExecutorResourceRequests, ResourceProfileBuilder, TaskResourceRequests

    if gpus_per_task < 0 or cpus_per_task < 1:
        raise ValueError(f"gpus_per_task must be >= 0 and cpus_per_task >= 1 (got {gpus_per_task}, {cpus_per_task})")
    default_cpus = int(_conf(spark, "spark.task.cpus", "1") or 1)
    if gpus_per_task == 0 and cpus_per_task == default_cpus:
        return None  # nothing differs from the default profile
    supported, dynamic, reason = stage_level_support(spark)
    if not supported:
        logger.warning(
            "inference stage resource profile skipped (gpus_per_task=%s, cpus_per_task=%s): %s; "
            "the model stage runs with the default profile", gpus_per_task, cpus_per_task, reason,
        )
        return None
    tasks = TaskResourceRequests().cpus(cpus_per_task)
    if gpus_per_task > 0:
        tasks = tasks.resource("gpu", float(gpus_per_task))
    builder = ResourceProfileBuilder().require(tasks)
    if dynamic:
        executor = ExecutorResourceRequests().cores(executor_cores or max(cpus_per_task, 1))
        if executor_memory:
            executor = executor.memory(executor_memory)
        if gpus_per_task > 0:
            executor = executor.resource("gpu", executor_gpus or 1, discovery_script or "")
        builder = builder.require(executor)
    elif gpus_per_task > 0:
        have = float(_conf(spark, "spark.executor.resource.gpu.amount", "0") or 0)
        if have <= 0:
            logger.warning(
                "inference stage resource profile skipped: it asks for %s GPU per task, but dynamic allocation is "
                "off and the executors declare no GPUs (set spark.executor.resource.gpu.amount and "
                "spark.executor.resource.gpu.discoveryScript)", gpus_per_task,
            )
            return None
    profile = builder.build
    logger.info(
        "inference stage profile %s: %s GPU and %d CPU per task (%s)", profile.id, gpus_per_task, cpus_per_task,
        "executor profile, dynamic allocation" if dynamic else "task profile on the existing executors",
    )
    return profile


def profile_for_resources(spark: SparkSession, resources: ResourceSpec) -> ResourceProfile | None:
    """The inference profile for a job spec's ``resources``: ``gpus_per_actor`` GPUs and ``cpus_per_actor``
    cores per model task."""
    return inference_profile(
        spark,
        gpus_per_task=resources.gpus_per_actor,
        cpus_per_task=max(1, int(round(resources.cpus_per_actor))),
    )


__all__ = ["inference_profile", "profile_for_resources", "stage_level_support"]
