"""The approaches compared in ``engine_vs_peers``: our engine and three peers, each as ``classify(texts, labels)``.

- ``engine``: ``gliclass_dist.engine.Classifier`` (token-budget batches over length-sorted rows).
- ``reference``: the ``gliclass`` package's ``ZeroShotClassificationPipeline`` on the same checkpoint,
  batches of 16 in input order padded to the longest row, window 512 (the encoder's position limit).
- ``nli_cross_encoder``: transformers' ``zero-shot-classification`` pipeline (one text x label pair per
  forward row, hypothesis "This example is {}.") on a MiniLM-L6 BERT cross-encoder: the packaged
  MiniLM encoder with a *random* 3-way NLI head (same size and cost as a trained one; its scores
  mean nothing), batches of 16 pairs.
- ``embedding``: MiniLM sentence embeddings (mean pooling, L2-normalised) of the texts and of the
  labels, cosine similarity; texts sorted by length within the call and embedded in batches of 16
  (what sentence-transformers does), window 512 like the others (sentence-transformers would cut
  all-MiniLM-L6-v2 at 256 tokens); label embeddings computed once per call.

All run fp32 on CPU under ``torch.inference_mode`` with the thread count set by the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger("bench.peers")

BATCH = 16
WINDOW = 512


class EngineApproach:
    name = "engine"

    def __init__(self, checkpoint: Path, **options: Any) -> None:
        from gliclass_dist.engine import Classifier

        self.classifier = Classifier.from_pretrained(checkpoint, device="cpu", dtype="float32", **options)

    def classify(self, texts: Sequence[str], labels: Sequence[str]) -> list[dict[str, float]]:
        return [p.scores for p in self.classifier.classify(list(texts), list(labels))]


class ReferenceApproach:
    name = "reference"

    def __init__(self, checkpoint: Path, batch_size: int = BATCH) -> None:
        import gliclass
        from transformers import AutoTokenizer

        model = gliclass.GLiClassModel.from_pretrained(str(checkpoint)).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
        self.batch_size = batch_size
        self.pipeline = gliclass.ZeroShotClassificationPipeline(
            model,
            tokenizer,
            classification_type="multi-label",
            device="cpu",
            max_length=WINDOW,
            max_classes=1024,
            progress_bar=False,
        )

    def classify(self, texts: Sequence[str], labels: Sequence[str]) -> list[dict[str, float]]:
        with torch.inference_mode():
            out = self.pipeline(list(texts), list(labels), threshold=0.0, batch_size=self.batch_size)
        return [{item["label"]: float(item["score"]) for item in row} for row in out]


class NLICrossEncoderApproach:
    name = "nli_cross_encoder"

    def __init__(self, checkpoint: Path, batch_size: int = BATCH) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

        model = AutoModelForSequenceClassification.from_pretrained(str(checkpoint)).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(checkpoint), model_max_length=WINDOW)
        self.batch_size = batch_size
        self.pipeline = pipeline("zero-shot-classification", model=model, tokenizer=tokenizer, device="cpu")

    def classify(self, texts: Sequence[str], labels: Sequence[str]) -> list[dict[str, float]]:
        with torch.inference_mode():
            out = self.pipeline(list(texts), candidate_labels=list(labels), multi_label=True, batch_size=self.batch_size)
        if isinstance(out, dict):
            out = [out]
        return [dict(zip(row["labels"], row["scores"])) for row in out]


class EmbeddingApproach:
    name = "embedding"

    def __init__(self, encoder: Path, batch_size: int = BATCH) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.model = AutoModel.from_pretrained(str(encoder)).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(encoder))
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in idx], padding=True, truncation=True, max_length=WINDOW, return_tensors="pt"
                )
                hidden = self.model(**enc)[0]
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[idx] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out

    def classify(self, texts: Sequence[str], labels: Sequence[str]) -> list[dict[str, float]]:
        label_vecs = self.embed(list(labels))
        sims = self.embed(list(texts)) @ label_vecs.T
        return [dict(zip(labels, row.tolist())) for row in sims]


def build_approaches(gliclass_checkpoint: Path, nli_checkpoint: Path, encoder: Path) -> dict[str, Any]:
    return {
        "engine": EngineApproach(gliclass_checkpoint),
        "reference": ReferenceApproach(gliclass_checkpoint),
        "nli_cross_encoder": NLICrossEncoderApproach(nli_checkpoint),
        "embedding": EmbeddingApproach(encoder),
    }
