"""The job spec: one description of a classification job that runs on Ray, Spark, the CLI or Airflow.

Load it from YAML (``JobSpec.from_yaml(path, overrides=["sink.table=...", ...])``) or build it in
Python. Unknown keys and bad values are rejected with a message that names the key.

Relative paths are made absolute once, on the driver, so that every worker reads and writes the same
place whatever its working directory: ``input.path``, ``sink.path``, ``labels.file``, and ``model.ref``
when it names an existing local folder (else it stays a hub id such as ``org/name``). In a spec file they
are relative to the spec file's folder; in ``--set key=value`` overrides (typed in a shell) and in specs
built in Python (``JobSpec(...)``, ``JobSpec.from_dict``) to the current directory. URIs (``s3://``,
``file://``, ``abfss://``, ...) are left as they are.

YAML anchors and aliases (``&a``/``*a``) are refused in spec files and overrides (``safe_yaml``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gliclass_dist.labels import LabelSpec
from gliclass_dist.predicate import FilterError, Predicate, parse_filter
from gliclass_dist.safe_yaml import YamlAliasError, dump_yaml, load_yaml
from gliclass_dist.settings import Backend, CacheRows, Device, DType, TokenBudget, Window

# Spec fields added after job keys were first handed out, with the default that leaves a key unchanged.
KEY_NEUTRAL_DEFAULTS: dict[tuple[str, str], Any] = {
    ("model", "backend"): "torch",
    ("labels", "examples_column"): None,
}


class SpecError(ValueError):
    """A job spec that cannot be used; the message names the offending key."""


def absolute_path(value: str, base: str | Path | None = None) -> str:
    """``value`` made absolute against ``base`` (default: the current directory); ``~`` expanded, URIs kept."""
    if "://" in value:
        return value
    path = Path(value).expanduser()
    return os.path.normpath(path if path.is_absolute() else Path(base or os.getcwd()) / path)


def local_model_ref(ref: str, base: str | Path | None = None) -> str:
    """``ref`` made absolute when it is a relative path to an existing folder under ``base``; else unchanged."""
    if "://" in ref or Path(ref).expanduser().is_absolute():
        return ref
    candidate = Path(base or os.getcwd()) / ref
    return os.path.normpath(candidate) if candidate.exists() else ref


def resolve_relative_paths(data: dict[str, Any], base: str | Path) -> None:
    """Make the local paths of raw spec ``data`` absolute against ``base`` (in place; see the module doc)."""
    for section, key in (("input", "path"), ("sink", "path"), ("labels", "file")):
        node = data.get(section)
        if isinstance(node, dict) and isinstance(node.get(key), str):
            node[key] = absolute_path(node[key], base)
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("ref"), str):
        model["ref"] = local_model_ref(model["ref"], base)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputSpec(_Strict):
    """Where the records come from."""

    format: Literal["parquet", "delta", "iceberg", "csv", "jsonl"] = "parquet"
    path: str | None = None  # parquet/csv/jsonl file or folder, or a Delta table URI
    table: str | None = None  # Iceberg table identifier ("db.name")
    catalog: dict[str, str] = Field(default_factory=dict)  # pyiceberg catalog properties
    id_column: str = "id"
    text_column: str = "text"
    passthrough: list[str] = Field(default_factory=list)
    filter: str | None = None  # a row filter in the restricted grammar of gliclass_dist.predicate
    incremental: bool = False  # Delta input: only versions added since the last committed run
    storage_options: dict[str, str] = Field(default_factory=dict)

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, value: str | None) -> str | None:
        return None if value is None else absolute_path(value)

    @field_validator("filter")
    @classmethod
    def _filter_grammar(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_filter(value)
            except FilterError as exc:  # names the bad token and its position
                raise ValueError(f"input.filter: {exc}") from None
        return value

    @property
    def predicate(self) -> Predicate | None:
        """``filter`` as a typed tree (``gliclass_dist.predicate``), compiled per engine; None without one."""
        return None if self.filter is None else parse_filter(self.filter)

    @model_validator(mode="after")
    def _where(self) -> InputSpec:
        if self.format == "iceberg":
            if not self.table:
                raise ValueError("input.table is required for an iceberg input")
        elif not self.path:
            raise ValueError(f"input.path is required for a {self.format} input")
        if self.incremental and self.format != "delta":
            raise ValueError("input.incremental needs a delta input")
        return self


class ModelSpec(_Strict):
    """Which checkpoint and how to run it: the job's part of ``gliclass_dist.settings.EngineSettings``
    (``EngineSettings.from_job`` adds ``resources.token_budget`` and ``resources.result_cache_rows``)."""

    ref: str  # a local directory or a hub id
    revision: str | None = None
    dtype: DType = "auto"
    device: Device = "auto"
    backend: Backend = "torch"  # torch, or int8 / onnx-int8 (CPU, float32)
    max_length: Window | None = None
    allow_pickle: bool = False

    @field_validator("ref")
    @classmethod
    def _local_ref(cls, value: str) -> str:
        return local_model_ref(value)


class SinkSpec(_Strict):
    """Where results land."""

    format: Literal["delta", "iceberg", "parquet"] = "delta"
    path: str | None = None  # Delta table URI or parquet folder
    table: str | None = None  # Iceberg table identifier
    catalog: dict[str, str] = Field(default_factory=dict)
    mode: Literal["append", "overwrite"] = "append"
    partition_by: list[str] = Field(default_factory=list)
    target_file_rows: int = Field(1_000_000, gt=0)
    storage_options: dict[str, str] = Field(default_factory=dict)

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, value: str | None) -> str | None:
        return None if value is None else absolute_path(value)

    @model_validator(mode="after")
    def _where(self) -> SinkSpec:
        if self.format == "iceberg" and not self.table:
            raise ValueError("sink.table is required for an iceberg sink")
        if self.format != "iceberg" and not self.path:
            raise ValueError(f"sink.path is required for a {self.format} sink")
        return self


class ResourceSpec(_Strict):
    """How much of the cluster the model stage uses."""

    min_actors: int = Field(1, ge=1)
    max_actors: int = Field(1, ge=1)
    gpus_per_actor: float = Field(0.0, ge=0.0)
    cpus_per_actor: float = Field(1.0, gt=0.0)
    token_budget: TokenBudget | None = None  # padded tokens per forward pass (None: 2k CPU, 16k GPU)
    result_cache_rows: CacheRows = 0  # rows of each model worker's result cache (0: off)
    batch_rows: int = Field(256, ge=1)  # rows per Ray/Spark batch handed to the engine
    tokenize_stage: bool = True  # Ray: tokenize in a separate CPU stage
    block_rows: int | None = Field(None, ge=1)  # Ray: rows per block handed to a model actor (None: 8 batches)

    @model_validator(mode="after")
    def _range(self) -> ResourceSpec:
        if self.max_actors < self.min_actors:
            raise ValueError("resources.max_actors must be >= resources.min_actors")
        return self


class JobSpec(_Strict):
    """A whole classification job."""

    name: str = "gliclass"
    input: InputSpec
    labels: LabelSpec
    model: ModelSpec
    sink: SinkSpec
    resources: ResourceSpec = Field(default_factory=ResourceSpec)
    idempotency_key: str | None = None  # default: derived from the spec (same spec => same key)

    @field_validator("labels", mode="before")
    @classmethod
    def _absolute_label_file(cls, value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("file"), str):
            return {**value, "file": absolute_path(value["file"])}
        if isinstance(value, LabelSpec) and value.file is not None:
            return value.model_copy(update={"file": absolute_path(value.file)})
        return value

    @model_validator(mode="after")
    def _partition_columns(self) -> JobSpec:
        if self.sink.partition_by:
            import pyarrow as pa

            from gliclass_dist.schema import RESULT_FIELDS

            valid = self.keep_columns + [f.name for f in RESULT_FIELDS if not pa.types.is_nested(f.type)]
            for name in self.sink.partition_by:
                if name not in valid:
                    raise ValueError(
                        f"sink.partition_by: column {name!r} is not an output column one can partition by "
                        f"(valid: {valid})"
                    )
        return self

    @property
    def keep_columns(self) -> list[str]:
        """Input columns carried into the output: the id, then passthrough columns."""
        cols = [self.input.id_column]
        cols += [c for c in self.input.passthrough if c != self.input.id_column]
        return cols

    @property
    def job_key(self) -> str:
        """The idempotency key: given, or a digest of everything that defines the job's output."""
        if self.idempotency_key:
            return self.idempotency_key
        payload = self.model_dump(mode="json", exclude={"resources", "idempotency_key"})
        # settings added after the first release drop out at their default: older specs keep their keys
        for (section, field), default in KEY_NEUTRAL_DEFAULTS.items():
            if payload[section].get(field, default) == default:
                payload[section].pop(field, None)
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
        return f"{self.name}-{digest}"

    @classmethod
    def from_dict(cls, data: dict[str, Any], overrides: Sequence[str] = ()) -> JobSpec:
        data = copy.deepcopy(data)  # (no JSON round trip: it would expand shared references)
        for item in overrides:
            apply_override(data, item)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SpecError(format_validation_error(exc)) from None

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Sequence[str] = ()) -> JobSpec:
        path = Path(path)
        if not path.exists():
            raise SpecError(f"job spec {str(path)!r} does not exist")
        try:
            data = load_yaml(path.read_text(), "job specs")
        except (YamlAliasError, yaml.YAMLError) as exc:
            raise SpecError(f"{path}: {exc}") from None
        if not isinstance(data, dict):
            raise SpecError(f"{path}: a job spec is a mapping at the top level")
        resolve_relative_paths(data, path.resolve().parent)  # overrides: relative to the current directory
        return cls.from_dict(data, overrides)

    def to_yaml(self) -> str:
        return dump_yaml(self.model_dump(mode="json", exclude_none=True))


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to nested dict ``data``."""
    if "=" not in item:
        raise SpecError(f"override {item!r} must look like key.path=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SpecError(f"override {item!r}: {part!r} is not a mapping")
    try:
        node[parts[-1]] = load_yaml(raw, "job specs")
    except (YamlAliasError, yaml.YAMLError) as exc:
        raise SpecError(f"override {item!r}: {exc}") from None


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(spec)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key")
        else:
            lines.append(f"{key}: {err['msg']}")
    return "invalid job spec:\n  " + "\n  ".join(lines)
