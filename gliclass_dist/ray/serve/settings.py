"""Deploy-time settings of the Serve application (``ServeArgs``) and its runtime-adjustable batching
settings (``BatchingConfig``, the deployment's ``user_config``).

``ServeArgs`` stays flat (``serve run ... key=value``); its engine fields derive each model's
``EngineSettings`` (``ServeArgs.engine_settings``) and are checked by the same field types."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gliclass_dist.settings import (
    Backend,
    CacheRows,
    Device,
    DType,
    EngineSettings,
    Threads,
    TokenBudget,
    Window,
)

DEFAULT_MODEL_ID = "default"
DEFAULT_TOKEN_ENV = "GLICLASS_SERVE_TOKEN"
# While max_pending_bodies requests are receiving their bodies, a new request is read only if its body
# arrives in full within this many seconds (a small JSON body does); otherwise it gets a 503 at once.
BODY_GRACE_S = 1.0


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
    # the engine (EngineSettings fields; see engine_settings)
    revision: str | None = Field(None, description="hub revision of the default model (a hub id)")
    device: Device = "auto"
    dtype: DType = "auto"
    backend: Backend = Field("torch", description="torch, or int8 / onnx-int8 (CPU, float32)")
    max_length: Window | None = None
    token_budget: TokenBudget | None = None
    allow_pickle: bool = False
    torch_threads: Threads | None = Field(None, description="intra-op threads (default: the replica's CPUs)")
    result_cache_rows: CacheRows = 0

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
    def threads(self) -> int:
        """torch threads of a replica: ``torch_threads``, else the replica's CPUs (at least one)."""
        return self.torch_threads or max(1, int(self.num_cpus or 1))

    def engine_settings(self, ref: str) -> EngineSettings:
        """The engine settings of the model at ``ref`` (the default model or an allow-listed one)."""
        return EngineSettings(
            ref=ref,
            revision=self.revision if ref == self.model else None,
            device=self.device,
            dtype=self.dtype,
            backend=self.backend,
            max_length=self.max_length,
            token_budget=self.token_budget,
            threads=self.threads,
            allow_pickle=self.allow_pickle,
            result_cache_rows=self.result_cache_rows,
        )

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

