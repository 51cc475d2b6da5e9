"""One job runner: what a run does (``plan_run``) and what it did (``RunSummary``), for every engine.

The Ray job (``gliclass_dist.ray.job``), the Spark job (``gliclass_dist.spark.job``) and the Spark stream
(``gliclass_dist.spark.stream``) hold only their dataflow; around it they share::

    plan = plan_run(spec)                      # input version, commit key, skip when already committed
    summary = RunSummary.for_run(spec, plan, engine="ray")
    if plan.skipped:
        return summary.finish(started).to_dict()
    ...read input_columns(spec) at plan.input_version (rows after plan.since_version), classify,
    ...commit as (plan.job_key, plan.version) with plan.commit_metadata(summary.model, spec.name)
    summary.landed(result, rows=rows, status_counts=counts, classify_s=seconds, rows_in=rows_in)
    return summary.finish(started).to_dict()

Exactly once. A run is keyed by ``(spec.job_key, version)``: ``version`` is 0 for a plain run, and the input
table version for an incremental Delta run. A plain run whose key is committed, or an incremental run whose
input has no version after the last committed one, is skipped before any work (``RunPlan.skipped_reason``).

The summary's JSON (``RunSummary.to_dict``) is what ``--summary-json`` writes and the Airflow checks read
(``infra/airflow/dags/gliclass_airflow/checks.py``, which reads the JSON, never this module): its field
names are a contract.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from gliclass_dist import connectors
from gliclass_dist.spec import JobSpec, SinkSpec, SpecError

logger = logging.getLogger(__name__)

INPUT_VERSION_PROP = "gliclass.input_version"  # commit metadata: the input table version a run read


def model_display_name(ref: str) -> str:
    """What the ``model`` column says: the folder name of a local checkpoint, else the hub id."""
    path = Path(ref).expanduser()
    return path.resolve().name if path.exists() else ref


def sink_location(sink: SinkSpec) -> str:
    """The sink's path, or its table name (Iceberg)."""
    return sink.path or sink.table or ""


def input_columns(spec: JobSpec) -> list[str]:
    """The input columns a job reads: kept columns, the text, the per-row labels and examples."""
    cols = list(spec.keep_columns)
    for extra in (spec.input.text_column, *spec.labels.columns):
        if extra and extra not in cols:
            cols.append(extra)
    return cols


def status_counts(table: pa.Table | pa.RecordBatch) -> dict[str, int]:
    """Rows per ``status`` value of a result table or batch (in order of first appearance)."""
    if table.num_rows == 0:
        return {}
    counts = pc.value_counts(table.column("status"))
    return {str(v): int(n) for v, n in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist())}


def merge_counts(parts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Status counts added up over parts (tasks, micro-batches), sorted by status."""
    total: Counter[str] = Counter()
    for counts in parts:
        total.update(counts)
    return dict(sorted(total.items()))


# ---------------------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class RunPlan:
    """What a run reads and under which key it commits; ``skipped_reason`` when there is nothing to do."""

    job_key: str
    version: int  # the commit version: 0 (plain run) or the input table version (incremental Delta run)
    input_version: int | None = None  # the Delta input version read (pinned at the start), else None
    since_version: int | None = None  # incremental: read only rows added after this input version
    skipped_reason: str | None = None

    @property
    def skipped(self) -> bool:
        return self.skipped_reason is not None

    @property
    def commit_key(self) -> str:
        return connectors.commit_key(self.job_key, self.version)

    def commit_metadata(self, model: str, job_name: str) -> dict[str, str]:
        """The metadata written with the commit: model, job name and the input version read."""
        extra = {"gliclass.model": model, "gliclass.job": job_name}
        if self.input_version is not None:
            extra[INPUT_VERSION_PROP] = str(self.input_version)
        return extra


def plan_run(spec: JobSpec) -> RunPlan:
    """Plan a batch run: pin the Delta input version, choose the commit version, skip a committed key.

    Asks the sink for the last version committed under ``spec.job_key`` (``connectors.last_committed``).
    """
    app_id = spec.job_key
    input_version = connectors.input_version(spec.input) if spec.input.format == "delta" else None
    done = connectors.last_committed(spec.sink, app_id)
    if spec.input.incremental:
        latest = int(input_version)  # type: ignore[arg-type]  # the spec allows incremental for delta only
        if done is not None and latest <= done:
            reason = f"input {spec.input.path!r} has no version after {done}, the last one this job committed"
            logger.info("nothing to do: %s", reason)
            return RunPlan(app_id, done, input_version, done, skipped_reason=reason)
        logger.info("incremental run over input versions %s..%d", "0" if done is None else done + 1, latest)
        return RunPlan(app_id, latest, input_version, since_version=done)
    if done is not None:
        reason = f"job key {app_id!r} is already committed to {sink_location(spec.sink)!r}"
        logger.info("nothing to do: %s", reason)
        return RunPlan(app_id, 0, input_version, skipped_reason=reason)
    return RunPlan(app_id, 0, input_version)


# ---------------------------------------------------------------------------------------------- summary


@dataclass(kw_only=True)
class RunSummary:
    """What a run did. ``to_dict()`` is the summary JSON; ``details`` holds engine-specific fields."""

    job_key: str
    commit_key: str | None = None
    committed: bool = False
    skipped_reason: str | None = None
    table_version: int | None = None
    input_version: int | None = None
    rows_in: int = 0
    rows_out: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)
    files: int = 0
    rows_per_s: float = 0.0
    classify_s: float = 0.0
    elapsed_s: float = 0.0
    sink: str = ""
    model: str = ""
    engine: str = ""
    details: dict[str, Any] = field(default_factory=dict)  # e.g. Spark's tasks, a stream's batches

    @classmethod
    def for_run(cls, spec: JobSpec, plan: RunPlan, *, engine: str, model: str | None = None) -> RunSummary:
        """A summary of nothing done yet (or of the skip, when ``plan.skipped``)."""
        return cls(
            job_key=plan.job_key,
            commit_key=plan.commit_key,
            skipped_reason=plan.skipped_reason,
            input_version=plan.input_version,
            sink=sink_location(spec.sink),
            model=model or model_display_name(spec.model.ref),
            engine=engine,
        )

    def landed(
        self,
        result: connectors.CommitResult,
        *,
        rows: int,
        status_counts: Mapping[str, int],
        classify_s: float,
        rows_in: int | None = None,
    ) -> RunSummary:
        """Record the commit of ``rows`` result rows classified in ``classify_s`` seconds.

        ``rows_in``: the input rows counted separately (None: not counted, taken as ``rows``); a difference
        is logged as an error (the input changed during the run, or rows were lost or duplicated).
        """
        if rows_in is not None and rows_in != rows:
            logger.error("rows in (%d) != rows out (%d): the input changed during the run, or rows were lost or "
                         "duplicated", rows_in, rows)
        self.commit_key = result.key
        self.committed = result.committed
        self.skipped_reason = result.skipped_reason
        self.table_version = result.table_version
        self.rows_in = rows if rows_in is None else rows_in
        self.rows_out = rows
        self.status_counts = dict(status_counts)
        self.files = result.files
        self.rows_per_s = round(rows / classify_s, 2) if classify_s > 0 else 0.0
        self.classify_s = round(classify_s, 3)
        return self

    def finish(self, started: float) -> RunSummary:
        """Set ``elapsed_s`` from ``started`` (a ``time.perf_counter()`` reading)."""
        self.elapsed_s = round(time.perf_counter() - started, 3)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready fields (``details`` flattened in)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "details"}
        out["status_counts"] = dict(self.status_counts)
        out.update(self.details)
        return out


def format_summary(summary: RunSummary | Mapping[str, Any]) -> str:
    """A few human lines for a job summary (a ``RunSummary`` or its ``to_dict()``)."""
    s = summary.to_dict() if isinstance(summary, RunSummary) else summary
    lines = [
        f"job {s['job_key']} -> {s['sink']}",
        f"  committed: {s['committed']} ({s['commit_key']}, table version {s['table_version']})",
    ]
    if s.get("skipped_reason"):
        lines.append(f"  skipped: {s['skipped_reason']}")
    lines.append(f"  rows in: {s['rows_in']}  rows out: {s['rows_out']}  files: {s['files']}")
    if s["status_counts"]:
        lines.append("  rows per status: " + ", ".join(f"{k}={v}" for k, v in s["status_counts"].items()))
    lines.append(f"  throughput: {s['rows_per_s']} rows/s (total {s['elapsed_s']} s)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- command lines


def job_parser(
    description: str,
    *,
    prog: str | None = None,
    spec_help: str = "job spec YAML",
    set_example: str = "resources.batch_rows=512",
    raw_description: bool = False,
) -> argparse.ArgumentParser:
    """The parser every job command starts from: ``--spec``, ``--set KEY=VALUE`` (repeatable),
    ``--summary-json PATH`` and ``-v``; each command adds its own options."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter if raw_description else argparse.HelpFormatter,
    )
    parser.add_argument("--spec", required=True, help=spec_help)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a spec value, e.g. --set {set_example} (repeatable)")
    parser.add_argument("--summary-json", help="also write the summary as JSON to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs")
    return parser


def load_job_spec(path: str, overrides: Sequence[str] = (), *, verbose: bool = False) -> JobSpec | None:
    """The start of a job's command line: set up logging, load the spec (``--set`` overrides) and log it.

    None when the spec is bad (the error is printed to stderr; the command exits with 2).
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        spec = JobSpec.from_yaml(path, overrides)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    logger.info("job %s (key %s): %s %s -> %s %s", spec.name, spec.job_key, spec.input.format,
                spec.input.path or spec.input.table, spec.sink.format, sink_location(spec.sink))
    return spec


def write_summary_json(summary: Mapping[str, Any], path: str | None) -> None:
    """``--summary-json PATH``: the whole summary as indented JSON (nothing when ``path`` is None)."""
    if path:
        Path(path).write_text(json.dumps(summary, indent=2, default=str) + "\n")


__all__ = [
    "INPUT_VERSION_PROP",
    "RunPlan",
    "RunSummary",
    "format_summary",
    "input_columns",
    "job_parser",
    "load_job_spec",
    "merge_counts",
    "model_display_name",
    "plan_run",
    "sink_location",
    "status_counts",
    "write_summary_json",
]
