"""The public API a Ray, Spark or Hugging Face user expects (issue 14, item 6)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest

LABELS = ["sports", "politics", "technology"]
TEXTS = ["The striker scored twice in the final.", "Parliament passed the budget.", "", None, "A new chip was released."]


def run_python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; its last stdout line is JSON."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"out": json.loads(proc.stdout.strip().splitlines()[-1]), "stderr": proc.stderr}


def test_top_level_names_load_lazily() -> None:
    out = run_python(
        """
        import json, sys
        import gliclass_dist, gliclass_dist.ray
        light = {"torch": "torch" in sys.modules, "ray": "ray" in sys.modules}
        from gliclass_dist import Classifier, EngineSettings, JobSpec, LabelSpec, Prediction
        from gliclass_dist.engine import Classifier as C, Prediction as P
        from gliclass_dist.labels import LabelSpec as L
        from gliclass_dist.spec import JobSpec as J
        print(json.dumps({**light, "same": [Classifier is C, Prediction is P, LabelSpec is L, JobSpec is J],
                          "version": gliclass_dist.__version__, "all": sorted(gliclass_dist.__all__)}))
        """
    )["out"]
    assert out["torch"] is False and out["ray"] is False
    assert out["same"] == [True, True, True, True]
    from importlib.metadata import version

    assert out["version"] == version("gliclass-dist")
    assert {"Classifier", "JobSpec", "LabelSpec", "Prediction", "__version__"} <= set(out["all"])
    import gliclass_dist

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        gliclass_dist.Nope  # noqa: B018


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["classify", "--help"]])
def test_version_and_help_import_no_torch(argv: list[str]) -> None:
    out = run_python(
        f"""
        import contextlib, io, json, sys
        from gliclass_dist.cli import main
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            try:
                main({argv!r})
            except SystemExit as exc:
                code = exc.code
        print(json.dumps({{"code": code, "torch": "torch" in sys.modules, "text": buf.getvalue()}}))
        """
    )["out"]
    assert out["code"] == 0 and out["torch"] is False
    if argv == ["--version"]:
        from gliclass_dist import __version__

        assert out["text"].strip() == f"gliclass-dist {__version__}"
    else:
        assert "usage: gliclass-dist" in out["text"]
    if argv == ["--help"]:  # the commands are listed with their summaries, no "(not loaded)"
        for command in ("classify", "train", "calibrate", "suggest-thresholds", "serve"):
            assert command in out["text"]
        assert "not loaded" not in out["text"]


def test_console_script_prints_the_version() -> None:
    script = Path(sys.executable).with_name("gliclass-dist")
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("gliclass-dist ")


def test_a_command_registered_by_another_commands_module_still_runs(capsys: pytest.CaptureFixture) -> None:
    from gliclass_dist.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["suggest-thresholds", "--help"])
    assert exc.value.code == 0 and "usage: gliclass-dist suggest-thresholds" in capsys.readouterr().out


def test_long_texts_raise_no_misleading_transformers_warning(tiny_model: Path) -> None:
    run = run_python(
        f"""
        import json, sys
        from gliclass_dist.engine import Classifier
        clf = Classifier.from_pretrained({str(tiny_model)!r}, device="cpu")
        status = clf.classify(["word " * 3000], ["sports"])[0].status
        print("--- engine done", file=sys.stderr, flush=True)
        from transformers import AutoTokenizer
        AutoTokenizer.from_pretrained({str(tiny_model)!r})("word " * 3000)  # control: a plain tokenizer warns
        print(json.dumps({{"status": status}}))
        """
    )
    engine_part, _, control = run["stderr"].partition("--- engine done")
    assert run["out"]["status"] == "truncated"
    assert "Token indices sequence length is longer" in control  # the warning exists, so its absence means something
    assert "Token indices sequence length is longer" not in engine_part


# ---------------------------------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def reference(tiny_model: Path) -> pa.Table:
    from gliclass_dist.engine import Classifier
    from gliclass_dist.labels import LabelSpec

    clf = Classifier.from_pretrained(tiny_model, device="cpu", model_name=tiny_model.name)
    return clf.classify_arrow(pa.table({"id": list(range(len(TEXTS))), "text": TEXTS}), LabelSpec(labels=LABELS), keep=["id"])


def test_predictor_takes_a_label_list_and_any_batch_format(tiny_model: Path, reference: pa.Table) -> None:
    import pandas as pd

    from gliclass_dist.ray import GLiClassPredictor

    pred = GLiClassPredictor(str(tiny_model), LABELS, keep=["id"], device="cpu")
    table = pa.table({"id": list(range(len(TEXTS))), "text": TEXTS})
    arrow = pred(table)
    assert arrow.equals(reference)
    assert pred(table.to_batches()[0]).equals(reference)
    frame = pred(table.to_pandas())
    assert isinstance(frame, pd.DataFrame) and frame["status"].tolist() == reference.column("status").to_pylist()
    numpy = pred({"id": table.column("id").to_numpy(), "text": table.column("text").to_numpy(zero_copy_only=False)})
    assert isinstance(numpy, dict) and list(numpy["status"]) == reference.column("status").to_pylist()
    expected = [float("nan") if v is None else v for v in reference.column("top_score").to_pylist()]
    assert list(numpy["top_score"]) == pytest.approx(expected, nan_ok=True)  # numpy batches hold nulls as NaN
    with pytest.raises(TypeError, match="unsupported batch type list"):
        pred([{"text": "x"}])


@pytest.mark.parametrize(
    ("labels", "options", "message"),
    [
        ("sports", {}, "labels must be a list of label names"),
        ([], {}, "label list is empty"),
        (LABELS, {"keep": "id"}, "keep must be a list of column names"),
        (LABELS, {"text_column": ""}, "text_column must be a column name"),
        (LABELS, {"backend": "tensorrt"}, "backend must be one of"),
        (LABELS, {"batch_size": 8}, "batch_size"),
    ],
)
def test_predictor_fails_in_init_before_loading(labels: object, options: dict, message: str, tmp_path: Path) -> None:
    from gliclass_dist.ray import GLiClassPredictor

    # the model folder does not exist: the argument error must come first, before any load is tried
    with pytest.raises(ValueError, match=message) as exc:
        GLiClassPredictor(str(tmp_path / "no-model"), labels, **options)
    assert str(exc.value).startswith("GLiClassPredictor: ")


def test_classify_dataset_needs_no_sink(ray_local, tiny_model: Path, reference: pa.Table) -> None:
    import ray.data

    from gliclass_dist.ray import classify_dataset

    ds = ray.data.from_arrow(pa.table({"id": list(range(len(TEXTS))), "text": TEXTS}))
    out = classify_dataset(ds, model=str(tiny_model), labels=LABELS, keep=["id"], device="cpu",
                           resources={"batch_rows": 2})
    got = pa.concat_tables(ray_local.get(out.to_arrow_refs())).sort_by("id")
    assert got.column_names == reference.column_names
    assert got.column("status").to_pylist() == reference.column("status").to_pylist()
    assert got.column("model").to_pylist() == [tiny_model.name] * len(TEXTS)
    assert got.column("top_score").to_pylist() == pytest.approx(reference.column("top_score").to_pylist(), nan_ok=True)
    with pytest.raises(KeyError, match="'body'"):
        classify_dataset(ds, model=str(tiny_model), labels=LABELS, text_column="body")
    with pytest.raises(ValueError, match="max_actors"):
        classify_dataset(ds, model=str(tiny_model), labels=LABELS, resources={"min_actors": 2, "max_actors": 1})
