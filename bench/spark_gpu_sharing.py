"""How many Spark Python workers does one GPU need? (in-process models sharing a GPU, no Spark needed)

With a stage-level task profile of ``gpus_per_task = 1/N``, Spark runs N inference tasks per GPU, each in
its own Python worker with its own model copy (``gliclass_dist.spark.udf.get_classifier``). This script
reproduces exactly that outside Spark: N spawned processes, one thread each (``spark.task.cpus=1``), each
loading the model on the same GPU through the Spark UDF's cache and classifying its share of the rows with
``classify_batches``; aggregate rows/s and GPU utilisation (NVML) per N tell whether one worker under-feeds
the GPU and where adding workers stops paying (the case for a node-local model server).

    python bench/spark_gpu_sharing.py --out results.json [--workers 1,2,4,8] [--rows 4096] [--device cuda]

The model is MiniLM-L6-shaped (BERT, 6 layers, hidden 384, 12 heads, FFN 1536) with random weights and a
small trained tokenizer; texts are a mix of short (10-15 words) and long (300-450 words) rows from the
tiny checkpoint's corpus vocabulary. Throughput does not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

LABELS = ["business", "entertainment", "politics", "sports", "tech"]


def build_model(path: Path) -> Path:
    """A MiniLM-L6-shaped GLiClass with random weights and the tiny trained tokenizer."""
    import torch

    from gliclass_dist.model.config import GLiClassConfig
    from gliclass_dist.model.loading import save_pretrained
    from gliclass_dist.model.modeling import GLiClassModel
    from gliclass_dist.model.tiny import tiny_encoder_config, train_tokenizer

    if (path / "model.safetensors").exists():
        return path
    tokenizer = train_tokenizer("wordpiece", vocab_size=2000)
    vocab = tokenizer.get_vocab()
    encoder = tiny_encoder_config("bert", len(tokenizer), hidden=384, layers=6)
    encoder.update(num_attention_heads=12, intermediate_size=1536)
    config = GLiClassConfig(
        encoder_config=encoder,
        class_token_index=vocab["<<LABEL>>"],
        text_token_index=vocab["<<SEP>>"],
        example_token_index=vocab["<<EXAMPLE>>"],
        vocab_size=len(tokenizer),
    )
    torch.manual_seed(0)
    return save_pretrained(GLiClassModel(config).eval(), path, tokenizer)


def make_texts(rows: int, seed: int = 0) -> list[str]:
    from gliclass_dist.model.tiny import CORPUS

    words = " ".join(CORPUS).replace(",", "").replace(".", "").split()
    rng = random.Random(seed)
    texts = []
    for i in range(rows):
        n = rng.randint(10, 15) if i % 2 else rng.randint(300, 450)
        texts.append(" ".join(rng.choice(words) for _ in range(n)) + ".")
    return texts


def worker(rank: int, model: str, device: str, texts: list[str], batch_rows: int, barrier, results) -> None:
    import pyarrow as pa
    import torch

    torch.set_num_threads(1)  # one core per task, as spark.task.cpus=1
    from gliclass_dist.labels import LabelSpec
    from gliclass_dist.spark.udf import ClassifyConfig, ModelOptions, classify_batches, get_classifier

    config = ClassifyConfig(ModelOptions(ref=model, device=device), LabelSpec(labels=LABELS), keep=("id",),
                            batch_rows=batch_rows)
    clf = get_classifier(config.model)
    table = pa.table({"id": list(range(len(texts))), "text": texts})
    warm = table.slice(0, min(64, len(texts))).to_batches()
    for _ in classify_batches(warm, config):
        pass
    if clf.device.type == "cuda":
        torch.cuda.synchronize()
    started_encode = time.perf_counter()
    clf.builder.encode(texts, [LABELS] * len(texts), None, None)
    encode_s = time.perf_counter() - started_encode
    barrier.wait()
    started = time.perf_counter()
    rows = sum(b.num_rows for b in classify_batches(table.to_batches(max_chunksize=batch_rows), config))
    if clf.device.type == "cuda":
        torch.cuda.synchronize()
    results.put({"rank": rank, "rows": rows, "seconds": time.perf_counter() - started, "encode_s": encode_s,
                 "device": str(clf.device), "dtype": str(clf.dtype)})


def gpu_sampler(stop: threading.Event, samples: list[float]) -> None:
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    except Exception:  # noqa: BLE001 - no NVML: no utilisation figures
        return
    while not stop.is_set():
        samples.append(float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))
        time.sleep(0.05)


def run(n: int, model: str, device: str, texts: list[str], batch_rows: int) -> dict:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n + 1)
    results = ctx.Queue()
    share = [texts[i::n] for i in range(n)]
    procs = [ctx.Process(target=worker, args=(i, model, device, share[i], batch_rows, barrier, results))
             for i in range(n)]
    for p in procs:
        p.start()
    barrier.wait()
    started = time.perf_counter()
    stop, samples = threading.Event(), []
    sampler = threading.Thread(target=gpu_sampler, args=(stop, samples), daemon=True)
    sampler.start()
    out = [results.get(timeout=1800) for _ in procs]
    wall = time.perf_counter() - started
    stop.set()
    for p in procs:
        p.join()
    rows = sum(r["rows"] for r in out)
    busy = [s for s in samples[len(samples) // 10:]]  # skip the ramp-up
    return {
        "workers": n,
        "rows": rows,
        "wall_s": round(wall, 3),
        "rows_per_s": round(rows / wall, 1),
        "gpu_util_mean": round(sum(busy) / len(busy), 1) if busy else None,
        "encode_share_of_worker_time": round(sum(r["encode_s"] for r in out) / sum(r["seconds"] for r in out), 3),
        "device": out[0]["device"],
        "dtype": out[0]["dtype"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--batch-rows", type=int, default=256)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model-dir", default=str(Path(tempfile.gettempdir()) / "gliclass-minilm-shaped"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    model = str(build_model(Path(args.model_dir)))
    texts = make_texts(args.rows)
    report = {"rows": args.rows, "batch_rows": args.batch_rows, "cpus": os.cpu_count(), "runs": []}
    try:
        import torch

        report["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        report["torch"] = torch.__version__
    except Exception:  # noqa: BLE001
        pass
    for n in [int(x) for x in args.workers.split(",")]:
        result = run(n, model, args.device, texts, args.batch_rows)
        report["runs"].append(result)
        print(json.dumps(result), flush=True)
    base = report["runs"][0]["rows_per_s"]
    for r in report["runs"]:
        r["speedup_vs_first"] = round(r["rows_per_s"] / base, 2)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
