"""gliclass-dist estimate: what a job will cost, measured on a sample before it runs.

    gliclass-dist estimate --spec job.yaml --sample 2000 [--threads 1] [--json]

Reads the first ``--sample`` rows of the spec's input (after its filter), classifies them on this machine with
the spec's model settings (``EngineSettings.from_job``: backend, window, token budget, result cache) and the
spec's batch size, and prints rows/s per core, tokens and padded tokens per row, the statuses, and the
projected core-hours for the whole input. The input's row count comes from its metadata (Parquet footers, the
Delta log's per-file record counts, the Iceberg snapshot summary), not from reading it; csv/jsonl inputs have
none and are counted by a scan. With a filter, the projection scales the count by the share of sampled rows
the filter kept. GPU-hours come from the GPU figures in ``bench/results/gpu.json`` (the engine's rows/s at the
nearest label count) when that file exists.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

from gliclass_dist.cli import add_command
from gliclass_dist.run import input_columns, merge_counts, status_counts
from gliclass_dist.spec import InputSpec, JobSpec

logger = logging.getLogger(__name__)

GPU_RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results" / "gpu.json"
WARMUP_ROWS = 16
NO_GPU = "no GPU measurement"


@dataclass
class Estimate:
    """What ``estimate`` measured on the sample and projects for the whole input."""

    input_rows: int  # rows in the input, from its metadata (before the filter)
    row_count_source: str  # where input_rows came from
    sample_rows: int  # rows classified here
    filter_kept_share: float  # share of the rows read for the sample that the filter kept (1.0 without one)
    projected_rows: int  # input_rows x filter_kept_share
    threads: int
    seconds: float  # wall time of the measured run (after a warm-up)
    rows_per_s: float
    rows_per_s_per_core: float
    tokens_per_row: float
    padded_tokens_per_row: float
    statuses: dict[str, int]
    duplicate_rows: int  # sampled rows answered by an identical row of the same batch
    cache_hits: int  # sampled rows answered by the result cache
    core_hours: float  # projected_rows / rows_per_s_per_core
    gpu: list[dict[str, Any]] = field(default_factory=list)  # per measured GPU workload: rows/s and GPU-hours
    gpu_note: str = NO_GPU
    model: str = ""
    backend: str = "torch"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def input_row_count(spec: InputSpec) -> tuple[int, str]:
    """Rows of the input (before any filter) and where that number came from, without reading the data."""
    if spec.format == "delta":
        from deltalake import DeltaTable

        table = DeltaTable(spec.path, storage_options=spec.storage_options or None)
        actions = pa.table(table.get_add_actions(flatten=True))
        if "num_records" not in actions.column_names or actions.column("num_records").null_count:
            raise ValueError(f"the Delta log of {spec.path!r} has no record counts (written without statistics)")
        return int(pa.compute.sum(actions.column("num_records")).as_py() or 0), f"delta log (version {table.version()})"
    if spec.format == "iceberg":
        from gliclass_dist.connectors.iceberg import open_table

        table = open_table(spec)
        if table is None:
            raise FileNotFoundError(f"no Iceberg table {spec.table!r} in the input catalog")
        snapshot = table.current_snapshot()
        if snapshot is None:
            return 0, "iceberg (no snapshot)"
        total = (snapshot.summary or {}).get("total-records") if snapshot.summary else None
        if total is None:
            raise ValueError(f"the Iceberg snapshot {snapshot.snapshot_id} of {spec.table!r} has no total-records")
        return int(total), f"iceberg snapshot {snapshot.snapshot_id} summary"
    from gliclass_dist.connectors.base import resolve_fs
    from gliclass_dist.connectors.parquet import FILE_FORMATS

    filesystem, path = resolve_fs(spec.path)
    dataset = ds.dataset(path, format=FILE_FORMATS[spec.format], filesystem=filesystem, partitioning="hive")
    where = "parquet footers" if spec.format == "parquet" else f"{spec.format} scan (no metadata)"
    return int(dataset.count_rows()), where


def read_sample(job: JobSpec, rows: int) -> tuple[pa.Table, float]:
    """The first ``rows`` rows of the input after its filter, and the share of rows read that the filter kept."""
    from gliclass_dist.connectors import read_source
    from gliclass_dist.connectors.base import arrow_filter

    unfiltered = job.input.model_copy(update={"filter": None})
    columns = input_columns(job)
    predicate = arrow_filter(job.input.filter) if job.input.filter else None
    kept: list[pa.Table] = []
    read = passed = have = 0
    reader = read_source(unfiltered)  # all columns: the filter may use columns the job does not keep
    for batch in reader:
        table = pa.Table.from_batches([batch])
        read += table.num_rows
        if predicate is not None:
            table = table.filter(predicate)
        passed += table.num_rows
        table = table.select(columns)
        kept.append(table.slice(0, rows - have))
        have += kept[-1].num_rows
        if have >= rows:
            break
    reader.close()
    sample = pa.concat_tables(kept) if kept else pa.table({c: pa.array([], pa.string()) for c in columns})
    return sample, (passed / read if read else 1.0)


def gpu_projection(path: Path, labels: int, rows: int) -> tuple[list[dict[str, Any]], str]:
    """GPU-hours for ``rows`` rows per GPU workload measured in ``path`` (the engine, nearest label count)."""
    if not path.exists():
        return [], NO_GPU
    data = json.loads(path.read_text())
    engine = [
        r for r in data.get("results", [])
        if r.get("approach") == "engine" and not r.get("variant") and r.get("rows_per_s") and r.get("labels")
    ]
    if not engine:
        return [], f"{NO_GPU} ({path} holds no engine figures)"
    nearest = min({int(r["labels"]) for r in engine}, key=lambda n: (abs(n - labels), n))
    out = [
        {
            "workload": r.get("workload"),
            "labels": nearest,
            "rows_per_s": float(r["rows_per_s"]),
            "gpu_hours": rows / float(r["rows_per_s"]) / 3600.0,
        }
        for r in engine
        if int(r["labels"]) == nearest
    ]
    device = data.get("device") or "GPU"
    return out, f"from {path.name} ({device}; engine at {nearest} labels, per workload)"


def estimate(job: JobSpec, sample_rows: int = 2000, threads: int = 1, gpu_results: Path = GPU_RESULTS) -> Estimate:
    """Classify a sample of ``job``'s input here and project the cost of the whole input (see the module doc)."""
    from gliclass_dist.engine import Classifier
    from gliclass_dist.settings import EngineSettings

    if sample_rows < 1:
        raise ValueError(f"--sample must be a positive number of rows, got {sample_rows}")
    total, source = input_row_count(job.input)
    sample, kept_share = read_sample(job, sample_rows)
    if sample.num_rows == 0:
        raise ValueError("the input has no rows to sample (after its filter)")
    settings = EngineSettings.from_job(job).replace(threads=threads)
    clf = Classifier.from_settings(settings)
    spec, batch_rows = job.labels, job.resources.batch_rows
    keep = [job.input.id_column] if job.input.id_column in sample.column_names else []
    clf.classify_arrow(sample.slice(0, WARMUP_ROWS), spec, text_column=job.input.text_column, keep=keep)
    cache = clf.result_cache
    if cache is not None:
        cache.clear()  # the warm-up rows must not count as cache hits
    before = dict(clf.stats)
    counts = []
    started = time.perf_counter()
    for start in range(0, sample.num_rows, batch_rows):
        part = sample.slice(start, batch_rows)
        counts.append(status_counts(clf.classify_arrow(part, spec, text_column=job.input.text_column, keep=keep)))
    seconds = time.perf_counter() - started
    n = sample.num_rows
    delta = {k: clf.stats.get(k, 0) - before.get(k, 0) for k in clf.stats}
    rate = n / seconds
    per_core = rate / threads
    projected = round(total * kept_share)
    labels = len(spec.fixed) if spec.fixed is not None else 5
    gpu, note = gpu_projection(gpu_results, labels, projected)
    return Estimate(
        input_rows=total,
        row_count_source=source,
        sample_rows=n,
        filter_kept_share=round(kept_share, 4),
        projected_rows=projected,
        threads=threads,
        seconds=round(seconds, 3),
        rows_per_s=round(rate, 2),
        rows_per_s_per_core=round(per_core, 2),
        tokens_per_row=round(delta.get("tokens", 0) / n, 1),
        padded_tokens_per_row=round(delta.get("padded_tokens", 0) / n, 1),
        statuses=merge_counts(counts),
        duplicate_rows=int(delta.get("duplicate_rows", 0)),
        cache_hits=int(delta.get("cache_hits", 0)),
        core_hours=projected / per_core / 3600.0,
        gpu=gpu,
        gpu_note=note,
        model=clf.model_name,
        backend=clf.backend,
    )


def format_estimate(est: Estimate) -> str:
    """The human-readable report."""
    lines = [
        f"input: {est.input_rows:,} rows ({est.row_count_source})"
        + (f"; the filter kept {est.filter_kept_share:.1%} of the rows read -> {est.projected_rows:,} rows"
           if est.filter_kept_share < 1.0 else ""),
        f"sample: first {est.sample_rows:,} rows, model {est.model} ({est.backend}), {est.threads} thread(s), "
        f"{est.seconds:.1f}s",
        f"rate: {est.rows_per_s:,.2f} rows/s = {est.rows_per_s_per_core:,.2f} rows/s per core",
        f"tokens per row: {est.tokens_per_row:,.1f} real, {est.padded_tokens_per_row:,.1f} padded",
        "statuses: " + ", ".join(f"{k} {v:,}" for k, v in est.statuses.items()),
    ]
    if est.duplicate_rows or est.cache_hits:
        lines.append(f"repeated work avoided: {est.duplicate_rows:,} duplicate rows, {est.cache_hits:,} cache hits")
    lines.append(f"projected: {est.core_hours:,.2f} core-hours for {est.projected_rows:,} rows on this CPU")
    if est.gpu:
        for g in est.gpu:
            lines.append(f"projected GPU: {g['gpu_hours']:,.3f} GPU-hours at {g['rows_per_s']:,.1f} rows/s "
                         f"({g['workload']}, {g['labels']} labels)")
        lines.append(f"  GPU figures {est.gpu_note}")
    else:
        lines.append(f"projected GPU: {est.gpu_note}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from gliclass_dist.run import load_job_spec

    job = load_job_spec(args.spec, args.set, verbose=getattr(args, "verbose", False))
    if job is None:
        return 2
    try:
        est = estimate(job, args.sample, args.threads, Path(args.gpu_results))
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(est.to_dict(), indent=2) if args.json else format_estimate(est))
    return 0


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}")
    return number


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "estimate", __doc__)
    p.add_argument("--spec", required=True, help="the job spec (YAML) to estimate")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec value")
    p.add_argument("--sample", type=positive_int, default=2000, help="rows to classify here (default 2000)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads for the measurement (default 1: the per-core rate directly)")
    p.add_argument("--gpu-results", default=str(GPU_RESULTS), help="GPU benchmark JSON (bench/gpu_bench.py)")
    p.add_argument("--json", action="store_true", help="print the estimate as JSON")
    p.set_defaults(func=run)


__all__ = ["Estimate", "estimate", "format_estimate", "gpu_projection", "input_row_count", "read_sample", "register"]

