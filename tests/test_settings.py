"""One engine-settings object (``gliclass_dist.settings.EngineSettings``) behind every front end."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gliclass_dist.settings import BACKENDS, DTYPES, EngineSettings

LABELS = ["sports", "politics", "technology"]


def spec_dict(**model: object) -> dict:
    return {
        "name": "news",
        "input": {"format": "parquet", "path": "/data/in"},
        "labels": {"labels": ["business", "sport"]},
        "model": {"ref": "org/model", **model},
        "sink": {"format": "parquet", "path": "/data/out"},
    }


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"backend": "tensorrt"}, "backend must be one of torch, int8, onnx-int8; got 'tensorrt'"),
        ({"device": "gpu"}, "device must be auto, cpu, cuda or cuda:N; got 'gpu'"),
        ({"dtype": "float8"}, "dtype"),
        ({"token_budget": 8}, "token_budget"),
        ({"max_length": 4}, "max_length"),
        ({"threads": 0}, "threads"),
        ({"result_cache_rows": -1}, "result_cache_rows"),
        ({"knob": 1}, "knob"),
    ],
)
def test_bad_settings_fail_naming_the_value(bad: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        EngineSettings("m", **bad)


def test_settings_are_a_hashable_picklable_cache_key() -> None:
    a = EngineSettings("m", device="cpu", backend="int8", token_budget=4096)
    b = pickle.loads(pickle.dumps(a))
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a.replace(token_budget=8192) != a
    with pytest.raises(ValueError, match="backend"):
        a.replace(backend="onnx")  # replace checks too
    with pytest.raises(AttributeError):
        a.device = "cuda"  # type: ignore[misc]


def test_the_lists_agree_with_the_engine() -> None:
    from gliclass_dist import backends, engine

    assert BACKENDS == backends.BACKENDS
    assert set(DTYPES) == {"auto", *engine.DTYPES}


def test_display_name_is_computed_in_one_place(tiny_model: Path) -> None:
    from gliclass_dist.run import model_display_name

    assert EngineSettings(str(tiny_model)).display_name == tiny_model.name == model_display_name(str(tiny_model))
    assert EngineSettings("org/name").display_name == "org/name"
    assert EngineSettings("org/name", model_name="mine").display_name == "mine"


def test_job_spec_maps_onto_settings_and_keeps_its_keys() -> None:
    from gliclass_dist.spec import JobSpec, SpecError

    data = spec_dict(backend="int8", device="cpu")
    data["resources"] = {"token_budget": 1024, "result_cache_rows": 500}
    settings = EngineSettings.from_job(JobSpec.from_dict(data))
    assert settings == EngineSettings(
        "org/model", device="cpu", backend="int8", token_budget=1024, result_cache_rows=500
    )
    # a spec written before model.backend existed keeps its idempotency key; int8 (other scores) gets another
    plain = JobSpec.from_dict(spec_dict()).job_key
    assert plain == "news-3e02d6bc72e18cff"  # the key 7e78087 (before model.backend/labels.examples_column) gave
    per_row = {**spec_dict(), "labels": {"column": "labels"}}
    assert JobSpec.from_dict(per_row).job_key == "news-a50dfed0c1ab7547"
    with_examples = {**spec_dict(), "labels": {"column": "labels", "examples_column": "shots"}}
    assert JobSpec.from_dict(with_examples).job_key != "news-a50dfed0c1ab7547"
    assert JobSpec.from_dict(spec_dict(backend="torch")).job_key == plain
    assert JobSpec.from_dict(spec_dict(backend="int8")).job_key != plain
    with pytest.raises(SpecError, match="model.backend"):
        JobSpec.from_dict(spec_dict(backend="tensorrt"))
    with pytest.raises(SpecError, match="resources.result_cache_rows"):
        JobSpec.from_dict({**spec_dict(), "resources": {"result_cache_rows": -5}})


def test_from_settings_loads_with_backend_threads_and_name(tiny_model: Path) -> None:
    code = f"""
        import json, torch
        from gliclass_dist.engine import Classifier
        from gliclass_dist.settings import EngineSettings
        settings = EngineSettings({str(tiny_model)!r}, device="cpu", backend="int8", threads=1, token_budget=512)
        clf = Classifier.from_settings(settings)
        print(json.dumps({{"backend": clf.backend, "threads": torch.get_num_threads(), "budget": clf.token_budget,
                          "name": clf.model_name, "same": clf.settings is settings,
                          "status": clf.classify(["a goal in the final minute"], ["sports"])[0].status}}))
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"backend": "int8", "threads": 1, "budget": 512, "name": tiny_model.name, "same": True, "status": "ok"}


def test_spark_worker_cache_is_keyed_by_settings(tiny_model: Path) -> None:
    from gliclass_dist.spark.udf import ModelOptions, get_classifier, make_config

    assert ModelOptions is EngineSettings
    first = get_classifier(EngineSettings(str(tiny_model), device="cpu", backend="int8", token_budget=640))
    again = get_classifier(EngineSettings(str(tiny_model), device="cpu", backend="int8", token_budget=640))
    assert first is again and first.backend == "int8" and first.token_budget == 640
    assert make_config(str(tiny_model), LABELS).model == EngineSettings(str(tiny_model))


def test_serve_args_derive_engine_settings() -> None:
    from gliclass_dist.ray.serve import ServeArgs

    args = ServeArgs.model_validate({"model": "m", "backend": "int8", "device": "cpu", "num_cpus": 2, "token_budget": "512"})
    assert args.engine_settings("/ckpt/x") == EngineSettings(
        "/ckpt/x", device="cpu", backend="int8", token_budget=512, threads=2
    )
    for bad in ({"backend": "tensorrt"}, {"device": "gpu"}, {"token_budget": 8}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ServeArgs.model_validate({"model": "m", **bad})


def test_cli_backend_flag_and_bad_settings(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import pyarrow as pa

    from gliclass_dist.cli import main

    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [1, 2], "text": ["the match ended 2-1", None]}), source)
    out = tmp_path / "out.parquet"
    common = ["classify", "--model", str(tiny_model), "--labels", ",".join(LABELS), "--input", str(source),
              "--output", str(out), "--device", "cpu"]
    assert main([*common, "--backend", "int8"]) == 0
    assert json.loads(capsys.readouterr().out)["status_counts"] == {"ok": 1, "empty_text": 1}
    assert pq.read_table(out).column("status").to_pylist() == ["ok", "empty_text"]
    out.unlink()
    assert main([*common, "--token-budget", "8"]) == 2
    err = capsys.readouterr().err
    assert "--token-budget" in err and "64" in err and "8" in err
    assert not out.exists()
