"""Shared helpers of the parity tests: reference checkpoints built with the reference package, and scores.

The reference (the ``gliclass`` package) is run one text at a time (no padding: its pooling ignores the
mask); ours runs all texts in one call, in mixed-length batches.
"""

from __future__ import annotations

from pathlib import Path

import gliclass
import numpy as np
import torch

from gliclass_dist.engine import Classifier
from gliclass_dist.model.tiny import tiny_encoder_config, train_tokenizer

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


def reference_config(tokenizer, encoder_config: dict, encoder_model: str, **options) -> gliclass.GLiClassModelConfig:
    """The reference's config over ``encoder_config``, with the marker tokens of one of our tiny tokenizers
    (``<<LABEL>>``, ``<<SEP>>``, ``<<EXAMPLE>>``) and a wide initialisation, so that random scores vary."""
    vocab = tokenizer.get_vocab()
    return gliclass.GLiClassModelConfig(
        encoder_config=encoder_config,
        class_token_index=vocab["<<LABEL>>"],
        text_token_index=vocab["<<SEP>>"],
        example_token_index=vocab["<<EXAMPLE>>"],
        vocab_size=len(tokenizer),
        initializer_range=0.2,
        encoder_model=encoder_model,
        **options,
    )


def build_reference_checkpoint(path: Path, backbone: str, **options) -> Path:
    """A random-weight model built and saved by the reference package."""
    tok = _tokenizer(backbone)
    config = reference_config(tok, tiny_encoder_config(backbone, len(tok)), "tiny-encoder", **options)
    model = random_reference_model(config, tok, follow_intended_math)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


PROBE_LABELS = [*LABELS, *(f"{w} topic" for w in "alpha beta gamma delta kappa sigma omega zeta".split()),
                *(f"label {i}" for i in range(27))]  # 40 labels: the most any parity test scores at once


def _probe_logits(model, probes) -> list[torch.Tensor]:
    return [model(**inputs, max_num_classes=n).logits for inputs, n in probes]


def random_reference_model(config, tokenizer, wrap=lambda model: model, limit: float = 4.0):
    """A random-weight reference ``GLiClassModel`` whose scores vary and are not saturated on the tests' inputs.

    Every parameter gets extra spread, then the projectors' output layers (and an MLP scorer's last layer)
    shrink until every logit of ``TEXTS`` against 5 and 40 labels, with and without a prompt, is within
    +-``limit``. A draw whose scores still do not vary (a scorer or calibrator that maps everything to one
    value) is redrawn with the next seed, so that the comparisons mean something.
    """
    for seed in range(8):
        torch.manual_seed(seed)
        model = wrap(gliclass.GLiClassModel(config)).eval()
        pipe = gliclass.ZeroShotClassificationPipeline(model, tokenizer, device="cpu", progress_bar=False).pipe
        probes = [(pipe.prepare_inputs(TEXTS, labels, same_labels=True, prompt=prompt), len(labels))
                  for labels in (LABELS, PROBE_LABELS) for prompt in (None, "Classify the topic:")]

        # the projectors' output layers and, for the MLP-style scorers, the scorer's last layer (its logit)
        scorer_layers = [m for m in model.model.scorer.modules() if isinstance(m, torch.nn.Linear)]
        shrinkable = [*model.model.text_projector.linear_2.parameters(),
                      *model.model.classes_projector.linear_2.parameters(),
                      *(scorer_layers[-1].parameters() if scorer_layers and scorer_layers[-1].out_features == 1 else ())]
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "layernorm" not in name.lower():
                    p.add_(torch.randn_like(p) * 0.1)
            for _ in range(40):
                if max(float(x.abs().max()) for x in _probe_logits(model, probes)) < limit:
                    break
                for p in shrinkable:
                    p.mul_(0.6)
            logits = _probe_logits(model, probes)
        saturated = max(float(x.abs().max()) for x in logits) >= 2 * limit
        scores = [torch.sigmoid(x) for x in logits]
        if not saturated and min(float(x.max() - x.min()) for x in scores) > 1e-3:
            return model
    raise AssertionError(f"no random draw of {config.architecture_type} / {config.scorer_type} gives varied scores")


def follow_intended_math(model):
    """Run the reference where its forward fails on a config, with the smallest change to its own code.

    ``encoder_layer_id`` without ``layer_wise``/``squeeze_layers``: it reads ``hidden_states`` without asking
    the encoder for them; a pre-hook asks. ``squeeze_layers``: its layer attention, sized for N layers, gets
    all N + 1 hidden states (embeddings first); a wrapper hands it the N layer outputs. Other configs: unchanged.
    """
    inner = model.model
    config = model.config
    if config.encoder_layer_id != -1 and not (config.squeeze_layers or config.layer_wise):
        inner.encoder_model.register_forward_pre_hook(
            lambda _module, args, kwargs: (
                args,
                {**kwargs, "output_hidden_states": True, "return_dict": True},
            ),
            with_kwargs=True,
        )
    if config.squeeze_layers:
        attention = inner.layer_wise_attention
        original = attention.forward
        attention.forward = lambda hidden_states: original(hidden_states[1:])
    return model


def reference_pipeline(path: Path):
    from transformers import AutoTokenizer

    model = follow_intended_math(gliclass.GLiClassModel.from_pretrained(str(path)).eval())
    tok = AutoTokenizer.from_pretrained(str(path))
    return gliclass.ZeroShotClassificationPipeline(
        model, tok, classification_type="multi-label", device="cpu", progress_bar=False
    )


def reference_scores(
    path: Path, texts, labels, *, padded_batch: bool = False, **call
) -> list[dict[str, float]]:
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
