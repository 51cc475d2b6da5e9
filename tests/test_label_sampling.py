"""Label-set augmentation (gliclass_dist.train.label_sampling): what the sampled label sets may and may not hold.

The similarity filter is exercised with a hand-built embedding table (a plain function from labels to
unit vectors, which is what ``LabelSampler`` takes) so the geometry is known; ``LabelEmbedder`` itself
runs on a tiny real BERT encoder.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from gliclass_dist.model.tiny import build_tiny_model
from gliclass_dist.train.data import DataError, TrainRecord, records_from_dicts
from gliclass_dist.train.label_sampling import (
    LabelEmbedder,
    LabelSampler,
    LabelSamplingConfig,
    build_label_sampler,
    builtin_vocabulary,
    read_label_file,
)

TASK = ["business", "sports", "politics", "tech"]
VOCAB = ["finance", "economy", "commerce", "football", "elections", "gardening", "astronomy", "cooking",
         "fashion", "weather", "travel", "religion", "pets", "poetry", "knitting", "chess"]
SYNONYMS = {"business": ["commerce"], "politics": ["government"]}


def table_embed(labels: list[str]) -> np.ndarray:
    """Known geometry: finance/economy are close to business (cos 0.8/0.6), football to sports (0.9),
    elections to politics (0.7); every other label gets its own axis (cos 0)."""
    names = sorted(set(TASK + VOCAB + ["government", "public affairs", "sport"]))
    axis = {name: i for i, name in enumerate(names)}
    near = {"finance": ("business", 0.8), "economy": ("business", 0.6), "football": ("sports", 0.9),
            "elections": ("politics", 0.7), "sport": ("sports", 0.95)}
    out = np.zeros((len(labels), len(names)), dtype=np.float32)
    for row, label in enumerate(labels):
        if label in near:
            anchor, cos = near[label]
            out[row, axis[anchor]] = cos
            out[row, axis[label]] = np.sqrt(1 - cos**2)
        else:
            out[row, axis[label]] = 1.0
    return out


def record(true: list[str], unknown: list[str] | None = None) -> TrainRecord:
    row = {"text": "some text", "all_labels": TASK, "true_labels": true}
    if unknown:
        row["unknown_labels"] = unknown
    return records_from_dicts([row])[0]


def sampler(threshold: float = 0.5, **config) -> LabelSampler:
    cfg = LabelSamplingConfig(similarity_threshold=threshold, **{"min_negatives": 2, "max_negatives": 8, **config})
    return LabelSampler(VOCAB, SYNONYMS, table_embed, cfg)


def negatives(sampled: TrainRecord) -> set[str]:
    return set(sampled.all_labels) - set(sampled.true_labels) - set(TASK)


def test_negatives_never_hold_true_labels_synonyms_or_near_synonyms():
    s, rng = sampler(threshold=0.5), random.Random(0)
    drawn: set[str] = set()
    for _ in range(400):
        out = s.sample(record(["business"]), rng)
        assert "business" in out.all_labels and out.true_labels == ["business"]
        drawn |= negatives(out)
    assert not drawn & {"finance", "economy", "commerce"}  # near-synonyms (0.8, 0.6) and the synonym map
    assert {"football", "elections", "gardening", "chess"} <= drawn  # unrelated labels still come
    # the same for a multi-label row: neither label's relatives
    drawn = set()
    for _ in range(400):
        drawn |= negatives(s.sample(record(["sports", "politics"]), rng))
    assert not drawn & {"football", "elections", "government"} and "finance" in drawn


def test_the_similarity_threshold_decides_which_near_synonyms_are_kept_out():
    rng = random.Random(1)
    strict = set().union(*(negatives(sampler(0.7).sample(record(["business"]), rng)) for _ in range(400)))
    assert "finance" not in strict and "economy" in strict  # cos 0.6 < 0.7: allowed
    no_embed = LabelSampler(VOCAB, SYNONYMS, None, LabelSamplingConfig())
    loose = set().union(*(negatives(no_embed.sample(record(["business"]), rng)) for _ in range(400)))
    assert "commerce" not in loose and "finance" in loose  # the synonym map alone


def test_unknown_labels_and_their_relatives_are_left_out():
    s, rng = sampler(), random.Random(2)
    for _ in range(300):
        out = s.sample(record(["sports"], unknown=["business"]), rng)
        assert not set(out.all_labels) & {"business", "finance", "economy", "commerce", "football"}
        assert out.unknown_labels == [] and out.true_labels == ["sports"]


def test_sizes_and_order_vary_within_bounds():
    s, rng = sampler(min_other=1), random.Random(3)
    sizes, orders, other_counts = set(), set(), set()
    for _ in range(300):
        out = s.sample(record(["tech"]), rng)
        others = [x for x in out.all_labels if x in TASK and x != "tech"]
        n_neg = len(negatives(out))
        assert 1 <= len(others) <= 3 and 2 <= n_neg <= 8
        assert len(out.all_labels) == len(set(out.all_labels)) == 1 + len(others) + n_neg
        sizes.add(len(out.all_labels))
        other_counts.add(len(others))
        orders.add(out.all_labels.index("tech"))
    assert len(sizes) >= 6 and other_counts == {1, 2, 3} and len(orders) >= 6


def test_sampling_is_deterministic_for_a_seed():
    rows = [record(["business"]), record(["sports", "tech"])]

    def run(seed: int) -> list[list[str]]:
        s, rng = sampler(), random.Random(seed)
        return [s.sample(r, rng).all_labels for _ in range(20) for r in rows]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_paraphrases_rename_the_true_label_and_its_target():
    s = LabelSampler(VOCAB, {"politics": ["government", "public affairs"]}, table_embed,
                     LabelSamplingConfig(paraphrase_prob=1.0))
    rng = random.Random(4)
    seen = set()
    for _ in range(50):
        out = s.sample(record(["politics"]), rng)
        assert "politics" not in out.all_labels and out.true_labels[0] in {"government", "public affairs"}
        assert out.true_labels[0] in out.all_labels and "elections" not in out.all_labels
        seen.add(out.true_labels[0])
    assert seen == {"government", "public affairs"}


def test_a_paraphrase_map_is_what_renames_and_synonyms_stay_out_of_training():
    # "economy" is a known synonym (never a negative, never a training name); "finance" the trained paraphrase
    vocab = [*VOCAB, "trade and industry"]
    s = LabelSampler(vocab, {"business": ["economy"]}, None, LabelSamplingConfig(paraphrase_prob=1.0),
                     paraphrases={"business": ["finance", "trade and industry"]})
    rng = random.Random(3)
    renamed = set()
    for _ in range(60):
        out = s.sample(record(["business"]), rng)
        assert out.true_labels[0] in {"finance", "trade and industry"}
        renamed.add(out.true_labels[0])
        assert "economy" not in out.all_labels  # a synonym: not a name, not a negative
        assert {"finance", "trade and industry"} - set(out.true_labels) <= set(vocab) - set(out.all_labels)
    assert renamed == {"finance", "trade and industry"}
    assert s.describe()["paraphrases"] == {"business": ["finance", "trade and industry"]}
    assert s.describe()["synonyms"] == {"business": ["economy"]}


def test_negative_labels_file_is_read(tmp_path):
    path = tmp_path / "negatives.txt"
    path.write_text("# my domain\nrefund request\n\nshipping delay\nrefund request\n  warranty claim  \n")
    assert read_label_file(path) == ["refund request", "shipping delay", "warranty claim"]
    s = build_label_sampler(builtin=False, negative_label_files=[path], embed=None,
                            config=LabelSamplingConfig(min_negatives=3, max_negatives=3))
    out = s.sample(record(["business"]), random.Random(0))
    assert negatives(out) == {"refund request", "shipping delay", "warranty claim"}
    both = build_label_sampler(negative_label_files=[path], embed=None)
    assert len(both.vocabulary) == len(builtin_vocabulary()) + 3
    bad = tmp_path / "bad.txt"
    bad.write_text("fine\nnot <<SEP>> fine\n")
    with pytest.raises(DataError, match=r"bad\.txt:2.*<<SEP>>"):
        read_label_file(bad)
    with pytest.raises(DataError, match="does not exist"):
        read_label_file(tmp_path / "missing.txt")


def test_builtin_vocabulary_is_a_few_hundred_distinct_labels():
    vocab = builtin_vocabulary()
    assert 250 <= len(vocab) <= 600 and len({v.casefold() for v in vocab}) == len(vocab)


def test_bad_synonym_maps_are_refused(tmp_path):
    path = tmp_path / "syn.json"
    path.write_text(json.dumps({"business": "finance"}))
    with pytest.raises(DataError, match="must map to a list"):
        build_label_sampler(synonyms_file=path, embed=None)
    path.write_text(json.dumps({"business": ["<<LABEL>>x"]}))
    with pytest.raises(DataError, match="<<LABEL>>"):
        build_label_sampler(synonyms_file=path, embed=None)


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory) -> Path:
    """The tiny model's encoder saved as a plain Hugging Face encoder folder."""
    model, tokenizer = build_tiny_model()
    path = tmp_path_factory.mktemp("tiny-encoder")
    model.model.encoder_model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def test_label_embedder_gives_unit_vectors_and_feeds_the_filter(encoder_folder):
    embed = LabelEmbedder(encoder_folder)
    vectors = embed(["business", "sports news", "tech"])
    assert vectors.shape[0] == 3 and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(embed(["business"])[0], vectors[0], atol=1e-5)
    # threshold -1: every vocabulary label is "near", so only the task's own labels remain
    s = LabelSampler(VOCAB, {}, embed, LabelSamplingConfig(similarity_threshold=-1.0))
    out = s.sample(record(["business"]), random.Random(0))
    assert negatives(out) == set() and set(out.all_labels) <= set(TASK)


def test_ppo_scores_items_against_sampled_label_sets():
    from gliclass_dist.train.ppo import PPOConfig, train_ppo

    torch.set_num_threads(1)
    model, tokenizer = build_tiny_model()
    rows = records_from_dicts([
        {"text": "the bank raised rates", "all_labels": TASK, "true_labels": ["business"], "unknown_labels": ["tech"]},
        {"text": "the club won the match", "all_labels": TASK, "true_labels": ["sports"]},
    ])
    seen: list[TrainRecord] = []

    def reward(rec: TrainRecord, predicted: list[str]) -> float:
        seen.append(rec)
        return float(len(predicted) % 2)

    cfg = PPOConfig(steps=6, batch_size=2, samples_per_item=2, inner_iters=1, max_length=64, eval_every=0,
                    progress=False, seed=0)
    train_ppo(model, tokenizer, rows, None, cfg, reward_fn=reward, label_sampler=sampler())
    assert len(seen) == 6 * 2 * 2
    for rec in seen:
        assert len(rec.true_labels) == 1 and rec.true_labels[0] in rec.all_labels
        banned = {"finance", "economy", "commerce", "tech"} if rec.true_labels == ["business"] else {"football"}
        assert not set(rec.all_labels) & banned
    assert len({len(rec.all_labels) for rec in seen}) >= 3
    assert any(set(rec.all_labels) & set(VOCAB) for rec in seen)


def test_supervised_training_with_label_sampling_is_reproducible(tmp_path):
    from gliclass_dist.train.supervised import SupervisedConfig, train_supervised

    torch.set_num_threads(1)
    rows = records_from_dicts([
        {"text": t, "all_labels": TASK, "true_labels": [label]}
        for label, t in [("business", "the bank raised rates"), ("sports", "the club won the match"),
                         ("politics", "parliament voted"), ("tech", "a new phone chip")]
    ])
    cfg = SupervisedConfig(epochs=1, min_steps=4, batch_size=2, max_length=64, eval_every=0, progress=False, seed=3)
    start, tokenizer = build_tiny_model(seed=3)
    states = []
    for run, label_sampler in enumerate([sampler(), sampler(), None]):
        model = copy.deepcopy(start)
        train_supervised(model, tokenizer, rows, None, cfg, out_dir=tmp_path / f"run{run}", label_sampler=label_sampler)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])  # same seed, same sampled label sets
    assert any(not torch.equal(states[0][k], states[2][k]) for k in states[0])  # sampling changed what it learned
    metrics = json.loads((tmp_path / "run0" / "training_metrics.json").read_text())
    assert metrics["label_sampling"]["vocabulary_size"] == len(VOCAB)
    assert metrics["label_sampling"]["similarity_filter"] is True


def test_train_cli_reads_negative_labels_and_synonyms(encoder_folder, tmp_path, capsys):
    from gliclass_dist.cli import main

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": t, "all_labels": TASK, "true_labels": [label]}) + "\n"
                            for label, t in [("business", "the bank raised rates"), ("sports", "the club won")]))
    negatives_file = tmp_path / "negatives.txt"
    negatives_file.write_text("refund request\nshipping delay\n")
    synonyms_file = tmp_path / "synonyms.json"
    synonyms_file.write_text(json.dumps({"business": ["commerce"]}))
    paraphrases_file = tmp_path / "paraphrases.json"
    paraphrases_file.write_text(json.dumps({"sports": ["athletics"]}))
    out = tmp_path / "model"
    args = ["train", "--base", str(encoder_folder), "--data", str(data), "--out", str(out), "--epochs", "1",
            "--min-steps", "2", "--batch-size", "2", "--no-progress", "--device", "cpu",
            "--negative-labels", str(negatives_file), "--no-builtin-vocabulary", "--synonyms", str(synonyms_file),
            "--paraphrases", str(paraphrases_file), "--paraphrase-prob", "0.5",
            "--similarity-encoder", str(encoder_folder), "--negatives", "1", "2"]
    assert main(args) == 0
    sampling = json.loads((out / "training_metrics.json").read_text())["label_sampling"]
    assert sampling["vocabulary_size"] == 2 and sampling["synonyms"] == {"business": ["commerce"]}
    assert sampling["paraphrases"] == {"sports": ["athletics"]} and sampling["paraphrase_prob"] == 0.5
    assert (sampling["min_negatives"], sampling["max_negatives"]) == (1, 2)
    negatives_file.write_text("fine\nbad <<LABEL>>\n")
    assert main(args) == 2
    assert f"{negatives_file}:2" in capsys.readouterr().err
