"""The ``gliclass-dist`` command line, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from gliclass_dist.schema import RESULT_COLUMNS


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gliclass_dist.cli", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_commands():
    out = run_cli("--help")
    assert out.returncode == 0
    assert "classify" in out.stdout and "COMMAND" in out.stdout


def test_classify_parquet_file(tiny_model, tmp_path):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": ["The bank raised rates.", None, "Goal!"], "src": [1, 2, 3]}), src)
    dst = tmp_path / "out" / "topics.parquet"
    out = run_cli("classify", "--model", str(tiny_model), "--labels", "business,sport", "--input", str(src), "--output", str(dst), "--keep", "src")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["rows"] == 3 and summary["status_counts"] == {"ok": 2, "empty_text": 1}
    table = pq.read_table(dst)
    assert table.column_names == ["id", "src", *RESULT_COLUMNS]
    assert table.column("id").to_pylist() == ["a", "b", "c"]


def test_classify_jsonl_with_label_column(tiny_model, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": 1, "text": "refund missing", "labels": ["billing", "delivery"]}\n{"id": 2, "text": "great", "labels": []}\n')
    dst = tmp_path / "out.parquet"
    out = run_cli("classify", "--model", str(tiny_model), "--labels-column", "labels", "--input", str(src), "--output", str(dst))
    assert out.returncode == 0, out.stderr
    assert pq.read_table(dst).column("status").to_pylist() == ["ok", "no_labels"]


def test_classify_errors_are_clear(tiny_model, tmp_path):
    out = run_cli("classify", "--model", str(tmp_path / "missing"), "--labels", "a", "--input", str(tmp_path / "x.parquet"), "--output", str(tmp_path / "o.parquet"))
    assert out.returncode == 2 and "does not exist" in out.stderr
    src = tmp_path / "in.csv"
    src.write_text("id,body\n1,hello\n")
    out = run_cli("classify", "--model", str(tiny_model), "--labels", "a,a", "--input", str(src), "--output", str(tmp_path / "o.parquet"))
    assert out.returncode == 2 and "duplicate label" in out.stderr
    out = run_cli("classify", "--model", str(tiny_model), "--labels", "a,b", "--input", str(src), "--output", str(tmp_path / "o.parquet"))
    assert out.returncode == 2 and "'text'" in out.stderr
