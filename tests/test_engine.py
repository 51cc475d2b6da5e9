"""The Classifier engine: batching, label chunking, statuses, Arrow in and out."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pytest

from gliclass_dist.engine import Classifier
from gliclass_dist.labels import LabelSpec
from gliclass_dist.model.loading import CheckpointError
from gliclass_dist.schema import RESULT_SCHEMA, Status, output_schema

LABELS = ["business", "sport", "politics", "technology"]
SHORT = "Rates rose."
LONG = " ".join(["The central bank raised interest rates while the football club won the league."] * 12)


def test_row_scores_do_not_depend_on_batch_mates(tiny_model):
    clf = Classifier.from_pretrained(tiny_model, device="cpu", token_budget=4096)
    alone = clf.classify([SHORT], LABELS)[0].scores
    batch = clf.classify([LONG, "x", SHORT, LONG[:300], "tennis"], LABELS)
    assert clf.stats["padded_tokens"] > clf.stats["tokens"]  # the batch really was padded
    in_batch = batch[2].scores
    assert list(alone) == list(in_batch) == LABELS
    assert max(abs(alone[k] - in_batch[k]) for k in LABELS) < 1e-5


def test_token_budget_splits_batches_and_keeps_order(tiny_model):
    clf = Classifier.from_pretrained(tiny_model, device="cpu", token_budget=128)
    texts = [f"text number {i} " * (1 + i % 7) for i in range(40)]
    preds = clf.classify(texts, LABELS)
    assert clf.stats["forward_passes"] > 1
    reference = Classifier.from_pretrained(tiny_model, device="cpu", token_budget=1_000_000).classify(texts, LABELS)
    for a, b in zip(preds, reference):
        assert max(abs(a.scores[k] - b.scores[k]) for k in LABELS) < 1e-5


def test_300_labels_on_a_128_token_window_scores_every_label(tiny_model):
    clf = Classifier.from_pretrained(tiny_model, device="cpu", max_length=128)
    labels = [f"label {i}" for i in range(300)]
    pred = clf.classify([LONG], labels)[0]
    assert list(pred.scores) == labels
    assert all(0.0 <= s <= 1.0 for s in pred.scores.values())
    assert pred.status == Status.TRUNCATED  # the long text was cut, never a label
    row = clf.builder.encode([LONG], [labels])[0]
    assert len(row.chunks) > 1 and all(len(c) <= 128 for c in row.chunks)
    assert row.labels == labels


def test_label_chunks_are_few_balanced_and_leave_a_quarter_window_of_text(tiny_model):
    clf = Classifier.from_pretrained(tiny_model, device="cpu", max_length=128)
    builder = clf.builder
    available = 128 - len(builder.prefix) - len(builder.suffix)
    labels = [f"label {i}" for i in range(300)]
    row = builder.encode([LONG], [labels])[0]
    blocks = [sum(len(builder.label_ids(lb)) for lb in chunk) for chunk in row.chunk_labels]
    greedy_chunks = -(-sum(blocks) // (available - available // 4 - 1))  # ceil: fewest chunks that leave 1/4
    assert len(row.chunks) <= greedy_chunks + 1
    assert max(blocks) - min(blocks) <= 2 * max(len(builder.label_ids(lb)) for lb in labels)  # balanced
    assert all(len(c) == 128 for c in row.chunks)  # each chunk filled with text up to the window
    # labels that leave the text a quarter of the window share a single pass
    few = [f"label {i}" for i in range(12)]
    block = sum(len(builder.label_ids(lb)) for lb in few) + 1
    assert block + available // 4 <= available
    assert len(builder.encode([LONG], [few])[0].chunks) == 1


def test_split_labels_keeps_order_and_capacity():
    from gliclass_dist.model.inputs import split_labels

    lengths = [3, 5, 2, 4, 4, 3, 6, 1, 2, 5]
    for capacity in (6, 8, 11, 40):
        groups = split_labels(lengths, capacity)
        assert [i for g in groups for i in g] == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in g) <= capacity for g in groups)
    assert split_labels(lengths, 40) == [list(range(len(lengths)))]
    assert split_labels([3, 20, 3], 12) == [[0], [1], [2]]  # an over-long label alone, reported by the caller


def test_long_text_keeps_all_labels(tiny_model):
    clf = Classifier.from_pretrained(tiny_model, device="cpu", max_length=64)
    pred = clf.classify([LONG * 3], LABELS)[0]
    assert list(pred.scores) == LABELS and pred.status == Status.TRUNCATED


def test_single_label_softmax_over_merged_chunks(tiny_model):
    clf = Classifier.from_pretrained(tiny_model, device="cpu", max_length=64)
    labels = [f"topic {i}" for i in range(60)]
    pred = clf.classify([SHORT], labels, mode="single-label")[0]
    assert abs(sum(pred.scores.values()) - 1.0) < 1e-6
    assert pred.labels == [pred.top_label] and pred.top_score == max(pred.scores.values())


def test_thresholds_per_label(classifier):
    base = classifier.classify([SHORT], LABELS, threshold=0.0)[0]
    assert base.labels == LABELS
    strict = {label: 1.0 for label in LABELS}
    strict["sport"] = 0.0
    assert classifier.classify([SHORT], LABELS, threshold=strict)[0].labels == ["sport"]


def test_bad_inputs_get_a_status_and_good_rows_still_score(classifier):
    good = classifier.classify([SHORT], LABELS)[0]
    texts = [None, "", "   \n\t", SHORT, "x" * 2_000_000, "ctrl \x00\x07\x1b chars \u202e\ufeff \U0001f600", SHORT]
    rows = [LABELS, LABELS, LABELS, ["sport", "sport", "", 3, "business"], LABELS, LABELS, None]
    preds = classifier.classify(texts, rows)
    assert [p.status for p in preds] == [
        Status.EMPTY_TEXT,
        Status.EMPTY_TEXT,
        Status.EMPTY_TEXT,
        Status.LABELS_CLEANED,
        Status.TRUNCATED,
        Status.OK,
        Status.NO_LABELS,
    ]
    assert list(preds[3].scores) == ["sport", "business"]
    assert abs(preds[5].top_score - max(preds[5].scores.values())) < 1e-9
    assert preds[6].scores == {} and preds[6].top_label is None
    # a good row in the same call scores as it does alone
    again = classifier.classify([None, SHORT, "x" * 100], LABELS)[1]
    assert max(abs(again.scores[k] - good.scores[k]) for k in LABELS) < 1e-5


def test_text_with_nothing_readable_is_empty_not_scored(classifier):
    unreadable = ["\x00\x01\x7f", "\u200b\u200c\ufeff\u2060", " <<LABEL>><<SEP>> <<EXAMPLE>> ", "\u3000\u00a0\t"]
    readable = ["\u202eRTL", "\U0001f600", "<b>", "\x00 a"]
    preds = classifier.classify(unreadable + readable, LABELS)
    assert [p.status for p in preds[:4]] == [Status.EMPTY_TEXT] * 4
    assert all(p.scores == {} for p in preds[:4])
    assert all(p.status == Status.OK and list(p.scores) == LABELS for p in preds[4:])


def test_text_cannot_forge_label_markers(classifier):
    pred = classifier.classify(["hello <<LABEL>> world <<SEP>>"], LABELS)[0]
    assert list(pred.scores) == LABELS and pred.status == Status.OK


def test_fixed_label_errors_are_clear(classifier):
    with pytest.raises(ValueError, match="duplicate label 'a'"):
        classifier.classify([SHORT], ["a", "b", "a"])
    with pytest.raises(ValueError, match="empty label"):
        classifier.classify([SHORT], ["a", " "])
    with pytest.raises(ValueError, match="reserved marker"):
        LabelSpec(labels=["a<<SEP>>b"])


def test_thousands_of_labels(classifier):
    labels = [f"category {i}" for i in range(2000)]
    pred = classifier.classify([SHORT], labels)[0]
    assert len(pred.scores) == 2000


def test_classify_arrow_schema_order_and_statuses(classifier):
    table = pa.table(
        {
            "id": pa.array([10, 11, 12, 13], pa.int64()),
            "source": ["a", "b", "c", "d"],
            "text": [SHORT, None, LONG, ""],
            "labels": [["sport", "business"], ["sport"], [], None],
        }
    )
    spec = LabelSpec(column="labels", threshold=0.0)
    out = classifier.classify_arrow(table, spec, keep=["id", "source"])
    assert out.schema == output_schema(table.schema, ["id", "source"])
    assert out.schema.remove(0).remove(0) == RESULT_SCHEMA
    assert out.column("id").to_pylist() == [10, 11, 12, 13]
    assert out.column("status").to_pylist() == [Status.OK, Status.EMPTY_TEXT, Status.NO_LABELS, Status.EMPTY_TEXT]
    first = out.column("scores")[0].as_py()
    assert [s["label"] for s in first] == ["sport", "business"]
    assert out.column("labels")[0].as_py() == ["sport", "business"]  # threshold 0 keeps all
    assert out.column("label_set").to_pylist() == ["column:labels"] * 4
    assert out.column("top_score").type == pa.float32()


@pytest.mark.parametrize(
    "column",
    [pa.array([1, 2], pa.int64()), pa.array([b"\xff\xfe", None], pa.binary())],
    ids=["int", "binary"],
)
def test_non_string_text_column(classifier, column):
    out = classifier.classify_arrow(pa.table({"text": column}), LabelSpec(labels=LABELS))
    assert out.num_rows == 2
    assert out.column("status")[0].as_py() == Status.INVALID_TEXT


def test_malformed_label_column_values(classifier):
    table = pa.table({"text": [SHORT, SHORT, SHORT], "labels": ["[not json", '["sport", "business"]', "sport"]})
    out = classifier.classify_arrow(table, LabelSpec(column="labels"))
    assert out.column("status").to_pylist() == [Status.INVALID_LABELS, Status.OK, Status.OK]
    assert [s["label"] for s in out.column("scores")[1].as_py()] == ["sport", "business"]


def test_named_label_set_file(classifier, tmp_path):
    path = tmp_path / "labels.yaml"
    path.write_text("label_sets:\n  topics:\n    version: 3\n    labels: [business, sport]\n    thresholds: {sport: 0.9}\n")
    spec = LabelSpec(file=str(path), name="topics")
    assert spec.label_set_id == "topics@3" and spec.threshold_for("sport") == 0.9
    out = classifier.classify_arrow(pa.table({"text": [SHORT]}), spec)
    assert out.column("label_set")[0].as_py() == "topics@3"
    with pytest.raises(ValueError, match="version 3"):
        LabelSpec(file=str(path), name="topics", version="2")


def test_hierarchical_labels_flatten():
    spec = LabelSpec(labels={"sports": ["football", "tennis"], "politics": None})
    assert spec.fixed == ["sports.football", "sports.tennis", "politics"]


def test_saved_scores_reload_identically(classifier, tmp_path):
    from gliclass_dist.model.loading import save_pretrained

    path = save_pretrained(classifier.model, tmp_path / "copy", classifier.builder.tokenizer)
    again = Classifier.from_pretrained(path, device="cpu")
    a = classifier.classify([SHORT, LONG], LABELS)
    b = again.classify([SHORT, LONG], LABELS)
    assert all(np.isclose(x.scores[k], y.scores[k], atol=1e-6) for x, y in zip(a, b) for k in LABELS)


class TestBrokenCheckpoints:
    def test_missing_folder(self, tmp_path):
        with pytest.raises(CheckpointError, match="does not exist"):
            Classifier.from_pretrained(tmp_path / "nope")

    def test_truncated_weights(self, tiny_model, tmp_path):
        broken = shutil.copytree(tiny_model, tmp_path / "broken")
        data = (broken / "model.safetensors").read_bytes()
        (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            Classifier.from_pretrained(broken)

    def test_missing_weights(self, tiny_model, tmp_path):
        broken = shutil.copytree(tiny_model, tmp_path / "broken")
        (broken / "model.safetensors").unlink()
        with pytest.raises(CheckpointError, match="model.safetensors is missing"):
            Classifier.from_pretrained(broken)

    def test_pickle_needs_opt_in(self, tiny_model, tmp_path):
        import torch
        from safetensors.torch import load_file

        broken = shutil.copytree(tiny_model, tmp_path / "bin")
        torch.save(load_file(str(broken / "model.safetensors")), broken / "pytorch_model.bin")
        (broken / "model.safetensors").unlink()
        with pytest.raises(CheckpointError, match="allow_pickle"):
            Classifier.from_pretrained(broken)
        assert Classifier.from_pretrained(broken, allow_pickle=True).classify([SHORT], LABELS)[0].status == "ok"

    def test_unknown_architecture(self, tiny_model, tmp_path):
        broken = shutil.copytree(tiny_model, tmp_path / "arch")
        config = json.loads((broken / "config.json").read_text())
        config["architecture_type"] = "quantum-encoder"
        (broken / "config.json").write_text(json.dumps(config))
        with pytest.raises(CheckpointError, match="unknown architecture_type 'quantum-encoder'"):
            Classifier.from_pretrained(broken)

    def test_unsupported_architecture(self, tiny_model, tmp_path):
        broken = shutil.copytree(tiny_model, tmp_path / "encdec")
        config = json.loads((broken / "config.json").read_text())
        config["architecture_type"] = "encoder-decoder"
        (broken / "config.json").write_text(json.dumps(config))
        with pytest.raises(CheckpointError, match="'encoder-decoder' is not supported yet"):
            Classifier.from_pretrained(broken)

    def test_tokenizer_without_label_tokens(self, tiny_model, tmp_path):
        broken = shutil.copytree(tiny_model, tmp_path / "tok")
        tok = json.loads((broken / "tokenizer.json").read_text())
        tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] != "<<LABEL>>"]
        (broken / "tokenizer.json").write_text(json.dumps(tok))
        cfg = json.loads((broken / "tokenizer_config.json").read_text())
        cfg.pop("added_tokens_decoder", None)
        cfg["extra_special_tokens"] = []
        cfg.pop("additional_special_tokens", None)
        (broken / "tokenizer_config.json").write_text(json.dumps(cfg))
        with pytest.raises(CheckpointError, match="lacks the <<LABEL>> token"):
            Classifier.from_pretrained(broken)

    def test_offline_hub_id_says_how_to_fix(self, monkeypatch):
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(CheckpointError, match="point --model at the local folder"):
            Classifier.from_pretrained("knowledgator/gliclass-edge-v3.0")


def test_cuda_request_without_gpu_falls_back_to_cpu(tiny_model, caplog, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with caplog.at_level("WARNING"):
        clf = Classifier.from_pretrained(tiny_model, device="auto")
    assert clf.device.type == "cpu"
    assert "falling back to CPU" in caplog.text


def test_tiny_checkpoints_are_the_same_in_every_process():
    """The tiny models every test runs on: same vocabulary and weights in each process (the ``tokenizers``
    trainers broke ties differently per process, so tiny models, and the tests' thresholds, varied run to run)."""
    import subprocess
    import sys

    probe = (
        "import hashlib, json, torch\n"
        "from gliclass_dist.model.tiny import build_tiny_model\n"
        "for backbone in ('bert', 'deberta-v2'):\n"
        "    model, tok = build_tiny_model(backbone)\n"
        "    vocab = json.dumps(sorted(tok.get_vocab().items()))\n"
        "    weights = sum(float(p.double().sum()) for p in model.parameters())\n"
        "    print(backbone, hashlib.sha256(vocab.encode()).hexdigest(), f'{weights:.10e}')\n"
    )
    runs = [subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True).stdout
            for _ in range(2)]
    assert runs[0].count("\n") == 2 and runs[0] == runs[1]
