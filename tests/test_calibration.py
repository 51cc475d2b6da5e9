"""Post-hoc calibration and suggested thresholds: fitting on synthetic scores, the real fitting path on a tiny
checkpoint, the file format's errors, and the same calibrated scores from the engine, Ray, Spark and Serve."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from news import NEWS, TOPICS

from gliclass_dist.calibration import CALIBRATION_FILE, Calibration, load_calibration
from gliclass_dist.engine import Classifier
from gliclass_dist.labels import LabelSpec
from gliclass_dist.train.calibrate import (
    LogitRows,
    best_threshold,
    calibrate,
    collect_logits,
    expected_calibration_error,
    fit_calibration,
    suggest_thresholds,
    write_label_set,
)
from gliclass_dist.train.data import records_from_dicts

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parent.parent
LABELS = TOPICS
TEXTS = NEWS
# A map far from the identity, with per-label pairs, so that a front end that skipped it would be caught.
FRONT_END_MAP = Calibration(scale=2.5, bias=-0.4, per_label={"sports": (0.5, 1.2), "tech": (4.0, 0.3)},
                            method="per-label-platt", mode="multi-label")
# "Identity": on 3,000 synthetic rows (3,000 pairs per label), calibrated and raw probabilities differ by less
# than this for every logit in [-6, 6]. The sampling noise of a per-label fit on 3,000 pairs is about 0.01-0.025
# (seeds 0-3); the shared fits stay under 0.01.
IDENTITY_ROWS = 3000
IDENTITY_TOLERANCE = 0.04


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def synthetic_rows(n: int, seed: int, true_map: dict[str, tuple[float, float]] | None = None) -> LogitRows:
    """Multi-label rows over LABELS: raw logits ~ N(0, 2); truth ~ Bernoulli(sigmoid(a * z + b)) per label
    (a, b from ``true_map``, else (1, 0): scores that are perfectly calibrated already)."""
    rng = np.random.default_rng(seed)
    rows = LogitRows()
    pairs = np.array([(true_map or {}).get(label, (1.0, 0.0)) for label in LABELS])
    for _ in range(n):
        z = rng.normal(0.0, 2.0, size=len(LABELS))
        truth = rng.random(len(LABELS)) < sigmoid(pairs[:, 0] * z + pairs[:, 1])
        rows.append(LABELS, z, truth.astype(float))
    return rows


def max_probability_shift(calibration: Calibration) -> float:
    grid = np.linspace(-6, 6, 121)
    worst = 0.0
    for label in LABELS:
        before = sigmoid(grid)
        after = sigmoid(calibration.apply([label] * len(grid), grid))
        worst = max(worst, float(np.abs(after - before).max()))
    return worst


def label_records(texts: list[str], truth: list[list[str]], labels: list[str] = LABELS) -> list:
    return records_from_dicts([{"text": t, "all_labels": labels, "true_labels": y} for t, y in zip(texts, truth)])


def calibrated_copy(tiny_model: Path, folder: Path, calibration: Calibration = FRONT_END_MAP) -> Path:
    shutil.copytree(tiny_model, folder)
    calibration.save(folder)
    return folder


# ---------------------------------------------------------------------------------------------- fitting


@pytest.mark.parametrize("method", ["temperature", "platt", "per-label-platt", "auto"])
def test_fit_is_identity_on_perfectly_calibrated_scores(method: str) -> None:
    fit = fit_calibration(synthetic_rows(IDENTITY_ROWS, seed=1), method=method, mode="multi-label")
    assert max_probability_shift(fit.calibration) < IDENTITY_TOLERANCE, fit.summary()
    assert abs(fit.calibration.scale - 1.0) < 0.1 and abs(fit.calibration.bias) < 0.1


def test_fit_recovers_a_known_miscalibration() -> None:
    """Not the identity whatever the data: a shared and a per-label distortion are found again."""
    platt = fit_calibration(synthetic_rows(600, seed=2, true_map=dict.fromkeys(LABELS, (0.4, -1.0))), method="auto")
    assert platt.method in ("platt", "per-label-platt")
    assert platt.calibration.scale == pytest.approx(0.4, abs=0.08)
    assert platt.calibration.bias == pytest.approx(-1.0, abs=0.2)
    assert platt.heldout_log_loss["none"] > platt.heldout_log_loss["platt"]
    assert platt.log_loss_after < platt.log_loss_before

    per_label = fit_calibration(synthetic_rows(600, seed=3, true_map={"tech": (0.3, 1.5)}), method="auto")
    assert per_label.method == "per-label-platt"
    scale, bias = per_label.calibration.per_label["tech"]
    assert scale == pytest.approx(0.3, abs=0.15) and bias == pytest.approx(1.5, abs=0.4)


def test_single_label_temperature_is_found_and_identity_when_calibrated() -> None:
    rng = np.random.default_rng(4)

    def rows(temperature: float) -> LogitRows:
        out = LogitRows()
        for _ in range(600):
            z = rng.normal(0.0, 2.0, size=len(LABELS))
            p = np.exp(z / temperature) / np.exp(z / temperature).sum()
            out.append(LABELS, z, np.eye(len(LABELS))[rng.choice(len(LABELS), p=p)])
        return out

    hot = fit_calibration(rows(2.0), method="temperature", mode="single-label")
    assert hot.calibration.scale == pytest.approx(0.5, abs=0.08) and hot.calibration.bias == 0.0
    calibrated = fit_calibration(rows(1.0), method="temperature", mode="single-label")
    assert calibrated.calibration.scale == pytest.approx(1.0, abs=0.1)
    assert "platt" not in fit_calibration(rows(1.0), method="auto", mode="single-label").heldout_log_loss


def test_fit_refuses_bad_arguments() -> None:
    rows = synthetic_rows(3, seed=5)
    with pytest.raises(ValueError, match="at least 4 labelled rows"):
        fit_calibration(rows, method="auto")
    with pytest.raises(ValueError, match="'isotonic'"):
        fit_calibration(rows, method="isotonic")
    with pytest.raises(ValueError, match="'multi'"):
        fit_calibration(rows, method="platt", mode="multi")
    unusable = LogitRows()
    unusable.append(LABELS, np.zeros(4), np.array([1.0, 1.0, 0.0, 0.0]))  # two true labels: no softmax target
    with pytest.raises(ValueError, match="single-label needs rows with exactly one true label"):
        fit_calibration(unusable, method="temperature", mode="single-label")


def test_best_threshold_and_ece_on_hand_made_scores() -> None:
    assert best_threshold([0.1, 0.2, 0.9, 0.8], [False, False, True, True]) == (pytest.approx(0.5), 1.0)
    # one negative (0.8) above a positive (0.6): the best F1 keeps 0.6 too, cut between 0.1 and 0.6
    threshold, f1 = best_threshold([0.1, 0.6, 0.9, 0.8], [False, True, True, False])
    assert threshold == pytest.approx(0.35) and f1 == pytest.approx(0.8)
    # the threshold is what a label-set file stores: 4 decimals where the gap allows, more where it is narrower
    # (a tiny model's scores 2e-5 apart once lost a row to a threshold rounded out of its gap)
    assert best_threshold([0.1, 0.90123], [False, True])[0] == 0.5006
    threshold, _ = best_threshold([0.2, 0.500011, 0.500019, 0.9], [False, False, True, True])
    assert 0.500011 < threshold <= 0.500019 and threshold == round(threshold, 6)
    assert expected_calibration_error([0.1, 0.9], [0, 1]) == pytest.approx(0.1)
    assert expected_calibration_error([0.95] * 10, [1] * 10) == pytest.approx(0.05)
    with pytest.raises(ValueError):
        expected_calibration_error([0.5], [1, 0])


# ---------------------------------------------------------------------------------------------- the real path


def test_calibrate_fits_raw_logits_saves_and_the_engine_applies_it(tiny_model: Path, classifier: Classifier,
                                                                   tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    truth = [["business"], ["sports"], ["politics"], ["tech"], ["business", "tech"], ["sports"]]
    records = label_records(TEXTS * 3, truth * 3)
    result = calibrate(model, records, method="platt", mode="multi-label")
    saved = load_calibration(model)
    assert saved is not None and saved.method == "platt" and saved.mode == "multi-label"
    assert (saved.scale, saved.bias) == (result.calibration.scale, result.calibration.bias)
    assert result.log_loss_after <= result.log_loss_before

    calibrated = Classifier.from_pretrained(model, device="cpu")
    raw = collect_logits(calibrated, records[:6])  # logits before calibration, even from a calibrated model
    preds = calibrated.classify(TEXTS, LABELS)
    plain = classifier.classify(TEXTS, LABELS)
    for logits, pred, before in zip(raw.logits, preds, plain):
        assert [before.scores[lb] for lb in LABELS] == pytest.approx(sigmoid(logits).tolist(), abs=1e-5)
        expected = sigmoid(saved.scale * logits + saved.bias)
        assert [pred.scores[lb] for lb in LABELS] == pytest.approx(expected.tolist(), abs=1e-5)

    # refitting a calibrated model fits the raw logits again: the same map, not one stacked on the first
    again = calibrate(model, records, method="platt", mode="multi-label")
    assert again.calibration.scale == pytest.approx(saved.scale, rel=1e-6)
    assert again.calibration.bias == pytest.approx(saved.bias, abs=1e-6)


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("{not json", "cannot read"),
        ('{"format_version": 1, "default": [0, 0]}', "scale must be finite and > 0"),
        ('{"format_version": 1, "default": [1, 0], "per_label": {"tech": [1]}}', "label 'tech'"),
        ('{"format_version": 1, "default": [1, 0], "temperature": 2}', "unknown keys ['temperature']"),
        ('{"format_version": 2, "default": [1, 0]}', "format_version must be 1"),
        ('{"format_version": 1, "method": "isotonic"}', "'isotonic'"),
        ("[1, 0]", "expected a JSON object"),
    ],
)
def test_bad_calibration_file_is_a_clear_error_naming_the_file(tiny_model: Path, tmp_path: Path, content: str,
                                                                fragment: str) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / CALIBRATION_FILE).write_text(content)
    with pytest.raises(ValueError) as excinfo:
        Classifier.from_pretrained(model, device="cpu")
    assert str(model / CALIBRATION_FILE) in str(excinfo.value) and fragment in str(excinfo.value)


def test_cli_calibrate_writes_the_file_and_reports_bad_rows(tiny_model: Path, tmp_path: Path) -> None:
    """``python -m gliclass_dist.train calibrate`` in a subprocess, as a user runs it."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    data = tmp_path / "rows.jsonl"
    truth = [["business"], ["sports"], ["politics"], ["tech"], ["business"], ["sports"]]
    data.write_text("".join(json.dumps({"text": t, "all_labels": LABELS, "true_labels": y}) + "\n"
                            for t, y in zip(TEXTS * 2, truth * 2)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "gliclass_dist.train", "calibrate", "--model", str(model), "--data", str(data)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["mode"] == "single-label" and summary["saved"] == str(model / CALIBRATION_FILE)
    assert set(summary["heldout_log_loss"]) == {"none", "temperature", "per-label-platt"}
    assert load_calibration(model).method == summary["method"]  # type: ignore[union-attr]

    data.write_text(json.dumps({"text": "x", "all_labels": LABELS, "true_labels": ["weather"]}) + "\n")
    bad = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert bad.returncode == 2 and f"{data}:1" in bad.stderr and "weather" in bad.stderr


# ---------------------------------------------------------------------------------------------- thresholds


def test_suggested_thresholds_land_in_a_label_set_file_a_job_spec_loads(tiny_model: Path, classifier: Classifier,
                                                                        tmp_path: Path) -> None:
    from gliclass_dist.spec import JobSpec
    from gliclass_dist.train.cli import main

    labels = [*LABELS, "weather"]  # "weather" is never true: it keeps the job's threshold
    truth = [["business"], ["sports"], ["politics"], ["tech"], ["business", "tech"], ["sports"]]
    records = label_records(TEXTS * 2, truth * 2, labels)
    found = suggest_thresholds(classifier, records, min_support=2)
    assert set(found.thresholds) == set(LABELS)
    assert found.report["weather"]["positives"] == 0 and "min_support" in found.report["weather"]["kept_default"]
    for label in LABELS:  # each threshold reaches the best F1 on the rows, at least F1 at the default 0.5
        entry = found.report[label]
        assert entry["f1_at_threshold"] >= entry.get("f1_at_default", 0.0)
        preds = [p.scores[label] >= found.thresholds[label] for p in classifier.classify(TEXTS * 2, labels)]
        truth_flags = [label in y for y in truth * 2]
        tp = sum(p and t for p, t in zip(preds, truth_flags))
        assert 2 * tp / (sum(preds) + sum(truth_flags)) == pytest.approx(entry["f1_at_threshold"], abs=1e-3)

    path = tmp_path / "labels.yaml"
    (path).write_text("label_sets:\n  other:\n    version: '7'\n    labels: [a, b]\n")
    assert write_label_set(path, "topics", found.labels, found.thresholds) == "1"
    spec = JobSpec.from_dict({
        "name": "t", "input": {"format": "parquet", "path": str(tmp_path / "in")},
        "labels": {"file": str(path), "name": "topics"}, "model": {"ref": str(tiny_model)},
        "sink": {"format": "parquet", "path": str(tmp_path / "out")},
    })
    assert spec.labels.labels == labels and spec.labels.version == "1"
    assert spec.labels.thresholds == found.thresholds
    assert LabelSpec(file=str(path), name="other").labels == ["a", "b"]  # the file's other set is kept

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    argv = ["suggest-thresholds", "--model", str(tiny_model), "--data", str(data), "--out", str(path),
            "--name", "topics", "--min-support", "2"]
    assert main(argv) == 0
    reloaded = LabelSpec(file=str(path), name="topics")
    assert reloaded.version == "2" and reloaded.thresholds == found.thresholds
    assert path.read_text().startswith("# thresholds suggested by")


# ---------------------------------------------------------------------------------------------- front ends


@pytest.fixture(scope="module")
def calibrated_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return calibrated_copy(tiny_model, tmp_path_factory.mktemp("calibrated") / "model")


@pytest.fixture(scope="module")
def calibrated_engine(calibrated_model: Path) -> Classifier:
    return Classifier.from_pretrained(calibrated_model, device="cpu")


def engine_rows(engine: Classifier, spec: LabelSpec) -> list[dict[str, Any]]:
    table = pa.table({"id": pa.array(range(len(TEXTS)), pa.int64()), "text": pa.array(TEXTS)})
    return engine.classify_arrow(table, spec, keep=["id"]).to_pylist()


def assert_same_results(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert (g["status"], sorted(g["labels"]), g["top_label"]) == (e["status"], sorted(e["labels"]), e["top_label"])
        assert [s["label"] for s in g["scores"]] == [s["label"] for s in e["scores"]]
        assert [s["score"] for s in g["scores"]] == pytest.approx([s["score"] for s in e["scores"]], abs=1e-5)


def test_engine_applies_the_saved_map(calibrated_engine: Classifier, classifier: Classifier) -> None:
    spec = LabelSpec(labels=LABELS)
    calibrated, raw = engine_rows(calibrated_engine, spec), engine_rows(classifier, spec)
    for c, r in zip(calibrated, raw):
        raw_logits = np.array([np.log(s["score"] / (1 - s["score"])) for s in r["scores"]])
        expected = sigmoid(FRONT_END_MAP.apply(LABELS, raw_logits))
        assert [s["score"] for s in c["scores"]] == pytest.approx(expected.tolist(), abs=1e-5)
    shift = max(abs(c["score"] - r["score"]) for a, b in zip(calibrated, raw) for c, r in zip(a["scores"], b["scores"]))
    assert shift > 0.05, "the map should move the tiny model's scores visibly"


def test_ray_job_applies_the_calibration(ray_local: Any, calibrated_model: Path, calibrated_engine: Classifier,
                                         tmp_path: Path) -> None:
    from gliclass_dist.ray.job import run_job
    from gliclass_dist.spec import JobSpec

    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": pa.array(range(len(TEXTS)), pa.int64()), "text": pa.array(TEXTS)}),
                   tmp_path / "in" / "part.parquet")
    spec = JobSpec.from_dict({
        "name": "calibrated", "input": {"format": "parquet", "path": str(tmp_path / "in")},
        "labels": {"labels": LABELS}, "model": {"ref": str(calibrated_model)},
        "sink": {"format": "parquet", "path": str(tmp_path / "out")}, "resources": {"batch_rows": 4},
    })
    summary = run_job(spec)
    assert summary["rows_out"] == len(TEXTS)
    got = pads.dataset(str(tmp_path / "out"), format="parquet").to_table().sort_by("id").to_pylist()
    assert_same_results(got, engine_rows(calibrated_engine, spec.labels))


def test_serve_applies_the_calibration(ray_local: Any, calibrated_model: Path, calibrated_engine: Classifier) -> None:
    pytest.importorskip("ray.serve")
    httpx = pytest.importorskip("httpx")
    from serve_helpers import SERVE_LIMITS, running_app

    with running_app({**SERVE_LIMITS, "model": str(calibrated_model)}, "gliclass-calibrated") as base_url:
        response = httpx.post(f"{base_url}/v1/classify", json={"texts": TEXTS, "labels": LABELS}, timeout=120)
    assert response.status_code == 200, response.text
    assert_same_results(response.json()["results"], engine_rows(calibrated_engine, LabelSpec(labels=LABELS)))


def test_spark_applies_the_calibration(calibrated_model: Path, calibrated_engine: Classifier) -> None:
    pytest.importorskip("pyspark")
    from spark_helpers import spark_session

    from gliclass_dist.spark.udf import classify_dataframe, classify_udf

    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    expected = engine_rows(calibrated_engine, LabelSpec(labels=LABELS))
    with spark_session("local[2]", "gliclass-calibration", {"spark.sql.shuffle.partitions": "2"}) as spark:
        df = spark.createDataFrame([{"id": i, "text": t} for i, t in enumerate(TEXTS)], "id long, text string")
        mapped = classify_dataframe(df, str(calibrated_model), LABELS, keep=["id"]).orderBy("id").toArrow()
        udf = classify_udf(str(calibrated_model), LABELS)
        by_udf = df.select("id", udf("text").alias("r")).select("id", "r.*").orderBy("id").toArrow()
    assert_same_results(mapped.to_pylist(), expected)
    assert_same_results(by_udf.to_pylist(), expected)
