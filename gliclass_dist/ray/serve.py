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
"""

import asyncio
import hmac
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import ray
import torch
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ray import serve
from ray.serve import Application

from gliclass_dist.labels import LabelSpec, check_prompt

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "default"
DEFAULT_TOKEN_ENV = "GLICLASS_SERVE_TOKEN"
MAX_MODELS_PER_REPLICA = 3  # allow-listed checkpoints kept loaded per replica (LRU) besides the default one
PER_ROW_LABEL_SET = "per-row"
# serve.batch batches that may wait inside the handler for the engine (where EngineQueue merges them);
# more wait at serve.batch's own semaphore.
MAX_CONCURRENT_BATCHES = 8
BATCH_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
# While max_pending_bodies requests are receiving their bodies, a new request is read only if its body
# arrives in full within this many seconds (a small JSON body does); otherwise it gets a 503 at once.
BODY_GRACE_S = 1.0


# -- deploy-time settings -------------------------------------------------------------------------
class ServeArgs(BaseModel):
    """Arguments of the application builder (``serve run ... key=value`` or a Serve config's ``args``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="checkpoint folder (or hub id) of the default model")
    model_id: str = Field(DEFAULT_MODEL_ID, description="id under which the default model is served")
    models: dict[str, str] = Field(
        default_factory=dict,
        description="allow-listed extra checkpoints, id -> folder/hub id, served by multiplexing; "
        "also accepted as 'id=ref,id2=ref2'",
    )
    device: str = "auto"
    dtype: str = "auto"
    max_length: int | None = Field(None, gt=8)
    token_budget: int | None = Field(None, gt=0, description="padded tokens per forward pass (default: 2k CPU, 16k GPU)")
    allow_pickle: bool = False
    torch_threads: int | None = Field(None, ge=1, description="intra-op threads (default: the replica's CPUs)")

    # dynamic batching (runtime-adjustable through user_config)
    max_batch_size: int = Field(64, ge=1, description="texts merged into one engine call")
    batch_wait_timeout_s: float = Field(0.005, ge=0.0, le=10.0, description="longest wait for a batch to fill")

    # limits
    max_texts_per_request: int = Field(64, ge=1)
    max_chars_per_text: int = Field(20_000, ge=1)
    max_labels_per_row: int = Field(100, ge=1)
    max_chars_per_label: int = Field(200, ge=1)
    max_body_bytes: int = Field(2_000_000, ge=64)
    max_request_cost: int = Field(
        131_072,
        ge=1,
        description="tokens one request may make the model read (texts x label tokens, every label chunk "
        "with its text); above it: 413",
    )
    max_call_cost: int = Field(
        16_384,
        ge=1,
        description="tokens of one engine call (a micro-batch): large requests are split and interleaved "
        "with other requests' rows, so a small request never waits behind whole large ones",
    )
    body_timeout_s: float = Field(
        10.0, gt=0, le=600, description="longest wait for a request body to arrive in full (then 408)"
    )
    max_pending_bodies: int = Field(
        64,
        ge=1,
        description="requests of a replica that may be receiving their body at once; beyond it, a body that "
        f"does not arrive within {BODY_GRACE_S:g} s is refused with 503 (keep < max_ongoing_requests)",
    )

    # scaling and resources
    num_replicas: int = Field(1, ge=1)
    min_replicas: int | None = Field(None, ge=0, description="set min/max replicas to turn autoscaling on")
    max_replicas: int | None = Field(None, ge=1)
    target_ongoing_requests: float = Field(32.0, gt=0)
    max_ongoing_requests: int = Field(
        512, ge=1, description="requests a replica holds at once; keep >= max_batch_size * MAX_CONCURRENT_BATCHES"
    )
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)

    # auth
    token_env: str = Field(DEFAULT_TOKEN_ENV, description="environment variable holding the bearer token")
    token_file: str | None = Field(None, description="file holding the bearer token (wins over token_env)")
    require_auth: bool = Field(False, description="refuse to start when no token is configured")

    @field_validator("models", mode="before")
    @classmethod
    def _parse_models(cls, value: Any) -> Any:
        if isinstance(value, str):
            pairs: dict[str, str] = {}
            for item in filter(None, (part.strip() for part in value.split(","))):
                model_id, sep, ref = item.partition("=")
                if not sep or not model_id.strip() or not ref.strip():
                    raise ValueError(f"models: expected 'id=ref' items separated by commas, got {item!r}")
                pairs[model_id.strip()] = ref.strip()
            return pairs
        return value

    @model_validator(mode="after")
    def _check(self) -> "ServeArgs":
        if self.model_id in self.models:
            raise ValueError(f"models: id {self.model_id!r} is the default model's id (model_id)")
        for model_id in [self.model_id, *self.models]:
            if not model_id or len(model_id) > 100 or any(c.isspace() for c in model_id):
                raise ValueError(f"model id {model_id!r}: use 1-100 characters without whitespace")
        if self.max_batch_size < self.max_texts_per_request:
            raise ValueError(
                f"max_batch_size ({self.max_batch_size}) must be >= max_texts_per_request "
                f"({self.max_texts_per_request}): a request's texts always enter one Serve batch together"
            )
        if self.max_pending_bodies >= self.max_ongoing_requests:
            raise ValueError(
                f"max_pending_bodies ({self.max_pending_bodies}) must be < max_ongoing_requests "
                f"({self.max_ongoing_requests}): slow bodies must leave room for other requests and /healthz"
            )
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("autoscaling needs both min_replicas and max_replicas")
        if self.min_replicas is not None and self.max_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        return self

    @property
    def autoscaling_config(self) -> dict[str, Any] | None:
        if self.min_replicas is None:
            return None
        return {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
        }

    @property
    def batching(self) -> dict[str, Any]:
        return {"max_batch_size": self.max_batch_size, "batch_wait_timeout_s": self.batch_wait_timeout_s}

    @property
    def limits(self) -> dict[str, int | float]:
        return {
            "max_texts_per_request": self.max_texts_per_request,
            "max_chars_per_text": self.max_chars_per_text,
            "max_labels_per_row": self.max_labels_per_row,
            "max_chars_per_label": self.max_chars_per_label,
            "max_body_bytes": self.max_body_bytes,
            "max_request_cost": self.max_request_cost,
            "body_timeout_s": self.body_timeout_s,
            "max_pending_bodies": self.max_pending_bodies,
        }


class BatchingConfig(BaseModel):
    """The deployment's ``user_config``: applied to running replicas by ``reconfigure``."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(64, ge=1)
    batch_wait_timeout_s: float = Field(0.005, ge=0.0, le=10.0)


# -- request / response -----------------------------------------------------------------------------
Threshold = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class ClassifyRequest(BaseModel):
    """Texts to classify and the labels to score them against."""

    model_config = ConfigDict(extra="forbid")

    texts: list[str | None] = Field(min_length=1, description="texts to classify (null => status empty_text)")
    labels: list[str] | list[list[str]] = Field(
        description="one label list for every text, or one list per text (same length as texts)"
    )
    mode: Literal["multi-label", "single-label"] = "multi-label"
    threshold: Threshold | dict[str, Threshold] = Field(
        0.5, description="decision threshold, or a mapping label -> threshold (others use 0.5); finite, in [0, 1]"
    )
    prompt: str | None = Field(None, description="optional task description placed with the labels")
    model: str | None = Field(None, description="an allow-listed model id (default: the default model)")

    @field_validator("prompt")
    @classmethod
    def _no_marker_in_prompt(cls, value: str | None) -> str | None:
        return check_prompt(value)  # a marker string would shift the label slots of every row: 422


def json_safe_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validation errors that encode as strict JSON: an echoed input that does not (NaN, Infinity, 1e400,
    raw bytes of a body that is not JSON) is replaced by its repr (bytes: dropped), so the answer is a 422
    that names the bad value rather than a 500 from the error encoder."""
    for error in errors:
        if "input" not in error:
            continue
        value = error["input"]
        if isinstance(value, bytes | bytearray):  # the raw body of invalid JSON: not echoed
            del error["input"]
            continue
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            error["input"] = repr(value)[:200]
    return errors


class LabelScore(BaseModel):
    label: str
    score: float


class ClassifyResult(BaseModel):
    """One text's result: the result columns of the output schema."""

    labels: list[str]
    scores: list[LabelScore]
    top_label: str | None
    top_score: float | None
    status: str
    model: str
    label_set: str


class ClassifyResponse(BaseModel):
    model: str = Field(description="name of the model that produced the results")
    model_id: str
    results: list[ClassifyResult] = Field(description="one result per input text, in input order")


# -- batching -------------------------------------------------------------------------------------
@dataclass
class _Job:
    """One validated request waiting in the batch queue; ``costs`` are its rows' token counts."""

    classifier: Any
    texts: list[str | None]
    row_labels: list[list[str]]
    label_set: str
    mode: str
    threshold: float | dict[str, float]
    prompt: str | None
    costs: list[int] = field(default_factory=list)

    def group_key(self) -> tuple[Any, ...]:
        threshold = tuple(sorted(self.threshold.items())) if isinstance(self.threshold, dict) else self.threshold
        return (id(self.classifier), self.mode, threshold, self.prompt)

    def cost(self, row: int) -> int:
        return self.costs[row] if self.costs else 0


def count_texts(jobs: Sequence[_Job]) -> int:
    """Batch size measured in texts (``batch_size_fn`` of ``serve.batch``)."""
    return sum(len(job.texts) for job in jobs)


def row_costs(classifier: Any, texts: Sequence[str | None], row_labels: Sequence[list[str]], prompt: str | None) -> list[int]:
    """Tokens the model reads for each row (every label chunk with its text); 0 for rows it does not score.

    The unit of ``max_request_cost`` and ``max_call_cost``: it grows with texts x label tokens.
    """
    from gliclass_dist.engine import prepare_rows

    _, encoded = prepare_rows(classifier.builder, texts, row_labels, prompt)
    return [sum(len(chunk) for chunk in row.chunks) if row is not None else 0 for row in encoded]


@dataclass
class BatchStats:
    """Counters of what the replica merged: Serve batches (requests that met in the batch window) and
    engine calls (what the model actually ran at once, after merging the batches that waited)."""

    requests: int = 0
    texts: int = 0
    batches: int = 0
    max_batch_requests: int = 0
    engine_calls: int = 0
    max_engine_call_requests: int = 0
    max_engine_call_texts: int = 0
    recent: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=32))  # engine calls

    def record_batch(self, requests: int, texts: int) -> None:
        self.requests += requests
        self.texts += texts
        self.batches += 1
        self.max_batch_requests = max(self.max_batch_requests, requests)

    def record_engine_call(self, requests: int, texts: int) -> None:
        self.engine_calls += 1
        self.max_engine_call_requests = max(self.max_engine_call_requests, requests)
        self.max_engine_call_texts = max(self.max_engine_call_texts, texts)
        self.recent.append((requests, texts))

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "texts": self.texts,
            "batches": self.batches,
            "max_batch_requests": self.max_batch_requests,
            "engine_calls": self.engine_calls,
            "max_engine_call_requests": self.max_engine_call_requests,
            "max_engine_call_texts": self.max_engine_call_texts,
            "mean_engine_call_texts": round(self.texts / self.engine_calls, 3) if self.engine_calls else 0.0,
            "recent_engine_calls": [{"requests": r, "texts": t} for r, t in self.recent],
        }


def _run_group(slices: Sequence[tuple[_Job, int, int]]) -> list[list[dict[str, Any]]]:
    """One engine call for row slices of jobs that share model, mode, threshold and prompt; results split
    per slice."""
    from gliclass_dist.engine import predictions_to_arrow

    first = slices[0][0]
    texts = [text for job, a, b in slices for text in job.texts[a:b]]
    row_labels = [labels for job, a, b in slices for labels in job.row_labels[a:b]]
    preds = first.classifier.classify(
        texts, row_labels, mode=first.mode, threshold=first.threshold, prompt=first.prompt
    )
    out: list[list[dict[str, Any]]] = []
    start = 0
    for job, a, b in slices:
        end = start + b - a
        out.append(predictions_to_arrow(preds[start:end], first.classifier.model_name, job.label_set).to_pylist())
        start = end
    return out


@dataclass(eq=False)
class _Queued:
    """A job in the engine queue: the rows taken so far and the results of those done."""

    job: _Job
    future: asyncio.Future
    taken: int = 0
    results: list[dict[str, Any]] = field(default_factory=list)


class EngineQueue:
    """Runs engine calls one at a time; each call is a micro-batch of rows taken round-robin from every
    waiting job (at most ``max_texts`` rows and ``max_cost`` tokens, at least one row).

    ``serve.batch`` forms a batch from the requests that arrive within its wait window, even while
    the engine is still busy with the previous one. On a CPU, where an engine call takes far longer
    than the window, that leaves several small batches waiting. Here they merge: whichever batch
    gets the engine next runs rows of all the jobs that are waiting by then, so engine calls grow
    with the load and add no delay when the server is idle. Taking rows round-robin keeps it fair: a
    large request is split into several micro-batches, and a small request that arrives meanwhile
    is in the next engine call instead of waiting behind whole large requests.
    """

    def __init__(self, stats: BatchStats, observe_call: Callable[[int], None] | None = None) -> None:
        self.stats = stats
        self.observe_call = observe_call
        self.max_texts = 64
        self.max_cost = 16_384
        self._pending: list[_Queued] = []
        self._lock: asyncio.Lock | None = None

    async def run(self, jobs: Sequence[_Job]) -> list[list[dict[str, Any]] | Exception]:
        loop = asyncio.get_running_loop()
        if self._lock is None:
            self._lock = asyncio.Lock()
        queued = [_Queued(job, loop.create_future()) for job in jobs]
        self._pending.extend(queued)
        while not all(q.future.done() for q in queued):
            async with self._lock:
                if all(q.future.done() for q in queued):
                    break
                await self._execute(self._take())
        return [q.future.result() for q in queued]

    def _take(self) -> list[tuple[_Queued, int, int]]:
        """The next micro-batch: one row from each waiting job in turn (oldest first) until it is full."""
        start = {id(q): q.taken for q in self._pending}
        rows = cost = 0
        full = False
        while not full:
            progress = False
            for q in self._pending:
                if q.taken >= len(q.job.texts):
                    continue
                row_cost = q.job.cost(q.taken)
                if rows and (rows >= self.max_texts or cost + row_cost > self.max_cost):
                    full = True
                    break
                q.taken += 1
                rows += 1
                cost += row_cost
                progress = True
            full = full or not progress
        return [(q, start[id(q)], q.taken) for q in self._pending if q.taken > start[id(q)]]

    def _finish(self, q: _Queued, output: list[dict[str, Any]] | Exception) -> None:
        if not q.future.done():
            q.future.set_result(output)
        if q in self._pending:
            self._pending.remove(q)

    async def _execute(self, taken: list[tuple[_Queued, int, int]]) -> None:
        """Run the taken rows, one engine call per group; every taken job ends resolved or still queued
        with its remaining rows, even on cancel."""
        groups: dict[tuple[Any, ...], list[tuple[_Queued, int, int]]] = {}
        for item in taken:
            groups.setdefault(item[0].job.group_key(), []).append(item)
        try:
            for members in groups.values():
                slices = [(q.job, a, b) for q, a, b in members]
                texts = sum(b - a for _, a, b in slices)
                self.stats.record_engine_call(len(slices), texts)
                if self.observe_call is not None:
                    self.observe_call(texts)
                try:
                    outputs: Sequence[Any] = await asyncio.to_thread(_run_group, slices)
                except Exception as exc:  # noqa: BLE001 - fail only the requests of this call
                    logger.exception("engine call for %d requests failed", len(slices))
                    outputs = [exc] * len(slices)
                for (q, _, b), output in zip(members, outputs):
                    if isinstance(output, Exception):
                        self._finish(q, output)
                        continue
                    q.results.extend(output)
                    if b == len(q.job.texts):
                        self._finish(q, q.results)
        finally:  # cancelled mid-way: the requests taken here must not wait forever
            for q, _, b in taken:
                if not q.future.done() and len(q.results) < b:
                    self._finish(q, RuntimeError("the engine call was cancelled"))


# -- auth ---------------------------------------------------------------------------------------------
def read_token(token_file: str | None, token_env: str) -> str | None:
    """The configured bearer token: the file's content (stripped) if a file is given, else the env var."""
    if token_file:
        path = Path(token_file)
        if not path.is_file():
            raise RuntimeError(f"token_file {token_file!r} does not exist")
        token = path.read_text().strip()
        if not token:
            raise RuntimeError(f"token_file {token_file!r} is empty")
        return token
    token = os.environ.get(token_env, "").strip()
    return token or None


bearer_scheme = HTTPBearer(auto_error=False, description="the token set with --token-file / $GLICLASS_SERVE_TOKEN")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]

api = FastAPI(
    title="gliclass-dist",
    summary="Zero-shot text classification with GLiClass",
    description="Score texts against any labels. Texts of concurrent requests are batched together.",
    version="1",
)

_REQUEST_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": ClassifyRequest.model_json_schema()}},
    }
}


# -- the deployment -------------------------------------------------------------------------------------
@serve.deployment(name="GLiClass", max_ongoing_requests=512, max_constructor_retry_count=3)
@serve.ingress(api)
class GLiClassDeployment:
    """A replica: the default model (loaded once), allow-listed extra models on demand, a batch queue."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = ServeArgs.model_validate(settings)
        threads = self.settings.torch_threads or max(1, int(self.settings.num_cpus or 1))
        torch.set_num_threads(threads)
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
        self.body_slots = asyncio.Semaphore(self.settings.max_pending_bodies)
        self.apply_batching(BatchingConfig(**self.settings.batching))
        logger.info(
            "replica ready: model=%s auth=%s torch_threads=%d", self.default.model_name, bool(self.token), threads
        )

    def _load(self, ref: str) -> Any:
        from gliclass_dist.engine import Classifier

        s = self.settings
        return Classifier.from_pretrained(
            ref,
            device=s.device,
            dtype=s.dtype,
            max_length=s.max_length,
            token_budget=s.token_budget,
            allow_pickle=s.allow_pickle,
        )

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

    # -- auth ---------------------------------------------------------------------------------
    def _authorize(self, credentials: HTTPAuthorizationCredentials | None) -> None:
        if self.token is None:
            return
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(credentials.credentials.encode(), self.token.encode()):
            raise HTTPException(401, "invalid bearer token", headers={"WWW-Authenticate": "Bearer"})

    # -- request checks -----------------------------------------------------------------------
    async def _read_body(self, request: Request) -> bytes:
        """The request body, bounded in size (413), in time (408 after ``body_timeout_s``) and in how many
        requests may be receiving a body at once (``max_pending_bodies``; beyond it 503, unless the body
        arrives in full within ``BODY_GRACE_S``). A client that declares a body and stalls therefore holds
        a replica slot for a bounded time, and never all of them: ``/healthz`` and other requests still run."""
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise HTTPException(413, f"request body is {declared} bytes; the limit is {limit}")

        async def read() -> bytes:
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
            return bytes(body)

        timeout = self.settings.body_timeout_s
        if self.body_slots.locked():  # at the cap: only a body that is already on its way in full
            try:
                return await asyncio.wait_for(read(), min(BODY_GRACE_S, timeout))
            except TimeoutError:
                raise HTTPException(
                    503,
                    f"{self.settings.max_pending_bodies} requests are already sending their bodies; retry later",
                    headers={"Retry-After": "1"},
                ) from None
        async with self.body_slots:
            try:
                return await asyncio.wait_for(read(), timeout)
            except TimeoutError:
                raise HTTPException(408, f"the request body did not arrive within {timeout:g} s") from None

    def _check_limits(self, req: ClassifyRequest) -> tuple[list[list[str]], str]:
        """Enforce the limits; returns each text's labels and the label set id."""
        s = self.settings
        if len(req.texts) > s.max_texts_per_request:
            raise HTTPException(422, f"texts: {len(req.texts)} texts; the limit is {s.max_texts_per_request} per request")
        for i, text in enumerate(req.texts):
            if text is not None and len(text) > s.max_chars_per_text:
                raise HTTPException(
                    422, f"texts[{i}]: {len(text)} characters; the limit is {s.max_chars_per_text} per text"
                )
        if req.prompt is not None and len(req.prompt) > s.max_chars_per_text:
            raise HTTPException(422, f"prompt: {len(req.prompt)} characters; the limit is {s.max_chars_per_text}")
        per_row = bool(req.labels) and isinstance(req.labels[0], list)
        rows: list[list[str]] = req.labels if per_row else [req.labels]  # type: ignore[list-item,assignment]
        if per_row and len(rows) != len(req.texts):
            raise HTTPException(422, f"labels: {len(rows)} label lists for {len(req.texts)} texts; give one per text")
        for r, row in enumerate(rows):
            where = f"labels[{r}]" if per_row else "labels"
            if len(row) > s.max_labels_per_row:
                raise HTTPException(422, f"{where}: {len(row)} labels; the limit is {s.max_labels_per_row} per row")
            for label in row:
                if len(label) > s.max_chars_per_label:
                    raise HTTPException(
                        422, f"{where}: a label of {len(label)} characters; the limit is {s.max_chars_per_label}"
                    )
        if per_row:  # per-row labels are data: the engine cleans each row and says so in its status
            return rows, PER_ROW_LABEL_SET
        threshold = req.threshold
        try:
            spec = LabelSpec(
                labels=rows[0],
                mode=req.mode,
                threshold=threshold if isinstance(threshold, float | int) else 0.5,
                thresholds=threshold if isinstance(threshold, dict) else {},
                prompt=req.prompt,
            )
        except ValidationError as exc:
            raise HTTPException(422, "; ".join(e["msg"] for e in exc.errors(include_url=False))) from None
        labels = spec.fixed or []
        return [labels] * len(req.texts), spec.label_set_id

    # -- batching -----------------------------------------------------------------------------
    @serve.batch(
        max_batch_size=64,
        batch_wait_timeout_s=0.005,
        max_concurrent_batches=MAX_CONCURRENT_BATCHES,
        batch_size_fn=count_texts,
    )
    async def _classify_batch(self, jobs: list[_Job]) -> list[list[dict[str, Any]] | Exception]:
        """Requests that met in the batch window; merged with other waiting batches into engine calls."""
        self.stats.record_batch(len(jobs), count_texts(jobs))
        self.metric_batch_requests.observe(len(jobs))
        return await self.engine.run(jobs)

    # -- HTTP routes ----------------------------------------------------------------------------
    @api.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        openapi_extra=_REQUEST_BODY_DOC,
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
        self._authorize(credentials)
        body = await self._read_body(request)
        try:
            req = ClassifyRequest.model_validate_json(body)
        except ValidationError as exc:
            raise RequestValidationError(json_safe_errors(exc.errors(include_url=False))) from None
        row_labels, label_set = self._check_limits(req)
        model_id, classifier = await self._classifier_for(req.model)
        costs = await asyncio.to_thread(row_costs, classifier, req.texts, row_labels, req.prompt)
        cost, cap = sum(costs), self.settings.max_request_cost
        if cost > cap:
            raise HTTPException(
                413,
                f"request cost is {cost} tokens (texts x label tokens the model would read); the limit is "
                f"{cap} (max_request_cost): send fewer texts or fewer/shorter labels per request",
            )
        job = _Job(
            classifier=classifier,
            texts=list(req.texts),
            row_labels=row_labels,
            label_set=label_set,
            mode=req.mode,
            threshold=req.threshold,
            prompt=req.prompt,
            costs=costs,
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
        self._authorize(credentials)
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
                "token_budget": clf.token_budget,
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()],  # what Ray assigned this replica
                "torch_threads": torch.get_num_threads(),
            },
            "batching": {
                "max_batch_size": self._classify_batch._get_max_batch_size(),
                "batch_wait_timeout_s": self._classify_batch._get_batch_wait_timeout_s(),
                "unit": "texts",
            },
            "limits": self.settings.limits,
            "auth": self.token is not None,
        }

    @api.get("/v1/stats")
    async def batch_stats(self, credentials: Credentials) -> dict[str, Any]:
        """Batching counters of this replica (the largest batch seen, ...) and the engine's counters."""
        self._authorize(credentials)
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
    actor_options: dict[str, Any] = {"num_cpus": settings.num_cpus}
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
