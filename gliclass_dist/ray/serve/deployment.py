"""The Serve deployment (``GLiClassDeployment``: FastAPI routes, model loading and multiplexing, metrics,
batching settings) and the application builder ``build_app``."""

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

import ray
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from ray import serve
from ray.serve import Application

from gliclass_dist.ray.serve.batching import (
    BatchStats,
    ClassifyJob,
    EngineQueue,
    count_texts,
    encode_request,
    encoded_costs,
)
from gliclass_dist.ray.serve.guards import (
    BodyReader,
    Credentials,
    check_bearer,
    check_cost,
    check_limits,
    read_token,
)
from gliclass_dist.ray.serve.schemas import (
    REQUEST_BODY_DOC,
    ClassifyRequest,
    ClassifyResponse,
    json_safe_errors,
)
from gliclass_dist.ray.serve.settings import BatchingConfig, ServeArgs
from gliclass_dist.worker import OMP_WAIT_POLICY, configure_worker

logger = logging.getLogger(__name__)

MAX_MODELS_PER_REPLICA = 3  # allow-listed checkpoints kept loaded per replica (LRU) besides the default one
# serve.batch batches that may wait inside the handler for the engine (where EngineQueue merges them);
# more wait at serve.batch's own semaphore.
MAX_CONCURRENT_BATCHES = 8
BATCH_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]

api = FastAPI(
    title="gliclass-dist",
    summary="Zero-shot text classification with GLiClass",
    description="Score texts against any labels. Texts of concurrent requests are batched together.",
    version="1",
)


@serve.deployment(name="GLiClass", max_ongoing_requests=512, max_constructor_retry_count=3)
@serve.ingress(api)
class GLiClassDeployment:
    """A replica: the default model (loaded once), allow-listed extra models on demand, a batch queue."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = ServeArgs.model_validate(settings)
        threads = self.settings.threads
        configure_worker(threads=threads)
        self.token = read_token(self.settings.token_file, self.settings.token_env)
        if self.settings.require_auth and not self.token:
            raise RuntimeError(
                f"require_auth is set but no token was found (token_file={self.settings.token_file!r}, "
                f"${self.settings.token_env} unset or empty)"
            )
        self.default = self._load(self.settings.model)
        self.stats = BatchStats()
        self.started = time.time()
        self._init_metrics()
        self.engine = EngineQueue(self.stats, self.metric_batch_texts.observe)
        self.engine.max_cost = self.settings.max_call_cost
        self.bodies = BodyReader(self.settings)
        self.apply_batching(BatchingConfig(**self.settings.batching))
        logger.info(
            "replica ready: model=%s auth=%s torch_threads=%d", self.default.model_name, bool(self.token), threads
        )

    def _load(self, ref: str) -> Any:
        from gliclass_dist.engine import Classifier

        return Classifier.from_settings(self.settings.engine_settings(ref))

    def _init_metrics(self) -> None:
        from ray.util import metrics

        self.metric_requests = metrics.Counter(
            "gliclass_serve_requests", description="classify requests answered", tag_keys=("model_id",)
        )
        self.metric_texts = metrics.Counter(
            "gliclass_serve_texts", description="texts classified", tag_keys=("model_id",)
        )
        self.metric_batch_texts = metrics.Histogram(
            "gliclass_serve_engine_call_texts",
            description="texts merged into one engine call",
            boundaries=BATCH_SIZE_BUCKETS,
        )
        self.metric_batch_requests = metrics.Histogram(
            "gliclass_serve_batch_requests",
            description="requests that met in one serve.batch window",
            boundaries=BATCH_SIZE_BUCKETS,
        )

    # -- runtime configuration ----------------------------------------------------------------
    def reconfigure(self, user_config: dict[str, Any]) -> dict[str, Any]:
        """Apply new batching settings to this replica.

        Serve calls it when the deployment's ``user_config`` changes (``serve deploy`` / RayService with
        new ``max_batch_size`` / ``batch_wait_timeout_s``: no restart). To change running replicas at
        once without a redeploy: ``serve.get_deployment_handle("GLiClass", APP).broadcast("reconfigure",
        {"max_batch_size": 32})`` (replicas started later get the deployed user_config).
        """
        config = BatchingConfig.model_validate(user_config or {})
        self.apply_batching(config)
        return config.model_dump()

    def apply_batching(self, config: BatchingConfig) -> None:
        if config.max_batch_size < self.settings.max_texts_per_request:
            raise ValueError(
                f"max_batch_size ({config.max_batch_size}) must be >= max_texts_per_request "
                f"({self.settings.max_texts_per_request})"
            )
        self._classify_batch.set_max_batch_size(config.max_batch_size)
        self.engine.max_texts = config.max_batch_size
        self._classify_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self.batching = config  # what /v1/model reports (serve.batch has no public getter)
        logger.info("batching: %s", config.model_dump())

    # -- models -------------------------------------------------------------------------------
    @serve.multiplexed(max_num_models_per_replica=MAX_MODELS_PER_REPLICA)
    async def _load_allowed(self, model_id: str) -> Any:
        # Only ids from the deploy-time allow-list get here; the ref comes from the settings.
        ref = self.settings.models[model_id]
        return await asyncio.to_thread(self._load, ref)

    async def _classifier_for(self, requested: str | None) -> tuple[str, Any]:
        header = serve.get_multiplexed_model_id()
        if requested and header and requested != header:
            raise HTTPException(
                422, f"the body asks for model {requested!r} but the serve_multiplexed_model_id header for {header!r}"
            )
        model_id = requested or header or self.settings.model_id
        if model_id == self.settings.model_id:
            return model_id, self.default
        if model_id not in self.settings.models:
            offered = [self.settings.model_id, *self.settings.models]
            raise HTTPException(404, f"unknown model id {model_id[:100]!r}; this server offers {offered}")
        try:
            return model_id, await self._load_allowed(model_id)
        except Exception as exc:  # noqa: BLE001 - an allow-listed checkpoint that does not load
            logger.exception("allow-listed model %r failed to load", model_id)
            raise HTTPException(503, f"model {model_id!r} could not be loaded: {type(exc).__name__}") from None

    # -- batching -----------------------------------------------------------------------------
    @serve.batch(
        max_batch_size=64,
        batch_wait_timeout_s=0.005,
        max_concurrent_batches=MAX_CONCURRENT_BATCHES,
        batch_size_fn=count_texts,
    )
    async def _classify_batch(self, jobs: list[ClassifyJob]) -> list[list[dict[str, Any]] | Exception]:
        """Requests that met in the batch window; merged with other waiting batches into engine calls."""
        self.stats.record_batch(len(jobs), count_texts(jobs))
        self.metric_batch_requests.observe(len(jobs))
        return await self.engine.run(jobs)

    # -- HTTP routes ----------------------------------------------------------------------------
    @api.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        openapi_extra=REQUEST_BODY_DOC,
        responses={
            401: {"description": "missing or wrong bearer token"},
            404: {"description": "unknown model id"},
            408: {"description": "the request body did not arrive within body_timeout_s"},
            413: {"description": "request body too large, or the request's cost over max_request_cost"},
            422: {"description": "malformed request (e.g. a threshold that is NaN, infinite or outside [0, 1]) "
                  "or a limit exceeded"},
            503: {"description": "too many requests are sending their bodies (max_pending_bodies)"},
        },
    )
    async def classify(self, request: Request, credentials: Credentials) -> dict[str, Any]:
        """Classify ``texts`` against ``labels``; one result per text, in input order."""
        check_bearer(self.token, credentials)
        body = await self.bodies.read(request)
        try:
            req = ClassifyRequest.model_validate_json(body)
        except ValidationError as exc:
            raise RequestValidationError(json_safe_errors(exc.errors(include_url=False))) from None
        row_labels, label_set = check_limits(req, self.settings)
        model_id, classifier = await self._classifier_for(req.model)
        # the encoding step, once: its token counts are the request's cost, its rows go to the scoring step
        encoded = await asyncio.to_thread(encode_request, classifier, req.texts, row_labels, req.prompt)
        costs = encoded_costs(encoded)
        check_cost(costs, self.settings.max_request_cost)
        job = ClassifyJob(
            classifier=classifier,
            texts=list(req.texts),
            row_labels=row_labels,
            label_set=label_set,
            mode=req.mode,
            threshold=req.threshold,
            prompt=req.prompt,
            costs=costs,
            encoded=encoded,
        )
        output = await self._classify_batch(job)
        if isinstance(output, Exception):
            raise HTTPException(500, f"classification failed: {type(output).__name__}: {output}"[:500])
        self.metric_requests.inc(tags={"model_id": model_id})
        self.metric_texts.inc(len(req.texts), tags={"model_id": model_id})
        return {"model": classifier.model_name, "model_id": model_id, "results": output}

    @api.get("/v1/model")
    async def model_info(self, credentials: Credentials) -> dict[str, Any]:
        """The served model: reference, configuration summary, batching settings and limits."""
        check_bearer(self.token, credentials)
        clf = self.default
        cfg = clf.model.config
        return {
            "model": clf.model_name,
            "model_id": self.settings.model_id,
            "ref": self.settings.model,
            "models": [self.settings.model_id, *self.settings.models],
            "config": {
                "architecture_type": getattr(cfg, "architecture_type", None),
                "encoder": getattr(getattr(cfg, "encoder_config", None), "model_type", None),
                "pooling_strategy": getattr(cfg, "pooling_strategy", None),
                "scorer_type": getattr(cfg, "scorer_type", None),
                "max_length": clf.builder.max_length,
            },
            "runtime": {
                "device": str(clf.device),
                "dtype": str(clf.dtype).replace("torch.", ""),
                "backend": clf.backend,
                "token_budget": clf.token_budget,
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()],  # what Ray assigned this replica
                "torch_threads": torch.get_num_threads(),
            },
            "batching": {**self.batching.model_dump(), "unit": "texts"},
            "limits": self.settings.limits,
            "auth": self.token is not None,
        }

    @api.get("/v1/stats")
    async def batch_stats(self, credentials: Credentials) -> dict[str, Any]:
        """Batching counters of this replica (the largest batch seen, ...) and the engine's counters."""
        check_bearer(self.token, credentials)
        context = serve.get_replica_context()
        return {
            "replica": context.replica_id.unique_id,
            "uptime_s": round(time.time() - self.started, 1),
            "batching": self.stats.as_dict(),
            "engine": dict(self.default.stats),
        }

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """Liveness: the replica is up and its default model is loaded."""
        return {"status": "ok", "model": self.default.model_name}


# -- application builder ------------------------------------------------------------------------------
def _absolute_if_local(ref: str) -> str:
    path = Path(ref).expanduser()
    return str(path.resolve()) if path.exists() else ref


def build_app(args: dict[str, Any]) -> Application:
    """Build the Serve application from builder arguments (see ``ServeArgs``).

    Works with ``serve run gliclass_dist.ray.serve:build_app model=DIR max_batch_size=32``, a Serve
    config file (``import_path: gliclass_dist.ray.serve:build_app`` + ``args``) and KubeRay's RayService.
    """
    settings = ServeArgs.model_validate(dict(args))
    settings = settings.model_copy(
        update={
            "model": _absolute_if_local(settings.model),
            "models": {k: _absolute_if_local(v) for k, v in settings.models.items()},
            "token_file": str(Path(settings.token_file).expanduser().resolve()) if settings.token_file else None,
        }
    )
    # the wait policy must be in the replica's environment before its process loads torch (gliclass_dist.worker)
    env = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", OMP_WAIT_POLICY)}
    actor_options: dict[str, Any] = {"num_cpus": settings.num_cpus, "runtime_env": {"env_vars": env}}
    if settings.num_gpus:
        actor_options["num_gpus"] = settings.num_gpus
    options: dict[str, Any] = {
        "ray_actor_options": actor_options,
        "max_ongoing_requests": settings.max_ongoing_requests,
        "user_config": settings.batching,
    }
    if settings.autoscaling_config is not None:
        options["autoscaling_config"] = settings.autoscaling_config
    else:
        options["num_replicas"] = settings.num_replicas
    return GLiClassDeployment.options(**options).bind(settings.model_dump())


__all__ = ["ServeArgs", "BatchingConfig", "ClassifyRequest", "ClassifyResponse", "GLiClassDeployment", "build_app", "api"]
