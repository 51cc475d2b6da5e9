"""Post-hoc score calibration: an affine map of each label's logit, applied by the engine before the sigmoid.

A ``Calibration`` holds a default ``(scale, bias)`` and optional per-label pairs; ``scale = 1 / T`` with
``bias = 0`` is temperature scaling, a free pair is Platt scaling. It is saved as ``calibration.json`` beside
the model's weights; ``Classifier.from_pretrained`` loads it when present, so every front end (CLI, Ray,
Spark, Serve) applies the same map. ``gliclass_dist.train.calibrate`` fits one from labelled rows.

File layout (``format_version`` 1; any other key is rejected with its name)::

    {"format_version": 1, "method": "per-label-platt", "mode": "multi-label",
     "default": [0.8, -0.3], "per_label": {"sports": [1.1, 0.2]}, "info": {"rows": 40}}

``mode`` records the mode the map was fitted for (the engine applies it in either mode; fit it in the mode
the jobs run). ``info`` is free provenance (rows used, held-out log loss of each method), not read back.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CALIBRATION_FILE = "calibration.json"
FORMAT_VERSION = 1
METHODS = ("none", "temperature", "platt", "per-label-platt")
FILE_KEYS = ("format_version", "method", "mode", "default", "per_label", "info")


def _check_pair(name: str, pair: Any) -> tuple[float, float]:
    if not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 2:
        raise ValueError(f"calibration {name}: expected [scale, bias], got {pair!r}")
    scale, bias = (float(v) for v in pair)
    if not (math.isfinite(scale) and math.isfinite(bias)) or scale <= 0:
        raise ValueError(f"calibration {name}: scale must be finite and > 0 and bias finite, got {pair!r}")
    return scale, bias


@dataclass(frozen=True)
class Calibration:
    """``logit -> scale * logit + bias``, with a per-label pair where one is given, else the default pair."""

    scale: float = 1.0
    bias: float = 0.0
    per_label: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    method: str = "platt"
    mode: str | None = None  # the mode it was fitted for ("multi-label" / "single-label"), None if unknown
    info: Mapping[str, Any] = field(default_factory=dict)  # provenance, saved as is

    def __post_init__(self) -> None:
        _check_pair("default", (self.scale, self.bias))
        for label, pair in self.per_label.items():
            _check_pair(f"label {label!r}", pair)
        if self.method not in METHODS:
            raise ValueError(f"calibration method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if self.mode not in (None, "multi-label", "single-label"):
            raise ValueError(f"calibration mode must be multi-label, single-label or null; got {self.mode!r}")

    @property
    def is_identity(self) -> bool:
        pairs = [(self.scale, self.bias), *self.per_label.values()]
        return all(s == 1.0 and b == 0.0 for s, b in pairs)

    def apply(self, labels: Sequence[str], logits: np.ndarray) -> np.ndarray:
        """Calibrated logits for one row (``labels[i]`` owns ``logits[i]``)."""
        if not self.per_label:
            return logits * self.scale + self.bias
        pairs = np.array([self.per_label.get(label, (self.scale, self.bias)) for label in labels], dtype=np.float64)
        return logits * pairs[:, 0] + pairs[:, 1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "mode": self.mode,
            "default": [self.scale, self.bias],
            "per_label": {label: list(pair) for label, pair in self.per_label.items()},
            "info": dict(self.info),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"calibration format_version must be {FORMAT_VERSION}, got {version!r}")
        unknown = sorted(set(map(str, data)) - set(FILE_KEYS))
        if unknown:
            raise ValueError(f"calibration: unknown keys {unknown} (allowed: {', '.join(FILE_KEYS)})")
        scale, bias = _check_pair("default", data.get("default", (1.0, 0.0)))
        per_label = data.get("per_label") or {}
        if not isinstance(per_label, Mapping):
            raise ValueError(f"calibration per_label must be a mapping, got {type(per_label).__name__}")
        pairs = {str(label): _check_pair(f"label {label!r}", pair) for label, pair in per_label.items()}
        info = data.get("info") or {}
        if not isinstance(info, Mapping):
            raise ValueError(f"calibration info must be a mapping, got {type(info).__name__}")
        return cls(
            scale=scale,
            bias=bias,
            per_label=pairs,
            method=str(data.get("method", "platt")),
            mode=data.get("mode"),
            info=dict(info),
        )

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``calibration.json`` into ``folder`` (a model folder); returns its path."""
        path = Path(folder) / CALIBRATION_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path


def load_calibration(folder: str | os.PathLike[str]) -> Calibration | None:
    """The calibration saved in a model folder, or None when it has none. A malformed file raises ``ValueError``."""
    path = Path(folder) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a JSON object")
    try:
        return Calibration.from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


__all__ = ["CALIBRATION_FILE", "METHODS", "Calibration", "load_calibration"]
