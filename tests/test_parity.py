"""Parity with the reference implementation (the `gliclass` package), both directions, over the family.

The reference's own batched scores move with batch composition (it pools without the mask), so
it is run one text at a time; ours runs all texts in one call, in mixed-length batches. Where even
one text at a time the reference's mean is not over the text's tokens (``extract_text_features``
with ``avg``, the demo model's settings), ours equals the reference's forward with that mean
masked, and the difference from the reference as shipped is pinned by a test.

Every configuration is built and saved BY THE REFERENCE PACKAGE (random weights) and loaded through our
real path: the scorer x pooling grid of the uni-encoder, then the rest of the family (other scorers and
poolings, layer-wise, LSTM, calibrator) and per-row few-shot examples. Where the reference's own forward
fails on a configuration (``squeeze_layers``; ``encoder_layer_id`` without ``layer_wise``), it is run with
the smallest change that follows its intended math (``parity_helpers.follow_intended_math``), and a test
pins that the unchanged reference does fail.
"""

from __future__ import annotations

import itertools
import json
import logging

import pyarrow as pa
import pytest
import torch

gliclass = pytest.importorskip("gliclass")

from parity_helpers import (  # noqa: E402
    LABELS,
    TEXTS,
    TOLERANCE,
    build_reference_checkpoint,
    max_error,
    ours,
    reference_pipeline,
    reference_scores,
    reference_scores_masked_mean,
    spread,
)

from gliclass_dist.engine import Classifier  # noqa: E402
from gliclass_dist.labels import LabelSpec  # noqa: E402
from gliclass_dist.model.loading import CheckpointError, load_config, load_model  # noqa: E402
from gliclass_dist.model.tiny import build_tiny_checkpoint  # noqa: E402
from gliclass_dist.schema import Status  # noqa: E402
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


# ---------------------------------------------------------------------- the rest of the family

EXTRA = (
    "economy inflation shares earnings football tennis election budget taxes smartphone camera network film "
    "album tour order refund login delivery account weather travel food health science music league final "
    "parliament government chip speech actress director summer"
).split()
LABELS_40 = LABELS + EXTRA
assert len(LABELS_40) == 40 and len(set(LABELS_40)) == 40

# name -> (backbone, reference config options)
CONFIGS = {
    "hopfield": ("bert", {"scorer_type": "hopfield"}),
    "cross-attn+pass": (
        "deberta-v2",
        {"scorer_type": "cross-attn", "pooling_strategy": "pass", "scorer_mlp_hidden_size": 64},
    ),
    "cross-attn+pass+lstm": (
        "bert",
        {
            "scorer_type": "cross-attn",
            "pooling_strategy": "pass",
            "scorer_num_heads": 4,
            "use_lstm": True,
            "scorer_mlp_hidden_size": 32,
        },
    ),
    "calibrator": ("bert", {"scorer_type": "mlp", "use_calibrator": True, "calibrator_hidden_size": 32}),
    "calibrator+bias": (
        "deberta-v2",
        {
            "scorer_type": "weighted-dot",
            "pooling_strategy": "avg",
            "use_calibrator": True,
            "calibrator_use_bias": True,
        },
    ),
    "layer_wise+encoder_layer_id": ("bert", {"layer_wise": True, "encoder_layer_id": 1}),
    "lstm+extract_text_features": (
        "bert",
        {"use_lstm": True, "extract_text_features": True, "pooling_strategy": "max"},
    ),
    "squeeze_layers": ("deberta-v2", {"squeeze_layers": True}),
    "encoder_layer_id": ("bert", {"encoder_layer_id": -2, "pooling_strategy": "avg"}),
}


def reference_one_by_one(path, texts, labels, row_examples=None, **call) -> list[dict[str, float]]:
    pipe = reference_pipeline(path)
    out = []
    for i, text in enumerate(texts):
        examples = (row_examples[i] or None) if row_examples is not None else None
        preds = pipe(text, labels, threshold=0.0, examples=examples, **call)[0]
        out.append({p["label"]: p["score"] for p in preds})
    return out


@pytest.fixture(scope="module")
def family_checkpoint(tmp_path_factory):
    """One reference checkpoint per (configuration, prompt position), shared by both label counts."""
    built = {}

    def get(name, prompt_first):
        if (name, prompt_first) not in built:
            backbone, options = CONFIGS[name]
            path = tmp_path_factory.mktemp("family") / "ref"
            built[name, prompt_first] = build_reference_checkpoint(
                path, backbone, prompt_first=prompt_first, **options
            )
        return built[name, prompt_first]

    return get


@pytest.mark.parametrize("prompt_first", [False, True], ids=["text-first", "prompt-first"])
@pytest.mark.parametrize("labels", [LABELS, LABELS_40], ids=["5-labels", "40-labels"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_family_scores_equal_reference(family_checkpoint, name, labels, prompt_first):
    path = family_checkpoint(name, prompt_first)
    texts = (
        TEXTS if len(labels) < 10 else TEXTS[1:3]
    )  # 40 labels: a short and a long text (keeps the run short)
    expected = reference_one_by_one(path, texts, labels)
    got = ours(path, texts, labels)
    assert spread(expected) > 1e-3, "degenerate model: scores do not vary"
    assert max_error(got, expected) < TOLERANCE


@pytest.mark.parametrize(
    "options", [{"squeeze_layers": True}, {"encoder_layer_id": 1}], ids=["squeeze", "layer-id"]
)
def test_reference_itself_fails_where_we_follow_its_intended_math(tmp_path, options):
    """The documented difference: the unchanged reference cannot score these configs (README, 'differs')."""
    path = build_reference_checkpoint(tmp_path / "ref", "bert", **options)
    from transformers import AutoTokenizer

    model = gliclass.GLiClassModel.from_pretrained(str(path)).eval()
    pipe = gliclass.ZeroShotClassificationPipeline(
        model,
        AutoTokenizer.from_pretrained(str(path)),
        classification_type="multi-label",
        device="cpu",
        progress_bar=False,
    )
    with pytest.raises((RuntimeError, TypeError)):
        pipe(TEXTS[0], LABELS, threshold=0.0)
    assert ours(path, TEXTS[:1], LABELS)[0]  # ours scores it


def test_squeeze_layers_matches_a_hand_computed_forward(tmp_path):
    """Our layer attention against the formula written out here, on the loaded checkpoint's own weights."""
    path = build_reference_checkpoint(tmp_path / "ref", "bert", squeeze_layers=True)
    model = load_model(path)
    inner = model.model
    ids = torch.tensor([[2, 10, 11, 12, 3, 0, 0], [2, 13, 14, 15, 16, 17, 3]])
    mask = (ids != 0).long()
    with torch.no_grad():
        states = inner.encoder_model(
            input_ids=ids, attention_mask=mask, output_hidden_states=True
        ).hidden_states[1:]
        lwa = inner.layer_wise_attention
        z = torch.stack(
            [
                torch.stack(
                    [(lwa.squeeze(layer[b, : int(mask[b].sum())]).squeeze(-1)).mean() for layer in states]
                )
                for b in range(2)
            ]
        )
        s = torch.sigmoid(lwa.W2(torch.relu(lwa.W1(z))))
        expected = lwa.output_projection(sum(s[:, k, None, None] * states[k] for k in range(len(states))))
        got = inner.encode(ids, mask)
    valid = mask.bool()
    assert torch.allclose(got[valid], expected[valid], atol=1e-5)


# -- per-row few-shot examples (RAC) ------------------------------------------------------------
ROW_EXAMPLES = [
    [{"text": "Rates went up", "labels": ["business"]}, {"text": "Goal!", "labels": ["sport", "politics"]}],
    [{"text": "The striker scored twice", "labels": ["sport"]}],
    None,
    [],
]
EXAMPLE_TYPE = pa.list_(pa.struct([pa.field("text", pa.string()), pa.field("labels", pa.list_(pa.string()))]))


def ours_with_examples(
    path, texts, labels, row_examples, prompt=None
) -> tuple[list[dict[str, float]], list[str]]:
    clf = Classifier.from_pretrained(path, device="cpu", token_budget=256)
    table = pa.table({"text": texts, "examples": pa.array(row_examples, EXAMPLE_TYPE)})
    spec = LabelSpec(labels=labels, examples_column="examples", prompt=prompt, threshold=0.0)
    out = clf.classify_arrow(table, spec).to_pylist()
    return [{s["label"]: s["score"] for s in row["scores"]} for row in out], [row["status"] for row in out]


@pytest.mark.parametrize(
    "backbone,options",
    [
        ("deberta-v2", {"prompt_first": False, "pooling_strategy": "avg"}),
        ("deberta-v2", {"prompt_first": True, "pooling_strategy": "avg"}),
        ("bert", {"prompt_first": True, "use_segment_embeddings": True, "scorer_type": "mlp"}),
        ("bert", {"prompt_first": False, "use_segment_embeddings": True, "scorer_type": "hopfield"}),
    ],
    ids=["text-first", "prompt-first", "segments-prompt-first", "segments-hopfield"],
)
def test_per_row_examples_equal_reference(tmp_path, backbone, options):
    path = build_reference_checkpoint(tmp_path / "ref", backbone, **options)
    prompt = "Classify the topic:"
    # the model input: the reference's RAC input string, tokenized, equals our row's ids
    pipe = reference_pipeline(path)
    clf = Classifier.from_pretrained(path, device="cpu", token_budget=256)
    ours_rows = clf.builder.encode(TEXTS, [LABELS] * len(TEXTS), prompt, row_examples=ROW_EXAMPLES)
    for text, examples, row in zip(TEXTS, ROW_EXAMPLES, ours_rows):
        string = pipe.pipe.prepare_input(text, LABELS, examples or None, prompt)
        assert ("<<EXAMPLE>>" in string) == bool(examples)
        assert row.chunks == [pipe.pipe.tokenizer(string)["input_ids"]]
    # and the scores, per row
    expected = reference_one_by_one(path, TEXTS, LABELS, ROW_EXAMPLES, prompt=prompt)
    got, statuses = ours_with_examples(path, TEXTS, LABELS, ROW_EXAMPLES, prompt)
    assert statuses == [Status.OK] * len(TEXTS)
    assert spread(expected) > 1e-3
    assert max_error(got, expected) < TOLERANCE
    # the examples matter: without them rows 0 and 1 score differently
    plain = reference_one_by_one(path, TEXTS[:2], LABELS, prompt=prompt)
    assert max_error(got[:2], plain) > 1e-4


def test_bad_examples_are_a_row_status_not_a_job_failure(tmp_path):
    path = build_tiny_checkpoint(tmp_path / "tiny", backbone="bert")
    clf = Classifier.from_pretrained(path, device="cpu", max_length=48)
    good = json.dumps([{"text": "rates went up", "labels": ["business"]}])
    values = [
        good,
        "not json",
        json.dumps([{"text": "forged <<LABEL>> slot", "labels": ["a"]}]),
        json.dumps([{"text": "x", "labels": [3]}]),
        json.dumps({"text": "a mapping, not a list"}),
        None,
        json.dumps([{"text": "long " * 60, "labels": ["business"]}]),
    ]
    table = pa.table({"text": ["the bank raised rates"] * len(values), "ex": values})
    out = clf.classify_arrow(table, LabelSpec(labels=["business", "sport"], examples_column="ex")).to_pylist()
    statuses = [row["status"] for row in out]
    assert statuses[0] == Status.OK and statuses[5] == Status.OK
    assert statuses[1:5] == [Status.INVALID_EXAMPLES] * 4
    assert statuses[6].startswith("error: ") and "few-shot examples" in statuses[6]
    assert [len(row["scores"]) for row in out] == [2, 0, 0, 0, 0, 2, 0]
    # a row with examples is scored differently from the same text without them
    assert out[0]["scores"] != out[5]["scores"]
    with pytest.raises(KeyError, match="examples column 'missing'"):
        clf.classify_arrow(table, LabelSpec(labels=["business"], examples_column="missing"))


def test_examples_column_in_a_job_spec():
    from gliclass_dist.spec import JobSpec

    spec = JobSpec.model_validate(
        {
            "input": {"path": "/tmp/in.parquet"},
            "labels": {"labels": ["a", "b"], "examples_column": "neighbours"},
            "model": {"ref": "/tmp/model"},
            "sink": {"format": "parquet", "path": "/tmp/out"},
        }
    )
    assert spec.labels.examples_column == "neighbours"
    assert spec.labels.columns == ["neighbours"]


# -- config fields (issue item 5) ---------------------------------------------------------------
def _with_config(path, **changes):
    config_file = path / "config.json"
    data = json.loads(config_file.read_text())
    data.update(changes)
    config_file.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "changes,named",
    [
        ({"scorer_type": "decoder-kv"}, "scorer_type 'decoder-kv'"),
        ({"scorer_type": "bogus"}, "scorer_type 'bogus'"),
        ({"pooling_strategy": "median"}, "pooling_strategy 'median'"),
        ({"pooling_strategy": "pass"}, "pooling_strategy 'pass'"),
        ({"scorer_type": "cross-attn"}, "scorer_type 'cross-attn'"),
        (
            {"scorer_type": "cross-attn", "pooling_strategy": "pass", "scorer_num_heads": 5},
            "scorer_num_heads 5",
        ),
        ({"scorer_type": "hopfield", "max_labels_alloc": "fixed"}, "max_labels_alloc 'fixed'"),
        ({"max_labels_alloc": "sometimes"}, "max_labels_alloc"),
        ({"encoder_layer_id": 7}, "encoder_layer_id 7"),
        ({"multimodal": True}, "multimodal"),
        ({"use_embedding_projection": True}, "use_embedding_projection"),
        ({"use_calibrator": True, "scorer_type": "cross-attn", "pooling_strategy": "pass"}, "use_calibrator"),
    ],
)
def test_unsupported_config_values_fail_at_load_naming_them(tmp_path, changes, named):
    path = _with_config(build_tiny_checkpoint(tmp_path / "tiny"), **changes)
    with pytest.raises(CheckpointError, match="config.json") as info:
        load_model(path)
    assert named in str(info.value)


def test_unknown_config_field_is_a_warning_naming_it(tmp_path, caplog):
    path = _with_config(build_tiny_checkpoint(tmp_path / "tiny"), fancy_new_option=3)
    with caplog.at_level(logging.WARNING, logger="gliclass_dist.model.config"):
        model = load_model(path)
    assert "fancy_new_option" in caplog.text
    assert model.config.fancy_new_option == 3  # kept, as the reference keeps it


def test_reference_config_fields_are_all_known(tmp_path, caplog):
    """A config written by the reference (every field it has, defaults included) loads without a warning."""
    path = build_reference_checkpoint(tmp_path / "ref", "bert", use_calibrator=True)
    with caplog.at_level(logging.WARNING, logger="gliclass_dist.model.config"):
        load_config(path)
    assert "unknown field" not in caplog.text
    raw = json.loads((path / "config.json").read_text())
    assert "recurrent_steps" in raw and "calibrator_beta_max" in raw  # the check covered them
