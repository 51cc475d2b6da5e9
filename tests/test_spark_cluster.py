"""The inference stage's resource profile on a real Spark standalone cluster on 127.0.0.1.

A master and two workers (one core, one placeholder GPU each, from a discovery script) are started with
pyspark's own ``spark-class``; one cluster for the module (~70 s, mostly JVM start-up), stopped by PID.
The job reads on the default profile, then classifies in a stage with a GPU task profile: the inference
tasks must see GPU address "0" and the earlier stage none. The model folder travels as an archive (``addArchive``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from spark_helpers import spark_session

os.environ["PYSPARK_PYTHON"] = sys.executable
os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

pyspark = pytest.importorskip("pyspark")

from deltalake import DeltaTable  # noqa: E402

from gliclass_dist.spec import JobSpec  # noqa: E402

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]
SPARK_HOME = Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive_workers(ui_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=5) as resp:
            return int(json.loads(resp.read()).get("aliveworkers", 0))
    except OSError:
        return 0


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("spark-cluster")
    gpu_script = root / "gpus.sh"
    gpu_script.write_text('#!/bin/sh\necho \'{"name": "gpu", "addresses": ["0"]}\'\n')
    gpu_script.chmod(0o755)
    (root / "conf").mkdir()
    work = root / "work"
    env = {
        **os.environ,
        "SPARK_HOME": str(SPARK_HOME),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_CONF_DIR": str(root / "conf"),
        "SPARK_WORKER_DIR": str(work),
        "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
        "SPARK_WORKER_OPTS": (
            "-Dspark.worker.resource.gpu.amount=1 "
            f"-Dspark.worker.resource.gpu.discoveryScript={gpu_script}"
        ),
    }
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    port, ui_port = free_port(), free_port()
    procs: list[subprocess.Popen] = []
    logs = []

    def launch(name: str, args: list[str]) -> None:
        log = open(root / f"{name}.log", "w")  # noqa: SIM115 - closed at teardown
        logs.append(log)
        procs.append(subprocess.Popen([spark_class, *args], env=env, stdout=log, stderr=subprocess.STDOUT))

    master = f"spark://127.0.0.1:{port}"
    try:
        launch("master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                          "--webui-port", str(ui_port)])
        for k in range(2):
            launch(f"worker{k}", ["org.apache.spark.deploy.worker.Worker", master, "--host", "127.0.0.1",
                                  "--cores", "1", "--memory", "2g", "--webui-port", str(free_port())])
        deadline = time.monotonic() + 180
        while alive_workers(ui_port) < 2:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("the standalone cluster did not come up: " +
                                   (root / "master.log").read_text()[-2000:])
            time.sleep(2)
        yield {"master": master, "gpu_script": str(gpu_script), "root": root}
    finally:
        for proc in reversed(procs):  # workers first, then the master
            stop(proc)
        for log in logs:
            log.close()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster_spark(standalone_cluster: dict):
    load_log = standalone_cluster["root"] / "loads"
    conf = {
        "spark.dynamicAllocation.enabled": "false",
        "spark.executor.cores": "1",
        "spark.executor.memory": "1g",
        "spark.cores.max": "2",
        "spark.executor.resource.gpu.amount": "1",
        "spark.executor.resource.gpu.discoveryScript": standalone_cluster["gpu_script"],
        "spark.sql.shuffle.partitions": "2",
        "spark.executorEnv.GLICLASS_MODEL_LOAD_LOG": str(load_log),
    }
    with spark_session(standalone_cluster["master"], "gliclass-cluster-test", conf) as session:
        yield session, load_log


def test_gpu_profile_reaches_only_the_inference_stage(cluster_spark, tiny_model: Path, tmp_path: Path):
    from pyspark import TaskContext

    from gliclass_dist.spark.job import write_classified
    from gliclass_dist.spark.resources import profile_for_resources, stage_level_support
    from gliclass_dist.spark.udf import ClassifyConfig, ModelOptions, read_load_log, ship_model

    spark, load_log = cluster_spark
    supported, dynamic, _ = stage_level_support(spark)
    assert supported and not dynamic

    rows = [{"id": i, "text": f"The football club won match number {i}."} for i in range(40)]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:20]), tmp_path / "in" / "a.parquet")
    pq.write_table(pa.Table.from_pylist(rows[20:]), tmp_path / "in" / "b.parquet")
    spec = JobSpec.from_dict({
        "name": "cluster-gpu",
        "input": {"format": "parquet", "path": str(tmp_path / "in"), "passthrough": ["read_stage_gpus"]},
        "labels": {"labels": ["sport", "business"]},
        "model": {"ref": str(tiny_model)},
        "sink": {"format": "delta", "path": str(tmp_path / "out")},
        "resources": {"gpus_per_actor": 1},
    })

    def tag_read_stage(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        gpu = TaskContext.get().resources().get("gpu")
        seen = ",".join(gpu.addresses) if gpu is not None else ""
        for batch in batches:
            yield batch.append_column("read_stage_gpus", pa.array([seen] * batch.num_rows, pa.string()))

    df = spark.read.parquet(str(tmp_path / "in"))
    tagged = df.mapInArrow(tag_read_stage, "id long, text string, read_stage_gpus string").repartition(2)
    profile = profile_for_resources(spark, spec.resources)
    assert profile is not None
    options = ship_model(spark, ModelOptions.from_job(spec))
    assert options.ref.startswith("sparkfiles://") and options.model_name == tiny_model.name
    config = ClassifyConfig(options, spec.labels, keep=("id", "read_stage_gpus"))

    result, parts = write_classified(tagged, config, spec, version=0, profile=profile)

    assert result.committed and parts.rows == 40
    assert parts.tasks and all(task["gpus"] == ["0"] for task in parts.tasks), parts.tasks
    out = DeltaTable(str(tmp_path / "out")).to_pyarrow_table().sort_by("id")
    assert out.column("id").to_pylist() == list(range(40))
    assert set(out.column("read_stage_gpus").to_pylist()) == {""}  # the read stage had no GPU
    assert set(out.column("status").to_pylist()) == {"ok"}
    assert set(out.column("model").to_pylist()) == {tiny_model.name}
    loads = read_load_log(load_log)
    assert loads and all(e["task_gpus"] == ["0"] and e["device_requested"] == "cuda:0" for e in loads)
    import torch

    # with CUDA the task's GPU is used; without it (a placeholder GPU) the engine falls back to CPU
    expected_device = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert all(e["device"] == expected_device for e in loads), loads
