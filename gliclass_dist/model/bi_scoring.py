"""The scoring step for bi-encoders: encoded rows -> logits, with label vectors taken from the model's cache.

``Classifier.score_encoded`` hands bi-encoder rows here. Labels not yet in the model's ``label_cache``
are tokenized with the label tokenizer and encoded in length-sorted batches (once per worker for a fixed
label set); the texts (``bi-encoder``) or text-with-markers sequences (``bi-encoder-fused``) run in
micro-batches planned as for the uni-encoder (the engine's planner and token budget); each row is then
scored against its labels' vectors. Rows are grouped by label set, so no label slot is padded and a row's
scores never depend on its batch-mates.

Failures stay with the rows that cause them: a failing batch is retried in halves down to single rows
(labels alike); an out-of-memory error halves the token budget for the rest of the call. A row whose
text or labels cannot be encoded gets the exception instead of logits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from gliclass_dist.model.bi_encoder import GLiClassBiEncoderModel
from gliclass_dist.model.bi_inputs import BiEncoderInputBuilder
from gliclass_dist.model.inputs import EncodedRow

logger = logging.getLogger(__name__)

MIN_BUDGET = 64  # an out-of-memory error never halves the token budget below this
Planner = Callable[[Sequence[int], int], list[list[int]]]


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def pad(units: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask ``[B, T]`` on ``device``."""
    longest = max(len(u) for u in units)
    ids = torch.full((len(units), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(units), longest), dtype=torch.long)
    for i, u in enumerate(units):
        ids[i, : len(u)] = torch.tensor(u, dtype=torch.long)
        mask[i, : len(u)] = 1
    return ids.to(device), mask.to(device)


def run_isolated(
    lengths: Sequence[int], run: Callable[[list[int]], None], *, budget: int, plan: Planner, what: str
) -> dict[int, Exception]:
    """``run(indices)`` over planned batches; returns the indices that failed even alone, with their error."""
    failed: dict[int, Exception] = {}
    pending = plan(lengths, budget)
    while pending:
        batch = pending.pop()
        try:
            run(batch)
        except Exception as exc:  # noqa: BLE001 - isolate the failure to the items that cause it
            if len(batch) == 1:
                failed[batch[0]] = exc
                logger.warning("%s failed on its own: %s: %s", what, type(exc).__name__, exc)
                continue
            if is_out_of_memory(exc) and budget > MIN_BUDGET:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                budget = max(budget // 2, MIN_BUDGET)
                logger.warning("out of memory on %d %ss; token budget %d for the rest of this call", len(batch), what, budget)
                todo = [i for b in [*pending, batch] for i in b]
                pending = [[todo[j] for j in b] for b in plan([lengths[i] for i in todo], budget)]
                continue
            logger.warning("batch of %d %ss failed (%s: %s); retrying in halves", len(batch), what, type(exc).__name__, exc)
            half = len(batch) // 2
            pending.extend([batch[half:], batch[:half]])
    return failed


def encode_missing_labels(
    model: GLiClassBiEncoderModel,
    builder: BiEncoderInputBuilder,
    labels: Sequence[str],
    *,
    device: torch.device,
    budget: int,
    plan: Planner,
    stats: dict[str, int],
) -> dict[str, Exception]:
    """Put every label of ``labels`` that is not cached into the cache; returns the labels that failed."""
    missing = model.label_cache.missing(labels)
    if not missing:
        return {}
    ids = [builder.label_ids(label) for label in missing]

    def run(batch: list[int]) -> None:
        input_ids, mask = pad([ids[i] for i in batch], builder.label_pad_id, device)
        with torch.inference_mode():
            vectors = model.model.encode_labels(input_ids, mask)
        for i, vector in zip(batch, vectors):
            model.label_cache.put(missing[i], vector)
        stats["label_passes"] = stats.get("label_passes", 0) + 1

    failed = run_isolated([len(x) for x in ids], run, budget=budget, plan=plan, what="label")
    return {missing[i]: exc for i, exc in failed.items()}


def score_bi_encoder_rows(
    model: GLiClassBiEncoderModel,
    builder: BiEncoderInputBuilder,
    rows: Sequence[EncodedRow],
    *,
    device: torch.device,
    budget: int,
    plan: Planner,
    stats: dict[str, int],
    fault_hook: Callable[[int], None] | None = None,
) -> list[np.ndarray | Exception]:
    """Merged logits per row (all chunks, label order), or the exception that row raised."""
    units: list[list[int]] = []
    unit_labels: list[tuple[str, ...]] = []
    owner: list[int] = []
    for r, row in enumerate(rows):
        for chunk, chunk_labels in zip(row.chunks, row.chunk_labels):
            units.append(list(chunk))
            unit_labels.append(tuple(chunk_labels))
            owner.append(r)
    all_labels = [label for labels in unit_labels for label in labels]
    bad_labels = encode_missing_labels(model, builder, all_labels, device=device, budget=budget, plan=plan, stats=stats)

    results: list[np.ndarray | Exception | None] = [None] * len(units)
    marker = model.config.class_token_index
    for u, labels in enumerate(unit_labels):
        bad = next((label for label in labels if label in bad_labels), None)
        if bad is not None:
            results[u] = bad_labels[bad]
        elif model.fused and sum(1 for t in units[u] if t == marker) != len(labels):
            results[u] = ValueError(f"{len(labels)} labels but a different number of <<LABEL>> markers in the input")
    todo = [u for u in range(len(units)) if results[u] is None]

    def run(batch: list[int]) -> None:
        picked = [todo[i] for i in batch]
        input_ids, mask = pad([units[u] for u in picked], builder.pad_id, device)
        if fault_hook is not None:
            fault_hook(input_ids.numel())
        with torch.inference_mode():
            stacked: dict[tuple[str, ...], torch.Tensor] = {}
            for u in picked:
                if unit_labels[u] not in stacked:
                    stacked[unit_labels[u]] = torch.stack([model.label_cache.get(lb) for lb in unit_labels[u]])
            vectors = {u: stacked[unit_labels[u]] for u in picked}
            if model.fused:
                markers = torch.cat([vectors[u] for u in picked])
                text, at_markers = model.model.encode_fused(input_ids, mask, markers)
                vectors = dict(zip(picked, at_markers.split([len(unit_labels[u]) for u in picked])))
            else:
                text = model.model.encode_texts(input_ids, mask)
            logits = score_groups(model, text, picked, unit_labels, vectors)
        for u in picked:
            results[u] = logits[u]
        stats["forward_passes"] += 1
        stats["tokens"] += int(mask.sum())
        stats["padded_tokens"] += input_ids.numel()

    failed = run_isolated([len(units[u]) for u in todo], run, budget=budget, plan=plan, what="row")
    for i, exc in failed.items():
        results[todo[i]] = exc
        stats["row_errors"] += 1
    return merge_units(rows, owner, results)


def score_groups(
    model: GLiClassBiEncoderModel,
    text: torch.Tensor,
    picked: list[int],
    unit_labels: list[tuple[str, ...]],
    vectors: dict[int, torch.Tensor],
) -> dict[int, np.ndarray]:
    """Logits per unit; units with the same labels share one scorer call (labels stacked once)."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for position, u in enumerate(picked):
        groups.setdefault(unit_labels[u], []).append(position)
    out: dict[int, np.ndarray] = {}
    for positions in groups.values():
        members = [picked[p] for p in positions]
        if model.fused:  # label vectors come out of each row's own pass
            labels = torch.stack([vectors[u] for u in members])
        else:  # the same cached vectors for every member
            labels = vectors[members[0]].unsqueeze(0).expand(len(members), -1, -1)
        logits = model.model.score(text[positions], labels).float().cpu().numpy()
        out.update(zip(members, logits))
    return out


def merge_units(
    rows: Sequence[EncodedRow], owner: list[int], results: list[np.ndarray | Exception | None]
) -> list[np.ndarray | Exception]:
    """Each row's chunk logits concatenated in label order, or the first exception among its chunks."""
    parts: list[list[np.ndarray]] = [[] for _ in rows]
    failed: dict[int, Exception] = {}
    for r, res in zip(owner, results):
        if isinstance(res, Exception):
            failed.setdefault(r, res)
        elif res is not None:
            parts[r].append(res)
    out: list[np.ndarray | Exception] = []
    for r, row in enumerate(rows):
        if r in failed:
            out.append(failed[r])
            continue
        merged = np.concatenate(parts[r]) if parts[r] else np.zeros(0, dtype=np.float32)
        if merged.shape[0] != len(row.labels):
            out.append(RuntimeError(f"expected {len(row.labels)} label scores, got {merged.shape[0]}"))
        else:
            out.append(merged)
    return out
