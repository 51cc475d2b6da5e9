"""Online classification: a Ray Serve deployment with a FastAPI ingress and dynamic batching.

Endpoints (OpenAPI at ``/openapi.json``, interactive docs at ``/docs``)::

    POST /v1/classify   {"texts": [...], "labels": [...] | [[...], ...], "mode", "threshold", "prompt", "model"}
    GET  /v1/model      the model reference, its configuration, the batching settings and the limits
    GET  /v1/stats      batching counters of the replica that answers (largest batch seen, ...)
    GET  /healthz       liveness (no auth)

Texts from concurrent requests are merged into one engine call by ``@serve.batch`` (the batch size
counts texts, not requests) and the results are split back per request. The batch size and wait
time come from the deployment's ``user_config``, so ``serve deploy`` with new values adjusts them
on running replicas without a restart.

Safety: every request is bounded (texts per request, characters per text and per label, labels per
row, body bytes, tokens the model reads) and answered with a 413/422 that says which limit was hit. A
body must arrive within ``body_timeout_s`` (408) and at most ``max_pending_bodies`` requests may be
receiving one at once (503 beyond), so stalled uploads cannot take every replica slot. Large requests
run as micro-batches interleaved with other requests' rows (``max_call_cost``). Requests can pick a
model only among ids allow-listed at deploy time (``models``); no request string is ever used as a
path. An optional bearer token (from an environment variable or a file, compared in constant time)
protects ``/v1/*``.

Start it with ``gliclass-dist serve --model DIR`` or
``serve run gliclass_dist.ray.serve:build_app model=DIR`` (see ``ServeArgs`` for every argument).

Modules: ``settings`` (``ServeArgs``, ``BatchingConfig``), ``schemas`` (request and response bodies),
``guards`` (bearer token, body reader, request limits), ``batching`` (``EngineQueue``) and ``deployment``
(``GLiClassDeployment``, ``build_app``). Their public names are importable from here.
"""

from gliclass_dist.ray.serve.batching import BatchStats, ClassifyJob, EngineQueue, count_texts, row_costs
from gliclass_dist.ray.serve.deployment import GLiClassDeployment, api, build_app
from gliclass_dist.ray.serve.guards import (
    PER_ROW_LABEL_SET,
    BodyReader,
    check_bearer,
    check_cost,
    check_limits,
    read_token,
)
from gliclass_dist.ray.serve.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    ClassifyResult,
    LabelScore,
    json_safe_errors,
)
from gliclass_dist.ray.serve.settings import DEFAULT_MODEL_ID, DEFAULT_TOKEN_ENV, BatchingConfig, ServeArgs

__all__ = [
    "DEFAULT_MODEL_ID",
    "DEFAULT_TOKEN_ENV",
    "PER_ROW_LABEL_SET",
    "BatchStats",
    "BatchingConfig",
    "BodyReader",
    "ClassifyJob",
    "ClassifyRequest",
    "ClassifyResponse",
    "ClassifyResult",
    "EngineQueue",
    "GLiClassDeployment",
    "LabelScore",
    "ServeArgs",
    "api",
    "build_app",
    "check_bearer",
    "check_cost",
    "check_limits",
    "count_texts",
    "json_safe_errors",
    "read_token",
    "row_costs",
]
