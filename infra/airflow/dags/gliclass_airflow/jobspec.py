"""The job spec as the DAG handles it: load it, apply ``key.path=value`` overrides, write it for the job.

The DAG never interprets the spec beyond the few fields it checks (input and sink location); the
jobs (``jobs/ray_classify.py``, ``jobs/spark_classify.py``) validate the whole spec with
``gliclass_dist.spec.JobSpec`` (``input.filter``'s restricted grammar included) and reject a bad one
before any work starts. YAML anchors and aliases are refused here already, as ``JobSpec`` refuses them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

SPEC_FILE_NAME = "job.yaml"
SUMMARY_FILE_NAME = "summary.json"


class SpecProblem(ValueError):
    """The spec given to the DAG cannot be used."""


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` refusing anchors and aliases (a few hundred bytes of nested aliases expand to
    gigabytes). The same rule as ``gliclass_dist.safe_yaml``, repeated here: this package does not import
    gliclass_dist."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise SpecProblem(
                f"anchors and aliases are not allowed in job specs (&/*{event.anchor} at line "
                f"{event.start_mark.line + 1})"
            )
        return super().compose_node(parent, index)


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # the job's loader refuses aliases: write a shared object out twice


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` without anchors and aliases (``SpecProblem`` if there are any)."""
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass


def load_spec(spec: Mapping[str, Any] | None, spec_path: str | None) -> dict[str, Any]:
    """The spec as plain data: an inline mapping (a rendered DAG param) or a YAML file; exactly one."""
    if spec and spec_path:
        raise SpecProblem("give the job spec either inline (param 'spec') or as a file ('spec_path'), not both")
    if spec:
        if not isinstance(spec, Mapping):
            raise SpecProblem(f"param 'spec' must be a mapping, got {type(spec).__name__}")
        return copy.deepcopy(dict(spec))
    if not spec_path:
        raise SpecProblem(
            "no job spec: set the DAG param 'spec' (inline) or 'spec_path', or the Airflow Variable "
            "'gliclass_spec_path'"
        )
    path = Path(spec_path)
    if not path.is_file():
        raise SpecProblem(f"job spec file {spec_path!r} does not exist on this Airflow worker")
    data = load_yaml(path.read_text())
    if not isinstance(data, dict):
        raise SpecProblem(f"{spec_path}: a job spec is a mapping at the top level")
    return data


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to ``data``: the jobs' ``--set`` semantics."""
    if "=" not in item:
        raise SpecProblem(f"override {item!r} must look like key.path=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SpecProblem(f"override {item!r}: {part!r} is not a mapping")
    node[parts[-1]] = load_yaml(raw)


def render_spec(data: Mapping[str, Any], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A copy of ``data`` with ``overrides`` applied, checked for the parts the DAG relies on."""
    out = copy.deepcopy(dict(data))
    for item in overrides:
        apply_override(out, item)
    for section in ("input", "model", "sink", "labels"):
        if not isinstance(out.get(section), dict):
            raise SpecProblem(f"job spec: section {section!r} is missing or not a mapping")
    return out


@dataclass(frozen=True)
class TableRef:
    """Where a table or file set lives, as far as the DAG's checks care."""

    format: str
    path: str | None = None
    table: str | None = None
    storage_options: dict[str, str] = field(default_factory=dict)
    mode: str = "append"

    @property
    def uri(self) -> str:
        return self.path or self.table or ""


@dataclass(frozen=True)
class SpecFacts:
    """The fields of a spec that the DAG reads."""

    name: str
    input: TableRef
    sink: TableRef
    incremental: bool

    def progress_key(self) -> str:
        """An Airflow Variable key that names this input → sink pair (stable across runs)."""
        digest = hashlib.sha256(json.dumps([self.name, self.input.uri, self.sink.uri]).encode()).hexdigest()[:12]
        slug = re.sub(r"[^A-Za-z0-9_]+", "_", self.name)[:40]
        return f"gliclass_progress__{slug}__{digest}"


def spec_facts(spec: Mapping[str, Any]) -> SpecFacts:
    """Read the input and sink locations from a rendered spec (defaults as in ``gliclass_dist.spec``)."""
    src, dst = spec["input"], spec["sink"]
    return SpecFacts(
        name=str(spec.get("name", "gliclass")),
        input=TableRef(
            format=str(src.get("format", "parquet")),
            path=src.get("path"),
            table=src.get("table"),
            storage_options=dict(src.get("storage_options") or {}),
        ),
        sink=TableRef(
            format=str(dst.get("format", "delta")),
            path=dst.get("path"),
            table=dst.get("table"),
            storage_options=dict(dst.get("storage_options") or {}),
            mode=str(dst.get("mode", "append")),
        ),
        incremental=bool(src.get("incremental", False)),
    )


@dataclass(frozen=True)
class RunFolder:
    """A folder holding one DAG run's rendered spec (and, for Spark, the job's summary)."""

    path: Path
    spec_file: Path
    summary_file: Path


def write_run_folder(run_root: str | Path, run_id: str, spec: Mapping[str, Any]) -> RunFolder:
    """Write ``spec`` to ``<run_root>/<run id>/job.yaml``; the folder is what the Ray job uploads."""
    safe_run = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)
    folder = Path(run_root) / safe_run
    folder.mkdir(parents=True, exist_ok=True)
    spec_file = folder / SPEC_FILE_NAME
    spec_file.write_text(yaml.dump(dict(spec), Dumper=_NoAliasDumper, sort_keys=False))
    summary_file = folder / SUMMARY_FILE_NAME
    summary_file.unlink(missing_ok=True)  # a summary left by an earlier try must not pass for this one
    logger.info("job spec for run %s written to %s", run_id, spec_file)
    return RunFolder(folder, spec_file, summary_file)
