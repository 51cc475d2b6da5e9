"""Decoder backbones: a uni-encoder over a Qwen2-shaped decoder, and ``decoder-kv`` over a Qwen3-shaped one.

Without ``llm2vec`` installed (it is not a dependency) the reference reads a Qwen2 backbone with
``AutoModel`` (causal attention), as we do; with ``llm2vec`` it would swap in a bidirectional model.
The reference runs one text at a time; ours runs all texts in one padded batch (right padding, so a
causal backbone's states at the real tokens do not see the padding).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

gliclass = pytest.importorskip("gliclass")

from parity_helpers import LABELS as LABELS_5  # noqa: E402
from parity_helpers import TEXTS, TOLERANCE, max_error, reference_config, spread  # noqa: E402
from transformers import Qwen2Config, Qwen3Config  # noqa: E402

from gliclass_dist.engine import Classifier  # noqa: E402
from gliclass_dist.model.loading import CheckpointError  # noqa: E402
from gliclass_dist.model.tiny import train_tokenizer  # noqa: E402

LABELS_40 = [f"topic {i} news" for i in range(40)]
PROMPT = "Classify the topic:"


def reference_pipeline(path: Path):
    from transformers import AutoTokenizer

    model = gliclass.GLiClassModel.from_pretrained(str(path)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return gliclass.ZeroShotClassificationPipeline(model, tokenizer, max_length=512, device="cpu", progress_bar=False)


def reference_scores(pipe, texts, labels, **call) -> list[dict[str, float]]:
    return [{p["label"]: p["score"] for p in pipe(text, labels, threshold=0.0, **call)[0]} for text in texts]


def tiny_decoder_config(config_class: type, vocab_size: int, hidden_size: int, **extra) -> dict:
    """A 2-layer decoder backbone config (2 query heads, 1 key/value head), as a dict for GLiClass."""
    return config_class(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        pad_token_id=0,
        **extra,
    ).to_dict()


def build_reference_qwen2_uni_encoder(path: Path, **options) -> Path:
    tok = train_tokenizer("wordpiece")
    config = reference_config(tok, tiny_decoder_config(Qwen2Config, len(tok), 32), "tiny-qwen2", **options)
    torch.manual_seed(0)
    model = gliclass.GLiClassModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name.lower():
                p.add_(torch.randn_like(p) * 0.1)
        for p in (*model.model.text_projector.linear_2.parameters(), *model.model.classes_projector.linear_2.parameters()):
            p.mul_(0.2)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


@pytest.mark.parametrize("prompt_first", [False, True])
@pytest.mark.parametrize("pooling", ["last", "avg"])
def test_uni_encoder_over_qwen2_equals_reference(tmp_path, prompt_first, pooling):
    path = build_reference_qwen2_uni_encoder(tmp_path / "ref", prompt_first=prompt_first, pooling_strategy=pooling)
    pipe = reference_pipeline(path)
    clf = Classifier.from_pretrained(path, device="cpu", token_budget=512)
    for labels, call in [(LABELS_5, {}), (LABELS_5, {"prompt": PROMPT}), (LABELS_40, {})]:
        expected = reference_scores(pipe, TEXTS, labels, **call)
        preds = clf.classify(TEXTS, labels, threshold=0.0, **call)
        assert all(p.status == "ok" for p in preds)
        assert spread(expected) > 1e-4, "degenerate model: scores do not vary"
        assert max_error([p.scores for p in preds], expected) < TOLERANCE, (len(labels), call)


def build_reference_decoder_kv(path: Path, **options) -> Path:
    """A tiny Qwen3 decoder-kv built and saved by the reference (hidden 64: its scorer encoder has hidden // 64 heads)."""
    tok = train_tokenizer("wordpiece")
    config = reference_config(
        tok,
        tiny_decoder_config(Qwen3Config, len(tok), 64, head_dim=32),
        "tiny-qwen3",
        sep_token_index=tok.get_vocab()["<<SEP>>"],
        architecture_type="decoder-kv",
        scorer_mlp_hidden_size=64,
        **options,
    )
    torch.manual_seed(0)
    gliclass.GLiClassModel(config).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def reference_decoder_kv_scores(pipe, texts, labels, **call) -> list[dict[str, float]]:
    """The reference's decoder-kv scores, one text at a time, from its own input builder, backbone and scorer.

    Its pipeline cannot run on this transformers version: its output class receives the renamed
    ``cache`` keyword and raises TypeError. Everything before that line is the reference's own code.
    """
    net = pipe.pipe.model.model
    out = []
    for text in texts:
        inputs = pipe.pipe.prepare_inputs([text], labels, same_labels=True, **call)
        with torch.no_grad():
            hidden = net.decoder_model(**inputs, return_dict=True).last_hidden_state
            section = net._extract_label_section(hidden, inputs["input_ids"], inputs["attention_mask"])
            out.append(dict(zip(labels, torch.sigmoid(net.scorer(*section)[0]).tolist())))
    return out


def test_decoder_kv_equals_reference(tmp_path):
    path = build_reference_decoder_kv(tmp_path / "ref")
    pipe = reference_pipeline(path)
    clf = Classifier.from_pretrained(path, device="cpu", token_budget=512)
    examples = [{"text": "Rates went up", "labels": ["business"]}]
    for labels, call in [(LABELS_5, {}), (LABELS_5, {"prompt": PROMPT, "examples": examples}), (LABELS_40, {"prompt": PROMPT})]:
        expected = reference_decoder_kv_scores(pipe, TEXTS, labels, **call)
        preds = clf.classify(TEXTS, labels, threshold=0.0, **call)
        assert all(p.status == "ok" for p in preds)
        assert spread(expected) > 1e-4, "degenerate model: scores do not vary"
        assert max_error([p.scores for p in preds], expected) < TOLERANCE, (len(labels), call)


def test_decoder_kv_int8_quantizes_the_decoder(tmp_path):
    path = build_reference_decoder_kv(tmp_path / "ref")
    int8 = Classifier.from_pretrained(path, device="cpu", backend="int8")
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in int8.model.model.decoder_model.modules())
    plain = Classifier.from_pretrained(path, device="cpu")
    got, want = int8.classify(TEXTS, LABELS_5), plain.classify(TEXTS, LABELS_5)
    assert [p.status for p in got] == ["ok"] * len(TEXTS)
    assert max(abs(g.scores[k] - w.scores[k]) for g, w in zip(got, want) for k in w.scores) < 0.05


def test_decoder_kv_recurrence_fails_at_load_naming_it(tmp_path):
    path = build_reference_decoder_kv(tmp_path / "ref")
    config = json.loads((path / "config.json").read_text())
    config["recurrent_steps"] = 3
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="recurrent_steps"):
        Classifier.from_pretrained(path, device="cpu")
