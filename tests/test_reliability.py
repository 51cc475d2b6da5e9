"""Reliability (issue #9): bad input through the Ray and Spark jobs, a driver killed mid-run, Serve under load.

Real local Ray (one runtime for the module, shared by the jobs and Serve), real local Spark (``local[2]``),
real Delta tables in tmp dirs, the session's tiny real checkpoint. The driver-kill tests run the job
entrypoints as subprocesses with their own Ray / JVM, SIGKILL the whole process group once the first
result files are staged, and re-run the same command.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from spark_helpers import spark_session

os.environ["PYSPARK_PYTHON"] = sys.executable
os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest.importorskip("pyspark")
pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")
psutil = pytest.importorskip("psutil")

from deltalake import DeltaTable  # noqa: E402
from serve_helpers import SERVE_LIMITS, assert_results_match, running_app  # noqa: E402

from gliclass_dist.engine import Classifier, Prediction, predictions_to_arrow  # noqa: E402
from gliclass_dist.labels import LabelSpec  # noqa: E402
from gliclass_dist.schema import Status  # noqa: E402
from gliclass_dist.spec import JobSpec  # noqa: E402

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]

ROOT = Path(__file__).resolve().parent.parent
LABELS = ["sport", "business", "tech", "politics"]
SENTENCES = [
    "The football club won the league after a dramatic final match.",
    "Shares of the technology company rose after strong quarterly earnings.",
    "A new smartphone with a faster chip and a better camera was released.",
    "Parliament voted on the new election law after a long debate.",
    "The central bank raised interest rates to fight inflation.",
]
BIG_TEXT_CHARS = 2_500_000
MANY_LABELS = 10_000


# ---------------------------------------------------------------------------------------------- shared runtimes


@pytest.fixture(scope="module")
def ray_runtime(tmp_path_factory: pytest.TempPathFactory):
    """One local Ray for the module (2 CPUs, no dashboard), shared by the jobs and the Serve test."""
    import ray

    own = not ray.is_initialized()
    previous_tmpdir = os.environ.get("RAY_TMPDIR")
    if own:
        os.environ["RAY_TMPDIR"] = str(tmp_path_factory.mktemp("ray"))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    if own:
        ray.shutdown()
        if previous_tmpdir is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = previous_tmpdir


@pytest.fixture(scope="module")
def spark():
    """One local[2] SparkSession for the module (a failed task is retried once)."""
    conf = {
        "spark.sql.shuffle.partitions": "2",
        "spark.default.parallelism": "2",
        "spark.sql.execution.arrow.maxRecordsPerBatch": "16",
    }
    with spark_session("local[2,2]", "gliclass-reliability", conf) as session:
        yield session


# ---------------------------------------------------------------------------------------------- the bad-input corpus


def bad_input_cases() -> list[tuple[str, Any, Any, set[str]]]:
    """(case, text, row labels, acceptable statuses) for every bad input, plus good rows to score beside them."""
    text = SENTENCES[0]
    cases: list[tuple[str, Any, Any, set[str]]] = [
        ("null text", None, LABELS, {Status.EMPTY_TEXT}),
        ("empty text", "", LABELS, {Status.EMPTY_TEXT}),
        ("whitespace text", " \t\n\r \u3000 \u00a0 ", LABELS, {Status.EMPTY_TEXT}),
        ("control chars in a text", "ctrl \x00\x01\x07\x1b\x7f chars: " + text, LABELS, {Status.OK}),
        # text with nothing readable (the tokenizer would drop every character) is empty, not scored
        ("control chars only", "\x00\x01\x02\x7f\x1b", LABELS, {Status.EMPTY_TEXT}),
        ("zero-width only", "\u200b\u200c\u200d\ufeff\u2060", LABELS, {Status.EMPTY_TEXT}),
        ("label markers only", " <<LABEL>><<SEP>> <<EXAMPLE>> ", LABELS, {Status.EMPTY_TEXT}),
        (
            "unusual unicode",
            "مرحبا بالعالم שלום \u202eRTL\u202c 😀👍🏽👨\u200d👩\u200d👧 e\u0301\u0308 na\u00efve Z\u0351\u0352 \ufffd",
            LABELS,
            {Status.OK},
        ),
        ("multi-megabyte text", ("The match went on. " * (BIG_TEXT_CHARS // 19 + 1))[:BIG_TEXT_CHARS], LABELS,
         {Status.TRUNCATED}),
        ("label markers in text", "<<LABEL>> sport <<SEP>> " + text + " <<EXAMPLE>>", LABELS, {Status.OK}),
        ("empty label list", text, [], {Status.NO_LABELS}),
        ("null label list", text, None, {Status.NO_LABELS}),
        ("duplicate labels", text, ["sport", "sport", "tech", "tech"], {Status.LABELS_CLEANED}),
        ("blank labels among good ones", text, ["", "  ", "sport", "\t"], {Status.LABELS_CLEANED}),
        ("only blank labels", text, ["", " "], {Status.NO_LABELS}),
        ("null label elements", text, [None, "sport", None], {Status.LABELS_CLEANED}),
        ("odd but valid labels", text, ["42", "null", "\x00", "ünïcödé 😀"], {Status.OK}),
        ("labels with marker strings", text, ["<<SEP>>", "a<<LABEL>>b", "tech"], {Status.LABELS_CLEANED}),
        (f"{MANY_LABELS} labels", text, [f"category {i}" for i in range(MANY_LABELS)], {Status.OK}),
    ]
    for i in range(14):
        cases.append((f"good {i}", f"{SENTENCES[i % len(SENTENCES)]} Item {i}.", LABELS[: 2 + i % 3], {Status.OK}))
    return cases


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, classifier: Classifier) -> dict[str, Any]:
    """The corpus as Parquet (2 files, rows shuffled so bad rows share batches with good ones), and every
    row's prediction from ``Classifier.classify`` on that row alone."""
    cases = bad_input_cases()
    random.Random(7).shuffle(cases)
    ids = list(range(100, 100 + len(cases)))
    table = pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "text": pa.array([c[1] for c in cases], pa.string()),
            "row_labels": pa.array([c[2] for c in cases], pa.list_(pa.string())),
        }
    )
    folder = tmp_path_factory.mktemp("bad-input") / "in"
    folder.mkdir()
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), folder / "a.parquet")
    pq.write_table(table.slice(half), folder / "b.parquet")
    alone = {i: classifier.classify([c[1]], [c[2]])[0] for i, c in zip(ids, cases)}
    return {
        "path": folder,
        "cases": dict(zip(ids, cases)),
        "alone": alone,
        "model_name": classifier.model_name,
    }


def corpus_spec(model: Path, input_path: Path, sink: Path, **labels: Any) -> JobSpec:
    return JobSpec.from_dict(
        {
            "name": "reliability",
            "input": {"format": "parquet", "path": str(input_path)},
            "labels": labels or {"column": "row_labels"},
            "model": {"ref": str(model), "device": "cpu"},
            "sink": {"format": "delta", "path": str(sink)},
            "resources": {"batch_rows": 8},
        }
    )


def assert_scores_equal(got: list[dict[str, Any]], pred: Prediction, where: str) -> None:
    assert [s["label"] for s in got] == list(pred.scores), where
    assert [s["score"] for s in got] == pytest.approx(list(pred.scores.values()), abs=1e-5), where


def check_corpus_output(out_path: Path, summary: dict[str, Any], corpus: dict[str, Any]) -> None:
    """Rows in == rows out, each id once, each row's expected status, good rows scored as when alone."""
    cases, alone = corpus["cases"], corpus["alone"]
    assert summary["committed"] is True
    assert summary["rows_in"] == summary["rows_out"] == len(cases)
    table = DeltaTable(str(out_path)).to_pyarrow_table()
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == len(cases), "a row was lost or duplicated"
    assert set(ids) == set(cases)
    for row in table.to_pylist():
        name, _, _, allowed = cases[row["id"]]
        pred = alone[row["id"]]
        assert row["status"] in allowed, (name, row["status"])
        assert row["status"] == pred.status, (name, row["status"], pred.status)
        assert row["label_set"] == "column:row_labels" and row["model"] == corpus["model_name"], name
        if row["status"] in Status.CLASSIFIED:
            assert_scores_equal(row["scores"], pred, name)
            assert row["top_label"] == pred.top_label and row["labels"] == pred.labels, name
            assert row["top_score"] == pytest.approx(pred.top_score, abs=1e-5), name
        else:
            assert row["scores"] == [] and row["top_label"] is None and row["top_score"] is None, name
    counts: dict[str, int] = {}
    for row in table.column("status").to_pylist():
        counts[row] = counts.get(row, 0) + 1
    assert summary["status_counts"] == dict(sorted(counts.items()))


def test_bad_input_corpus_through_the_ray_job(ray_runtime, tiny_model: Path, corpus: dict, tmp_path: Path) -> None:
    from gliclass_dist.ray.job import run_job

    out = tmp_path / "out"
    summary = run_job(corpus_spec(tiny_model, corpus["path"], out))
    check_corpus_output(out, summary, corpus)
    assert {Status.EMPTY_TEXT, Status.NO_LABELS, Status.LABELS_CLEANED, Status.TRUNCATED} <= set(summary["status_counts"])


def test_bad_input_corpus_through_the_spark_job(spark, tiny_model: Path, corpus: dict, tmp_path: Path) -> None:
    from gliclass_dist.spark.job import run_job

    out = tmp_path / "out"
    summary = run_job(spark, corpus_spec(tiny_model, corpus["path"], out), partitions=2)
    check_corpus_output(out, summary, corpus)
    assert summary["tasks"] == 2


@pytest.fixture(scope="module")
def binary_text_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A text column that is not a string column (binary), with a null."""
    path = tmp_path_factory.mktemp("binary-text") / "in.parquet"
    texts = pa.array([b"\xff\xfe\x00\x01", None, SENTENCES[0].encode(), b""], pa.binary())
    pq.write_table(pa.table({"id": pa.array([1, 2, 3, 4], pa.int64()), "text": texts}), path)
    return path


BINARY_EXPECTED = {1: Status.INVALID_TEXT, 2: Status.EMPTY_TEXT, 3: Status.INVALID_TEXT, 4: Status.INVALID_TEXT}


def check_binary_output(out: Path, summary: dict[str, Any]) -> None:
    assert summary["committed"] is True and summary["rows_in"] == summary["rows_out"] == 4
    rows = DeltaTable(str(out)).to_pyarrow_table().sort_by("id").to_pylist()
    assert {r["id"]: r["status"] for r in rows} == BINARY_EXPECTED
    assert all(r["scores"] == [] and r["top_label"] is None for r in rows)


def test_non_string_text_column_gets_invalid_text_per_row_on_ray_and_spark(
    ray_runtime, spark, tiny_model: Path, binary_text_input: Path, tmp_path: Path
) -> None:
    """The jobs do not cast a binary text column: each row says ``invalid_text`` (null: ``empty_text``)."""
    from gliclass_dist.ray.job import run_job as run_ray
    from gliclass_dist.spark.job import run_job as run_spark

    ray_out, spark_out = tmp_path / "ray", tmp_path / "spark"
    check_binary_output(ray_out, run_ray(corpus_spec(tiny_model, binary_text_input, ray_out, labels=LABELS)))
    check_binary_output(spark_out, run_spark(spark, corpus_spec(tiny_model, binary_text_input, spark_out, labels=LABELS)))


# ---------------------------------------------------------------------------------------------- driver killed mid-run


def write_kill_input(folder: Path, rows: int, files: int = 4) -> None:
    folder.mkdir(parents=True)
    ids = pa.array(range(rows), pa.int64())
    texts = pa.array([f"{' '.join([SENTENCES[i % len(SENTENCES)]] * 4)} Item {i}." for i in range(rows)])
    table = pa.table({"id": ids, "text": texts})
    size = -(-rows // files)
    for k in range(files):
        pq.write_table(table.slice(k * size, size), folder / f"part-{k}.parquet")


def write_kill_spec(path: Path, model: Path, input_path: Path, sink: Path, name: str) -> Path:
    spec = {
        "name": name,
        "input": {"format": "parquet", "path": str(input_path)},
        "labels": {"labels": LABELS},
        "model": {"ref": str(model), "device": "cpu"},
        # small files and batches: result files are staged (and observable) while the job runs
        "sink": {"format": "delta", "path": str(sink), "target_file_rows": 50},
        "resources": {"batch_rows": 50},
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def staged_files(sink: Path) -> list[Path]:
    return [p for p in sink.rglob("*.parquet") if "_delta_log" not in p.parts] if sink.exists() else []


def committed_files(sink: Path) -> int:
    return len(DeltaTable(str(sink)).file_uris())


def kill_group_once_files_are_staged(proc: subprocess.Popen, sink: Path, log: Path, limit_s: float = 300) -> None:
    """Wait for the first staged result file, then SIGKILL the driver's whole process group."""
    started = time.monotonic()
    deadline = started + limit_s
    while not staged_files(sink):
        if proc.poll() is not None:
            pytest.fail(f"the job ended (rc {proc.returncode}) before any file was staged:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no file staged in {limit_s:.0f} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    assert proc.poll() is None, "the driver finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    print(f"killed the driver's process group {time.monotonic() - started:.1f} s after the start")
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def processes_matching(marker: str, pgid: int | None = None) -> list[Any]:
    """Live processes whose command line mentions ``marker`` or that are in process group ``pgid``."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
                continue
            in_group = pgid is not None and os.getpgid(proc.pid) == pgid
            if in_group or marker in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.Error, ProcessLookupError):
            continue
    return found


def reap_leftovers(marker: str, pgid: int | None = None, grace_s: float = 30) -> list[str]:
    """Wait up to ``grace_s`` for the killed job's processes to go; SIGKILL any left. Returns those killed."""
    deadline = time.monotonic() + grace_s
    left = processes_matching(marker, pgid)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = processes_matching(marker, pgid)
    killed = []
    for proc in left:
        try:
            killed.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(left, timeout=10)
    return killed


def load_ray_entrypoint() -> Any:
    """``jobs/ray_classify.py`` as a module (its ``main(argv)`` is the command line)."""
    import importlib.util

    module_spec = importlib.util.spec_from_file_location("ray_classify", ROOT / "jobs" / "ray_classify.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # a job start in a subprocess (its own Ray / JVM): 50-140 s on 2 busy cores
def test_ray_driver_sigkill_mid_run_then_rerun_lands_each_row_once(
    ray_runtime, tiny_model: Path, tmp_path: Path
) -> None:
    """SIGKILL the Ray job's driver and its own local Ray once files are staged; then run the same command again.

    The killed run is a subprocess that starts its own Ray (unique temp dir) in its own process group. The
    re-runs call the same entrypoint with the same arguments in this process, on the module's Ray (a second
    subprocess would cost another Ray start): what matters is that the killed run's staged files never land.
    """
    import shutil
    import tempfile

    rows = 2000  # 40 batches: the last file is staged seconds after the first (with 400 the job once committed
    write_kill_input(tmp_path / "in", rows)  # between the test seeing the first file and its kill)
    sink = tmp_path / "out"
    spec_path = write_kill_spec(tmp_path / "job.yaml", tiny_model, tmp_path / "in", sink, "ray-kill")
    summary_path = tmp_path / "summary.json"
    args = ["--spec", str(spec_path), "--summary-json", str(summary_path)]
    ray_tmp = tempfile.mkdtemp(prefix="gd-raykill-", dir="/tmp")  # short: Ray's socket paths are length-limited
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "killed.log"
    try:
        with log.open("w") as out:
            proc = subprocess.Popen([sys.executable, str(ROOT / "jobs" / "ray_classify.py"), *args], env=env,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
            kill_group_once_files_are_staged(proc, sink, log)
        # Everything the driver started (its own Ray / the JVM and Python workers) dies with its process group.
        leftovers = reap_leftovers(ray_tmp, proc.pid)
        assert not leftovers, f"processes of the killed Ray job outlived it (killed by the test): {leftovers}"
    finally:
        reap_leftovers(ray_tmp, grace_s=0)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not (sink / "_delta_log").exists(), "the killed run committed"
    assert not summary_path.exists()
    orphans = len(staged_files(sink))
    assert orphans > 0

    assert_rerun_lands_each_row_once(load_ray_entrypoint().main, args, sink, summary_path, rows, orphans)


def assert_rerun_lands_each_row_once(
    main: Any, args: list[str], sink: Path, summary_path: Path, rows: int, orphans: int
) -> None:
    """After a killed run: ``main(args)`` commits every row once, leaving the killed run's files unreferenced;
    a third run finds the key committed and writes nothing."""
    assert main(args) == 0
    summary = json.loads(summary_path.read_text())
    assert summary["committed"] is True and summary["rows_in"] == summary["rows_out"] == rows
    table = DeltaTable(str(sink))
    ids = table.to_pyarrow_table().column("id").to_pylist()
    assert len(ids) == rows and sorted(ids) == list(range(rows))
    assert len(staged_files(sink)) == committed_files(sink) + orphans  # the killed run's files stay unreferenced
    version = table.version()

    assert main(args) == 0  # a third run: the key is committed, nothing is written
    again = json.loads(summary_path.read_text())
    assert again["committed"] is False and "already committed" in again["skipped_reason"]
    assert DeltaTable(str(sink)).version() == version
    assert DeltaTable(str(sink)).to_pyarrow_table().num_rows == rows


@pytest.mark.slow  # a job start in a subprocess (its own Ray / JVM): 50-140 s on 2 busy cores
def test_spark_driver_sigkill_mid_run_then_rerun_lands_each_row_once(spark, tiny_model: Path, tmp_path: Path) -> None:
    """SIGKILL spark-submit's process group (JVM, Python driver, Python workers) mid-run; then run it again.

    The re-runs call the same entrypoint (``gliclass_dist.spark.job.main``) with the same arguments in this
    process, where it picks up the module's session (a second spark-submit would cost another JVM start).
    """
    import pyspark

    from gliclass_dist.spark.job import main

    rows = 240
    write_kill_input(tmp_path / "in", rows)
    sink = tmp_path / "out"
    spec_path = write_kill_spec(tmp_path / "job.yaml", tiny_model, tmp_path / "in", sink, "spark-kill")
    summary_path = tmp_path / "summary.json"
    args = ["--spec", str(spec_path), "--partitions", "4", "--summary-json", str(summary_path)]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "SPARK_LOCAL_IP": "127.0.0.1", "HF_HUB_OFFLINE": "1"}
    env.pop("SPARK_HOME", None)
    command = [str(Path(pyspark.__file__).parent / "bin" / "spark-submit"), "--master", "local[1]",
               "--conf", "spark.ui.enabled=false", str(ROOT / "jobs" / "spark_classify.py"), *args]
    log = tmp_path / "killed.log"
    try:
        with log.open("w") as out:
            proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                    cwd=tmp_path)
            kill_group_once_files_are_staged(proc, sink, log)
        # Everything the driver started (its own Ray / the JVM and Python workers) dies with its process group.
        leftovers = reap_leftovers(str(spec_path), proc.pid)
        assert not leftovers, f"processes of the killed Spark job outlived it (killed by the test): {leftovers}"
    finally:
        reap_leftovers(str(spec_path), grace_s=0)
    assert not (sink / "_delta_log").exists(), "the killed run committed"
    assert not summary_path.exists()
    orphans = len(staged_files(sink))
    assert orphans > 0

    assert_rerun_lands_each_row_once(main, args, sink, summary_path, rows, orphans)


# ---------------------------------------------------------------------------------------------- Serve under load

TOKEN = "reliability-token"
SERVE_ARGS = {**SERVE_LIMITS, "max_batch_size": 64, "batch_wait_timeout_s": 0.01}


@pytest.fixture
def served(ray_runtime, tiny_model: Path, tmp_path: Path) -> Any:
    """A Serve app on the module's Ray (127.0.0.1, a free port, a bearer token); shut down after the test."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    args = {**SERVE_ARGS, "model": str(tiny_model), "token_file": str(token_file), "require_auth": True}
    with running_app(args, "gliclass-reliability") as base_url:
        yield base_url


def serve_requests() -> list[dict[str, Any]]:
    """~200 requests: good ones (several shapes) and bad ones, each with its expected status code."""
    good_shapes = [
        lambda i: {"texts": [f"{SENTENCES[i % 5]} Request {i}."], "labels": LABELS},
        lambda i: {"texts": [SENTENCES[(i + k) % 5] for k in range(8)], "labels": LABELS[:3], "threshold": 0.3},
        lambda i: {"texts": [SENTENCES[i % 5], None, "", "x" * 400], "labels": ["sport", "business"]},
        lambda i: {"texts": [SENTENCES[i % 5], SENTENCES[(i + 2) % 5]],
                   "labels": [["sport", "sport", "tech"], ["politics", "business"]]},
        lambda i: {"texts": [f"{SENTENCES[(i + 1) % 5]} #{i}"], "labels": LABELS, "mode": "single-label",
                   "prompt": "Pick the topic:"},
    ]
    bad_shapes = [
        ({"json": {"texts": ["t"] * 9, "labels": LABELS}}, 422),  # too many texts
        ({"json": {"texts": ["t"], "labels": [f"l{i}" for i in range(7)]}}, 422),  # too many labels
        ({"json": {"texts": ["x" * 401], "labels": LABELS}}, 422),  # text too long
        ({"json": {"texts": ["t"], "labels": ["y" * 41]}}, 422),  # label too long
        ({"json": {"texts": ["t"] * 8, "labels": LABELS, "pad": "z" * 9000}}, 413),  # body too large
        ({"content": b"{not json"}, 422),
        ({"content": b'{"texts": ["a"], "labels": ["a", ["b"]]}'}, 422),
        ({"content": b'{"texts": [1], "labels": ["a"]}'}, 422),
        ({"content": b"\xff\xfe\x00garbage"}, 422),
        ({"json": {"texts": ["t"], "labels": ["a", "a"]}}, 422),  # duplicate fixed labels
        ({"json": {"texts": ["t"], "labels": LABELS}, "token": TOKEN + "x"}, 401),
        ({"json": {"texts": ["t"], "labels": LABELS}, "token": None}, 401),
        ({"json": {"texts": ["t"], "labels": LABELS}, "token": ""}, 401),  # "Bearer" with no token
    ]
    requests: list[dict[str, Any]] = []
    for i in range(200):
        if i % 2 == 0:
            requests.append({"json": good_shapes[(i // 2) % len(good_shapes)](i), "expect": 200})
        else:
            shape, code = bad_shapes[(i // 2) % len(bad_shapes)]
            requests.append({**shape, "expect": code})
    return requests


async def _send_all(base_url: str, requests: list[dict[str, Any]]) -> list[Any]:
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=len(requests))
    async with httpx.AsyncClient(base_url=base_url, timeout=180, limits=limits) as client:

        async def send(req: dict[str, Any]) -> Any:
            token = req.get("token", TOKEN)
            headers = {"Content-Type": "application/json"}
            if token is not None:
                headers["Authorization"] = f"Bearer {token}".strip()
            if "json" in req:
                return await client.post("/v1/classify", content=json.dumps(req["json"]).encode(), headers=headers)
            return await client.post("/v1/classify", content=req["content"], headers=headers)

        return await asyncio.gather(*(send(r) for r in requests))


def expected_results(classifier: Classifier, payload: dict[str, Any]) -> list[dict[str, Any]]:
    labels, mode = payload["labels"], payload.get("mode", "multi-label")
    threshold, prompt = payload.get("threshold", 0.5), payload.get("prompt")
    if labels and isinstance(labels[0], list):
        label_set = "per-row"
    else:
        label_set = LabelSpec(labels=labels, mode=mode, threshold=threshold, prompt=prompt).label_set_id
    preds = classifier.classify(payload["texts"], labels, mode=mode, threshold=threshold, prompt=prompt)
    return predictions_to_arrow(preds, classifier.model_name, label_set).to_pylist()


def test_serve_limits_hold_under_concurrent_load(served: str, classifier: Classifier) -> None:
    requests = serve_requests()
    responses = asyncio.run(_send_all(served, requests))

    codes = [r.status_code for r in responses]
    server_errors = [(req.get("json") or req.get("content"), r.status_code, r.text[:300])
                     for req, r in zip(requests, responses) if r.status_code >= 500]
    assert not server_errors, f"{len(server_errors)} 5xx answers, e.g. {server_errors[:3]}"
    for req, response in zip(requests, responses):
        assert "Traceback" not in response.text and 'File "' not in response.text, response.text[:500]
        assert response.status_code == req["expect"], (req.get("json") or req.get("content"), response.text[:300])
        if req["expect"] != 200:
            assert response.json()["detail"], response.text[:300]
            continue
        assert_results_match(response.json()["results"], expected_results(classifier, req["json"]))
    assert codes.count(200) == 100 and {401, 413, 422} <= set(codes)

    with httpx.Client(base_url=served, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        payload = {"texts": [SENTENCES[0], None], "labels": LABELS}
        final = client.post("/v1/classify", json=payload)
        assert final.status_code == 200, final.text
        assert_results_match(final.json()["results"], expected_results(classifier, payload))
        assert client.get("/healthz").json()["status"] == "ok"
        stats = client.get("/v1/stats").json()
    assert stats["batching"]["requests"] == 101  # the good requests and the final one; no bad one got this far
