"""Bi-encoders (``bi-encoder``, ``bi-encoder-fused``): parity with the reference, the label cache, the batch path.

Reference checkpoints are built and saved by the `gliclass` package (without resizing: its
``resize_token_embeddings`` is not implemented for bi-encoders, so the tokenizer is trained with the
markers and the backbones are sized to it). The reference runs one text at a time.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

gliclass = pytest.importorskip("gliclass")

from parity_helpers import LABELS as LABELS_5  # noqa: E402
from parity_helpers import TEXTS, TOLERANCE, max_error, ours, random_reference_model, reference_config, spread  # noqa: E402

from gliclass_dist.encode import EncodedBatch, encode_arrow  # noqa: E402
from gliclass_dist.engine import Classifier  # noqa: E402
from gliclass_dist.labels import LabelSpec  # noqa: E402
from gliclass_dist.model.loading import CheckpointError  # noqa: E402
from gliclass_dist.model.tiny import CORPUS, tiny_encoder_config, train_tokenizer  # noqa: E402
from gliclass_dist.model.tiny_bi import build_tiny_bi_encoder_checkpoint  # noqa: E402

WORDS = sorted({w.strip(".,").lower() for line in CORPUS for w in line.split() if len(w) > 3})
LABELS_40 = [f"{a} {b}" for a, b in zip(WORDS[:40], WORDS[40:80])]
PROMPT = "Classify the topic:"


def build_reference_bi_encoder(path: Path, architecture: str, **options) -> Path:
    """A random-weight bi-encoder built and saved by the reference; the label tokenizer is a separate folder."""
    text_tok = train_tokenizer("wordpiece")
    label_tok = train_tokenizer("unigram", vocab_size=300)  # a different tokenizer: proves labels use their own
    label_dir = path.parent / f"{path.name}-label-model"
    label_tok.save_pretrained(str(label_dir))
    config = reference_config(
        text_tok,
        tiny_encoder_config("bert", len(text_tok)),
        "tiny-encoder",
        label_model_config=tiny_encoder_config("bert", len(label_tok), hidden=24),
        label_model_name=str(label_dir),
        architecture_type=architecture,
        **options,
    )
    model = random_reference_model(config, text_tok)
    model.save_pretrained(str(path))
    text_tok.save_pretrained(str(path))
    return path


def reference_pipeline(path: Path):
    from transformers import AutoTokenizer

    model = gliclass.GLiClassModel.from_pretrained(str(path)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return gliclass.ZeroShotClassificationPipeline(model, tokenizer, max_length=512, device="cpu", progress_bar=False)


def reference_scores(path_or_pipe, texts, labels, **call) -> list[dict[str, float]]:
    """The reference's scores, one text at a time (a pipeline or a checkpoint folder to build one from)."""
    pipe = reference_pipeline(path_or_pipe) if isinstance(path_or_pipe, Path) else path_or_pipe
    return [{p["label"]: p["score"] for p in pipe(text, labels, threshold=0.0, **call)[0]} for text in texts]


@pytest.mark.parametrize("architecture", ["bi-encoder", "bi-encoder-fused"])
@pytest.mark.parametrize("prompt_first", [False, True])
@pytest.mark.parametrize("scorer", ["simple", "mlp", "weighted-dot"])
def test_reference_checkpoint_scores_equal(tmp_path, architecture, prompt_first, scorer):
    path = build_reference_bi_encoder(tmp_path / "ref", architecture, prompt_first=prompt_first, scorer_type=scorer)
    pipe = reference_pipeline(path)
    for labels, call in [(LABELS_5, {}), (LABELS_5, {"prompt": PROMPT}), (LABELS_40, {}), (LABELS_40, {"prompt": PROMPT})]:
        expected = reference_scores(pipe, TEXTS, labels, **call)
        got = ours(path, TEXTS, labels, **call)
        assert spread(expected) > 1e-3, "degenerate model: scores do not vary"
        assert max_error(got, expected) < TOLERANCE, (len(labels), call)


@pytest.mark.parametrize("options", [{"normalize_features": True}, {"normalize_features": True, "prompt_first": True, "scorer_type": "mlp"}])
def test_other_options_equal(tmp_path, options):
    path = build_reference_bi_encoder(tmp_path / "ref", "bi-encoder-fused", **options)
    expected = reference_scores(path, TEXTS, LABELS_5, prompt=PROMPT)
    got = ours(path, TEXTS, LABELS_5, prompt=PROMPT)
    assert max_error(got, expected) < TOLERANCE


def test_avg_pooling_label_vectors_are_unpadded(tmp_path):
    """The reference pads a row's labels to the longest and pools over the padding; ours pools each label alone.

    So ours equals the reference scoring each label on its own (no padding), and differs from the
    reference scoring labels of different lengths together: the documented difference.
    """
    path = build_reference_bi_encoder(tmp_path / "ref", "bi-encoder", pooling_strategy="avg")
    got = ours(path, TEXTS, LABELS_5)
    pipe = reference_pipeline(path)
    alone = [{k: v for label in LABELS_5 for k, v in reference_scores(pipe, [text], [label])[0].items()} for text in TEXTS]
    assert max_error(got, alone) < TOLERANCE
    assert max_error(got, reference_scores(pipe, TEXTS, LABELS_5)) > 1e-4


def test_fused_examples_equal_reference(tmp_path):
    path = build_reference_bi_encoder(tmp_path / "ref", "bi-encoder-fused", prompt_first=True)
    examples = [{"text": "Rates went up", "labels": ["business"]}, {"text": "Goal!", "labels": ["sport"]}]
    expected = reference_scores(path, TEXTS, LABELS_5, examples=examples, prompt=PROMPT)
    got = ours(path, TEXTS, LABELS_5, examples=examples, prompt=PROMPT)
    assert max_error(got, expected) < TOLERANCE


def test_long_text_truncated_as_reference(tmp_path):
    path = build_reference_bi_encoder(tmp_path / "ref", "bi-encoder")
    long_text = " ".join(CORPUS * 6)
    clf = Classifier.from_pretrained(path, device="cpu")
    pred = clf.classify([long_text], LABELS_5, threshold=0.0)[0]
    assert pred.status == "truncated"
    assert max_error([pred.scores], reference_scores(path, [long_text], LABELS_5)) < TOLERANCE


@pytest.fixture(scope="module")
def bi_model(tmp_path_factory) -> Path:
    return build_tiny_bi_encoder_checkpoint(tmp_path_factory.mktemp("bi") / "ckpt", "bi-encoder")


@pytest.fixture(scope="module")
def fused_model(tmp_path_factory) -> Path:
    return build_tiny_bi_encoder_checkpoint(tmp_path_factory.mktemp("fused") / "ckpt", "bi-encoder-fused")


def test_fixed_label_set_is_encoded_once_per_worker(bi_model):
    clf = Classifier.from_pretrained(bi_model, device="cpu")
    labels = [f"label number {i}" for i in range(128)]
    first = clf.classify(TEXTS, labels)
    cache = clf.model.label_cache
    assert len(cache) == 128 and cache.misses == 128
    passes = clf.stats["label_passes"]
    for _ in range(3):
        again = clf.classify(TEXTS[::-1], labels)
        assert [p.scores for p in again] == [p.scores for p in first[::-1]]
    assert cache.misses == 128 and clf.stats["label_passes"] == passes  # no label encoded again


def test_label_cache_is_bounded_lru(bi_model):
    clf = Classifier.from_pretrained(bi_model, device="cpu")
    cache = clf.model.label_cache
    cache.maxsize = 3
    clf.classify(TEXTS[:1], ["a", "b", "c"])
    clf.classify(TEXTS[:1], ["a"])  # touch "a": "b" is now the oldest
    clf.classify(TEXTS[:1], ["d"])
    assert sorted(label for _, label in cache.entries) == ["a", "c", "d"]
    # an evicted label is encoded again, to the same vector
    alone = clf.classify(TEXTS[:1], ["b"])[0].scores["b"]
    assert abs(alone - clf.classify(TEXTS[:1], ["b", "a"])[0].scores["b"]) < 1e-6


@pytest.mark.parametrize("which", ["bi", "fused"])
def test_row_scores_do_not_depend_on_batch_mates(bi_model, fused_model, which):
    path = bi_model if which == "bi" else fused_model
    clf = Classifier.from_pretrained(path, device="cpu", token_budget=64)
    row_labels = [LABELS_5, LABELS_5[:2], LABELS_40[:7], ["sport", "business"]]
    together = clf.classify(TEXTS, row_labels, threshold=0.0)
    for text, labels, pred in zip(TEXTS, row_labels, together):
        alone = Classifier.from_pretrained(path, device="cpu").classify([text], labels, threshold=0.0)[0]
        assert list(pred.scores) == labels
        assert max(abs(pred.scores[k] - alone.scores[k]) for k in labels) < 1e-5


def test_arrow_form_crosses_stages_unchanged(fused_model):
    """Ray's tokenize stage hands ``EncodedBatch.to_arrow`` to the model stage: the same results as in one step."""
    clf = Classifier.from_pretrained(fused_model, device="cpu")
    table = pa.table({"id": [1, 2, 3, 4, 5], "text": [*TEXTS, None]})
    spec = LabelSpec(labels=LABELS_5)
    encoded = encode_arrow(table, clf.builder, spec, keep=["id"])
    staged = clf.score_arrow(EncodedBatch.from_arrow(encoded.to_arrow()), spec)
    direct = clf.classify_arrow(table, spec, keep=["id"])
    assert staged.to_pylist() == direct.to_pylist()
    assert staged.column("status").to_pylist() == ["ok"] * 4 + ["empty_text"]


def test_fused_many_labels_split_into_passes(fused_model):
    clf = Classifier.from_pretrained(fused_model, device="cpu", max_length=48)
    labels = [f"label {i}" for i in range(60)]
    pred = clf.classify([TEXTS[2]], labels, threshold=0.0)[0]
    assert list(pred.scores) == labels and pred.status in ("ok", "truncated")
    row = clf.builder.encode([TEXTS[2]], [labels])[0]
    assert len(row.chunks) > 1 and all(len(chunk) <= 48 for chunk in row.chunks)


def test_examples_refused_by_plain_bi_encoder(bi_model):
    clf = Classifier.from_pretrained(bi_model, device="cpu")
    with pytest.raises(ValueError, match="does not read few-shot examples"):
        clf.classify(TEXTS, LABELS_5, examples=[{"text": "x", "labels": ["sport"]}])


def test_label_longer_than_label_window_is_a_row_status(bi_model):
    clf = Classifier.from_pretrained(bi_model, device="cpu")
    preds = clf.classify(TEXTS[:2], [["sport"], ["word " * 600]])
    assert preds[0].status == "ok"
    assert preds[1].status.startswith("error:") and "label encoder" in preds[1].status


def test_checkpoint_round_trip_with_label_tokenizer_inside(bi_model, tmp_path):
    clf = Classifier.from_pretrained(bi_model, device="cpu")
    assert (bi_model / "label_tokenizer").is_dir()
    config = json.loads((bi_model / "config.json").read_text())
    assert config["architecture_type"] == "bi-encoder" and config["label_model_config"]["hidden_size"] == 24
    assert clf.classify(TEXTS[:1], LABELS_5)[0].status == "ok"


def test_bad_bi_encoder_configs_fail_at_load_naming_the_field(bi_model, tmp_path):
    for field, value, message in [
        ("label_model_config", None, "needs label_model_config"),
        ("scorer_type", "cross-attn", "scorer_type 'cross-attn'"),
    ]:
        broken = shutil.copytree(bi_model, tmp_path / field)
        config = json.loads((broken / "config.json").read_text())
        config[field] = value
        (broken / "config.json").write_text(json.dumps(config))
        with pytest.raises(CheckpointError, match=message):
            Classifier.from_pretrained(broken, device="cpu")
    no_tokenizer = shutil.copytree(bi_model, tmp_path / "no-label-tokenizer")
    shutil.rmtree(no_tokenizer / "label_tokenizer")
    with pytest.raises(CheckpointError, match="label tokenizer"):
        Classifier.from_pretrained(no_tokenizer, device="cpu")


def test_int8_backend_quantizes_both_towers_and_onnx_is_refused(bi_model):
    """``backend="int8"`` reaches the text and the label encoder of a bi-encoder (scores stay close to fp32);
    ``onnx-int8`` (uni-encoders only) is refused at load, naming the architecture."""
    plain = Classifier.from_pretrained(bi_model, device="cpu")
    int8 = Classifier.from_pretrained(bi_model, device="cpu", backend="int8")
    network = int8.model.model
    for tower in (network.encoder_model, network.label_encoder):
        assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in tower.modules())
    got = [p.scores for p in int8.classify(TEXTS, LABELS_5)]
    want = [p.scores for p in plain.classify(TEXTS, LABELS_5)]
    assert got != want  # quantized: not bit-equal
    assert max(abs(g[k] - w[k]) for g, w in zip(got, want) for k in w) < 0.05
    with pytest.raises(ValueError, match="architecture_type='bi-encoder'.*use backend='int8'"):
        Classifier.from_pretrained(bi_model, device="cpu", backend="onnx-int8")
