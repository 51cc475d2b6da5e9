"""``gliclass-dist estimate``: a sample classified here (tiny model), the input's row count from its metadata."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from gliclass_dist.engine import Classifier
from gliclass_dist.estimate import NO_GPU, estimate, input_row_count
from gliclass_dist.spec import JobSpec

LABELS = ["sports", "politics", "tech"]
WORDS = ["a match today", "the vote in parliament", "new phone chip", "stock prices fell", "", None]


def rows(n: int, start: int = 0) -> pa.Table:
    return pa.table({"id": list(range(start, start + n)), "text": [WORDS[i % len(WORDS)] for i in range(start, start + n)]})


def job(tiny_model: Path, tmp_path: Path, input_: dict, **resources: int) -> JobSpec:
    return JobSpec.from_dict(
        {
            "input": input_,
            "labels": {"labels": LABELS},
            "model": {"ref": str(tiny_model), "device": "cpu"},
            "sink": {"format": "parquet", "path": str(tmp_path / "out")},
            "resources": {"batch_rows": 16, **resources},
        }
    )


def test_parquet_estimate_counts_from_footers_and_measures_the_sample(tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(rows(60), folder / "a.parquet")
    pq.write_table(rows(40, 60), folder / "b.parquet")
    spec = job(tiny_model, tmp_path, {"format": "parquet", "path": str(folder)})
    assert input_row_count(spec.input) == (100, "parquet footers")

    est = estimate(spec, sample_rows=50, threads=1, gpu_results=tmp_path / "absent.json")
    assert est.input_rows == est.projected_rows == 100 and est.sample_rows == 50
    # the statuses of the sample are those of the same rows classified directly
    direct = Classifier.from_pretrained(tiny_model, device="cpu").classify_arrow(rows(50), LABELS)
    expected = {}
    for status in direct.column("status").to_pylist():
        expected[status] = expected.get(status, 0) + 1
    assert est.statuses == dict(sorted(expected.items()))
    assert est.statuses["empty_text"] == 16  # "" and None, every 6th row each
    assert est.duplicate_rows > 0  # the sample repeats four texts
    assert 0 < est.tokens_per_row <= est.padded_tokens_per_row
    assert est.rows_per_s_per_core == pytest.approx(est.rows_per_s, rel=0.01)  # one thread
    assert est.core_hours == pytest.approx(100 / est.rows_per_s_per_core / 3600, rel=0.01)
    assert est.gpu == [] and est.gpu_note == NO_GPU


def test_delta_count_from_the_log_and_the_filter_scales_the_projection(tiny_model: Path, tmp_path: Path) -> None:
    from deltalake import write_deltalake

    path = str(tmp_path / "delta")
    write_deltalake(path, rows(30))
    write_deltalake(path, rows(30, 30), mode="append")
    spec = job(tiny_model, tmp_path, {"format": "delta", "path": path, "filter": "id < 15"})
    count, source = input_row_count(spec.input)
    assert count == 60 and source.startswith("delta log")

    est = estimate(spec, sample_rows=100, threads=1, gpu_results=tmp_path / "absent.json")
    assert est.sample_rows == 15  # only the rows the filter keeps are classified
    assert est.filter_kept_share == pytest.approx(15 / 60)
    assert est.projected_rows == 15
    assert sum(est.statuses.values()) == 15


def test_iceberg_count_from_the_snapshot_summary(tiny_model: Path, tmp_path: Path) -> None:
    from gliclass_dist.connectors.iceberg import catalog

    props = {"type": "sql", "uri": f"sqlite:///{tmp_path}/catalog.db", "warehouse": f"file://{tmp_path}/wh"}
    cat = catalog(props)
    cat.create_namespace("db")
    data = rows(25).cast(pa.schema([pa.field("id", pa.int64()), pa.field("text", pa.string())]))
    table = cat.create_table("db.texts", schema=data.schema)
    table.append(data)
    table.append(data)
    spec = job(tiny_model, tmp_path, {"format": "iceberg", "table": "db.texts", "catalog": props})
    count, source = input_row_count(spec.input)
    assert count == 50 and source.startswith("iceberg snapshot")
    assert estimate(spec, sample_rows=10, gpu_results=tmp_path / "absent.json").sample_rows == 10


def test_gpu_hours_from_measured_gpu_figures(tiny_model: Path, tmp_path: Path) -> None:
    pq.write_table(rows(20), tmp_path / "in.parquet")
    gpu = tmp_path / "gpu.json"
    gpu.write_text(json.dumps({"device": "NVIDIA H200", "results": [
        {"workload": "bbc_titles", "approach": "engine", "labels": 5, "rows_per_s": 1000.0},
        {"workload": "bbc_long", "approach": "engine", "labels": 5, "rows_per_s": 100.0},
        {"workload": "bbc_long", "approach": "engine", "labels": 128, "rows_per_s": 10.0},
        {"workload": "bbc_long", "approach": "reference", "labels": 5, "rows_per_s": 50.0},
        {"workload": "bbc_long", "approach": "engine", "labels": 5, "variant": "score_only", "rows_per_s": 900.0},
    ]}))
    spec = job(tiny_model, tmp_path, {"format": "parquet", "path": str(tmp_path / "in.parquet")})
    est = estimate(spec, sample_rows=20, gpu_results=gpu)
    # 3 labels: the nearest measured label count is 5; the plain engine rows only
    assert {g["workload"]: g["gpu_hours"] for g in est.gpu} == {"bbc_titles": 20 / 1000 / 3600, "bbc_long": 20 / 100 / 3600}
    assert "NVIDIA H200" in est.gpu_note


def test_cli_prints_text_and_json(tiny_model: Path, tmp_path: Path) -> None:
    pq.write_table(rows(30), tmp_path / "in.parquet")
    spec = tmp_path / "job.yaml"
    job = {
        "input": {"format": "parquet", "path": str(tmp_path / "in.parquet")},
        "labels": {"labels": LABELS},
        "model": {"ref": str(tiny_model), "device": "cpu"},
        "sink": {"format": "parquet", "path": str(tmp_path / "out")},
    }
    spec.write_text(yaml.safe_dump(job))
    cli = [sys.executable, "-m", "gliclass_dist.cli", "estimate", "--spec", str(spec), "--sample", "20",
           "--gpu-results", str(tmp_path / "absent.json")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    as_json = subprocess.run([*cli, "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert as_json.returncode == 0, as_json.stderr[-2000:]
    data = json.loads(as_json.stdout)
    assert data["input_rows"] == 30 and data["sample_rows"] == 20 and data["gpu_note"] == NO_GPU
    text = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=300)
    assert text.returncode == 0, text.stderr[-2000:]
    assert "rows/s per core" in text.stdout and "core-hours for 30 rows" in text.stdout
    assert "projected GPU: no GPU measurement" in text.stdout
    bad = subprocess.run([*cli[:-4], "--sample", "0"], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "--sample" in bad.stderr
