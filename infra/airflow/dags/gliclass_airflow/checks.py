"""Checks around a classification run: is there new input, and is the result sound.

The result checks read the job's summary (``rows_in``, ``rows_out``, ``status_counts``,
``table_version``, ``committed``) and, for a Delta sink, the table itself: the rows that the run's
commit added must match the summary, row for row and status for status.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gliclass_airflow.jobspec import TableRef

logger = logging.getLogger(__name__)

REQUIRED_SUMMARY_KEYS = ("rows_in", "rows_out", "status_counts")


class ResultInvalid(RuntimeError):
    """The job finished but its result fails validation; the message lists every problem found."""


def delta_version(table: TableRef) -> int | None:
    """The current version of a Delta table, or None when no table exists there yet."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(table.uri, storage_options=table.storage_options or None).version()
    except TableNotFoundError:
        return None


def new_input_versions(current: int | None, last_processed: int | None) -> bool:
    """Whether a Delta input has versions that the last successful run did not see."""
    if current is None:
        return False
    return last_processed is None or current > last_processed


def is_bad_status(status: str, bad_statuses: Iterable[str] = ()) -> bool:
    """``error: ...`` statuses are always bad; ``bad_statuses`` names more (exact values)."""
    return status.startswith("error") or status in set(bad_statuses)


@dataclass
class Report:
    """What validation found; ``problems`` empty means the result passed."""

    rows_in: int = 0
    rows_out: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)
    bad_rows: int = 0
    bad_ratio: float = 0.0
    table_version: int | None = None
    table_checked: bool = False
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def check_summary(
    summary: Mapping[str, Any] | None, *, max_bad_ratio: float, bad_statuses: Iterable[str] = ()
) -> Report:
    """Rows in = rows out, statuses add up to the rows, and bad statuses stay under the ratio."""
    report = Report()
    if not summary:
        report.problems.append("the job left no summary (no summary file and no summary in its logs)")
        return report
    missing = [k for k in REQUIRED_SUMMARY_KEYS if k not in summary]
    if missing:
        report.problems.append(f"the job summary lacks {missing}: {dict(summary)}")
        return report
    report.rows_in = int(summary["rows_in"])
    report.rows_out = int(summary["rows_out"])
    report.status_counts = {str(k): int(v) for k, v in dict(summary["status_counts"]).items()}
    report.table_version = summary.get("table_version")
    if report.rows_out != report.rows_in:
        report.problems.append(
            f"rows out ({report.rows_out}) != rows in ({report.rows_in}): "
            f"{'rows were lost' if report.rows_out < report.rows_in else 'rows were duplicated'}"
        )
    counted = sum(report.status_counts.values())
    if counted != report.rows_out:
        report.problems.append(f"per-status counts add up to {counted}, not to rows out ({report.rows_out})")
    bad_statuses = list(bad_statuses)
    report.bad_rows = sum(n for s, n in report.status_counts.items() if is_bad_status(s, bad_statuses))
    report.bad_ratio = report.bad_rows / report.rows_out if report.rows_out else 0.0
    if report.bad_ratio > max_bad_ratio:
        bad = {s: n for s, n in report.status_counts.items() if is_bad_status(s, bad_statuses)}
        report.problems.append(
            f"{report.bad_rows} of {report.rows_out} rows ({report.bad_ratio:.2%}) have a bad status, "
            f"above the allowed {max_bad_ratio:.2%}: {bad}"
        )
    return report


def rows_added_by_commit(table: TableRef, version: int) -> tuple[int, dict[str, int]]:
    """Rows, and rows per ``status``, in the data files that Delta commit ``version`` added."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    from deltalake import DeltaTable

    options = table.storage_options or None
    at_version = DeltaTable(table.uri, version=version, storage_options=options).to_pyarrow_dataset()
    before: set[str] = set()
    if version > 0:
        before = set(DeltaTable(table.uri, version=version - 1, storage_options=options).to_pyarrow_dataset().files)
    added = [f for f in at_version.files if f not in before]
    if not added:
        return 0, {}
    statuses = ds.dataset(added, filesystem=at_version.filesystem, format="parquet").to_table(columns=["status"])
    counts = {row["values"]: int(row["counts"]) for row in pc.value_counts(statuses["status"]).to_pylist()}
    return statuses.num_rows, counts


def check_delta_sink(report: Report, sink: TableRef, summary: Mapping[str, Any]) -> None:
    """Compare the summary with what the run's commit really added to the Delta sink."""
    version = summary.get("table_version")
    if version is None and report.rows_out == 0:
        logger.info("the job had no rows to write and made no commit")
        return
    if version is None:
        report.problems.append("the job summary names no table_version for the Delta sink")
        return
    current = delta_version(sink)
    if current is None or current < int(version):
        report.problems.append(f"the Delta sink {sink.uri} is at version {current}, before the job's {version}")
        return
    if summary.get("committed") is False:
        # The job found its key already committed (a retry of a finished run) and wrote nothing.
        logger.info("job reports its result was already committed at version %s; not re-counting it", version)
        return
    rows, counts = rows_added_by_commit(sink, int(version))
    report.table_checked = True
    if rows != report.rows_out:
        report.problems.append(f"Delta commit {version} added {rows} rows, the job summary says {report.rows_out}")
    if counts != report.status_counts:
        report.problems.append(
            f"Delta commit {version} holds statuses {counts}, the job summary says {report.status_counts}"
        )


def validate_result(
    summary: Mapping[str, Any] | None,
    sink: TableRef,
    *,
    max_bad_ratio: float,
    bad_statuses: Iterable[str] = (),
    check_table: bool = True,
) -> Report:
    """Run every check; raise ``ResultInvalid`` naming all problems, else return the report."""
    report = check_summary(summary, max_bad_ratio=max_bad_ratio, bad_statuses=bad_statuses)
    if summary and not report.problems and check_table:
        if sink.format == "delta":
            check_delta_sink(report, sink, summary)
        else:
            logger.info("sink format %s: table-level checks skipped, summary checks only", sink.format)
    if report.problems:
        raise ResultInvalid("classification result failed validation:\n  - " + "\n  - ".join(report.problems))
    logger.info(
        "result valid: %d rows in = %d rows out, statuses %s, bad ratio %.4f, table version %s (table checked: %s)",
        report.rows_in,
        report.rows_out,
        report.status_counts,
        report.bad_ratio,
        report.table_version,
        report.table_checked,
    )
    return report
