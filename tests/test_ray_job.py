"""Ray Data jobs end to end on a real local Ray, real Delta / Iceberg / Parquet tables in tmp dirs, tiny models."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from news import NEWS, TOPICS

from gliclass_dist.schema import RESULT_COLUMNS, output_schema
from gliclass_dist.spec import JobSpec, SpecError

pytestmark = pytest.mark.timeout(600)

LABELS = TOPICS
SENTENCES = NEWS[:4]


def make_rows(n: int, start: int = 0, *, bad: bool = True) -> pa.Table:
    """``n`` rows with ids start.., a text column (some empty/null when ``bad``), lang, and per-row labels."""
    texts: list[str | None] = []
    for i in range(start, start + n):
        if bad and i % 17 == 5:
            texts.append(None)
        elif bad and i % 17 == 9:
            texts.append("   ")
        else:
            texts.append(f"{SENTENCES[i % len(SENTENCES)]} Item {i}.")
    row_labels = [LABELS[: 1 + i % len(LABELS)] for i in range(start, start + n)]
    row_labels = [lbl + [lbl[0]] if i % 5 == 0 else lbl for i, lbl in enumerate(row_labels)]  # a duplicate
    return pa.table(
        {
            "id": pa.array(range(start, start + n), pa.int64()),
            "text": pa.array(texts, pa.string()),
            "lang": pa.array(["en" if i % 3 else "de" for i in range(start, start + n)], pa.string()),
            "row_labels": pa.array(row_labels, pa.list_(pa.string())),
        }
    )


def job_spec(model: Path, inp: dict[str, Any], sink: dict[str, Any], **extra: Any) -> JobSpec:
    data = {
        "name": "t",
        "input": inp,
        "labels": extra.pop("labels", {"labels": LABELS}),
        "model": {"ref": str(model)},
        "sink": sink,
        "resources": {"batch_rows": 32, **extra.pop("resources", {})},
        **extra,
    }
    return JobSpec.from_dict(data)


def read_delta(path: Path) -> pa.Table:
    from deltalake import DeltaTable

    return DeltaTable(str(path)).to_pyarrow_table()


def delta_version(path: Path) -> int:
    from deltalake import DeltaTable

    return DeltaTable(str(path)).version()


def assert_exactly_once(table: pa.Table, expected_ids: list[int]) -> None:
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "duplicate ids in the output"
    assert sorted(ids) == sorted(expected_ids)


def assert_matches_engine(got: pa.Table, rows: pa.Table, classifier, labels: dict[str, Any], keep: list[str]) -> None:
    """The job's rows equal the engine's ``classify_arrow`` on the same input (statuses, labels, scores)."""
    from gliclass_dist.labels import LabelSpec

    expected = classifier.classify_arrow(rows, LabelSpec(**labels), keep=keep).sort_by("id")
    got = got.select(expected.schema.names).sort_by("id")
    for name in ("id", "status", "labels", "top_label"):
        assert got[name].to_pylist() == expected[name].to_pylist(), name
    for g, e in zip(got["scores"].to_pylist(), expected["scores"].to_pylist()):
        assert [s["label"] for s in g] == [s["label"] for s in e]
        assert [s["score"] for s in g] == pytest.approx([s["score"] for s in e], abs=1e-5)


# ---------------------------------------------------------------------------------------------- jobs


def test_parquet_to_delta_rows_schema_and_rerun(ray_local, tiny_model: Path, classifier, tmp_path: Path) -> None:
    """Through the tokenize stage (default on): same results as the engine, one row per input row."""
    from gliclass_dist.ray.job import run_job

    rows = make_rows(149)
    rows = pa.concat_tables([rows, make_rows(1, start=149).set_column(1, "text", pa.array([" ".join(["word"] * 3000)]))])
    (tmp_path / "in").mkdir()
    pq.write_table(rows.slice(0, 90), tmp_path / "in" / "a.parquet")
    pq.write_table(rows.slice(90), tmp_path / "in" / "b.parquet")
    out = tmp_path / "out"
    spec = job_spec(
        tiny_model,
        {"format": "parquet", "path": str(tmp_path / "in"), "passthrough": ["lang"]},
        {"format": "delta", "path": str(out)},
    )
    summary = run_job(spec)
    assert summary["committed"] is True
    assert summary["rows_in"] == summary["rows_out"] == 150
    table = read_delta(out)
    assert_exactly_once(table, list(range(150)))
    expected_schema = output_schema(rows.schema, ["id", "lang"])
    assert table.schema.names == expected_schema.names
    for field in expected_schema:
        assert table.schema.field(field.name).type == field.type, field.name
    statuses = dict(zip(*[pc.value_counts(table["status"]).field(k).to_pylist() for k in ("values", "counts")]))
    assert statuses == summary["status_counts"]
    assert statuses["empty_text"] == sum(1 for t in rows["text"].to_pylist() if t is None or not t.strip())
    assert statuses["truncated"] == 1
    assert_matches_engine(table, rows, classifier, {"labels": LABELS}, ["id", "lang"])

    version = delta_version(out)
    again = run_job(spec)
    assert again["committed"] is False and "already committed" in again["skipped_reason"]
    assert delta_version(out) == version
    assert read_delta(out).num_rows == 150


def test_per_row_examples_column_is_read_and_used(ray_local, tiny_model: Path, classifier, tmp_path: Path) -> None:
    """``labels.examples_column`` is among the columns the job reads, through the tokenize stage, and each
    row is scored with its own examples, as by the engine."""
    from gliclass_dist.ray.job import run_job

    shot_type = pa.list_(pa.struct([pa.field("text", pa.string()), pa.field("labels", pa.list_(pa.string()))]))
    rows = make_rows(40, bad=False).append_column(
        "shots", pa.array([[{"text": "Rates went up.", "labels": ["business"]}] if i % 2 else None
                           for i in range(40)], shot_type)
    )
    pq.write_table(rows, tmp_path / "in.parquet")
    labels = {"labels": LABELS, "examples_column": "shots"}
    spec = job_spec(tiny_model, {"format": "parquet", "path": str(tmp_path / "in.parquet")},
                    {"format": "parquet", "path": str(tmp_path / "out")}, labels=labels)
    summary = run_job(spec)
    assert summary["rows_out"] == 40 and summary["status_counts"] == {"ok": 40}
    out = pads.dataset(str(tmp_path / "out"), format="parquet").to_table()
    assert_matches_engine(out, rows, classifier, labels, ["id"])


def test_per_row_labels_to_parquet_sink_with_filter(ray_local, tiny_model: Path, classifier, tmp_path: Path) -> None:
    """Per-row label column, input filter, no tokenize stage (the actors get the text)."""
    from gliclass_dist.connectors import last_committed

    from gliclass_dist.ray.job import run_job

    rows = make_rows(80, bad=False)
    pq.write_table(rows, tmp_path / "in.parquet")
    spec = job_spec(
        tiny_model,
        {"format": "parquet", "path": str(tmp_path / "in.parquet"), "passthrough": ["row_labels"],
         "filter": "lang = 'en'"},
        {"format": "parquet", "path": str(tmp_path / "out")},
        labels={"column": "row_labels", "mode": "single-label"},
        resources={"tokenize_stage": False},
    )
    summary = run_job(spec)
    expected = rows.filter(pc.equal(rows["lang"], "en"))
    assert summary["rows_in"] == summary["rows_out"] == expected.num_rows
    assert last_committed(spec.sink, spec.job_key) == 0
    out = pads.dataset(str(tmp_path / "out"), format="parquet").to_table()
    assert_exactly_once(out, expected["id"].to_pylist())
    for row in out.to_pylist():
        wanted = list(dict.fromkeys(row["row_labels"]))  # the row's own labels, duplicates dropped
        assert [s["label"] for s in row["scores"]] == wanted
        assert row["top_label"] in wanted and row["labels"] == [row["top_label"]]
        assert row["status"] == ("labels_cleaned" if len(wanted) != len(row["row_labels"]) else "ok")
        assert row["label_set"] == "column:row_labels"
    assert_matches_engine(out, expected, classifier, {"column": "row_labels", "mode": "single-label"},
                          ["id", "row_labels"])
    assert run_job(spec)["committed"] is False
    assert pads.dataset(str(tmp_path / "out"), format="parquet").count_rows() == expected.num_rows


def test_incremental_delta_input_picks_up_only_new_versions(ray_local, tiny_model: Path, tmp_path: Path) -> None:
    from deltalake import DeltaTable, write_deltalake

    from gliclass_dist.ray.job import run_job

    src, out = tmp_path / "src", tmp_path / "out"
    write_deltalake(str(src), make_rows(40).drop_columns(["row_labels"]))
    spec = job_spec(
        tiny_model,
        {"format": "delta", "path": str(src), "incremental": True, "passthrough": ["lang"]},
        {"format": "delta", "path": str(out)},
    )
    first = run_job(spec)
    assert (first["committed"], first["rows_out"], first["input_version"]) == (True, 40, 0)
    write_deltalake(str(src), make_rows(25, start=40).drop_columns(["row_labels"]), mode="append")
    write_deltalake(str(src), make_rows(15, start=65).drop_columns(["row_labels"]), mode="append")
    second = run_job(spec)
    assert (second["committed"], second["rows_in"], second["rows_out"], second["input_version"]) == (True, 40, 40, 2)
    assert second["commit_key"].endswith("@v2")
    third = run_job(spec)
    assert third["committed"] is False and "no version after 2" in third["skipped_reason"]
    # A compaction of the input adds a version without new rows: the next run lands nothing new but records it.
    DeltaTable(str(src)).optimize.compact()
    fourth = run_job(spec)
    assert (fourth["committed"], fourth["rows_out"], fourth["input_version"]) == (True, 0, 3)
    assert_exactly_once(read_delta(out), list(range(80)))
    assert DeltaTable(str(out)).transaction_version(spec.job_key) == 3


def test_iceberg_sink_and_input(ray_local, tiny_model: Path, tmp_path: Path) -> None:
    from pyiceberg.catalog import load_catalog

    from gliclass_dist.ray.job import run_job

    catalog = {"name": "t", "type": "sql", "uri": f"sqlite:///{tmp_path}/cat.db", "warehouse": f"file://{tmp_path}/wh"}
    cat = load_catalog(catalog["name"], **{k: v for k, v in catalog.items() if k != "name"})
    cat.create_namespace("raw")
    rows = make_rows(70).drop_columns(["row_labels"])
    cat.create_table("raw.docs", schema=rows.schema).append(rows)
    spec = job_spec(
        tiny_model,
        {"format": "iceberg", "table": "raw.docs", "catalog": catalog, "filter": "id >= 10"},
        {"format": "iceberg", "table": "results.docs", "catalog": catalog},
    )
    summary = run_job(spec)
    assert summary["committed"] is True and summary["rows_in"] == summary["rows_out"] == 60
    out = cat.load_table("results.docs")
    table = out.scan().to_arrow()
    assert_exactly_once(table, list(range(10, 70)))
    assert table.schema.names == ["id", *RESULT_COLUMNS]
    snapshots = len(out.snapshots())
    assert run_job(spec)["committed"] is False
    assert len(cat.load_table("results.docs").snapshots()) == snapshots


def test_actor_killed_mid_run_still_lands_every_row_once(
    ray_local, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gliclass_dist.ray.job import run_job
    from gliclass_dist.ray.predictor import FAULT_AFTER_ENV, FAULT_MARKER_ENV

    marker = tmp_path / "fault.marker"
    monkeypatch.setenv(FAULT_AFTER_ENV, "2")
    monkeypatch.setenv(FAULT_MARKER_ENV, str(marker))
    rows = make_rows(200, bad=False).drop_columns(["row_labels"])
    (tmp_path / "in").mkdir()
    for i in range(4):
        pq.write_table(rows.slice(i * 50, 50), tmp_path / "in" / f"{i}.parquet")
    spec = job_spec(
        tiny_model,
        {"format": "parquet", "path": str(tmp_path / "in")},
        {"format": "delta", "path": str(tmp_path / "out")},
        resources={"batch_rows": 20},
    )
    summary = run_job(spec)
    assert marker.exists(), "the fault hook did not fire"
    assert summary["rows_in"] == summary["rows_out"] == 200
    assert_exactly_once(read_delta(tmp_path / "out"), list(range(200)))


def test_model_stage_gets_blocks_of_block_rows(ray_local, tiny_model: Path, tmp_path: Path) -> None:
    """``resources.block_rows`` reaches Ray: one 300-row input block reaches the model actors cut into blocks of
    ``block_rows`` rows (default 8 batches), the cut fused into the tokenize tasks (no stage of its own)."""
    import ray.data

    from gliclass_dist.ray.job import classify_dataset

    rows = make_rows(300, bad=False).drop_columns(["row_labels"])
    cases = [
        ({"block_rows": 100}, None, [100, 100, 100], True),
        ({}, None, [160, 140], True),  # 8 batches of 20
        ({"block_rows": 100, "tokenize_stage": False}, None, [100, 100, 100], False),
        # known size: two blocks per actor at least (ceil(300 / 4) = 75 -> 4 batches of 20), so none idles
        ({"max_actors": 2}, 300, [80, 80, 80, 60], True),
        ({"max_actors": 2, "block_rows": 100}, 300, [100, 100, 100], True),  # given: kept
    ]
    for resources, num_rows, expected, fused in cases:
        spec = job_spec(
            tiny_model, {"format": "parquet", "path": str(tmp_path)}, {"format": "parquet", "path": str(tmp_path / "o")},
            resources={"batch_rows": 20, **resources},
        )
        ds = ray.data.from_arrow(rows)
        out = classify_dataset(ds, spec, model_path=tiny_model, num_rows=num_rows).materialize()
        sizes = sorted((m.num_rows for b in out.iter_internal_ref_bundles() for m in b.metadata), reverse=True)
        assert sizes == expected, resources
        assert out.count() == 300
        stats = out.stats()
        assert ("tokenize_batch)->StreamingRepartition" in stats) == fused, stats


def test_schema_clash_fails_before_any_compute(ray_local, tiny_model: Path, tmp_path: Path) -> None:
    from deltalake import write_deltalake
    from gliclass_dist.connectors import SinkSchemaError

    from gliclass_dist.ray.job import run_job

    pq.write_table(make_rows(10).drop_columns(["row_labels"]), tmp_path / "in.parquet")
    write_deltalake(str(tmp_path / "out"), pa.table({"id": [1], "other": ["x"]}))
    spec = job_spec(
        tiny_model, {"format": "parquet", "path": str(tmp_path / "in.parquet")},
        {"format": "delta", "path": str(tmp_path / "out")},
    )
    with pytest.raises(SinkSchemaError, match="other"):
        run_job(spec)
    assert delta_version(tmp_path / "out") == 0


# ---------------------------------------------------------------------------------------------- filter helper


def test_filter_helper_keeps_or_drops_rows_by_scores(ray_local) -> None:
    import ray

    from gliclass_dist.ray.filtering import filter_dataset, filter_results, passing_mask

    def scores(pairs: dict[str, float]) -> list[dict[str, Any]]:
        return [{"label": k, "score": v} for k, v in pairs.items()]

    results = pa.table({
        "id": [1, 2, 3, 4],
        "scores": pa.array(
            [scores({"spam": 0.9, "ads": 0.2}), scores({"spam": 0.4, "ads": 0.8}), [], scores({"spam": 0.7, "ads": 0.7})],
            pa.list_(pa.struct([("label", pa.string()), ("score", pa.float32())])),
        ),
    })
    assert passing_mask(results, ["spam"], threshold=0.6).to_pylist() == [True, False, False, True]
    assert passing_mask(results, {"spam": 0.5, "ads": 0.5}, require="all").to_pylist() == [False, False, False, True]
    assert filter_results(results, ["ads"], threshold=0.5)["id"].to_pylist() == [2, 4]
    assert filter_results(results, ["ads"], threshold=0.5, action="drop")["id"].to_pylist() == [1, 3]
    assert filter_results(results, ["ads"], threshold=0.5, keep_unscored=True)["id"].to_pylist() == [2, 3, 4]
    with pytest.raises(ValueError, match="threshold"):
        filter_results(results, {"spam": 1.5})
    kept = filter_dataset(ray.data.from_arrow(results), {"spam": 0.8})
    assert sorted(r["id"] for r in kept.take_all()) == [1]


# ---------------------------------------------------------------------------------------------- the entrypoint


def test_unknown_spec_key_fails_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import importlib.util

    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(
        "input: {format: parquet, path: in}\nlabels: {labels: [a, b]}\nmodel: {ref: m}\n"
        "sink: {format: delta, path: out}\nresources: {max_actor: 3}\n"
    )
    with pytest.raises(SpecError, match=r"resources\.max_actor: unknown key"):
        JobSpec.from_yaml(spec_file)
    module_spec = importlib.util.spec_from_file_location(
        "ray_classify", Path(__file__).resolve().parent.parent / "jobs" / "ray_classify.py"
    )
    ray_classify = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(ray_classify)
    assert ray_classify.main(["--spec", str(spec_file)]) == 2
    assert "resources.max_actor: unknown key" in capsys.readouterr().err
    assert ray_classify.main(["--spec", str(spec_file), "--set", "resources={}", "--set", "sink.format=orc"]) == 2
    assert "sink.format" in capsys.readouterr().err


def test_example_specs_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)  # example paths are relative to the checkout
    examples = sorted(p for p in (root / "jobs" / "examples").glob("*.yaml") if p.name != "label_sets.yaml")
    assert len(examples) >= 3
    for path in examples:
        spec = JobSpec.from_yaml(path)
        # the key digests what defines the output: rescaling is the same job, another sink is not
        assert JobSpec.from_yaml(path, ["resources.batch_rows=7"]).job_key == spec.job_key
        assert JobSpec.from_yaml(path, ["sink.path=/elsewhere"]).job_key != spec.job_key


def test_demo_twice_leaves_each_article_once(
    ray_local, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import importlib.util

    monkeypatch.chdir(tmp_path)  # the demo changes into the checkout; this restores the test's directory
    module_spec = importlib.util.spec_from_file_location(
        "gliclass_demo", Path(__file__).resolve().parent.parent / "jobs" / "demo.py"
    )
    demo = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(demo)
    args = ["--model", str(tiny_model), "--limit", "25", "--table", str(tmp_path / "bbc_topics"),
            "--data", str(tmp_path / "data")]
    assert demo.main(args) == 0
    first = capsys.readouterr().out
    assert "committed: True" in first and "rows in: 25  rows out: 25" in first and "macro-F1" in first
    assert demo.main(args) == 0
    second = capsys.readouterr().out
    assert "committed: False" in second and "already committed" in second
    table = read_delta(tmp_path / "bbc_topics")
    ids = table["id"].to_pylist()
    assert len(ids) == len(set(ids)) == 25
    assert len(set(table["topic"].to_pylist())) == 5  # the sample spans every topic


def test_job_tasks_get_arrows_system_allocator_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    """pyarrow's default pool keeps freed memory in the read and write workers (bench/README.md, Scale): the job's
    environment asks for the system allocator; a value set by the driver's environment or by ``ray job submit``
    wins."""
    from gliclass_dist.ray.job import SUBMITTED_JOB_CONFIG_ENV, job_env

    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    monkeypatch.delenv(SUBMITTED_JOB_CONFIG_ENV, raising=False)
    assert job_env()["ARROW_DEFAULT_MEMORY_POOL"] == "system"
    monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "mimalloc")
    assert job_env()["ARROW_DEFAULT_MEMORY_POOL"] == "mimalloc"
    submitted = {"runtime_env": {"env_vars": {"ARROW_DEFAULT_MEMORY_POOL": "jemalloc"}}}
    monkeypatch.setenv(SUBMITTED_JOB_CONFIG_ENV, json.dumps(submitted))
    assert "ARROW_DEFAULT_MEMORY_POOL" not in job_env()


def test_job_tasks_fix_glibcs_mmap_threshold_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    """glibc keeps freed multi-MB buffers in the heap once its dynamic threshold has risen (bench/README.md,
    Scale): the job's environment fixes it at 1 MiB for its tasks; a value from the driver's environment or from
    ``ray job submit`` wins."""
    from gliclass_dist.ray.job import SUBMITTED_JOB_CONFIG_ENV, job_env

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv(SUBMITTED_JOB_CONFIG_ENV, raising=False)
    assert job_env()["MALLOC_MMAP_THRESHOLD_"] == str(1 << 20)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "4194304")
    assert job_env()["MALLOC_MMAP_THRESHOLD_"] == "4194304"
    monkeypatch.setenv(SUBMITTED_JOB_CONFIG_ENV, json.dumps({"runtime_env": {"env_vars": {"MALLOC_MMAP_THRESHOLD_": "0"}}}))
    assert "MALLOC_MMAP_THRESHOLD_" not in job_env()


# Frees an 8 MiB buffer (by default glibc then raises its mmap threshold to 8 MiB), then a 4 MiB one, and reports
# how much memory the process kept.
KEPT_AFTER_FREE = """
import json, os
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
base = rss()
first = bytearray(8 << 20)
del first
second = bytearray(4 << 20)
del second
print(json.dumps({"kept_mb": (rss() - base) / 2**20}))
"""


def clean_env() -> dict[str, str]:
    """This process's environment without allocator settings or a Ray address."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "RAY_ADDRESS"))}


def run_on_local_ray(body: str) -> Any:
    """Run ``body`` in a fresh interpreter on a new local Ray started by ``ensure_ray`` (the job's environment);
    ``body`` sets ``out``, returned as parsed JSON."""
    code = (
        "import json, os\nimport ray\nfrom gliclass_dist.ray.job import ensure_ray\nensure_ray()\n"
        + textwrap.dedent(body)
        + "\nprint(json.dumps(out))\nray.shutdown()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_job_env_gives_io_tasks_back_freed_buffers_and_model_actors_the_heap() -> None:
    """The job's tasks (local Ray, ``ensure_ray``) and the model actors (``classify_dataset``'s runtime env) run
    with the allocator variables meant for them, and glibc honours them: an I/O task hands a freed 4 MiB buffer
    back, a model actor keeps it in the heap, as glibc does by default (no mmap and munmap per tensor)."""
    seen = run_on_local_ray(
        """
        from gliclass_dist.ray.dataset import actor_env

        @ray.remote(num_cpus=0)
        def allocator_env():
            return {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}

        actor = allocator_env.options(runtime_env={"env_vars": actor_env(1.0)})
        out = {"task": ray.get(allocator_env.remote()), "actor": ray.get(actor.remote())}
        """
    )
    assert seen["task"] == {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    assert seen["actor"] == {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20)}

    kept = {}
    for role, allocator in seen.items():
        run = subprocess.run([sys.executable, "-c", KEPT_AFTER_FREE], env={**clean_env(), **allocator},
                             capture_output=True, text=True, timeout=60)
        kept[role] = json.loads(run.stdout)["kept_mb"]
    assert kept["task"] < 1.0  # unmapped on free
    assert kept["actor"] > 3.0  # kept in the heap for the next batch


def test_job_reads_run_in_worker_processes_of_their_own(tmp_path: Path) -> None:
    """A read's transient buffers must not stack on the tokenize worker's memory (bench/README.md, Scale): the job's
    read tasks get a runtime env of their own, so Ray runs them in other worker processes than the stages after."""
    pq.write_table(make_rows(300, bad=False), tmp_path / "part-0.parquet")
    seen = run_on_local_ray(
        f"""
        import psutil
        from gliclass_dist.ray.io import read_input
        from gliclass_dist.spec import InputSpec

        def where(batch):
            stage = os.environ.get("GLICLASS_RAY_STAGE", "")
            return {{"pid": [os.getpid()] * batch.num_rows, "stage": [stage] * batch.num_rows}}

        spec = InputSpec(format="parquet", path={str(tmp_path)!r}, id_column="id", text_column="text")
        rows = read_input(spec).map_batches(where, batch_format="pyarrow").take_all()
        readers = []
        for proc in psutil.Process().children(recursive=True):
            try:
                if proc.environ().get("GLICLASS_RAY_STAGE") == "read" and "ray::" in " ".join(proc.cmdline()):
                    readers.append(proc.pid)
            except psutil.Error:
                pass
        out = {{"rows": len(rows), "map_pids": sorted({{r["pid"] for r in rows}}),
               "map_stages": sorted({{r["stage"] for r in rows}}), "readers": readers}}
        """
    )
    assert seen["rows"] == 300
    assert seen["readers"], "no worker process ran with the read stage's environment"
    assert seen["map_stages"] == [""]  # the stage after the read ran in the job's other workers
    assert not set(seen["map_pids"]) & set(seen["readers"])
