"""The Ray Serve front end: a real local Serve on 127.0.0.1, real HTTP requests, tiny real checkpoints.

One Serve instance for the whole module (starting Ray + Serve costs ~20 s on these machines).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

from serve_helpers import SERVE_LIMITS, assert_results_match, free_port  # noqa: E402

from gliclass_dist.engine import Classifier, predictions_to_arrow  # noqa: E402
from gliclass_dist.labels import LabelSpec  # noqa: E402

pytestmark = pytest.mark.timeout(300)

TOKEN = "s3cret-token-for-tests"
LABELS = ["business", "sport", "politics", "tech"]
TEXTS = [
    "The central bank raised interest rates to fight inflation.",
    "The football club won the league after a dramatic final match.",
    "A new smartphone with a faster chip was released.",
]
# batch_wait_timeout_s: long enough that concurrent requests reliably meet in one batch
APP_ARGS = {**SERVE_LIMITS, "max_batch_size": 64, "batch_wait_timeout_s": 0.25}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_deberta: Path) -> Any:
    """A running Serve app: the tiny BERT model as default, the tiny DeBERTa allow-listed as 'deberta'."""
    import ray
    from ray import serve

    from gliclass_dist.ray.serve import build_app

    workdir = tmp_path_factory.mktemp("serve")
    token_file = workdir / "token"
    token_file.write_text(TOKEN + "\n")
    broken = workdir / "broken-checkpoint"
    broken.mkdir()
    (broken / "config.json").write_text("{not a config")
    own_ray = not ray.is_initialized()
    with pytest.MonkeyPatch.context() as env:  # RAY_TMPDIR is restored for the modules after this one
        if own_ray:  # the node declares a placeholder GPU: a replica asking for one is scheduled on it
            env.setenv("RAY_TMPDIR", str(tmp_path_factory.mktemp("ray")))
            ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
        port = free_port()
        args = {
            **APP_ARGS,
            "model": str(tiny_model),
            "models": f"deberta={tiny_deberta},broken={broken}",
            "token_file": str(token_file),
            "require_auth": True,
            # autoscaling on, with a target far above the tests' load: one replica throughout
            "min_replicas": 1,
            "max_replicas": 2,
            "target_ongoing_requests": 256,
            # on our own node, ask for its GPU: without CUDA (a placeholder) the engine falls back to CPU and says so
            "num_gpus": 1 if own_ray else 0,
            # with CUDA the replica would pick bfloat16; its results are compared with a float32 CPU engine at 1e-5
            "dtype": "float32",
        }
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60
        )
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(build_app(args), name="gliclass-test", route_prefix="/")
            yield {"client": client, "args": args, "port": port, "build_app": build_app, "own_ray": own_ray}
        finally:
            client.close()
            serve.shutdown()
            if own_ray:
                ray.shutdown()


@pytest.fixture(scope="module")
def deberta_classifier(tiny_deberta: Path) -> Classifier:
    return Classifier.from_pretrained(tiny_deberta, device="cpu")


def _engine_rows(clf: Classifier, texts: list[Any], labels: Any, label_set: str, **kwargs: Any) -> list[dict]:
    return predictions_to_arrow(clf.classify(texts, labels, **kwargs), clf.model_name, label_set).to_pylist()


def test_health_docs_and_openapi_are_served(served: Any) -> None:
    bare = httpx.Client(base_url=served["client"].base_url, timeout=30)
    health = bare.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    spec = bare.get("/openapi.json").json()
    classify = spec["paths"]["/v1/classify"]["post"]
    body_schema = classify["requestBody"]["content"]["application/json"]["schema"]
    assert {"texts", "labels", "mode", "threshold", "prompt"} <= set(body_schema["properties"])
    assert "/v1/model" in spec["paths"] and "/healthz" in spec["paths"]
    assert bare.get("/docs").status_code == 200


def test_model_info_describes_model_batching_and_limits(served: Any, classifier: Classifier) -> None:
    info = served["client"].get("/v1/model").json()
    assert info["model"] == classifier.model_name
    assert info["models"] == ["default", "deberta", "broken"]
    assert info["config"]["architecture_type"] == "uni-encoder"
    assert info["batching"]["max_batch_size"] == APP_ARGS["max_batch_size"]
    assert info["limits"]["max_texts_per_request"] == APP_ARGS["max_texts_per_request"]
    assert info["auth"] is True


def test_scores_equal_the_engine(served: Any, classifier: Classifier) -> None:
    texts = [*TEXTS, "", None]
    response = served["client"].post("/v1/classify", json={"texts": texts, "labels": LABELS, "threshold": 0.4})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == classifier.model_name and body["model_id"] == "default"
    spec = LabelSpec(labels=LABELS, threshold=0.4)
    expected = classifier.classify_arrow(pa.table({"text": pa.array(texts, pa.string())}), spec).to_pylist()
    assert_results_match(body["results"], expected)
    assert [r["status"] for r in body["results"]][-2:] == ["empty_text", "empty_text"]
    assert body["results"][0]["label_set"] == spec.label_set_id


def test_single_label_mode_prompt_and_per_label_thresholds(served: Any, classifier: Classifier) -> None:
    payload = {"texts": TEXTS, "labels": LABELS, "mode": "single-label", "prompt": "Pick the topic:"}
    body = served["client"].post("/v1/classify", json=payload).json()
    spec = LabelSpec(labels=LABELS, mode="single-label", prompt="Pick the topic:")
    expected = _engine_rows(classifier, TEXTS, LABELS, spec.label_set_id, mode="single-label", prompt="Pick the topic:")
    assert_results_match(body["results"], expected)
    assert all(len(r["labels"]) == 1 for r in body["results"])

    thresholds = {"business": 0.0, "sport": 1.0}
    body = served["client"].post("/v1/classify", json={"texts": TEXTS, "labels": LABELS, "threshold": thresholds}).json()
    assert body["results"][0]["label_set"] == LabelSpec(labels=LABELS, thresholds=thresholds).label_set_id
    expected = _engine_rows(classifier, TEXTS, LABELS, body["results"][0]["label_set"], threshold=thresholds)
    assert_results_match(body["results"], expected)
    assert all("business" in r["labels"] and "sport" not in r["labels"] for r in body["results"])


def test_per_request_and_per_row_labels(served: Any, classifier: Classifier) -> None:
    row_labels = [["business", "politics"], ["sport", "music", "sport"], ["tech"]]
    body = served["client"].post("/v1/classify", json={"texts": TEXTS, "labels": row_labels}).json()
    expected = _engine_rows(classifier, TEXTS, row_labels, "per-row")
    assert_results_match(body["results"], expected)
    assert [[s["label"] for s in r["scores"]] for r in body["results"]] == [
        ["business", "politics"],
        ["sport", "music"],
        ["tech"],
    ]
    assert body["results"][1]["status"] == "labels_cleaned"  # the duplicate was dropped, and it says so


def test_concurrent_requests_are_batched_and_split_back(served: Any, classifier: Classifier) -> None:
    client = served["client"]
    before = client.get("/v1/stats").json()
    n_requests = 8
    label_sets = [LABELS[: 2 + i % 3] for i in range(n_requests)]  # different labels per request
    texts = [[f"{TEXTS[i % 3]} Request {i}.", TEXTS[(i + 1) % 3]] for i in range(n_requests)]
    responses: list[Any] = [None] * n_requests
    barrier = threading.Barrier(n_requests)

    def send(i: int) -> None:
        with httpx.Client(base_url=client.base_url, headers=client.headers, timeout=60) as own:
            barrier.wait()
            responses[i] = own.post("/v1/classify", json={"texts": texts[i], "labels": label_sets[i]})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n_requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = client.get("/v1/stats").json()

    for i, response in enumerate(responses):
        assert response.status_code == 200, response.text
        label_set = LabelSpec(labels=label_sets[i]).label_set_id
        assert_results_match(response.json()["results"], _engine_rows(classifier, texts[i], label_sets[i], label_set))

    assert after["batching"]["requests"] - before["batching"]["requests"] == n_requests
    calls = after["batching"]["engine_calls"] - before["batching"]["engine_calls"]
    assert calls < n_requests  # some engine call held texts of more than one request
    assert max(c["requests"] for c in after["batching"]["recent_engine_calls"][-calls:]) >= 2
    # The model saw texts from several requests in one forward pass: fewer passes than requests.
    assert after["engine"]["forward_passes"] - before["engine"]["forward_passes"] < n_requests


@pytest.mark.parametrize(
    ("payload", "status", "fragment"),
    [
        ({"texts": ["t"] * 9, "labels": LABELS}, 422, "limit is 8"),
        ({"texts": ["x" * 401], "labels": LABELS}, 422, "texts[0]: 401 characters"),
        ({"texts": ["t"], "labels": [f"l{i}" for i in range(7)]}, 422, "limit is 6"),
        ({"texts": ["t", "u"], "labels": [["a"], ["b"] * 7]}, 422, "labels[1]"),
        ({"texts": ["t"], "labels": ["y" * 41]}, 422, "41 characters"),
        ({"texts": ["t"], "labels": LABELS, "prompt": "p" * 401}, 422, "prompt"),
        ({"texts": ["x" * 300] * 8, "labels": ["a" * 40] * 6, "prompt": "p" * 400, "pad": "z" * 8000}, 413, "8192"),
    ],
)
def test_limits_answer_4xx_with_a_message(served: Any, payload: dict, status: int, fragment: str) -> None:
    response = served["client"].post("/v1/classify", json=payload)
    assert response.status_code == status, response.text
    assert fragment in response.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"texts": "one string", "labels": ["a"]}',
        b'{"texts": ["a"]}',
        b'{"texts": [], "labels": ["a"]}',
        b'{"texts": ["a"], "labels": ["a"], "mode": "every-label"}',
        b'{"texts": ["a"], "labels": ["a"], "threshold": 1.5}',
        b'{"texts": ["a"], "labels": ["a"], "surprise": 1}',
        b'{"texts": ["a"], "labels": ["a", ["b"]]}',
        b'{"texts": [1], "labels": ["a"]}',
    ],
)
def test_malformed_bodies_are_422_not_500(served: Any, body: bytes) -> None:
    response = served["client"].post("/v1/classify", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"texts": ["a", "b"], "labels": [["x"]]}, "1 label lists for 2 texts"),
        ({"texts": ["a"], "labels": ["x", "x"]}, "duplicate label"),
        ({"texts": ["a"], "labels": []}, "empty"),
        ({"texts": ["a"], "labels": ["x", " "]}, "empty label"),
        ({"texts": ["a"], "labels": ["x"], "threshold": {"nope": 0.3}}, "not in the label set"),
    ],
)
def test_inconsistent_requests_are_422_with_a_message(served: Any, payload: dict, fragment: str) -> None:
    response = served["client"].post("/v1/classify", json=payload)
    assert response.status_code == 422, response.text
    assert fragment in json.dumps(response.json()["detail"])


def test_auth_rejects_missing_and_wrong_tokens(served: Any) -> None:
    url = served["client"].base_url
    payload = {"texts": ["t"], "labels": LABELS}
    with httpx.Client(base_url=url, timeout=30) as anonymous:
        missing = anonymous.post("/v1/classify", json=payload)
        wrong = anonymous.post("/v1/classify", json=payload, headers={"Authorization": f"Bearer {TOKEN}x"})
        basic = anonymous.post("/v1/classify", json=payload, headers={"Authorization": f"Basic {TOKEN}"})
        info = anonymous.get("/v1/model", headers={"Authorization": "Bearer nope"})
        health = anonymous.get("/healthz")
    assert missing.status_code == 401 and "missing" in missing.json()["detail"]
    assert wrong.status_code == 401 and "invalid" in wrong.json()["detail"]
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert basic.status_code == 401
    assert info.status_code == 401
    assert health.status_code == 200


def test_allow_listed_model_is_multiplexed_and_nothing_else_loads(
    served: Any, deberta_classifier: Classifier, tiny_model: Path
) -> None:
    client = served["client"]
    body = client.post("/v1/classify", json={"texts": TEXTS, "labels": LABELS, "model": "deberta"}).json()
    assert body["model_id"] == "deberta" and body["model"] == deberta_classifier.model_name
    expected = _engine_rows(deberta_classifier, TEXTS, LABELS, LabelSpec(labels=LABELS).label_set_id)
    assert_results_match(body["results"], expected)

    by_header = client.post(
        "/v1/classify", json={"texts": TEXTS, "labels": LABELS}, headers={"serve_multiplexed_model_id": "deberta"}
    )
    assert by_header.status_code == 200 and by_header.json()["model"] == deberta_classifier.model_name

    for model in (str(tiny_model), "/etc/passwd", "../deberta", "knowledgator/gliclass-edge-v3.0"):
        refused = client.post("/v1/classify", json={"texts": ["t"], "labels": LABELS, "model": model})
        assert refused.status_code == 404, refused.text
        assert "unknown model id" in refused.json()["detail"]
    broken = client.post("/v1/classify", json={"texts": ["t"], "labels": LABELS, "model": "broken"})
    assert broken.status_code == 503 and "could not be loaded" in broken.json()["detail"]
    clash = client.post(
        "/v1/classify",
        json={"texts": ["t"], "labels": LABELS, "model": "default"},
        headers={"serve_multiplexed_model_id": "deberta"},
    )
    assert clash.status_code == 422


def test_batching_settings_change_on_the_running_replica(served: Any) -> None:
    """New batching settings reach every running replica through reconfigure, without a restart."""
    from ray import serve

    client = served["client"]
    replica_before = client.get("/v1/stats").json()["replica"]
    handle = serve.get_deployment_handle("GLiClass", "gliclass-test")
    applied = handle.broadcast("reconfigure", {"max_batch_size": 16, "batch_wait_timeout_s": 0.02}).results()
    assert applied == [{"max_batch_size": 16, "batch_wait_timeout_s": 0.02}]
    info = client.get("/v1/model").json()
    assert info["batching"] == {"max_batch_size": 16, "batch_wait_timeout_s": 0.02, "unit": "texts"}
    assert client.get("/v1/stats").json()["replica"] == replica_before
    assert client.post("/v1/classify", json={"texts": TEXTS, "labels": LABELS}).status_code == 200
    with pytest.raises(Exception, match="max_texts_per_request"):  # would split one request: refused
        handle.broadcast("reconfigure", {"max_batch_size": 4}).results()
    assert client.get("/v1/model").json()["batching"]["max_batch_size"] == 16


def test_gpu_replica_is_scheduled_on_a_gpu_and_says_which_device_it_uses(served: Any) -> None:
    """num_gpus=1 reaches Ray: the replica gets GPU 0; without usable CUDA the engine runs on CPU and says so."""
    if not served["own_ray"]:
        pytest.skip("needs the module's own Ray node with a placeholder GPU")
    import torch

    runtime = served["client"].get("/v1/model").json()["runtime"]
    assert runtime["gpu_ids"] == ["0"]
    assert runtime["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert runtime["torch_threads"] == APP_ARGS["torch_threads"]


def test_builder_arguments_are_validated() -> None:
    from gliclass_dist.ray.serve import ServeArgs

    parsed = ServeArgs.model_validate({"model": "m", "models": "a=/x, b=/y", "max_batch_size": "32", "max_texts_per_request": "16"})
    assert parsed.models == {"a": "/x", "b": "/y"} and parsed.max_batch_size == 32
    with pytest.raises(ValueError, match="max_texts_per_request"):
        ServeArgs.model_validate({"model": "m", "max_batch_size": 4, "max_texts_per_request": 8})
    with pytest.raises(ValueError, match="default model"):
        ServeArgs.model_validate({"model": "m", "models": {"default": "/x"}})
    with pytest.raises(ValueError, match="both"):
        ServeArgs.model_validate({"model": "m", "min_replicas": 1})
    with pytest.raises(ValueError, match="extra"):
        ServeArgs.model_validate({"model": "m", "unknown_knob": 1})
    scaled = ServeArgs.model_validate({"model": "m", "min_replicas": 1, "max_replicas": 3})
    assert scaled.autoscaling_config == {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 32.0}


def test_cli_builds_settings_bound_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    from gliclass_dist.cli import build_parser
    from gliclass_dist.ray.serve import ServeArgs
    from gliclass_dist.ray.serve_cli import settings_from_args

    monkeypatch.delenv("GLICLASS_SERVE_TOKEN", raising=False)
    args = build_parser().parse_args(
        ["serve", "--model", "m", "--port", "8123", "--allow-model", "ft=/ckpt/ft", "--batch-wait-ms", "5"]
    )
    assert args.host == "127.0.0.1" and args.port == 8123 and callable(args.func)
    settings = ServeArgs.model_validate(settings_from_args(args))
    assert settings.models == {"ft": "/ckpt/ft"}
    assert settings.batch_wait_timeout_s == pytest.approx(0.005)
    assert settings.require_auth is False
    monkeypatch.setenv("GLICLASS_SERVE_TOKEN", "abc")
    assert settings_from_args(args)["require_auth"] is True


def test_engine_queue_merges_batches_that_wait_for_the_engine(classifier: Classifier) -> None:
    """Batches queued while the engine is busy run together in the next engine call (no Ray needed)."""
    import asyncio

    from gliclass_dist.ray.serve import BatchStats, ClassifyJob, EngineQueue

    def job(texts: list[str], labels: list[str]) -> ClassifyJob:
        label_set = LabelSpec(labels=labels).label_set_id
        return ClassifyJob(classifier, texts, [labels] * len(texts), label_set, "multi-label", 0.5, None)

    first = [job([TEXTS[0]], LABELS)]
    second = [job([TEXTS[1], TEXTS[2]], LABELS[:2])]
    third = [job([TEXTS[2]], LABELS[1:]), job([TEXTS[0]], LABELS)]
    single_label = [job([TEXTS[1]], LABELS)]
    single_label[0].mode = "single-label"

    async def scenario(max_texts: int) -> tuple[list[Any], BatchStats]:
        stats = BatchStats()
        queue = EngineQueue(stats)
        queue.max_texts = max_texts
        results = await asyncio.gather(*(queue.run(b) for b in (first, second, third, single_label)))
        return results, stats

    results, stats = asyncio.run(scenario(max_texts=64))
    # The first batch found the engine idle; the other three waited and were taken together, as one
    # engine call per (model, mode, threshold, prompt): 4 jobs in multi-label mode, 1 in single-label.
    assert stats.engine_calls == 3
    assert [list(c) for c in stats.recent] == [[1, 1], [3, 4], [1, 1]]
    for batch, outputs in zip((first, second, third, single_label), results):
        for j, output in zip(batch, outputs):
            assert_results_match(output, _engine_rows(classifier, j.texts, j.row_labels, j.label_set, mode=j.mode))

    _, capped = asyncio.run(scenario(max_texts=2))  # an engine call never exceeds max_texts texts
    assert max(t for _, t in capped.recent) <= 2
    assert sum(t for _, t in capped.recent) == 6


def test_serve_package_reads_serve_through_public_apis_only() -> None:
    """The Serve front end uses no private attribute of another object (e.g. serve.batch's
    ``_get_max_batch_size``) and imports no private name: batching settings are reported from what the
    replica applied. (``serve_cli.running_serve_http`` is the one documented private Serve call.)"""
    import ast

    import gliclass_dist.ray.serve as package

    offenders = []
    for path in sorted(Path(package.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                offenders += [f"{path.name}:{node.lineno} imports {a.name}" for a in node.names if a.name.startswith("_")]
            elif (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                offenders.append(f"{path.name}:{node.lineno} reads .{node.attr}")
    assert offenders == []
