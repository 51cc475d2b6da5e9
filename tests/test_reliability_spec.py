"""Issue #13, job-spec edges: the restricted ``input.filter`` grammar on every engine, YAML alias bombs,
relative paths resolved once on the driver, ``sink.partition_by`` checked before any compute.

Filters run for real on pyarrow (the Ray path and the connectors) and on a local[1] Spark session
(module-scoped, started only by the tests that need it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from spark_helpers import spark_session

from gliclass_dist.spec import JobSpec, SpecError

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")


def spec_dict(**input_keys: object) -> dict:
    return {
        "input": {"format": "parquet", "path": "/data/in.parquet", **input_keys},
        "labels": {"labels": ["a", "b"]},
        "model": {"ref": "/models/m"},
        "sink": {"format": "parquet", "path": "/data/out"},
    }


# ---------------------------------------------------------------------------------------------- filters

BAD_FILTERS = [
    ("reflect('java.lang.Runtime', 'getRuntime')", "reflect("),
    ("java_method('java.lang.System', 'exit', 0) = 1", "java_method("),
    ("id in (select id from parquet.`/etc/passwd`)", "'select'"),
    ("lang = (select 1)", "'('"),
    ("id = 1; drop table t", "; drop"),
    ("upper(lang) = 'EN'", "upper("),
    ('"lang" = 1', '"lang"'),
    ("lang = null", "NULL"),
    ("id >>> 2", "'>'"),
    ("(" * 5000 + "id = 1" + ")" * 5000, "deeper than 64 levels"),  # refused, not a RecursionError
    (" or ".join(f"id = {i}" for i in range(300)), "more than 256 conditions"),
]


@pytest.mark.parametrize(("text", "token"), BAD_FILTERS, ids=[token for _, token in BAD_FILTERS])
def test_filter_outside_the_grammar_is_a_spec_error_naming_the_token(text: str, token: str) -> None:
    with pytest.raises(SpecError, match="input.filter") as info:
        JobSpec.from_dict(spec_dict(filter=text))
    assert token in str(info.value)


@pytest.fixture(scope="module")
def filter_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six rows with nulls in every filtered column, and a column whose name has a dot."""
    from deltalake import write_deltalake

    path = tmp_path_factory.mktemp("filters") / "in.parquet"
    table = pa.table({
            "id": pa.array([1, 2, 3, 4, 5, 6], pa.int64()),
            "lang": ["en", "de", None, "en", "fr", "o'k"],
            "score": [0.9, 0.1, 0.5, None, 0.7, 0.3],
            "flag": [True, False, True, None, False, True],
            "a.b": ["x1", "y2", "x3", "z4", None, "x_6"],
    })
    pq.write_table(table, path)
    write_deltalake(path.parent / "delta", table)
    return path


# (filter, ids SQL keeps): a null operand makes a comparison unknown, and unknown rows are dropped
FILTERS = [
    ("lang = 'en'", [1, 4]),
    ("lang <> 'en'", [2, 5, 6]),
    ("lang not in ('en', 'de')", [5, 6]),
    ("lang IN ('en', 'de') AND id > 1", [2, 4]),
    ("not (lang = 'en')", [2, 5, 6]),
    ("lang is null or id = 1", [1, 3]),
    ("score >= 0.5", [1, 3, 5]),
    ("not score < 0.5", [1, 3, 5]),
    ("flag = true or score > 0.8", [1, 3, 6]),
    ("flag is not null and not flag = TRUE", [2, 5]),
    ("`a.b` like 'x%'", [1, 3, 6]),
    ("`a.b` not like 'x\\_%'", [1, 2, 3, 4]),
    ("lang = 'o''k'", [6]),
    ("id >= -1 and score < 1e0", [1, 2, 3, 5, 6]),
    ("1 < id and (id < 3 or id in (6))", [2, 6]),
]


@pytest.mark.parametrize(("text", "expected"), FILTERS)
def test_filter_keeps_the_same_rows_on_the_arrow_paths(filter_table: Path, text: str, expected: list[int]) -> None:
    from gliclass_dist import connectors
    from gliclass_dist.ray.io import filter_batch

    spec = JobSpec.from_dict(spec_dict(path=str(filter_table), filter=text)).input
    ray_ids = filter_batch(pq.read_table(filter_table), predicate=spec.predicate)["id"].to_pylist()
    connector_ids = connectors.read_source(spec).read_all()["id"].to_pylist()
    delta = spec.model_copy(update={"format": "delta", "path": str(filter_table.parent / "delta")})
    delta_ids = connectors.read_source(delta).read_all()["id"].to_pylist()
    assert sorted(ray_ids) == expected
    assert sorted(connector_ids) == expected
    assert sorted(delta_ids) == expected


@pytest.fixture(scope="module")
def spark():
    pytest.importorskip("pyspark")
    with spark_session("local[1]", "gliclass-filter-tests", {"spark.sql.shuffle.partitions": "1"}) as session:
        yield session


def test_filters_keep_the_same_rows_on_spark(spark, filter_table: Path) -> None:
    """Every filter of the table, on a real Spark DataFrame (Columns built from the tree, no SQL text)."""
    from gliclass_dist.spark.job import read_input

    for text, expected in FILTERS:
        spec = JobSpec.from_dict(spec_dict(path=str(filter_table), filter=text)).input
        ids = sorted(row["id"] for row in read_input(spark, spec).select("id").collect())
        assert (text, ids) == (text, expected)


# ---------------------------------------------------------------------------------------------- YAML aliases

LAUGHS = "\n".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9 if prev else ['lol'] * 9)}]"
    for prev, name in zip([None, *"abcdefgh"], "abcdefghi")
)
BOMB_SPEC = (
    "input: {format: parquet, path: in.parquet}\nmodel: {ref: m}\nsink: {format: parquet, path: out}\n"
    f"{LAUGHS}\nlabels: {{labels: *i}}\n"
)
LOAD_SPEC = """
import sys
from gliclass_dist.spec import JobSpec, SpecError
try:
    JobSpec.from_yaml(sys.argv[1])
    print("LOADED")
except SpecError as exc:
    print("SPEC ERROR", exc)
"""


def test_billion_laughs_spec_is_refused_quickly_in_bounded_memory(tmp_path: Path) -> None:
    """9**9 'lol's from a few hundred bytes: refused at the first anchor, under a 1.5 GB address-space limit."""
    import resource
    import subprocess

    spec_file = tmp_path / "bomb.yaml"
    spec_file.write_text(BOMB_SPEC)
    assert len(BOMB_SPEC) < 600

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))

    done = subprocess.run(
        [sys.executable, "-c", LOAD_SPEC, str(spec_file)],
        capture_output=True, text=True, timeout=120, preexec_fn=limit_memory, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "SPEC ERROR" in done.stdout
    assert "anchors and aliases are not allowed in job specs" in done.stdout


def test_anchors_are_refused_in_overrides_label_files_and_the_airflow_loader(tmp_path: Path) -> None:
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text("input: {format: parquet, path: in.parquet}\nmodel: {ref: m}\n"
                         "sink: {format: parquet, path: out}\nlabels: {labels: [a, b]}\n")
    assert JobSpec.from_yaml(spec_file).labels.labels == ["a", "b"]
    with pytest.raises(SpecError, match="anchors and aliases are not allowed"):
        JobSpec.from_yaml(spec_file, overrides=["labels.labels=[&x a, *x]"])

    label_file = tmp_path / "labels.yaml"
    label_file.write_text("label_sets:\n  topics:\n    labels: &l [a, b]\n  again:\n    labels: *l\n")
    with pytest.raises(SpecError, match="anchors and aliases are not allowed in label set files"):
        JobSpec.from_dict({**spec_dict(), "labels": {"file": str(label_file), "name": "topics"}})

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "infra" / "airflow" / "dags"))
    try:
        from gliclass_airflow import jobspec
    finally:
        sys.path.pop(0)
    (tmp_path / "bomb.yaml").write_text(BOMB_SPEC)
    with pytest.raises(jobspec.SpecProblem, match="anchors and aliases are not allowed"):
        jobspec.load_spec(None, str(tmp_path / "bomb.yaml"))
    with pytest.raises(jobspec.SpecProblem, match="anchors and aliases are not allowed"):
        jobspec.render_spec(jobspec.load_spec(None, str(spec_file)), ["labels.labels=[&x a, *x]"])
    shared = ["a", "b"]
    folder = jobspec.write_run_folder(tmp_path / "runs", "run 1", {**spec_dict(), "labels": {"labels": shared},
                                                                   "x": {"labels": shared}})
    assert "&" not in folder.spec_file.read_text()  # a shared object is written out twice, not aliased


# ---------------------------------------------------------------------------------------------- relative paths


def test_ray_filter_that_does_not_fit_the_input_fails_on_the_driver(ray_local) -> None:
    from gliclass_dist.ray.io import apply_filter
    from gliclass_dist.spec import InputSpec

    ds = ray_local.data.from_arrow(pa.table({"id": [1, 2], "lang": ["en", "de"]}))
    with pytest.raises(ValueError, match="'langg'"):
        apply_filter(ds, InputSpec(path="x", filter="langg = 'en'"))
    with pytest.raises(ValueError, match="column types"):
        apply_filter(ds, InputSpec(path="x", filter="id = 'one'"))
    assert apply_filter(ds, InputSpec(path="x", filter="lang = 'en'"), ["id"]).take_all() == [{"id": 1}]


def write_relative_spec(folder: Path, tiny_model: Path) -> Path:
    """A spec whose input, sink, label file and model are all given relative to the spec file's folder."""
    (folder / "in").mkdir(parents=True)
    pq.write_table(
        pa.table({"id": pa.array(range(12), pa.int64()),
                  "text": [f"The football club won match {i}." for i in range(12)],
                  "lang": ["en", "de"] * 6}),
        folder / "in" / "part.parquet",
    )
    (folder / "sets.yaml").write_text("label_sets:\n  topics:\n    labels: [sports, business]\n")
    (folder / "model").symlink_to(tiny_model, target_is_directory=True)
    spec_file = folder / "job.yaml"
    spec_file.write_text(
        "name: rel\n"
        "input: {format: parquet, path: in, filter: \"lang = 'en'\", passthrough: [lang]}\n"
        "labels: {file: sets.yaml, name: topics}\n"
        "model: {ref: model}\n"
        "sink: {format: delta, path: out, partition_by: [lang]}\n"
        "resources: {batch_rows: 8}\n"
    )
    return spec_file


def test_relative_paths_resolve_next_to_the_spec_and_the_job_commits_there(
    ray_local, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deltalake import DeltaTable

    from gliclass_dist.ray.job import run_job

    spec_file = write_relative_spec(tmp_path / "specs", tiny_model)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = JobSpec.from_yaml(spec_file)
    assert spec.input.path == str(tmp_path / "specs" / "in")
    assert spec.sink.path == str(tmp_path / "specs" / "out")
    assert spec.labels.file == str(tmp_path / "specs" / "sets.yaml")
    assert spec.model.ref == str(tmp_path / "specs" / "model")

    summary = run_job(spec)
    assert summary["committed"] is True
    table = DeltaTable(str(tmp_path / "specs" / "out")).to_pyarrow_table()
    assert sorted(table["id"].to_pylist()) == [0, 2, 4, 6, 8, 10]
    assert list(elsewhere.iterdir()) == []  # nothing landed in the driver's working directory


def test_overrides_and_python_specs_are_relative_to_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gliclass_dist.spec import InputSpec, ModelSpec, SinkSpec

    spec_file = tmp_path / "specs" / "job.yaml"
    spec_file.parent.mkdir()
    spec_file.write_text("input: {path: in.parquet}\nlabels: {labels: [a, b]}\nmodel: {ref: org/name}\n"
                         "sink: {format: parquet, path: s3://bucket/out}\n")
    monkeypatch.chdir(tmp_path)
    spec = JobSpec.from_yaml(spec_file, ["sink.path=typed/here"])
    assert spec.input.path == str(tmp_path / "specs" / "in.parquet")
    assert spec.sink.path == str(tmp_path / "typed" / "here")
    assert spec.model.ref == "org/name"  # a hub id: no such folder next to the spec
    assert JobSpec.from_yaml(spec_file).sink.path == "s3://bucket/out"  # URIs are left alone

    built = JobSpec(input=InputSpec(path="data/in.parquet"), labels={"labels": ["a", "b"]},
                    model=ModelSpec(ref="org/name"), sink=SinkSpec(format="parquet", path="file:///x/out"))
    assert built.input.path == str(tmp_path / "data" / "in.parquet")
    assert built.sink.path == "file:///x/out"
    assert JobSpec.from_dict(spec_dict(path="rel.parquet")).input.path == str(tmp_path / "rel.parquet")


def test_partition_by_a_column_the_output_lacks_is_a_spec_error() -> None:
    data = spec_dict(passthrough=["lang"])
    data["sink"]["partition_by"] = ["lang", "top_lable"]
    with pytest.raises(SpecError, match="sink.partition_by: column 'top_lable'") as info:
        JobSpec.from_dict(data)
    assert "'top_label'" in str(info.value) and "'lang'" in str(info.value)  # the valid ones are listed
    data["sink"]["partition_by"] = ["lang", "top_label"]
    assert JobSpec.from_dict(data).sink.partition_by == ["lang", "top_label"]
