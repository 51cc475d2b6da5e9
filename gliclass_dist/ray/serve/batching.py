"""Batching inside a replica: the requests ``serve.batch`` gathered are queued in an ``EngineQueue`` that
runs engine calls one at a time, each a micro-batch of rows taken round-robin from every waiting request
(bounded in texts and in tokens), so a small request never waits behind whole large ones.

A request goes through the engine's two steps once each: the encoding step when it arrives
(``encode_request``: its statuses, token ids and cost per row), the scoring step
(``Classifier.score_arrow``) in the engine call that takes its rows."""

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from gliclass_dist.encode import EncodedBatch, prepare_rows
from gliclass_dist.labels import LabelSpec
from gliclass_dist.ray.serve.schemas import threshold_fields

logger = logging.getLogger(__name__)

# Each row is scored against the labels of the request it came from (a per-row label column, as the
# label set id says until ``run_group`` puts the request's own label set id in its place).
LABEL_COLUMN = "labels"


@dataclass
class ClassifyJob:
    """One validated request waiting in the batch queue; ``costs`` are its rows' token counts and ``encoded``
    its rows from the encoding step (``encode_request``; done on first use when not given)."""

    classifier: Any
    texts: list[str | None]
    row_labels: list[list[str]]
    label_set: str
    mode: str
    threshold: float | dict[str, float]
    prompt: str | None
    costs: list[int] = field(default_factory=list)
    encoded: EncodedBatch | None = None

    def encode(self) -> EncodedBatch:
        """This job's rows from the encoding step (encoded once, then kept)."""
        if self.encoded is None:
            self.encoded = encode_request(self.classifier, self.texts, self.row_labels, self.prompt)
        return self.encoded

    def group_key(self) -> tuple[Any, ...]:
        threshold = tuple(sorted(self.threshold.items())) if isinstance(self.threshold, dict) else self.threshold
        return (id(self.classifier), self.mode, threshold, self.prompt)

    def cost(self, row: int) -> int:
        return self.costs[row] if self.costs else 0

    def label_spec(self) -> LabelSpec:
        """How the engine scores this job's rows: each row's labels from ``LABEL_COLUMN``, this job's mode,
        threshold (or per-label thresholds, others 0.5) and prompt."""
        return LabelSpec(column=LABEL_COLUMN, mode=self.mode, prompt=self.prompt, **threshold_fields(self.threshold))


def count_texts(jobs: Sequence[ClassifyJob]) -> int:
    """Batch size measured in texts (``batch_size_fn`` of ``serve.batch``)."""
    return sum(len(job.texts) for job in jobs)


def encode_request(
    classifier: Any, texts: Sequence[str | None], row_labels: Sequence[list[str]], prompt: str | None
) -> EncodedBatch:
    """The encoding step for one request's rows (per row: status so far and token id chunks)."""
    statuses, rows = prepare_rows(classifier.builder, texts, row_labels, prompt)
    return EncodedBatch(statuses, rows, pa.table({}))


def encoded_costs(encoded: EncodedBatch) -> list[int]:
    """Tokens the model reads for each row (every label chunk with its text); 0 for rows it does not score.

    The unit of ``max_request_cost`` and ``max_call_cost``: it grows with texts x label tokens.
    """
    return [sum(len(chunk) for chunk in row.chunks) if row is not None else 0 for row in encoded.rows]


def row_costs(classifier: Any, texts: Sequence[str | None], row_labels: Sequence[list[str]], prompt: str | None) -> list[int]:
    """``encoded_costs`` of rows not encoded yet."""
    return encoded_costs(encode_request(classifier, texts, row_labels, prompt))


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


def run_group(slices: Sequence[tuple[ClassifyJob, int, int]]) -> list[list[dict[str, Any]]]:
    """One engine call (the scoring step, ``Classifier.score_arrow``, each row with its own labels) for row
    slices of jobs that share model, mode, threshold and prompt; the result rows split back per slice,
    each with its job's label set id."""
    first = slices[0][0]
    encoded = [(job.encode(), a, b) for job, a, b in slices]
    batch = EncodedBatch(
        [status for e, a, b in encoded for status in e.statuses[a:b]],
        [row for e, a, b in encoded for row in e.rows[a:b]],
        pa.table({}),
    )
    result = first.classifier.score_arrow(batch, first.label_spec())
    label_set = result.schema.get_field_index("label_set")
    out: list[list[dict[str, Any]]] = []
    start = 0
    for job, a, b in slices:
        part = result.slice(start, b - a)
        part = part.set_column(label_set, "label_set", pa.array([job.label_set] * (b - a), pa.string()))
        out.append(part.to_pylist())
        start += b - a
    return out


@dataclass(eq=False)
class _Queued:
    """A job in the engine queue: the rows taken so far and the results of those done."""

    job: ClassifyJob
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

    async def run(self, jobs: Sequence[ClassifyJob]) -> list[list[dict[str, Any]] | Exception]:
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
                    outputs: Sequence[Any] = await asyncio.to_thread(run_group, slices)
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

