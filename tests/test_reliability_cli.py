"""``gliclass-dist classify`` at the edges (issue #13): atomic output, input protection, clear errors.

Every test runs the real command line as a subprocess, with a tiny real checkpoint.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gliclass_dist.classify_cli import CliError, check_text_encoding

CLI = [sys.executable, "-m", "gliclass_dist.cli"]
# Enough small batches that a run is still busy long after its first batch is written.
SLOW_ROWS, SLOW_BATCH = 480, "8"


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    """Poll ``condition`` (bounded) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def temp_files(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


def error_line(out: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of a failed run (no traceback)."""
    assert out.returncode != 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, out.stderr
    return lines[0]


def write_texts(path: Path, n: int) -> None:
    texts = [f"The bank raised interest rates again, report {i}." for i in range(n)]
    pq.write_table(pa.table({"id": list(range(n)), "text": texts}), path)


# -- item 1: the output appears whole or not at all -----------------------------------------------


def test_two_runs_on_one_output_publish_one_whole_file(tiny_model, tmp_path):
    """Run A is frozen (SIGSTOP) mid-write while run B writes the same output from start to end."""
    src, out_dir = tmp_path / "in.parquet", tmp_path / "out"
    write_texts(src, SLOW_ROWS)
    dst = out_dir / "topics.parquet"
    args = ("classify", "--model", str(tiny_model), "--labels", "business,sport", "--input", str(src),
            "--output", str(dst), "--batch-rows", SLOW_BATCH)
    first = start_cli(*args)
    try:
        wait_for(lambda: out_dir.exists() and temp_files(out_dir), "run A's temporary file")
        first.send_signal(signal.SIGSTOP)
        assert first.poll() is None, "run A finished before it could be paused: make the input larger"
        second = run_cli(*args)
        assert second.returncode == 0, second.stderr
        published = pq.read_table(dst)
        assert published.num_rows == SLOW_ROWS
        first.send_signal(signal.SIGCONT)
        _, first_err = first.communicate(timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
        first.kill()
        first.wait()
    assert first.returncode == 0, first_err
    final = pq.read_table(dst)  # readable, and one run's full output (both runs compute the same rows)
    assert final.equals(published)
    assert final.column("id").to_pylist() == list(range(SLOW_ROWS))
    assert temp_files(out_dir) == []


def test_a_file_at_the_old_fixed_temp_name_is_left_alone(tiny_model, tmp_path):
    """Another run's temp file (here a link to a file that must not change) is never written through."""
    src = tmp_path / "in.parquet"
    write_texts(src, 3)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"not yours")
    dst = tmp_path / "topics.parquet"
    (tmp_path / "topics.parquet.tmp").symlink_to(victim)
    out = run_cli("classify", "--model", str(tiny_model), "--labels", "business,sport",
                  "--input", str(src), "--output", str(dst))
    assert out.returncode == 0, out.stderr
    assert victim.read_bytes() == b"not yours"
    assert not dst.is_symlink() and pq.read_table(dst).num_rows == 3
    assert temp_files(tmp_path) == ["topics.parquet.tmp"]  # only the one this test made


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_run_leaves_no_temp_file_and_no_output(tiny_model, tmp_path, sig):
    src, out_dir = tmp_path / "in.parquet", tmp_path / "out"
    write_texts(src, SLOW_ROWS)
    dst = out_dir / "topics.parquet"
    proc = start_cli("classify", "--model", str(tiny_model), "--labels", "business,sport", "--input", str(src),
                     "--output", str(dst), "--batch-rows", SLOW_BATCH)
    try:
        wait_for(lambda: out_dir.exists() and temp_files(out_dir), "the temporary output file")
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    err = error_line(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    assert "interrupted" in err or "terminated" in err
    assert proc.returncode == 128 + sig
    assert temp_files(out_dir) == []
    assert not dst.exists()


# -- item 2: the input is never overwritten; bad output paths fail before the model loads ---------


def same_file_variants(tmp_path: Path, src: Path) -> dict[str, Path]:
    link = tmp_path / "link.parquet"
    link.symlink_to(src)
    (tmp_path / "sub").mkdir()
    return {"same path": src, "symlink to the input": link, "dotted path": tmp_path / "sub" / ".." / src.name}


@pytest.mark.parametrize("variant", ["same path", "symlink to the input", "dotted path"])
def test_output_that_is_the_input_is_refused_before_loading_the_model(tmp_path, variant):
    src = tmp_path / "in.parquet"
    write_texts(src, 3)
    before = src.read_bytes()
    dst = same_file_variants(tmp_path, src)[variant]
    started = time.monotonic()
    out = run_cli("classify", "--model", str(tmp_path / "no-such-model"), "--labels", "a,b",
                  "--input", str(src), "--output", str(dst))
    err = error_line(out)
    assert str(dst) in err and "input" in err and "model" not in err  # refused before the model load
    assert src.read_bytes() == before
    assert time.monotonic() - started < 60


def test_output_that_is_the_input_with_a_real_model_keeps_the_input(tiny_model, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("id,text\n1,The bank raised rates.\n2,Goal!\n")
    out = run_cli("classify", "--model", str(tiny_model), "--labels", "business,sport",
                  "--input", str(src), "--output", str(src))
    assert str(src) in error_line(out)
    assert src.read_text() == "id,text\n1,The bank raised rates.\n2,Goal!\n"


def test_output_that_is_a_folder_fails_before_loading_the_model(tmp_path):
    src = tmp_path / "in.parquet"
    write_texts(src, 3)
    folder = tmp_path / "results"
    folder.mkdir()
    out = run_cli("classify", "--model", str(tmp_path / "no-such-model"), "--labels", "a,b",
                  "--input", str(src), "--output", str(folder))
    err = error_line(out)
    assert str(folder) in err and "directory" in err and "model" not in err
    assert list(folder.iterdir()) == []


def test_output_inside_an_input_folder_is_refused(tmp_path):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    write_texts(dataset / "part-0.parquet", 3)
    dst = dataset / "topics.parquet"
    out = run_cli("classify", "--model", str(tmp_path / "no-such-model"), "--labels", "a,b",
                  "--input", str(dataset), "--output", str(dst))
    err = error_line(out)
    assert str(dst) in err and "inside the input" in err
    assert sorted(p.name for p in dataset.iterdir()) == ["part-0.parquet"]


def test_output_under_a_file_is_a_clear_error(tmp_path):
    src = tmp_path / "in.parquet"
    write_texts(src, 3)
    (tmp_path / "plain").write_text("a file, not a folder")
    dst = tmp_path / "plain" / "topics.parquet"
    out = run_cli("classify", "--model", str(tmp_path / "no-such-model"), "--labels", "a,b",
                  "--input", str(src), "--output", str(dst))
    assert "plain" in error_line(out)


# -- item 15: one clear error line, never a traceback ----------------------------------------------

LATIN1_ROWS = ["café crème", "naïve façade"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_text_file_in_another_encoding_is_an_error_unless_named(tiny_model, tmp_path, fmt):
    src = tmp_path / f"in.{fmt}"
    if fmt == "csv":
        body = "id,text\n" + "".join(f"{i},{t}\n" for i, t in enumerate(LATIN1_ROWS))
    else:
        body = "".join(f'{{"id": {i}, "text": "{t}"}}\n' for i, t in enumerate(LATIN1_ROWS))
    src.write_bytes(body.encode("latin-1"))
    dst = tmp_path / "out.parquet"
    args = ("classify", "--model", str(tiny_model), "--labels", "food,style", "--input", str(src),
            "--output", str(dst), "--keep", "text")
    err = error_line(run_cli(*args))
    first_bad_line = 2 if fmt == "csv" else 1  # the CSV header comes first
    assert str(src) in err and "not valid utf-8" in err and f"line {first_bad_line} " in err and "--encoding" in err
    assert not dst.exists()

    out = run_cli(*args, "--encoding", "latin-1")
    assert out.returncode == 0, out.stderr
    table = pq.read_table(dst)
    assert table.column("text").to_pylist() == LATIN1_ROWS
    assert table.column("status").to_pylist() == ["ok", "ok"]


def test_encoding_check_names_the_line_across_read_chunks(tmp_path):
    """The check reads in chunks: a character split between two chunks is fine, and the line is right."""
    good = "id,text\n1,crème\n2,ok\n".encode()
    assert good.index("è".encode()) == 12  # chunks of 13 bytes split it
    src = tmp_path / "in.csv"
    src.write_bytes(good)
    check_text_encoding(src, "utf-8", chunk_bytes=13)
    src.write_bytes(good + b"3,caf\xe9\n")
    with pytest.raises(CliError, match=rf"byte 0xe9 on line 4 \(byte offset {len(good) + 5}\)"):
        check_text_encoding(src, "utf-8", chunk_bytes=13)


def test_unknown_encoding_is_an_error(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("id,text\n1,hello\n")
    err = error_line(run_cli("classify", "--model", str(tmp_path / "m"), "--labels", "a,b", "--input", str(src),
                             "--output", str(tmp_path / "o.parquet"), "--encoding", "klingon-8"))
    assert "klingon-8" in err


def test_corrupt_parquet_input_is_an_error(tmp_path):
    src = tmp_path / "in.parquet"
    src.write_bytes(b"PAR1 this is not really parquet")
    err = error_line(run_cli("classify", "--model", str(tmp_path / "m"), "--labels", "a,b", "--input", str(src),
                             "--output", str(tmp_path / "o.parquet")))
    assert str(src) in err


def test_missing_labels_column_is_an_error(tiny_model, tmp_path):
    src = tmp_path / "in.parquet"
    write_texts(src, 3)
    err = error_line(run_cli("classify", "--model", str(tiny_model), "--labels-column", "topics",
                             "--input", str(src), "--output", str(tmp_path / "o.parquet")))
    assert "'topics'" in err


def test_keep_column_that_clashes_with_a_result_column_is_an_error(tmp_path):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["hello"], "status": ["new"]}), src)
    err = error_line(run_cli("classify", "--model", str(tmp_path / "m"), "--labels", "a,b", "--input", str(src),
                             "--output", str(tmp_path / "o.parquet"), "--keep", "status"))
    assert "'status'" in err


def test_bad_dtype_is_an_error(tiny_model, tmp_path):
    src = tmp_path / "in.parquet"
    write_texts(src, 3)
    err = error_line(run_cli("classify", "--model", str(tiny_model), "--labels", "a,b", "--input", str(src),
                             "--output", str(tmp_path / "o.parquet"), "--dtype", "float8"))
    assert "--dtype" in err and "float8" in err


def corrupt_copy(tiny_model: Path, tmp_path: Path, how: str) -> Path:
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    if how == "missing folder":
        shutil.rmtree(model)
    elif how == "truncated weights":
        weights = model / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    elif how == "config not json":
        (model / "config.json").write_text("{not json")
    elif how == "tokenizer not json":
        (model / "tokenizer.json").write_text("{not json")
    return model


@pytest.mark.parametrize("how", ["missing folder", "truncated weights", "config not json", "tokenizer not json"])
def test_missing_or_corrupt_checkpoint_is_an_error(tiny_model, tmp_path, how):
    model = corrupt_copy(tiny_model, tmp_path, how)
    src = tmp_path / "in.parquet"
    write_texts(src, 3)
    err = error_line(run_cli("classify", "--model", str(model), "--labels", "a,b", "--input", str(src),
                             "--output", str(tmp_path / "o.parquet")))
    assert str(model) in err
    assert not (tmp_path / "o.parquet").exists()


@pytest.mark.parametrize(
    ("content", "hints"),
    [
        # a flat list: the error shows the expected shape
        ("topics:\n  - business\n  - sport\n", ["label_sets: {topics: {version:", "labels: ["]),
        ("label_sets: [unclosed\n", []),  # not YAML
    ],
    ids=["flat-list", "not-yaml"],
)
def test_bad_label_set_file_is_an_error_naming_it(tmp_path, content, hints):
    labels = tmp_path / "labels.yaml"
    labels.write_text(content)
    src = tmp_path / "in.parquet"
    write_texts(src, 3)
    err = error_line(run_cli("classify", "--model", str(tmp_path / "m"), "--label-set", f"{labels}:topics",
                             "--input", str(src), "--output", str(tmp_path / "o.parquet")))
    assert str(labels) in err
    for hint in hints:
        assert hint in err
