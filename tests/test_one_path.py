"""One batch path: the encoding step (no engine, no torch at import), the scoring step, worker set-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest

from gliclass_dist.encode import EncodedBatch, encode_arrow, is_encoded
from gliclass_dist.labels import LabelSpec

LABELS = ["sports", "politics", "tech"]

# Records OMP_WAIT_POLICY at the moment torch is first imported in the process.
SPY = """
import importlib.abc, os, sys
SEEN = []
class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" and not SEEN:
            SEEN.append(os.environ.get("OMP_WAIT_POLICY", "(unset)"))
        return None
sys.meta_path.insert(0, Spy())
"""


def run_python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter without OMP_WAIT_POLICY; it prints one JSON line last."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_tokenize_stage_loads_neither_engine_nor_torch_at_import(tiny_model: Path) -> None:
    out = run_python(
        f"""
        import json, sys
        import gliclass_dist.encode
        from gliclass_dist.ray.predictor import tokenize_batch
        from gliclass_dist.labels import LabelSpec
        import pyarrow as pa
        torch_at_import = "torch" in sys.modules
        batch = pa.table({{"id": [1, 2, 3], "text": ["a match today", None, "  "]}})
        out = tokenize_batch(batch, model_path={str(tiny_model)!r}, max_length=None,
                             label_spec=LabelSpec(labels={LABELS!r}), text_column="text", keep=["id"])
        print(json.dumps({{"torch_at_import": torch_at_import, "engine": "gliclass_dist.engine" in sys.modules,
                          "statuses": out.column("__gliclass_pre_status").to_pylist(),
                          "ids": out.column("id").to_pylist()}}))
        """
    )
    assert out["torch_at_import"] is False
    # the tokenizer is loaded through transformers, which imports torch when installed; the engine never loads
    assert out["engine"] is False
    assert out["statuses"] == ["ok", "empty_text", "empty_text"]
    assert out["ids"] == [1, 2, 3]


def test_engine_import_leaves_the_environment_alone() -> None:
    out = run_python(
        """
        import json, os
        import gliclass_dist.engine
        print(json.dumps({"omp": os.environ.get("OMP_WAIT_POLICY")}))
        """
    )
    assert out["omp"] is None


@pytest.mark.parametrize("front_end", ["ray", "spark"])
def test_worker_start_sets_the_wait_policy_before_torch(tiny_model: Path, front_end: str) -> None:
    if front_end == "ray":
        start = f"""
        from gliclass_dist.ray.predictor import GLiClassPredictor
        from gliclass_dist.labels import LabelSpec
        clf = GLiClassPredictor({str(tiny_model)!r}, LabelSpec(labels={LABELS!r}), device="cpu").classifier
        """
    else:
        start = f"""
        from gliclass_dist.spark.udf import ModelOptions, get_classifier
        clf = get_classifier(ModelOptions(ref={str(tiny_model)!r}, device="cpu"))
        """
    out = run_python(
        SPY
        + textwrap.dedent(start)
        + """
import json
print(json.dumps({"at_torch_import": SEEN, "rows": len(clf.classify(["a match"], ["sports"]))}))
"""
    )
    assert out["at_torch_import"] == ["PASSIVE"]
    assert out["rows"] == 1


def test_classify_arrow_is_encode_then_score(classifier) -> None:
    table = pa.table(
        {
            "id": [1, 2, 3, 4, 5],
            "text": ["the match ended late", None, "the vote was close", "\u200b ", "a new phone chip"],
            "labels": [["sports", "tech"], ["tech"], ["politics", "politics", ""], ["tech"], []],
        }
    )
    spec = LabelSpec(column="labels", threshold=0.4)
    expected = classifier.classify_arrow(table, spec, keep=["id"])
    encoded = encode_arrow(table, classifier.builder, spec, keep=["id"])
    assert isinstance(encoded, EncodedBatch) and encoded.num_rows == 5
    assert encoded.statuses == ["ok", "empty_text", "labels_cleaned", "empty_text", "no_labels"]
    before = classifier.stats["rows"]
    direct = classifier.score_arrow(encoded, spec)
    assert classifier.stats["rows"] == before + 5
    # the Arrow form (what Ray's tokenize stage hands the model stage) scores the same
    arrow = encoded.to_arrow()
    assert is_encoded(arrow.schema)
    via_arrow = classifier.score_arrow(arrow, spec)
    assert direct.equals(expected)
    assert via_arrow.equals(expected)
    assert expected.column_names[0] == "id"
    assert expected.column("status").to_pylist() == ["ok", "empty_text", "labels_cleaned", "empty_text", "no_labels"]


def test_encoded_batch_from_a_plain_table_names_the_missing_columns(classifier) -> None:
    with pytest.raises(KeyError, match="__gliclass_chunks"):
        classifier.score_arrow(pa.table({"text": ["x"]}), LabelSpec(labels=LABELS))
