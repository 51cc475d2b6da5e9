"""What the Serve test modules share: small request limits, a free local port, a running application."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
