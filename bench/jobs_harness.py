"""Running the Ray job, the Spark job and the engine alone as subprocesses, with memory sampling.

Shared by ``distributed.py`` (overhead against the engine alone) and ``scale.py`` (100k / 1M rows).
Every run is its own process tree, started and torn down here (Ray by its own driver process exiting,
never ``ray stop``); a sampler thread reads the RSS of every process in the tree twice a second and
keeps the peak of the driver and of the largest single worker.
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
logger = logging.getLogger("bench.jobs")

WORDS = (
    "order refund delivery late parcel billing invoice account login password app crash screen battery "
    "price discount shop store manager staff friendly rude slow fast quality broken great terrible good "
    "football match team goal election vote minister bank rates market shares film music album concert"
).split()


def write_synthetic_parquet(folder: Path, rows: int, rows_per_file: int = 100_000, seed: int = 0) -> Path:
    """``rows`` short synthetic rows (``id``, ``text`` of 6-14 words) as parquet files of ``rows_per_file``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    done = 0
    part = 0
    while done < rows:
        n = min(rows_per_file, rows - done)
        texts = [" ".join(rng.choices(WORDS, k=rng.randint(6, 14))) for _ in range(n)]
        ids = [f"r{done + i:08d}" for i in range(n)]
        pq.write_table(pa.table({"id": ids, "text": texts}), folder / f"part-{part:05d}.parquet", row_group_size=20_000)
        done += n
        part += 1
    return folder


def write_bbc_parquet(folder: Path, rows: int, chars: int = 300) -> Path:
    """``rows`` BBC rows (title + the start of the article, ``chars`` characters), repeating the corpus as needed."""
    from gliclass_dist.demo_data import load_bbc

    folder.mkdir(parents=True, exist_ok=True)
    texts = load_bbc().column("text").to_pylist()
    snippets = [" ".join(t.split())[:chars] for t in texts]
    out = [snippets[i % len(snippets)] for i in range(rows)]
    pq.write_table(pa.table({"id": [f"b{i:08d}" for i in range(rows)], "text": out}), folder / "part-00000.parquet")
    return folder


def job_spec(
    name: str, input_path: Path, sink_path: Path, model: Path, labels: list[str], resources: dict[str, Any]
) -> dict[str, Any]:
    return {
        "name": name,
        "input": {"format": "parquet", "path": str(input_path), "id_column": "id", "text_column": "text"},
        "labels": {"labels": labels, "mode": "multi-label"},
        "model": {"ref": str(model), "device": "cpu", "dtype": "float32"},
        "sink": {"format": "parquet", "path": str(sink_path)},
        "resources": resources,
    }


class TreeSampler:
    """Peak RSS of a process tree: the root (driver), the JVM (Spark), the largest single worker, the rest.

    Also the peak *private* memory (RSS minus shared pages) of the driver and of the largest worker:
    Ray workers map the shared-memory object store, whose pages count in their RSS as they read
    blocks from it, so RSS alone grows with the data a worker has touched, not with what it holds.
    ``samples`` keeps each sample's private MB (driver, JVM, largest worker, largest other process) and the
    largest worker's process title (``worker_name``: which Ray stage or Spark worker it is at that moment).
    """

    def __init__(self, pid: int, worker_markers: tuple[str, ...]) -> None:
        self.pid = pid
        self.markers = worker_markers
        self.peak = {"driver_rss_mb": 0.0, "jvm_rss_mb": 0.0, "worker_rss_mb": 0.0, "tree_rss_mb": 0.0,
                     "driver_private_mb": 0.0, "worker_private_mb": 0.0, "jvm_private_mb": 0.0,
                     "other_private_mb": 0.0, "tree_private_mb": 0.0}
        self.largest_other = ""
        self.largest_worker = ""
        self.worker_peak_at_s = 0.0  # when the largest worker reached its peak (a start-up burst or a creep)
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        import psutil

        start = time.perf_counter()
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root] + root.children(recursive=True)
            except psutil.Error:
                break
            now = round(time.perf_counter() - start, 1)
            driver = jvm = worker = total = driver_private = worker_private = jvm_private = 0.0
            other_private = total_private = 0.0
            worker_name = ""
            for proc in procs:
                try:
                    info = proc.memory_info()
                    rss = info.rss / 2**20
                    private = (info.rss - getattr(info, "shared", 0)) / 2**20
                    cmd = " ".join(proc.cmdline())
                except psutil.Error:
                    continue
                total += rss
                total_private += private
                if proc.pid == self.pid:
                    driver, driver_private = rss, private
                elif "java" in proc.name():
                    jvm, jvm_private = max(jvm, rss), max(jvm_private, private)
                elif any(m in cmd for m in self.markers):
                    worker = max(worker, rss)
                    if private > worker_private:
                        worker_private, worker_name = private, " ".join(cmd.split())[:60]
                        if private > self.peak["worker_private_mb"]:
                            self.largest_worker, self.worker_peak_at_s = cmd[:80], now
                elif private > other_private:  # raylet, GCS, dashboard: the rest of the tree
                    other_private = private
                    if private > self.peak["other_private_mb"]:
                        self.largest_other = cmd[:80]
            sample = {"t": now, "driver": round(driver_private, 1),
                      "jvm": round(jvm_private, 1), "worker": round(worker_private, 1), "other": round(other_private, 1),
                      "worker_name": worker_name}
            self.samples.append(sample)
            for key, value in (("driver_rss_mb", driver), ("jvm_rss_mb", jvm), ("worker_rss_mb", worker),
                               ("tree_rss_mb", total), ("driver_private_mb", driver_private),
                               ("worker_private_mb", worker_private), ("jvm_private_mb", jvm_private),
                               ("other_private_mb", other_private), ("tree_private_mb", total_private)):
                self.peak[key] = max(self.peak[key], round(value, 1))
            self._stop.wait(0.5)


def run_process(cmd: list[str], env: dict[str, str], markers: tuple[str, ...], timeout: float, log: Path) -> dict[str, Any]:
    """Run ``cmd``; return wall seconds, exit code and peak memory. Output goes to ``log``."""
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        with TreeSampler(proc.pid, markers) as sampler:
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.error("%s timed out after %.0fs; terminating it", cmd[1], timeout)
                os.killpg(proc.pid, 15)
                try:
                    code = proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
                    code = proc.wait()
    return {"wall_s": round(time.perf_counter() - started, 2), "exit_code": code, **sampler.peak,
            "largest_worker": sampler.largest_worker, "worker_peak_at_s": sampler.worker_peak_at_s,
            "largest_other": sampler.largest_other,
            "samples": sampler.samples, "log": str(log)}


def base_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": str(threads),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


def run_engine_alone(input_path: Path, out_path: Path, model: Path, labels, batch_rows: int, token_budget: int,
                     threads: int, workdir: Path, timeout: float) -> dict[str, Any]:
    summary = workdir / "engine_summary.json"
    cmd = [
        PYTHON, str(ROOT / "bench" / "engine_alone.py"), "--input", str(input_path), "--out", str(out_path),
        "--model", str(model), "--labels", *labels, "--batch-rows", str(batch_rows),
        "--token-budget", str(token_budget), "--threads", str(threads), "--summary-json", str(summary),
    ]
    result = run_process(cmd, base_env(threads), ("engine_alone",), timeout, workdir / "engine.log")
    if summary.exists():
        result.update(json.loads(summary.read_text()))
    return result


def run_job_script(engine: str, spec: dict[str, Any], workdir: Path, timeout: float, env: dict[str, str],
                   children: tuple[str, ...], extra_args: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run ``jobs/{engine}_classify.py`` on ``spec`` in a child process; its measurements plus the job's summary
    (without the per-task list). ``extra_args`` go to the script (e.g. ``--no-count``)."""
    import yaml

    spec_path = workdir / f"{engine}_spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    summary = workdir / f"{engine}_summary.json"
    cmd = [PYTHON, str(ROOT / "jobs" / f"{engine}_classify.py"), "--spec", str(spec_path),
           "--summary-json", str(summary), *extra_args]
    result = run_process(cmd, env, children, timeout, workdir / f"{engine}.log")
    if summary.exists():
        result.update({k: v for k, v in json.loads(summary.read_text()).items() if k != "tasks"})
    return result


def run_ray_job(spec: dict[str, Any], workdir: Path, timeout: float, threads: int) -> dict[str, Any]:
    env = base_env(threads)
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="ray_", dir="/tmp")
    env["RAY_DEDUP_LOGS"] = "0"
    env["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"
    env.pop("RAY_ADDRESS", None)
    # the job's default: it counts its input first (metadata only for Parquet), which also sizes its blocks
    return run_job_script("ray", spec, workdir, timeout, env, ("ray::",))


def run_spark_job(spec: dict[str, Any], workdir: Path, timeout: float, threads: int) -> dict[str, Any]:
    env = base_env(threads)
    env.update(
        {
            "PYSPARK_PYTHON": PYTHON,
            "PYSPARK_DRIVER_PYTHON": PYTHON,
            "SPARK_LOCAL_IP": "127.0.0.1",
            "PYSPARK_SUBMIT_ARGS": f"--master local[*] --driver-memory 2g --conf spark.local.dir={workdir} pyspark-shell",
        }
    )
    return run_job_script("spark", spec, workdir, timeout, env, ("pyspark", "daemon", "worker"),
                          ("--no-count", "--no-ship-model"))
