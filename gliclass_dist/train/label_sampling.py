"""Label-set augmentation: every time a training item is batched, sample the labels it is scored against.

A sampled label set holds the item's true labels (each optionally renamed to a paraphrase: from a user
paraphrase map, else from the synonym map), a random subset of the task's other labels (the item's known
negatives), and negatives drawn from a label vocabulary (the built-in ``label_vocabulary.txt`` plus user
files), in random order and of random size. This keeps a fine-tuned model zero-shot: it learns to reject labels
it was not trained on instead of memorising one fixed label set.

Negatives never include a row's true labels, its unknown labels, their synonyms and paraphrases, or any
vocabulary label whose embedding cosine similarity to one of those is at or above ``similarity_threshold``
(so "finance" or "economy" is never a negative for a business article). The model learns whatever
the negatives say; a near-synonym drawn as a negative teaches it to reject paraphrases.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gliclass_dist.labels import check_no_marker
from gliclass_dist.train.data import DataError, TrainRecord

logger = logging.getLogger(__name__)

VOCABULARY_FILE = Path(__file__).with_name("label_vocabulary.txt")

Embed = Callable[[list[str]], np.ndarray]


def read_label_file(path: str | os.PathLike[str]) -> list[str]:
    """Labels from a text file, one per line (blank lines and ``#`` comments skipped), duplicates dropped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: label file does not exist")
    labels: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        label = line.strip()
        if not label or label.startswith("#"):
            continue
        try:
            check_no_marker(label, f"{path}:{number}: label")
        except ValueError as exc:
            raise DataError(str(exc)) from None
        labels.append(label)
    if not labels:
        raise DataError(f"{path}: no labels")
    return list(dict.fromkeys(labels))


def builtin_vocabulary() -> list[str]:
    """The built-in vocabulary: a few hundred general topic, domain, intent, sentiment and tone labels."""
    return read_label_file(VOCABULARY_FILE)


def read_synonyms(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """A synonym or paraphrase map from JSON ``{"label": ["name", ...], ...}``; errors name the file and entry."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: label map file (synonyms or paraphrases) does not exist")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return check_synonyms(raw, str(path))


def check_synonyms(raw: Any, where: str = "synonyms") -> dict[str, list[str]]:
    """Validate a synonym map: string keys, lists of non-empty strings, no marker strings."""
    if not isinstance(raw, Mapping):
        raise DataError(f"{where}: must be a JSON object of label -> list of names")
    out: dict[str, list[str]] = {}
    for label, values in raw.items():
        if not isinstance(label, str) or not label.strip():
            raise DataError(f"{where}: bad label {label!r}")
        if isinstance(values, str) or not isinstance(values, Sequence):
            raise DataError(f"{where}: {label!r} must map to a list of strings, got {values!r:.60}")
        clean = []
        for value in values:
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{where}: {label!r} holds {value!r}; paraphrases must be non-empty strings")
            try:
                clean.append(check_no_marker(value.strip(), f"{where}: paraphrase of {label!r}"))
            except ValueError as exc:
                raise DataError(str(exc)) from None
        out[label.strip()] = list(dict.fromkeys(v for v in clean if v != label.strip()))
    return out


class LabelEmbedder:
    """Mean-pooled, L2-normalised sentence embeddings from a Hugging Face encoder folder (e.g. MiniLM)."""

    def __init__(self, path: str | os.PathLike[str], device: str = "cpu", max_length: int = 64) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).to(device).eval()
        self.device = device
        self.max_length = max_length

    def __call__(self, texts: list[str], batch: int = 64) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch):
            enc = self.tokenizer(texts[i : i + batch], truncation=True, max_length=self.max_length, padding=True,
                                 return_tensors="pt").to(self.device)
            with torch.inference_mode():
                hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy())
        if not out:
            return np.zeros((0, int(self.model.config.hidden_size)), dtype=np.float32)
        return np.concatenate(out)


def default_embedder(path: str | os.PathLike[str] | None = None, device: str = "cpu") -> LabelEmbedder:
    """``LabelEmbedder`` on ``path``, by default the offline all-MiniLM-L6-v2 of the ``demo`` extra."""
    if path is None:
        from gliclass_dist.demo_data import minilm_path

        path = minilm_path()
    return LabelEmbedder(path, device=device)


@dataclass
class LabelSamplingConfig:
    """Sizes and switches of the sampled label sets."""

    min_other: int = 1  # task labels other than the true ones: uniform between this and all of them
    min_negatives: int = 2  # vocabulary negatives: uniform in [min_negatives, max_negatives]
    max_negatives: int = 8
    paraphrase_prob: float = 0.0  # chance that a true label is replaced by one of its synonyms
    similarity_threshold: float = 0.5  # vocabulary labels this close (cosine) to a true label are never negatives

    def __post_init__(self) -> None:
        if not 0 <= self.min_negatives <= self.max_negatives:
            raise ValueError(f"need 0 <= min_negatives <= max_negatives, got {self.min_negatives}, {self.max_negatives}")
        if self.min_other < 0:
            raise ValueError(f"min_other must be >= 0, got {self.min_other}")
        if not 0.0 <= self.paraphrase_prob <= 1.0:
            raise ValueError(f"paraphrase_prob must be within [0, 1], got {self.paraphrase_prob}")


class LabelSampler:
    """Samples the label set of a training item each time it is used (see the module docstring).

    ``synonyms``: label -> names that are never its negatives. ``paraphrases``: label -> names a true label
    may be renamed to (``paraphrase_prob``), never its negatives either; without it renames come from
    ``synonyms``. Separate maps let known synonyms stay out of training (e.g. an evaluation's names) while
    other alternative names are trained on. ``embed`` maps label strings to L2-normalised vectors
    (``LabelEmbedder``); without it only the two maps keep near-synonyms out of the negatives.
    """

    def __init__(
        self,
        vocabulary: Sequence[str],
        synonyms: Mapping[str, Sequence[str]] | None = None,
        embed: Embed | None = None,
        config: LabelSamplingConfig | None = None,
        paraphrases: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.vocabulary = list(dict.fromkeys(v.strip() for v in vocabulary if v.strip()))
        for label in self.vocabulary:
            check_no_marker(label, "vocabulary label")
        self.synonyms = check_synonyms(dict(synonyms or {}))
        self.paraphrases = self.synonyms if paraphrases is None else check_synonyms(dict(paraphrases), "paraphrases")
        self.embed = embed
        self.config = config or LabelSamplingConfig()
        if embed is None:
            logger.warning("label sampling without an embedder: only the synonym map filters near-synonyms")
        self._vectors: dict[str, np.ndarray] = {}
        self._vocab_matrix = self._embed(self.vocabulary) if embed is not None and self.vocabulary else None
        self._forbidden: dict[frozenset[str], frozenset[str]] = {}

    def _embed(self, labels: Sequence[str]) -> np.ndarray:
        assert self.embed is not None
        missing = [label for label in dict.fromkeys(labels) if label not in self._vectors]
        if missing:
            for label, vector in zip(missing, self.embed(missing)):
                self._vectors[label] = np.asarray(vector, dtype=np.float32)
        return np.stack([self._vectors[label] for label in labels])

    def related(self, label: str) -> list[str]:
        """``label``, its synonyms and paraphrases, and the labels that list ``label`` as one of theirs."""
        out = [label]
        for names in (self.synonyms, self.paraphrases):
            out += names.get(label, [])
            out += [key for key, values in names.items() if label in values]
        return list(dict.fromkeys(out))

    def forbidden_negatives(self, labels: Iterable[str]) -> frozenset[str]:
        """Vocabulary labels that must never be negatives for a row whose true (or unknown) labels are ``labels``."""
        key = frozenset(labels)
        if key in self._forbidden:
            return self._forbidden[key]
        anchors = list(dict.fromkeys(a for label in sorted(key) for a in self.related(label)))
        lowered = {a.casefold() for a in anchors}
        banned = {v for v in self.vocabulary if v.casefold() in lowered}
        if self._vocab_matrix is not None and anchors:
            sims = self._embed(anchors) @ self._vocab_matrix.T  # [A, V]
            close = (sims >= self.config.similarity_threshold).any(axis=0)
            banned.update(v for v, hit in zip(self.vocabulary, close) if hit)
        result = frozenset(banned | set(anchors))
        self._forbidden[key] = result
        return result

    def sample(self, record: TrainRecord, rng: random.Random) -> TrainRecord:
        """A copy of ``record`` scored against a freshly sampled, shuffled label set."""
        cfg = self.config
        truth = list(record.true_labels)
        unknown = set(record.unknown_labels)
        positives = []
        for label in truth:
            options = self.paraphrases.get(label)
            if options and cfg.paraphrase_prob > 0 and rng.random() < cfg.paraphrase_prob:
                label = rng.choice(options)
            positives.append(label)
        others = [label for label in record.all_labels if label not in unknown and label not in truth]
        n_other = rng.randint(min(cfg.min_other, len(others)), len(others)) if others else 0
        chosen_others = rng.sample(others, n_other)
        banned = self.forbidden_negatives(truth + sorted(unknown))
        taken = set(record.all_labels) | set(positives)
        candidates = [v for v in self.vocabulary if v not in banned and v not in taken]
        n_neg = min(rng.randint(cfg.min_negatives, cfg.max_negatives), len(candidates))
        negatives = rng.sample(candidates, n_neg)
        labels = list(dict.fromkeys(positives + chosen_others + negatives))
        rng.shuffle(labels)
        return TrainRecord(text=record.text, all_labels=labels, true_labels=list(dict.fromkeys(positives)),
                           prompt=record.prompt, examples=record.examples)

    def sample_all(self, records: Sequence[TrainRecord], rng: random.Random) -> list[TrainRecord]:
        return [self.sample(record, rng) for record in records]

    def describe(self) -> dict[str, Any]:
        """What was sampled from (for training_metrics.json)."""
        return {**asdict(self.config), "vocabulary_size": len(self.vocabulary), "synonyms": self.synonyms,
                "paraphrases": self.paraphrases, "similarity_filter": self.embed is not None}


def build_label_sampler(
    *,
    builtin: bool = True,
    negative_label_files: Sequence[str | os.PathLike[str]] = (),
    synonyms_file: str | os.PathLike[str] | None = None,
    synonyms: Mapping[str, Sequence[str]] | None = None,
    embed: Embed | None = None,
    config: LabelSamplingConfig | None = None,
    paraphrases_file: str | os.PathLike[str] | None = None,
    paraphrases: Mapping[str, Sequence[str]] | None = None,
) -> LabelSampler:
    """A ``LabelSampler`` over the built-in vocabulary (unless ``builtin=False``) plus label files; each map is
    the file's entries merged with the given ones. No paraphrase map at all => renames come from the synonyms."""
    vocabulary = builtin_vocabulary() if builtin else []
    for path in negative_label_files:
        vocabulary += read_label_file(path)
    if not vocabulary:
        raise DataError("label sampling needs a vocabulary: the built-in one or --negative-labels FILE")
    merged_paraphrases = None
    if paraphrases_file is not None or paraphrases is not None:
        merged_paraphrases = merge_maps(read_synonyms(paraphrases_file) if paraphrases_file else {}, paraphrases)
    merged = merge_maps(read_synonyms(synonyms_file) if synonyms_file is not None else {}, synonyms)
    return LabelSampler(vocabulary, merged, embed, config, paraphrases=merged_paraphrases)


def merge_maps(first: Mapping[str, Sequence[str]], second: Mapping[str, Sequence[str]] | None) -> dict[str, list[str]]:
    """Two label -> names maps as one (names of a label in both: ``first``'s, then ``second``'s new ones)."""
    merged = {label: list(values) for label, values in first.items()}
    for label, values in (second or {}).items():
        merged[label] = list(dict.fromkeys([*merged.get(label, []), *values]))
    return merged
