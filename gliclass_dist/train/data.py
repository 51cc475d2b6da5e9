"""Training records: loading, validation, few-shot sampling, and batches built by the InputBuilder.

A record is ``{"text": str, "all_labels": [str, ...], "true_labels": [str, ...]}`` with optional
``"prompt": str``, ``"examples": [{"text": str, "labels": [str, ...]}, ...]`` and
``"unknown_labels": [str, ...]`` (labels of ``all_labels`` whose truth is not known: partial
annotation; they are left out of the loss and of the PPO reward). Labels that are in ``all_labels``
but neither true nor unknown are negatives.

Batches always go through ``gliclass_dist.model.inputs.InputBuilder`` (the same code the engine
uses), so training and inference see identical token layouts. Label order is shuffled per item
every time it is batched: the model must not learn positions.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gliclass_dist.labels import check_examples, check_no_marker, check_prompt
from gliclass_dist.model.inputs import EncodedRow, InputBuilder, LabelTooLongError

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """A malformed training record; the message names the file and line (or row)."""


@dataclass
class TrainRecord:
    """One training item."""

    text: str
    all_labels: list[str]
    true_labels: list[str]
    prompt: str | None = None
    examples: list[dict[str, Any]] | None = None
    unknown_labels: list[str] = field(default_factory=list)

    def known_labels(self) -> list[str]:
        """Labels whose truth is known (positives and negatives)."""
        unknown = set(self.unknown_labels)
        return [label for label in self.all_labels if label not in unknown]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text, "all_labels": self.all_labels, "true_labels": self.true_labels}
        if self.prompt is not None:
            out["prompt"] = self.prompt
        if self.examples:
            out["examples"] = self.examples
        if self.unknown_labels:
            out["unknown_labels"] = self.unknown_labels
        return out


def _string_list(value: Any, name: str, where: str, allow_empty: bool) -> list[str]:
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{where}: {name!r} must be a list of strings, got {type(value).__name__}")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise DataError(f"{where}: {name!r} holds {item!r}; every label must be a non-empty string")
        out.append(no_marker(item.strip(), f"{where}: {name}"))
    if not out and not allow_empty:
        raise DataError(f"{where}: {name!r} is empty")
    return out


def no_marker(text: str, where: str) -> str:
    """``text`` unchanged, or a ``DataError`` when it holds a model marker string (<<LABEL>>, <<SEP>>, ...)."""
    try:
        return check_no_marker(text, where)
    except ValueError as exc:
        raise DataError(str(exc)) from None


def validate_record(obj: Any, where: str) -> TrainRecord:
    """Check one raw record and turn it into a ``TrainRecord``; ``where`` (e.g. "train.jsonl:12") goes in errors."""
    if not isinstance(obj, Mapping):
        raise DataError(f"{where}: a record must be a JSON object, got {type(obj).__name__}")
    if "text" not in obj:
        raise DataError(f"{where}: the 'text' field is missing")
    text = obj["text"]
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: 'text' must be a non-empty string, got {text!r:.60}")
    no_marker(text, f"{where}: text")
    if "all_labels" not in obj:
        raise DataError(f"{where}: the 'all_labels' field is missing")
    all_labels = _string_list(obj["all_labels"], "all_labels", where, allow_empty=False)
    if len(set(all_labels)) != len(all_labels):
        dupes = sorted({x for x in all_labels if all_labels.count(x) > 1})
        raise DataError(f"{where}: 'all_labels' repeats {dupes}")
    true_labels = _string_list(obj.get("true_labels", []), "true_labels", where, allow_empty=True)
    unknown_labels = _string_list(obj.get("unknown_labels", []) or [], "unknown_labels", where, allow_empty=True)
    known = set(all_labels)
    for name, values in (("true_labels", true_labels), ("unknown_labels", unknown_labels)):
        stray = [x for x in values if x not in known]
        if stray:
            raise DataError(f"{where}: {name} {stray} are not in all_labels {all_labels}")
    both = sorted(set(true_labels) & set(unknown_labels))
    if both:
        raise DataError(f"{where}: {both} are both true and unknown")
    prompt = obj.get("prompt")
    examples = obj.get("examples")
    try:
        check_prompt(prompt, f"{where}: prompt")
        check_examples(examples, f"{where}: examples")
    except ValueError as exc:
        raise DataError(str(exc)) from None
    if examples is not None:
        if not isinstance(examples, list):
            raise DataError(f"{where}: 'examples' must be a list of objects")
        checked = []
        for j, ex in enumerate(examples):
            if not isinstance(ex, Mapping) or not isinstance(ex.get("text"), str):
                raise DataError(f"{where}: examples[{j}] must be an object with a 'text' string")
            labels = ex.get("labels", ex.get("true_labels", []))
            checked.append({"text": ex["text"], "labels": _string_list(labels, f"examples[{j}].labels", where, True)})
        examples = checked or None
    return TrainRecord(
        text=text,
        all_labels=all_labels,
        true_labels=list(dict.fromkeys(true_labels)),
        prompt=prompt or None,
        examples=examples,
        unknown_labels=list(dict.fromkeys(unknown_labels)),
    )


def load_records(path: str | os.PathLike[str]) -> list[TrainRecord]:
    """Read and validate JSONL (``.jsonl``/``.json``) or Parquet records; errors name the line or row."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file does not exist")
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        records = [validate_record(row, f"{path}: row {i + 1}") for i, row in enumerate(rows)]
    else:
        records = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
                records.append(validate_record(obj, where))
    if not records:
        raise DataError(f"{path}: no records")
    return records


def records_from_dicts(rows: Iterable[Mapping[str, Any]], source: str = "records") -> list[TrainRecord]:
    """Validate in-memory records (errors name the item number, counting from 1)."""
    return [validate_record(row, f"{source}[{i + 1}]") for i, row in enumerate(rows)]


def write_jsonl(records: Iterable[TrainRecord | Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for rec in records:
            handle.write(json.dumps(rec.to_dict() if isinstance(rec, TrainRecord) else dict(rec)) + "\n")
    return path


def sample_shots(records: Sequence[TrainRecord], shots_per_label: int, seed: int = 0) -> list[TrainRecord]:
    """Keep ``shots_per_label`` items per true label (an item counts for each of its labels), order preserved."""
    if shots_per_label <= 0:
        raise ValueError("shots_per_label must be positive")
    rng = random.Random(seed)
    order = list(range(len(records)))
    rng.shuffle(order)
    counts: dict[str, int] = {}
    chosen: set[int] = set()
    for i in order:
        labels = records[i].true_labels
        if labels and any(counts.get(lb, 0) < shots_per_label for lb in labels):
            chosen.add(i)
            for lb in labels:
                counts[lb] = counts.get(lb, 0) + 1
    short = sorted(lb for lb, n in counts.items() if n < shots_per_label)
    if short:
        logger.warning("fewer than %d examples for labels %s", shots_per_label, short[:10])
    return [records[i] for i in sorted(chosen)]


@dataclass
class Batch:
    """Model inputs with per-label targets; ``loss_mask`` is False for padded slots and unknown labels."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor  # float [U, K]: 1 true, 0 otherwise
    loss_mask: torch.Tensor  # bool [U, K]
    labels: list[list[str]]  # per unit, in slot order
    owners: list[int]  # record index (within the batch) of each unit

    def to(self, device: torch.device | str) -> Batch:
        self.input_ids = self.input_ids.to(device)
        self.attention_mask = self.attention_mask.to(device)
        self.targets = self.targets.to(device)
        self.loss_mask = self.loss_mask.to(device)
        return self


def encode_records(
    builder: InputBuilder, records: Sequence[TrainRecord], rng: random.Random | None = None
) -> list[EncodedRow]:
    """Encode each record (labels shuffled by ``rng`` when given); records sharing prompt/examples go together."""
    label_lists = []
    for rec in records:
        labels = list(rec.all_labels)
        if rng is not None:
            rng.shuffle(labels)
        label_lists.append(labels)
    out: list[EncodedRow | None] = [None] * len(records)
    groups: dict[str, list[int]] = {}
    for i, rec in enumerate(records):
        key = json.dumps([rec.prompt, rec.examples], sort_keys=True)
        groups.setdefault(key, []).append(i)
    for members in groups.values():
        first = records[members[0]]
        encoded = builder.encode([records[i].text for i in members], [label_lists[i] for i in members],
                                 first.prompt, first.examples)
        for i, row in zip(members, encoded):
            if isinstance(row, LabelTooLongError):
                raise DataError(f"record {i + 1}: {row}")
            out[i] = row
    return out  # type: ignore[return-value]


def collate(builder: InputBuilder, records: Sequence[TrainRecord], rows: Sequence[EncodedRow]) -> Batch:
    """Pad encoded rows (every chunk is a unit) into tensors with targets and masks."""
    units: list[list[int]] = []
    unit_labels: list[list[str]] = []
    owners: list[int] = []
    for r, row in enumerate(rows):
        for chunk, labels in zip(row.chunks, row.chunk_labels):
            units.append(chunk)
            unit_labels.append(labels)
            owners.append(r)
    longest = max(len(u) for u in units)
    width = max(len(ls) for ls in unit_labels)
    ids = torch.full((len(units), longest), builder.pad_id, dtype=torch.long)
    mask = torch.zeros((len(units), longest), dtype=torch.long)
    targets = torch.zeros((len(units), width), dtype=torch.float32)
    loss_mask = torch.zeros((len(units), width), dtype=torch.bool)
    for u, (chunk, labels, owner) in enumerate(zip(units, unit_labels, owners)):
        ids[u, : len(chunk)] = torch.tensor(chunk, dtype=torch.long)
        mask[u, : len(chunk)] = 1
        rec = records[owner]
        true, unknown = set(rec.true_labels), set(rec.unknown_labels)
        for k, label in enumerate(labels):
            targets[u, k] = 1.0 if label in true else 0.0
            loss_mask[u, k] = label not in unknown
    return Batch(ids, mask, targets, loss_mask, unit_labels, owners)


def make_batch(builder: InputBuilder, records: Sequence[TrainRecord], rng: random.Random | None = None) -> Batch:
    """Encode and collate ``records`` (labels shuffled per item when ``rng`` is given)."""
    return collate(builder, records, encode_records(builder, records, rng))
