"""Label sets as data: a fixed list, a per-row column, or a named, versioned set from a file.

Rules (documented in the README):
- A fixed or named list with an empty, non-string or duplicated label is rejected with a
  ``ValueError`` naming the label: a job spec is wrong and should fail before any work starts.
- A per-row label column is data, so bad values never fail the job: empty / non-string labels and
  duplicates are dropped from that row and the row's status says ``labels_cleaned``; a row whose
  label list is null or ends up empty gets status ``no_labels`` and no scores.
- A per-row few-shot examples column (``examples_column``: per row a list of ``{"text", "labels"}``,
  or its JSON) is data too: a malformed value gives that row status ``invalid_examples`` and no scores;
  a null or empty value means no examples for the row (the job-wide examples, if any, apply).
- Hierarchical labels are plain strings with a separator (``"sports.football"``); a nested mapping
  ``{"sports": ["football", "tennis"]}`` is flattened to them.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gliclass_dist.safe_yaml import load_yaml

Mode = Literal["multi-label", "single-label"]
MODES: tuple[str, ...] = get_args(Mode)
RESERVED = ("<<LABEL>>", "<<SEP>>", "<<EXAMPLE>>")  # model marker tokens; never allowed inside a label


def check_mode(mode: Any, where: str = "mode") -> Mode:
    """``mode`` itself if it is ``"multi-label"`` or ``"single-label"``; otherwise a ``ValueError`` naming it."""
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"{where} must be one of {', '.join(map(repr, MODES))}; got {mode!r}")
    return mode  # type: ignore[return-value]


def check_threshold(value: Any, where: str = "threshold") -> float:
    """A threshold as a float: a real number (not a bool or a string), finite, within [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{where} must be a number within [0, 1]; got {type(value).__name__} {value!r}")
    number = float(value)
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise ValueError(f"{where} must be a number within [0, 1]; got {value!r}")
    return number


def check_no_marker(text: str, where: str) -> str:
    """``text`` unchanged, or a ``ValueError`` naming ``where`` and the marker string it contains.

    A marker inside a prompt or a few-shot example would add or move label slots in the model input,
    so every row would fail (or be scored against the wrong slots): it is refused before any work starts.
    """
    for marker in RESERVED:
        if marker in text:
            raise ValueError(f"{where} {text[:80]!r} contains the reserved marker {marker!r}; remove it")
    return text


def check_prompt(prompt: Any, where: str = "prompt") -> str | None:
    """A prompt: None or a string without marker strings."""
    if prompt is None:
        return None
    if not isinstance(prompt, str):
        raise ValueError(f"{where} must be a string; got {type(prompt).__name__} {prompt!r}")
    return check_no_marker(prompt, where)


def check_examples(examples: Any, where: str = "examples") -> list[Mapping[str, Any]] | None:
    """Few-shot examples: None, or a list of ``{"text": str, "labels": [str, ...]}`` without marker strings."""
    if examples is None:
        return None
    if isinstance(examples, (str, Mapping)) or not isinstance(examples, Sequence):
        raise ValueError(f"{where} must be a list of {{'text', 'labels'}} mappings; got {type(examples).__name__}")
    for i, example in enumerate(examples):
        if not isinstance(example, Mapping):
            raise ValueError(f"{where}[{i}] must be a mapping with 'text' and 'labels'; got {example!r}")
        text = example.get("text", "")
        if not isinstance(text, str):
            raise ValueError(f"{where}[{i}].text must be a string; got {type(text).__name__} {text!r}")
        check_no_marker(text, f"{where}[{i}].text")
        labels = example.get("labels", example.get("true_labels", []))
        if isinstance(labels, str):
            labels = [labels]
        if not isinstance(labels, (list, tuple)):
            raise ValueError(f"{where}[{i}].labels must be a list of strings; got {type(labels).__name__} {labels!r}")
        for j, label in enumerate(labels):
            if not isinstance(label, str):
                raise ValueError(f"{where}[{i}].labels[{j}] must be a string; got {type(label).__name__} {label!r}")
            check_no_marker(label, f"{where}[{i}].labels[{j}]")
    return list(examples)


def clean_row_examples(value: Any) -> list[Mapping[str, Any]] | None:
    """One row's few-shot examples from an examples column: a list (empty for null), or None when malformed.

    Accepts a list of ``{"text": str, "labels": [str, ...]}`` mappings (Arrow list<struct>, Python, or a
    JSON string of one); a marker string inside an example, or any other shape, makes the value malformed.
    """
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if hasattr(value, "tolist") and not isinstance(value, Mapping):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        value = [
            {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in ex.items()} if isinstance(ex, Mapping) else ex
            for ex in value
        ]
    try:
        examples = check_examples(value, "examples")
    except ValueError:
        return None
    return examples or []


def flatten_hierarchy(labels: Any, separator: str = ".", prefix: str = "") -> list[str]:
    """Flatten ``{"a": ["b", "c"], "d": {...}}`` or a plain list into ``["a.b", "a.c", ...]``."""
    if isinstance(labels, Mapping):
        out: list[str] = []
        for key, value in labels.items():
            name = f"{prefix}{key}"
            if value is None or (isinstance(value, (list, tuple, Mapping)) and len(value) == 0):
                out.append(name)
            else:
                out.extend(flatten_hierarchy(value, separator, name + separator))
        return out
    if isinstance(labels, (list, tuple)):
        out = []
        for item in labels:
            if isinstance(item, Mapping):
                out.extend(flatten_hierarchy(item, separator, prefix))
            else:
                out.append(f"{prefix}{item}" if isinstance(item, str) else item)
        return out
    raise ValueError(f"labels must be a list or a mapping, got {type(labels).__name__}")


def validate_fixed_labels(labels: Sequence[Any], where: str = "labels") -> list[str]:
    """Reject empty, non-string or duplicated labels in a fixed list (spec errors)."""
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise ValueError(f"{where}: expected a list of strings, got {type(labels).__name__}")
    if len(labels) == 0:
        raise ValueError(f"{where}: the label list is empty")
    seen: set[str] = set()
    out: list[str] = []
    for i, label in enumerate(labels):
        if not isinstance(label, str):
            raise ValueError(f"{where}[{i}]: label must be a string, got {type(label).__name__} {label!r}")
        clean = label.strip()
        if not clean:
            raise ValueError(f"{where}[{i}]: empty label")
        if clean in seen:
            raise ValueError(f"{where}[{i}]: duplicate label {clean!r}")
        if any(token in clean for token in RESERVED):
            raise ValueError(f"{where}[{i}]: label {clean!r} contains a reserved marker {RESERVED}")
        seen.add(clean)
        out.append(clean)
    return out


def clean_row_labels(value: Any) -> tuple[list[str] | None, bool]:
    """Clean one row's label list from a label column.

    Returns ``(labels, cleaned)``: ``labels`` is None when the value is not a list at all
    (malformed), ``cleaned`` is True when something was dropped (empty, non-string, duplicate).
    """
    if value is None:
        return [], False
    if isinstance(value, str):
        # A JSON-encoded list is accepted; a bare string is one label.
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                return None, False
        else:
            value = [value]
    if isinstance(value, Mapping):
        try:
            value = flatten_hierarchy(value)
        except ValueError:
            return None, False
    if not isinstance(value, (list, tuple)) and not hasattr(value, "tolist"):
        return None, False
    if hasattr(value, "tolist"):
        value = value.tolist()
    seen: set[str] = set()
    out: list[str] = []
    cleaned = False
    for label in value:
        if (
            not isinstance(label, str)
            or not label.strip()
            or label.strip() in seen
            or any(token in label for token in RESERVED)
        ):
            cleaned = True
            continue
        seen.add(label.strip())
        out.append(label.strip())
    return out, cleaned


class LabelSpec(BaseModel):
    """Which labels each row is scored against, how scores become predictions, and the set's name.

    Exactly one of ``labels`` (a fixed list or hierarchy for every row), ``column`` (a column of the
    input holding each row's labels) or ``file`` (+ ``name``: a named, versioned label set) is given.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    labels: list[str] | None = None
    column: str | None = None
    file: str | None = None
    name: str | None = None
    version: str | None = None
    mode: Mode = "multi-label"
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    thresholds: dict[str, float] = Field(default_factory=dict)
    prompt: str | None = None
    examples_column: str | None = None  # a column of per-row few-shot examples (see clean_row_examples)
    separator: str = "."

    @field_validator("labels", mode="before")
    @classmethod
    def _flatten(cls, value: Any) -> Any:
        if value is None:
            return None
        return validate_fixed_labels(flatten_hierarchy(value), "labels")

    @field_validator("mode", mode="before")
    @classmethod
    def _check_mode(cls, value: Any) -> Any:
        return check_mode(value)

    @field_validator("threshold", mode="before")
    @classmethod
    def _check_threshold(cls, value: Any) -> Any:
        return check_threshold(value)

    @field_validator("thresholds", mode="before")
    @classmethod
    def _check_thresholds(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {label: check_threshold(t, f"thresholds[{label!r}]") for label, t in value.items()}
        return value

    @field_validator("prompt", mode="before")
    @classmethod
    def _check_prompt(cls, value: Any) -> Any:
        return check_prompt(value)

    @model_validator(mode="after")
    def _one_source(self) -> LabelSpec:
        given = [k for k in ("labels", "column", "file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of labels, column or file (got {given or 'none'})")
        if self.file is not None:
            if not self.name:
                raise ValueError("file: a named label set needs 'name'")
            loaded = load_named_label_set(self.file, self.name, self.version)
            object.__setattr__(self, "labels", loaded["labels"])
            object.__setattr__(self, "version", loaded["version"])
            from_file = {
                label: check_threshold(t, f"{self.file}:{self.name}.thresholds[{label!r}]")
                for label, t in loaded.get("thresholds", {}).items()
            }
            object.__setattr__(self, "thresholds", {**from_file, **self.thresholds})
        if self.labels is not None and self.thresholds:
            unknown = sorted(set(self.thresholds) - set(self.labels))
            if unknown:
                raise ValueError(f"thresholds: labels not in the label set: {unknown}")
        return self

    @property
    def fixed(self) -> list[str] | None:
        """The label list shared by every row, or None for a per-row column."""
        return list(self.labels) if self.labels is not None else None

    @property
    def columns(self) -> list[str]:
        """The input columns this spec reads per row (the label column, the examples column), besides the text."""
        return [c for c in (self.column, self.examples_column) if c is not None]

    @property
    def label_set_id(self) -> str:
        """What produced a result: ``name@version``, ``inline:<hash>`` or ``column:<name>``."""
        if self.name:
            return f"{self.name}@{self.version or 'unversioned'}"
        if self.column:
            return f"column:{self.column}"
        digest = hashlib.sha1("\x1f".join(self.labels or []).encode()).hexdigest()[:10]
        return f"inline:{digest}"

    def threshold_for(self, label: str) -> float:
        return float(self.thresholds.get(label, self.threshold))


def load_named_label_set(path: str | Path, name: str, version: str | None = None) -> dict[str, Any]:
    """Read label set ``name`` from a YAML/JSON file.

    File layout::

        label_sets:
          topics:
            version: "3"
            labels: [business, politics, sport]      # or a nested mapping (hierarchy)
            thresholds: {business: 0.6}              # optional
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"label set file {str(path)!r} does not exist")
    data = load_yaml(path.read_text(), "label set files")  # YamlAliasError (a ValueError) on &anchors/*aliases
    sets = (data or {}).get("label_sets") if isinstance(data, Mapping) else None
    if not isinstance(sets, Mapping):
        found = f"top-level keys {sorted(map(str, data))}" if isinstance(data, Mapping) else type(data).__name__
        raise ValueError(
            f"{path}: expected a top-level 'label_sets' mapping, found {found}; the file should look like "
            f"label_sets: {{{name}: {{version: '1', labels: [business, sport, tech]}}}}"
        )
    if name not in sets:
        raise ValueError(f"{path}: no label set named {name!r} (have: {sorted(sets)})")
    entry = sets[name]
    if not isinstance(entry, Mapping) or "labels" not in entry:
        raise ValueError(f"{path}: label set {name!r} needs a 'labels' list")
    found_version = str(entry.get("version", "unversioned"))
    if version is not None and str(version) != found_version:
        raise ValueError(f"{path}: label set {name!r} is version {found_version}, the spec asks for {version}")
    labels = validate_fixed_labels(flatten_hierarchy(entry["labels"]), f"{path}:{name}.labels")
    return {"labels": labels, "version": found_version, "thresholds": dict(entry.get("thresholds") or {})}
