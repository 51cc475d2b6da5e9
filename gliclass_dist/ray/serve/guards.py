"""What a request must pass before it reaches the batch queue: the bearer token, the body reader (bounded
in bytes, in time and in how many requests may be receiving a body at once) and the request limits."""

import asyncio
import hmac
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError

from gliclass_dist.labels import LabelSpec
from gliclass_dist.ray.serve.schemas import ClassifyRequest, threshold_fields
from gliclass_dist.ray.serve.settings import BODY_GRACE_S, ServeArgs

PER_ROW_LABEL_SET = "per-row"


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


def check_bearer(token: str | None, credentials: HTTPAuthorizationCredentials | None) -> None:
    """401 unless ``credentials`` carry ``token`` as a bearer token (compared in constant time); no-op
    when no token is configured."""
    if token is None:
        return
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
        raise HTTPException(401, "invalid bearer token", headers={"WWW-Authenticate": "Bearer"})


# -- request body -------------------------------------------------------------------------------------
class BodyReader:
    """Reads request bodies within ``max_body_bytes``, ``body_timeout_s`` and ``max_pending_bodies``."""

    def __init__(self, settings: ServeArgs) -> None:
        self.limit = settings.max_body_bytes
        self.timeout = settings.body_timeout_s
        self.max_pending = settings.max_pending_bodies
        self.slots = asyncio.Semaphore(settings.max_pending_bodies)

    async def read(self, request: Request) -> bytes:
        """The request body, bounded in size (413), in time (408 after ``body_timeout_s``) and in how many
        requests may be receiving a body at once (``max_pending_bodies``; beyond it 503, unless the body
        arrives in full within ``BODY_GRACE_S``). A client that declares a body and stalls therefore holds
        a replica slot for a bounded time, and never all of them: ``/healthz`` and other requests still run."""
        limit = self.limit
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

        timeout = self.timeout
        if self.slots.locked():  # at the cap: only a body that is already on its way in full
            try:
                return await asyncio.wait_for(read(), min(BODY_GRACE_S, timeout))
            except TimeoutError:
                raise HTTPException(
                    503,
                    f"{self.max_pending} requests are already sending their bodies; retry later",
                    headers={"Retry-After": "1"},
                ) from None
        async with self.slots:
            try:
                return await asyncio.wait_for(read(), timeout)
            except TimeoutError:
                raise HTTPException(408, f"the request body did not arrive within {timeout:g} s") from None


# -- request limits -----------------------------------------------------------------------------------
def check_limits(req: ClassifyRequest, s: ServeArgs) -> tuple[list[list[str]], str]:
    """Enforce the limits (422 naming the limit); returns each text's labels and the label set id."""
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
    try:
        spec = LabelSpec(labels=rows[0], mode=req.mode, prompt=req.prompt, **threshold_fields(req.threshold))
    except ValidationError as exc:
        raise HTTPException(422, "; ".join(e["msg"] for e in exc.errors(include_url=False))) from None
    labels = spec.fixed or []
    return [labels] * len(req.texts), spec.label_set_id


def check_cost(costs: Sequence[int], cap: int) -> None:
    """413 when the rows' token counts (see ``batching.row_costs``) add up to more than ``cap``
    (``max_request_cost``), naming both."""
    cost = sum(costs)
    if cost > cap:
        raise HTTPException(
            413,
            f"request cost is {cost} tokens (texts x label tokens the model would read); the limit is "
            f"{cap} (max_request_cost): send fewer texts or fewer/shorter labels per request",
        )
