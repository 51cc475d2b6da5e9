"""What the Serve test modules share: small request limits, a free local port, a running application, and
result rows compared as the output schema means them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from cluster_helpers import free_port

# Limits small enough that tests can cross each one with a few short strings.
SERVE_LIMITS: dict[str, Any] = {
    "max_texts_per_request": 8,
    "max_chars_per_text": 400,
    "max_labels_per_row": 6,
    "max_chars_per_label": 40,
    "max_body_bytes": 8192,
    "num_cpus": 1,
    "torch_threads": 1,
}


@contextlib.contextmanager
def running_app(args: dict[str, Any], name: str, port: int | None = None) -> Iterator[str]:
    """``build_app(args)`` served on 127.0.0.1 under ``name`` at ``/``; yields its base URL, shuts Serve down."""
    from ray import serve

    from gliclass_dist.ray.serve import build_app

    port = port or free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(args), name=name, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def assert_results_match(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Result rows equal as the output schema means it: same statuses, labels and names; scores within 1e-5."""
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        for key in ("labels", "top_label", "status", "model", "label_set"):
            assert g[key] == e[key], (key, g, e)
        assert [s["label"] for s in g["scores"]] == [s["label"] for s in e["scores"]]
        for gs, es in zip(g["scores"], e["scores"]):
            assert gs["score"] == pytest.approx(es["score"], abs=1e-5)
        if e["top_score"] is None:
            assert g["top_score"] is None
        else:
            assert g["top_score"] == pytest.approx(e["top_score"], abs=1e-5)
