"""Reliability of the Ray Serve front end at the edges (issue #13): non-finite thresholds, stalled request
bodies, requests that cost too much, fairness between large and small requests, a shared cluster.

A real local Serve on 127.0.0.1 with the tiny checkpoint, started once for the module; real HTTP (httpx
and raw sockets). The shared-cluster test starts its own Ray head (``ray start --head``) and runs the
``gliclass-dist serve`` CLI against it in a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from serve_helpers import SERVE_LIMITS, free_port, running_app  # noqa: E402

from gliclass_dist.engine import Classifier, predictions_to_arrow  # noqa: E402
from gliclass_dist.labels import LabelSpec  # noqa: E402

pytestmark = pytest.mark.timeout(300)

LABELS = ["business", "sport", "politics", "tech"]
TEXTS = [
    "The central bank raised interest rates to fight inflation.",
    "The football club won the league after a dramatic final match.",
    "A new smartphone with a faster chip was released.",
]
APP_ARGS = {
    **SERVE_LIMITS,
    "max_batch_size": 8,
    "max_request_cost": 1500,  # tokens; a request of 8 long texts x 6 long labels costs ~3600
    "max_ongoing_requests": 8,
    "max_pending_bodies": 4,
    "body_timeout_s": 3.0,
}


@pytest.fixture(scope="module")
def served(ray_local: Any, tiny_model: Path) -> Any:
    """A running Serve app with small body/cost limits (no auth) on the module's Ray: yields its base URL."""
    with running_app({**APP_ARGS, "model": str(tiny_model)}, "gliclass-edges") as base_url:
        yield base_url


# ------------------------------------------------------------------------------------------ shared cluster
# First in the module: it runs its own Ray cluster in subprocesses, before the module's Serve starts.
OTHER_TEAM = """
import sys
import ray
from ray import serve

ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)


@serve.deployment(ray_actor_options={"num_cpus": 0})
def other(request):
    return "other team"


serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[1])})
serve.run(other.bind(), name="other-team", route_prefix="/other")
print("ADDRESS", ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # serve until the test closes stdin
serve.shutdown()
ray.shutdown()
"""


def _read_address(proc: subprocess.Popen, timeout: float) -> str:
    """The cluster address the other team's process prints once its application is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        line = proc.stdout.readline() if ready else ""
        if line.startswith("ADDRESS "):
            return line.split()[1]
        assert line or not ready, f"the other team's process ended (rc={proc.poll()})"
    raise AssertionError(f"no cluster address within {timeout} s")


def _other_team_answers(port: int) -> bool:
    response = httpx.get(f"http://127.0.0.1:{port}/other", timeout=30)
    return response.status_code == 200 and response.text == "other team"


def test_cli_on_a_shared_cluster_touches_only_its_own_application(tmp_path: Path, tiny_model: Path) -> None:
    """Another team's Serve app runs on a cluster; our CLI joins it through $RAY_ADDRESS (no --address)."""
    port = free_port()
    ray_tmp = tempfile.mkdtemp(prefix="r13-")  # short: Ray's socket paths under it must stay < 108 bytes
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    script = tmp_path / "other_team.py"
    script.write_text(OTHER_TEAM)
    log_path = tmp_path / "other_team.log"
    log = log_path.open("w")
    other = subprocess.Popen(
        [sys.executable, str(script), str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=log, text=True, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        try:
            env["RAY_ADDRESS"] = _read_address(other, timeout=180)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {log_path.read_text()[-3000:]}") from None
        assert _other_team_answers(port)
        cli = [sys.executable, "-m", "gliclass_dist.cli", "serve", "--model", str(tiny_model), "--torch-threads", "1"]

        # Serve already listens on `port`: another --port is refused, naming the real one.
        wrong_port = subprocess.run(
            [*cli, "--port", str(free_port())], capture_output=True, text=True, env=env, timeout=240, check=False
        )
        assert wrong_port.returncode == 2, wrong_port.stdout + wrong_port.stderr[-2000:]
        assert f"listens on 127.0.0.1:{port}" in wrong_port.stdout
        # An application of the same name that we did not start is not replaced without --replace.
        clash = subprocess.run(
            [*cli, "--port", str(port), "--app-name", "other-team"], capture_output=True, text=True, env=env,
            timeout=240, check=False,
        )  # fmt: skip
        assert clash.returncode == 2, clash.stdout + clash.stderr[-2000:]
        assert "'other-team' already runs" in clash.stdout
        assert _other_team_answers(port)

        ours = subprocess.Popen(
            [*cli, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )
        try:
            deadline, healthy = time.monotonic() + 240, False
            while not healthy and time.monotonic() < deadline and ours.poll() is None:
                try:
                    healthy = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
                except httpx.HTTPError:
                    healthy = False
                if not healthy:
                    time.sleep(1)  # polling for the deployment, not ordering anything
            assert healthy, "our application did not come up"
            ours.send_signal(signal.SIGINT)  # Ctrl-C
            assert ours.wait(timeout=120) == 0
        finally:
            if ours.poll() is None:
                ours.kill()
        assert _other_team_answers(port)  # the other team's application survived our Ctrl-C
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=30).status_code == 404  # ours is gone
    finally:
        other.stdin.close()
        try:
            other.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(other.pid, signal.SIGKILL)
            other.wait(timeout=30)
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------- non-finite thresholds
@pytest.mark.parametrize(
    ("threshold", "fragment"),
    [
        ("NaN", "finite number"),
        ("Infinity", "finite number"),
        ("-Infinity", "finite number"),
        ("1e400", "finite number"),  # overflows to inf when parsed
        ('{"sport": NaN}', "finite number"),
        ('{"sport": Infinity}', "finite number"),
        ('{"sport": 1e400}', "finite number"),
        ('{"sport": 1.5}', "less than or equal to 1"),
        ("-0.1", "greater than or equal to 0"),
    ],
)
def test_non_finite_or_out_of_range_thresholds_are_422(served: str, threshold: str, fragment: str) -> None:
    body = f'{{"texts": ["a text"], "labels": {json.dumps(LABELS)}, "threshold": {threshold}}}'
    response = httpx.post(
        f"{served}/v1/classify", content=body.encode(), headers={"Content-Type": "application/json"}, timeout=60
    )
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]  # strict JSON: the bad value is echoed as text, not as a bare NaN
    assert any(fragment in error["msg"] and error["loc"][0] == "threshold" for error in detail), detail


def test_a_prompt_with_a_marker_string_is_422(served: str) -> None:
    response = httpx.post(
        f"{served}/v1/classify",
        json={"texts": ["a text"], "labels": LABELS, "prompt": "Classify <<SEP>> this"},
        timeout=60,
    )
    assert response.status_code == 422, response.text
    assert any("<<SEP>>" in error["msg"] and error["loc"][-1] == "prompt" for error in response.json()["detail"])


# ------------------------------------------------------------------------------------------ stalled bodies
def _stalled_request(port: int, declared: int = 4000) -> socket.socket:
    """A connection that declares a body of ``declared`` bytes, sends one byte of it, and stalls."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n{{"
    )
    sock.sendall(head.encode())
    return sock


def _answer_or_close(sock: socket.socket, timeout: float) -> bytes | None:
    """The first bytes the server sends (b"" when it closes the connection), or None after ``timeout``."""
    ready, _, _ = select.select([sock], [], [], timeout)
    if not ready:
        return None
    try:
        return sock.recv(4096)
    except ConnectionResetError:
        return b""


def test_stalled_bodies_get_408_and_leave_healthz_and_classify_answering(served: str) -> None:
    port = int(served.rsplit(":", 1)[1])
    slots, cap, timeout = APP_ARGS["max_ongoing_requests"], APP_ARGS["max_pending_bodies"], APP_ARGS["body_timeout_s"]
    stalled = [_stalled_request(port) for _ in range(slots)]  # as many as the replica takes at once
    try:
        # Beyond max_pending_bodies the stalled ones are refused at once (503): that also shows the
        # others reached the replica and are being read.
        refused, deadline = [], time.monotonic() + 30
        while len(refused) < slots - cap and time.monotonic() < deadline:
            for sock in stalled:
                if sock not in refused and (answer := _answer_or_close(sock, 0.2)) is not None:
                    assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
                    refused.append(sock)
        assert len(refused) == slots - cap
        holding = [sock for sock in stalled if sock not in refused]

        started = time.monotonic()
        health = httpx.get(f"{served}/healthz", timeout=10)
        classify = httpx.post(f"{served}/v1/classify", json={"texts": TEXTS, "labels": LABELS}, timeout=10)
        assert health.status_code == 200 and classify.status_code == 200, (health.text, classify.text)
        assert len(classify.json()["results"]) == len(TEXTS)
        assert time.monotonic() - started < timeout  # answered while the stalled bodies were still held

        for sock in holding:  # the held ones end with 408 once body_timeout_s has passed
            answer = _answer_or_close(sock, timeout + 20)
            assert answer is not None, "a stalled body was held past body_timeout_s"
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]
    finally:
        for sock in stalled:
            sock.close()
    assert httpx.get(f"{served}/healthz", timeout=10).status_code == 200


def test_pending_body_cap_must_leave_replica_slots() -> None:
    from gliclass_dist.ray.serve import ServeArgs

    with pytest.raises(ValueError, match="max_pending_bodies"):
        ServeArgs.model_validate({"model": "m", "max_ongoing_requests": 8, "max_pending_bodies": 8})
    with pytest.raises(ValueError, match="body_timeout_s"):
        ServeArgs.model_validate({"model": "m", "body_timeout_s": 0})


# ---------------------------------------------------------------------------------- cost and fairness
def test_request_over_the_cost_cap_is_413_naming_cost_and_cap(served: str, classifier: Classifier) -> None:
    from gliclass_dist.ray.serve import row_costs

    texts = [f"word{i} " * 55 for i in range(8)]  # within every other limit: 8 texts, < 400 chars
    labels = [f"label {i} " + "y" * 30 for i in range(6)]  # 6 labels of < 40 characters
    cost = sum(row_costs(classifier, texts, [labels] * len(texts), None))
    assert cost > APP_ARGS["max_request_cost"]
    response = httpx.post(f"{served}/v1/classify", json={"texts": texts, "labels": labels}, timeout=60)
    assert response.status_code == 413, response.text
    detail = response.json()["detail"]
    assert f"{cost} tokens" in detail and str(APP_ARGS["max_request_cost"]) in detail
    # the same texts in requests under the cap are served
    ok = httpx.post(f"{served}/v1/classify", json={"texts": texts[:2], "labels": labels}, timeout=60)
    assert ok.status_code == 200, ok.text


def test_small_request_is_not_stuck_behind_whole_large_requests(classifier: Classifier) -> None:
    """Three large requests queued, then a small one: the small one finishes in the next micro-batch, before
    the large ones that were waiting; every large request's rows still come back complete and in order."""
    from gliclass_dist.ray.serve import BatchStats, ClassifyJob, EngineQueue, row_costs

    def job(texts: list[str]) -> ClassifyJob:
        rows = [LABELS] * len(texts)
        costs = row_costs(classifier, texts, rows, None)
        return ClassifyJob(classifier, texts, rows, LabelSpec(labels=LABELS).label_set_id, "multi-label", 0.5, None, costs)

    large = [job([f"{TEXTS[(i + k) % 3]} Large request {i}, row {k}." for k in range(8)]) for i in range(3)]
    small = job(["A small request: " + TEXTS[1]])
    finished: list[str] = []

    async def scenario() -> list[Any]:
        queue = EngineQueue(BatchStats())
        queue.max_texts = 8  # one large request fills an engine call

        async def submit(name: str, j: ClassifyJob) -> Any:
            (output,) = await queue.run([j])
            finished.append(name)
            return output

        # In this order: the first large request gets the idle engine, the others queue behind it.
        names = ["large0", "large1", "large2", "small"]
        return await asyncio.gather(*(submit(n, j) for n, j in zip(names, [*large, small])))

    outputs = asyncio.run(scenario())
    assert finished.index("small") < finished.index("large1")
    assert finished.index("small") < finished.index("large2")
    for j, output in zip([*large, small], outputs):
        preds = classifier.classify(j.texts, LABELS)
        expected = predictions_to_arrow(preds, classifier.model_name, j.label_set).to_pylist()
        assert len(output) == len(expected)
        for got, want in zip(output, expected):
            assert got["labels"] == want["labels"] and got["status"] == want["status"]
            assert [s["score"] for s in got["scores"]] == pytest.approx([s["score"] for s in want["scores"]], abs=1e-5)
