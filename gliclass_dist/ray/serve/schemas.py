"""The HTTP API's request and response bodies (their JSON schemas are the OpenAPI document's)."""

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gliclass_dist.labels import check_prompt

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


def threshold_fields(threshold: float | dict[str, float]) -> dict[str, Any]:
    """A request's ``threshold`` as ``LabelSpec`` fields: ``threshold``, or per-label ``thresholds`` (the
    labels not in the mapping keep ``LabelSpec``'s default)."""
    return {"thresholds": threshold} if isinstance(threshold, dict) else {"threshold": threshold}


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



# The /v1/classify route reads its body itself (bounded in size and time), so FastAPI does not document it.
REQUEST_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": ClassifyRequest.model_json_schema()}},
    }
}
