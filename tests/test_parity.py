"""Parity with the reference implementation (the `gliclass` package), both directions.

The reference's own batched scores move with batch composition (it pools without the mask), so
it is run one text at a time; ours runs all texts in one call, in mixed-length batches. Where even
one text at a time the reference's mean is not over the text's tokens (``extract_text_features``
with ``avg``, the demo model's settings), ours equals the reference's forward with that mean
masked, and the difference from the reference as shipped is pinned by a test.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

gliclass = pytest.importorskip("gliclass")

from gliclass_dist.engine import Classifier  # noqa: E402
from gliclass_dist.model.tiny import tiny_encoder_config, train_tokenizer  # noqa: E402
from gliclass_dist.train.init_model import SIMILARITY_DEFAULTS  # noqa: E402

TEXTS = [
    "The central bank raised interest rates again.",
    "The football club won the league after a dramatic final.",
    "A new smartphone with a faster chip was released today, and reviewers praised the camera and the battery.",
    "Refund missing",
]
LABELS = ["business", "sport", "technology news", "politics", "billing complaint"]
TOLERANCE = 1e-5

_TOKENIZERS: dict[str, object] = {}


def _tokenizer(backbone: str):
    if backbone not in _TOKENIZERS:
        _TOKENIZERS[backbone] = train_tokenizer("unigram" if backbone == "deberta-v2" else "wordpiece")
    return _TOKENIZERS[backbone]


def build_reference_checkpoint(path: Path, backbone: str, **options) -> Path:
    """A random-weight model built and saved by the reference package."""
    tok = _tokenizer(backbone)
    vocab = tok.get_vocab()
    config = gliclass.GLiClassModelConfig(
        encoder_config=tiny_encoder_config(backbone, len(tok)),
        class_token_index=vocab["<<LABEL>>"],
        text_token_index=vocab["<<SEP>>"],
        example_token_index=vocab["<<EXAMPLE>>"],
        vocab_size=len(tok),
        initializer_range=0.2,
        encoder_model="tiny-encoder",
        **options,
    )
    torch.manual_seed(0)
    model = gliclass.GLiClassModel(config)
    # give every parameter a spread so that scorers are far from constant
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" not in name and "layernorm" not in name.lower():
                p.add_(torch.randn_like(p) * 0.1)
        # keep logits in a range where probabilities are not saturated, so the comparison means something
        probe = tok(["The bank raised rates<<LABEL>>business<<LABEL>>sport<<SEP>>"], return_tensors="pt")
        model.eval()
        for _ in range(30):
            logits = model(**probe, max_num_classes=2).logits
            if logits.abs().max() < 4:
                break
            for p in model.model.classes_projector.linear_2.parameters():
                p.mul_(0.6)
            for p in model.model.text_projector.linear_2.parameters():
                p.mul_(0.6)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def reference_pipeline(path: Path):
    from transformers import AutoTokenizer

    model = gliclass.GLiClassModel.from_pretrained(str(path)).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    return gliclass.ZeroShotClassificationPipeline(model, tok, classification_type="multi-label", device="cpu", progress_bar=False)


def reference_scores(path: Path, texts, labels, *, padded_batch: bool = False, **call) -> list[dict[str, float]]:
    """The reference's scores, one text at a time (no padding), or all texts in one padded batch."""
    pipe = reference_pipeline(path)
    if padded_batch:
        batches = pipe(list(texts), labels, threshold=0.0, batch_size=len(texts), **call)
    else:  # one at a time: no padding in the reference
        batches = [pipe(text, labels, threshold=0.0, **call)[0] for text in texts]
    return [{p["label"]: p["score"] for p in preds} for preds in batches]


def reference_scores_masked_mean(path: Path, texts, labels) -> list[dict[str, float]]:
    """The reference's own forward, one text at a time, with its ``avg`` text pooling made a masked mean.

    Even on one unpadded text the reference's mean is not over the text's tokens when
    ``extract_text_features`` is on: it gathers the tokens from ``<<SEP>>`` on into a zero-filled
    tensor as long as the whole sequence and divides by that length. A forward hook on its pooler
    rescales sum / length to sum / count; nothing else of the reference changes.
    """
    pipe = reference_pipeline(path)
    model = pipe.pipe.model
    assert model.config.pooling_strategy == "avg"
    out = []
    for text in texts:
        ids = pipe.pipe.prepare_inputs([text], labels, same_labels=True)["input_ids"][0]
        length = ids.shape[-1]
        count = length
        if model.config.extract_text_features:
            count = length - int((ids == model.config.text_token_index).int().argmax())
        scale = length / count
        handle = model.model.pooler.register_forward_hook(lambda _m, _i, pooled, scale=scale: pooled * scale)
        try:
            preds = pipe(text, labels, threshold=0.0)[0]
        finally:
            handle.remove()
        out.append({p["label"]: p["score"] for p in preds})
    return out


def ours(path: Path, texts, labels, **call) -> list[dict[str, float]]:
    clf = Classifier.from_pretrained(path, device="cpu", token_budget=256)
    preds = clf.classify(texts, labels, threshold=0.0, **call)
    assert all(p.status == "ok" for p in preds), [p.status for p in preds]
    return [p.scores for p in preds]


def max_error(a: list[dict[str, float]], b: list[dict[str, float]]) -> float:
    assert [list(x) for x in a] == [list(x) for x in b]
    return max(abs(x[k] - y[k]) for x, y in zip(a, b) for k in x)


def spread(scores: list[dict[str, float]]) -> float:
    values = np.array([v for s in scores for v in s.values()])
    return float(values.max() - values.min())


GRID = list(
    itertools.product(["bert", "deberta-v2"], [False, True], ["simple", "mlp", "weighted-dot"], ["first", "avg"], [True, False])
) + list(  # the other poolings whose reference is well defined one text at a time; scorer and label embedding vary above
    itertools.product(["bert", "deberta-v2"], [False, True], ["mlp"], ["last", "abs_max"], [True])
)


@pytest.mark.parametrize("backbone,prompt_first,scorer,pooling,embed_class", GRID)
def test_reference_checkpoint_scores_equal(tmp_path, backbone, prompt_first, scorer, pooling, embed_class):
    path = build_reference_checkpoint(
        tmp_path / "ref",
        backbone,
        prompt_first=prompt_first,
        scorer_type=scorer,
        pooling_strategy=pooling,
        embed_class_token=embed_class,
    )
    expected = reference_scores(path, TEXTS, LABELS)
    got = ours(path, TEXTS, LABELS)
    assert spread(expected) > 1e-3, "degenerate model: scores do not vary"
    assert max_error(got, expected) < TOLERANCE


def test_demo_settings_differ_from_the_reference_only_by_its_unmasked_mean(tmp_path):
    """The demo model's settings (``extract_text_features`` + ``avg``): where we deliberately differ.

    Ours pools the text with the attention mask, so a row's scores do not depend on its batch-mates.
    The reference averages over padding and, with ``extract_text_features``, over the whole sequence
    length, so its scores move with the batch. Ours equals the reference's forward with that mean
    masked, and differs from the reference as it runs a padded batch.
    """
    path = build_reference_checkpoint(tmp_path / "ref", "bert", **SIMILARITY_DEFAULTS)
    got = ours(path, TEXTS, LABELS)  # one call: a padded, mixed-length batch
    masked = reference_scores_masked_mean(path, TEXTS, LABELS)
    assert spread(masked) > 1e-3, "degenerate model: scores do not vary"
    assert max_error(got, masked) < TOLERANCE
    padded = reference_scores(path, TEXTS, LABELS, padded_batch=True)
    alone = reference_scores(path, TEXTS, LABELS)
    assert max_error(got, padded) > 1e-2  # the documented difference, in a padded batch
    assert max_error(got, alone) > 1e-2  # and one text at a time (its mean divides by the sequence length)
    assert max_error(padded, alone) > 1e-2  # the reference's own scores move with the batch


@pytest.mark.parametrize(
    "options",
    [
        {"class_token_pooling": "average"},
        {"class_token_pooling": "average", "embed_class_token": False, "extract_text_features": True},
        {"use_lstm": True, "pooling_strategy": "avg"},
        {"normalize_features": True, "pooling_strategy": "max"},
        {"use_segment_embeddings": True, "pooling_strategy": "rms"},
        {"pooling_strategy": "abs_avg", "prompt_first": True},
        {"pooling_strategy": "sum"},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_other_options_equal(tmp_path, options):
    path = build_reference_checkpoint(tmp_path / "ref", "bert", **options)
    expected = reference_scores(path, TEXTS, LABELS)
    got = ours(path, TEXTS, LABELS)
    assert max_error(got, expected) < TOLERANCE


@pytest.mark.parametrize("prompt_first", [False, True])
def test_prompt_and_examples_equal(tmp_path, prompt_first):
    path = build_reference_checkpoint(tmp_path / "ref", "deberta-v2", prompt_first=prompt_first, pooling_strategy="avg")
    examples = [{"text": "Rates went up", "labels": ["business"]}, {"text": "Goal!", "labels": ["sport"]}]
    call = {"prompt": "Classify the topic:", "examples": examples}
    expected = reference_scores(path, TEXTS, LABELS, **call)
    got = ours(path, TEXTS, LABELS, **call)
    assert max_error(got, expected) < TOLERANCE


@pytest.mark.parametrize("backbone", ["bert", "deberta-v2"])
def test_our_checkpoint_loads_in_reference(tmp_path, backbone):
    from gliclass_dist.model.tiny import build_tiny_checkpoint

    path = build_tiny_checkpoint(tmp_path / "ours", backbone=backbone, scorer_type="mlp", pooling_strategy="avg")
    expected = reference_scores(path, TEXTS, LABELS)
    got = ours(path, TEXTS, LABELS)
    assert spread(expected) > 1e-4
    assert max_error(got, expected) < TOLERANCE
