"""Parity with the reference implementation (the `gliclass` package), both directions.

The reference's own batched scores move with batch composition (it pools without the mask), so
it is run one text at a time; ours runs all texts in one call, in mixed-length batches. Where even
one text at a time the reference's mean is not over the text's tokens (``extract_text_features``
with ``avg``, the demo model's settings), ours equals the reference's forward with that mean
masked, and the difference from the reference as shipped is pinned by a test.
"""

from __future__ import annotations

import itertools

import pytest

gliclass = pytest.importorskip("gliclass")

from parity_helpers import (  # noqa: E402
    LABELS,
    TEXTS,
    TOLERANCE,
    build_reference_checkpoint,
    max_error,
    ours,
    reference_scores,
    reference_scores_masked_mean,
    spread,
)

from gliclass_dist.train.init_model import SIMILARITY_DEFAULTS  # noqa: E402

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
