"""Ray jobs on real clusters started by the tests: a two-node ``cluster_utils.Cluster`` (one node declares a GPU)
and a ``ray start --head`` cluster that runs ``jobs/ray_classify.py`` through ``ray job submit``.

Each test owns its Ray (no module-wide Ray here) and tears it down by handle / PID; never ``ray stop``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cluster_helpers import RayHead, submit_job

from gliclass_dist.spec import JobSpec

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def short_tmp(prefix: str) -> Iterator[Path]:
    """A short temp dir under /tmp (Ray's socket paths must stay under the AF_UNIX length limit)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    yield from short_tmp("rayc-")


def input_rows(n: int) -> pa.Table:
    texts = ["shares fell after the earnings call", "the match ended with a late goal", "a new phone was released"]
    return pa.table({"id": pa.array(range(n), pa.int64()), "text": [f"{texts[i % 3]} ({i})" for i in range(n)]})


def test_model_actors_run_on_the_gpu_node_and_fall_back_to_cpu(
    tiny_model: Path, tmp_path: Path, ray_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray
    from deltalake import DeltaTable
    from ray.cluster_utils import Cluster

    from gliclass_dist.ray.job import run_job

    assert not ray.is_initialized(), "another test left Ray running in this process"
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "num_gpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False},
    )
    try:
        gpu_node = cluster.add_node(num_cpus=1, num_gpus=1, node_ip_address="127.0.0.1", include_dashboard=False)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING")
        pq.write_table(input_rows(60), tmp_path / "in.parquet")
        spec = JobSpec.from_dict({
            "input": {"format": "parquet", "path": str(tmp_path / "in.parquet")},
            "labels": {"labels": ["business", "sports", "tech"]},
            "model": {"ref": str(tiny_model)},
            "sink": {"format": "delta", "path": str(tmp_path / "out")},
            "resources": {"gpus_per_actor": 1, "cpus_per_actor": 1, "batch_rows": 20},
        })
        summary = run_job(spec)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert summary["rows_in"] == summary["rows_out"] == 60 and summary["status_counts"] == {"ok": 60}
    ids = DeltaTable(str(tmp_path / "out")).to_pyarrow_table(columns=["id"])["id"].to_pylist()
    assert sorted(ids) == list(range(60))
    worker_logs = "".join(p.read_text(errors="replace") for p in ray_tmp.glob("**/session_*/logs/worker-*.err"))
    ready = [line for line in worker_logs.splitlines() if "GLiClassPredictor ready on node" in line]
    assert ready, "no model actor reported where it runs"
    import torch

    if torch.cuda.is_available():  # the node's GPU is real: the actors use it
        assert all(gpu_node.node_id in line and "device=cuda" in line for line in ready), ready
    else:  # the node's GPU is a placeholder: the engine falls back to CPU and says why
        assert all(gpu_node.node_id in line and "device=cpu" in line for line in ready), ready
        assert "falling back to CPU" in worker_logs
        assert "CUDA_VISIBLE_DEVICES='0'" in worker_logs


@pytest.fixture
def ray_head(ray_tmp: Path) -> Iterator[str]:
    """``ray start --head --block`` (one node, dashboard on 127.0.0.1); stopped through its process group."""
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the job's `python` is this venv's
        "RAY_AUTH_MODE": "disabled",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "HF_HUB_OFFLINE": "1",
    }
    head = RayHead.start(VENV_BIN / "ray", ray_tmp, env)
    try:
        head.wait_ready()
        yield head.address
    finally:
        head.stop()


def test_ray_job_submit_runs_the_entrypoint(ray_head: str, tiny_model: Path, tmp_path: Path) -> None:
    from deltalake import DeltaTable

    pq.write_table(input_rows(45), tmp_path / "in.parquet")
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(
        f"name: submitted\n"
        f"input: {{format: parquet, path: {tmp_path / 'in.parquet'}}}\n"
        f"labels: {{labels: [business, sports, tech], mode: single-label}}\n"
        f"model: {{ref: {tiny_model}}}\n"
        f"sink: {{format: delta, path: {tmp_path / 'out'}}}\n"
        f"resources: {{batch_rows: 16}}\n"
    )
    summary_file = tmp_path / "summary.json"
    cmd = [
        str(VENV_BIN / "ray"), "job", "submit", "--address", ray_head, "--working-dir", ".",
        "--", "python", "jobs/ray_classify.py", "--spec", str(spec_file), "--summary-json", str(summary_file),
    ]  # fmt: skip
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    done = submit_job(cmd, cwd=ROOT, env=env)
    logs = done.stdout + done.stderr
    assert done.returncode == 0, logs[-4000:]
    assert "succeeded" in logs.lower(), logs[-4000:]
    summary = json.loads(summary_file.read_text())
    assert summary["committed"] is True and summary["rows_in"] == summary["rows_out"] == 45
    assert "rows in: 45" in logs  # the entrypoint's printed summary reached the job logs
    table = DeltaTable(str(tmp_path / "out"))
    assert sorted(table.to_pyarrow_table(columns=["id"])["id"].to_pylist()) == list(range(45))
    assert table.transaction_version(summary["job_key"]) == 0
