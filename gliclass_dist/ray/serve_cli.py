"""gliclass-dist serve: run the classification service on Ray Serve (binds to 127.0.0.1 unless --host says otherwise).

The API: POST /v1/classify, GET /v1/model, GET /v1/stats, GET /healthz, OpenAPI docs at /docs; requests are
batched dynamically, bounded by the limits below, and optionally need a bearer token.

Example:
    gliclass-dist serve --model models/gliclass-minilm-bbc --port 8000
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from typing import Any

from gliclass_dist.cli import add_command
from gliclass_dist.settings import add_engine_arguments

logger = logging.getLogger(__name__)

APP_NAME = "gliclass"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "serve", __doc__)
    p.add_argument("--model", required=True, help="checkpoint folder (or hub id) of the default model")
    p.add_argument("--model-id", default="default", help="id of the default model in requests (default: default)")
    p.add_argument(
        "--allow-model",
        action="append",
        default=[],
        metavar="ID=REF",
        help="allow-list an extra checkpoint that requests may select by id (repeatable; multiplexed)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster address to join ('auto': the cluster `ray start` began on this machine); default: "
        "$RAY_ADDRESS if set, else start a local Ray that lives as long as this command",
    )
    p.add_argument("--app-name", default=APP_NAME, help=f"Serve application name (default {APP_NAME})")
    p.add_argument("--route-prefix", default="/", help="route prefix of the application (default /)")
    p.add_argument(
        "--replace",
        action="store_true",
        help="replace a running application of the same name that this command did not start (default: refuse)",
    )
    add_engine_arguments(p.add_argument_group("engine (the default model's revision; every model's settings)"))

    batching = p.add_argument_group("dynamic batching (adjustable later through the deployment's user_config)")
    batching.add_argument("--max-batch-size", type=int, default=64, help="texts merged into one engine call")
    batching.add_argument("--batch-wait-ms", type=float, default=5.0, help="longest wait for a batch to fill")

    limits = p.add_argument_group("request limits")
    limits.add_argument("--max-texts-per-request", type=int, default=64)
    limits.add_argument("--max-chars-per-text", type=int, default=20_000)
    limits.add_argument("--max-labels-per-row", type=int, default=100)
    limits.add_argument("--max-chars-per-label", type=int, default=200)
    limits.add_argument("--max-body-bytes", type=int, default=2_000_000)
    limits.add_argument(
        "--max-request-cost",
        type=int,
        default=131_072,
        help="tokens one request may make the model read (texts x label tokens); above it: 413",
    )
    limits.add_argument(
        "--max-call-cost",
        type=int,
        default=16_384,
        help="tokens per engine call: large requests run as micro-batches interleaved with other requests",
    )
    limits.add_argument(
        "--body-timeout-s", type=float, default=10.0, help="longest wait for a request body (then 408)"
    )
    limits.add_argument(
        "--max-pending-bodies",
        type=int,
        default=64,
        help="requests per replica receiving their body at once; beyond it 503 (keep < --max-ongoing-requests)",
    )

    scaling = p.add_argument_group("replicas and resources")
    scaling.add_argument("--replicas", type=int, default=1, help="fixed number of replicas")
    scaling.add_argument("--min-replicas", type=int, default=None, help="with --max-replicas: autoscale")
    scaling.add_argument("--max-replicas", type=int, default=None)
    scaling.add_argument("--target-ongoing-requests", type=float, default=32.0, help="autoscaling target per replica")
    scaling.add_argument("--max-ongoing-requests", type=int, default=512, help="requests a replica accepts at once")
    scaling.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per replica")
    scaling.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per replica (e.g. 1)")
    scaling.add_argument("--torch-threads", type=int, dest="threads", default=None, help="same as --threads")

    auth = p.add_argument_group("auth (bearer token on /v1/*)")
    auth.add_argument("--token-file", default=None, help="file holding the bearer token")
    auth.add_argument(
        "--token-env",
        default="GLICLASS_SERVE_TOKEN",
        help="environment variable holding the bearer token (default GLICLASS_SERVE_TOKEN); read by the replicas",
    )
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Builder arguments (``ServeArgs`` fields) from the parsed command line."""
    models: dict[str, str] = {}
    for item in args.allow_model:
        model_id, sep, ref = item.partition("=")
        if not sep or not model_id or not ref:
            raise ValueError(f"--allow-model takes ID=REF, got {item!r}")
        models[model_id] = ref
    settings: dict[str, Any] = {
        "model": args.model,
        "model_id": args.model_id,
        "models": models,
        "revision": args.revision,
        "device": args.device,
        "dtype": args.dtype,
        "backend": args.backend,
        "max_length": args.max_length,
        "token_budget": args.token_budget,
        "allow_pickle": args.allow_pickle,
        "torch_threads": args.threads,
        "max_batch_size": args.max_batch_size,
        "batch_wait_timeout_s": args.batch_wait_ms / 1000.0,
        "max_texts_per_request": args.max_texts_per_request,
        "max_chars_per_text": args.max_chars_per_text,
        "max_labels_per_row": args.max_labels_per_row,
        "max_chars_per_label": args.max_chars_per_label,
        "max_body_bytes": args.max_body_bytes,
        "max_request_cost": args.max_request_cost,
        "max_call_cost": args.max_call_cost,
        "body_timeout_s": args.body_timeout_s,
        "max_pending_bodies": args.max_pending_bodies,
        "num_replicas": args.replicas,
        "min_replicas": args.min_replicas,
        "max_replicas": args.max_replicas,
        "target_ongoing_requests": args.target_ongoing_requests,
        "max_ongoing_requests": args.max_ongoing_requests,
        "num_cpus": args.num_cpus,
        "num_gpus": args.num_gpus,
        "token_file": args.token_file,
        "token_env": args.token_env,
        # A token the operator configured must be found by the replicas, or they refuse to start.
        "require_auth": bool(args.token_file or os.environ.get(args.token_env)),
    }
    return settings


def running_serve_http() -> tuple[str, int] | None:
    """Host and port of the HTTP proxies of the Serve instance already running on the connected cluster,
    or None when Serve is not running there.

    Serve's HTTP options are fixed when Serve starts; ``serve.start`` on a running instance ignores new
    ones with only a log line. Ray (2.50-2.60) has no public call that returns them: ``serve.status()``
    gives the proxies' health but not their host/port, and the REST API (``GET /api/serve/applications/``,
    what ``serve status`` reads) needs the dashboard, which a cluster may run without. So this is the one
    place that uses a private Serve API, ``ray.serve.context._get_global_client``, to read the Serve
    controller's details (the same ``ServeInstanceDetails`` the REST API returns)."""
    from ray.serve import context
    from ray.serve.schema import ServeInstanceDetails

    client = context._get_global_client(raise_if_no_controller_running=False)  # noqa: SLF001 - see docstring
    if client is None:
        return None
    http = ServeInstanceDetails(**client.get_serve_details()).http_options
    if http is None:
        return None
    return str(http.host), int(http.port)


def run(args: argparse.Namespace) -> int:
    """Deploy the application and serve until SIGINT/SIGTERM.

    Ownership: with neither ``--address`` nor ``$RAY_ADDRESS`` this command starts its own local Ray and
    Serve and shuts both down on exit. When it joins an existing cluster it touches only its own
    application: it refuses to deploy over a running application of the same name (unless
    ``--replace``), refuses when Serve already listens elsewhere than ``--host``/``--port``, and on exit
    deletes its application only (never ``serve.shutdown()``)."""
    import ray
    from ray import serve

    from gliclass_dist.ray.serve import ServeArgs, build_app

    settings = settings_from_args(args)
    try:
        ServeArgs.model_validate(settings)
    except ValueError as exc:
        print(f"gliclass-dist serve: {exc}")
        return 2
    joined = args.address is not None or bool(os.environ.get("RAY_ADDRESS"))
    # "local" always starts a new Ray (a bare ray.init() would join a `ray start` cluster found on this machine)
    ray.init(address=args.address if joined else "local", include_dashboard=None if joined else False)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    deployed = False
    try:
        running = running_serve_http() if joined else None
        if running is None:
            serve.start(http_options={"host": args.host, "port": args.port})
            host, port = args.host, args.port
        else:
            host, port = running
            if (host, port) != (args.host, args.port):
                print(
                    f"gliclass-dist serve: Serve already runs on this cluster and listens on {host}:{port}, not "
                    f"{args.host}:{args.port}; its HTTP options cannot change while it runs. Re-run with "
                    f"--host {host} --port {port} to add this application to it."
                )
                return 2
        if args.app_name in serve.status().applications and not args.replace:
            print(
                f"gliclass-dist serve: an application named {args.app_name!r} already runs on this cluster and "
                "was not started by this command; pass --replace to replace it, or choose another --app-name"
            )
            return 2
        deployed = True  # from here on the application is ours (new, or replaced on request)
        serve.run(build_app(settings), name=args.app_name, route_prefix=args.route_prefix)
        url = f"http://{host}:{port}{args.route_prefix.rstrip('/')}"
        logger.info(
            "serving %s as application %r at %s (POST /v1/classify, docs at %s/docs); Ctrl-C stops",
            args.model, args.app_name, url, url,
        )  # fmt: skip
        if host not in ("127.0.0.1", "localhost", "::1") and not settings["require_auth"]:
            logger.warning("listening on %s without a bearer token: anyone who reaches it can use it", host)
        stop.wait()
    finally:
        logger.info("stopping")
        if not joined:  # our own Ray: Serve and everything on it are ours
            serve.shutdown()
        elif deployed:  # a shared cluster: remove our application only
            serve.delete(args.app_name)
        ray.shutdown()
    return 0
