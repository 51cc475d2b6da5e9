"""GPU benchmark (issue item 5): engine fp32/bf16 at several token budgets and label counts, and the reference.

Runs on a lent GPU machine without network (``bench/gpu.sh`` sets up the Python path). The checkpoint is
built on the spot with random weights in a released model's shape: DeBERTa-v3-small (6 layers) and
DeBERTa-v3-base (12 layers): hidden 768, 12 heads, FFN 3072, relative attention (256 buckets), an
embedding table of 128,103 rows (DeBERTa-v3's vocabulary plus the three GLiClass tokens). The tokenizer
is the tiny unigram one from ``gliclass_dist.model.tiny`` (ids < 410): what matters here is the number
of tokens per row, which the synthetic texts control (``short`` ~ 40 tokens, ``long`` ~ 400 tokens).

Writes ``--out`` (JSON): per (model, approach, dtype, token budget, labels, text set) the texts/s,
tokens/s, padding fraction and peak GPU memory. ``--smoke`` runs a seconds-long version on CPU.

    python bench/gpu_bench.py --out $OUT/gpu_bench.json [--smoke]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

logger = logging.getLogger("bench.gpu")

DEBERTA_V3 = dict(
    hidden_size=768,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    max_position_embeddings=512,
    relative_attention=True,
    position_buckets=256,
    norm_rel_ebd="layer_norm",
    share_att_key=True,
    pos_att_type=["p2c", "c2p"],
    layer_norm_eps=1e-7,
    max_relative_positions=-1,
    position_biased_input=False,
    type_vocab_size=0,
    pad_token_id=0,
)
VOCAB = 128_100 + 3
SHAPES = {"deberta-v3-small": 6, "deberta-v3-base": 12}


def build_checkpoint(path: Path, layers: int, hidden: int | None = None, vocab: int = VOCAB) -> Path:
    """A random-weight GLiClass uni-encoder on a DeBERTa-v3 shape, saved in the published layout."""
    from transformers import DebertaV2Config

    from gliclass_dist.model.config import GLiClassConfig
    from gliclass_dist.model.loading import save_pretrained
    from gliclass_dist.model.modeling import GLiClassModel
    from gliclass_dist.model.tiny import train_tokenizer

    tokenizer = train_tokenizer("unigram")
    ids = tokenizer.get_vocab()
    enc = dict(DEBERTA_V3, num_hidden_layers=layers, vocab_size=vocab)
    if hidden:  # smoke runs
        enc.update(hidden_size=hidden, num_attention_heads=2, intermediate_size=hidden * 4)
    config = GLiClassConfig(
        encoder_config=DebertaV2Config(**enc).to_dict(),
        encoder_model="deberta-v3-shape-random",
        class_token_index=ids["<<LABEL>>"],
        text_token_index=ids["<<SEP>>"],
        example_token_index=ids["<<EXAMPLE>>"],
        vocab_size=vocab,
        problem_type="multi_label_classification",
    )
    torch.manual_seed(0)
    model = GLiClassModel(config)
    return save_pretrained(model, path, tokenizer)


def make_texts(tokenizer, target_tokens: int, count: int, seed: int) -> list[str]:
    from gliclass_dist.model.tiny import CORPUS

    words = " ".join(CORPUS).replace(",", "").replace(".", "").split()
    rng = random.Random(seed)
    per_word = len(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) / len(words)
    texts = []
    for _ in range(count):
        n = max(3, int(rng.uniform(0.6, 1.4) * target_tokens / per_word))
        texts.append(" ".join(rng.choices(words, k=n)))
    return texts


def label_names(count: int) -> list[str]:
    base = ["business", "sport", "politics", "technology", "film", "music", "health", "science"]
    return [base[i % len(base)] + ("" if i < len(base) else f" {i // len(base)}") for i in range(count)]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_calls(fn, texts: list[str], labels: list[str], device: str, target_s: float) -> tuple[float, int]:
    """texts/s of ``fn(texts[:n], labels)`` with ``n`` sized from a warm-up call to last about ``target_s``."""
    n = min(len(texts), 32)
    sync(device)
    start = time.perf_counter()
    fn(texts[:n], labels)
    sync(device)
    warm = time.perf_counter() - start
    n = max(16, min(len(texts), int(n / warm * target_s)))
    sync(device)
    start = time.perf_counter()
    fn(texts[:n], labels)
    sync(device)
    return n / (time.perf_counter() - start), n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_bench.json"))
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU, seconds")
    parser.add_argument("--target-s", type=float, default=1.0)
    parser.add_argument("--time-limit-s", type=float, default=240, help="stop starting new cells after this")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
    torch.backends.cudnn.allow_tf32 = False
    from gliclass_dist.engine import Classifier

    work = Path(tempfile.mkdtemp(prefix="gliclass_gpu_"))
    info: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "tf32": False,
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    results: list[dict[str, Any]] = []
    texts_n = 64 if args.smoke else 4096
    budgets = [2048, 8192] if args.smoke else [8192, 32768, 131072]
    plans = []  # (shape, dtype, budgets, label counts, text sets)
    if args.smoke:
        plans.append(("smoke", ["float32"], budgets, [5, 32], ["short", "long"]))
    else:
        plans.append(("deberta-v3-base", ["bfloat16", "float32"], budgets, [5, 128], ["short", "long"]))
        plans.append(("deberta-v3-small", ["bfloat16"], [32768], [1, 5, 32, 128], ["short", "long", "mixed"]))

    def out_of_time() -> bool:
        return time.perf_counter() - started > args.time_limit_s

    def save() -> None:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps({"machine": info, "seconds": round(time.perf_counter() - started, 1), "results": results}, indent=2)
            + "\n"
        )

    for shape, dtypes, plan_budgets, label_counts, sets in plans:
        layers = 2 if shape == "smoke" else SHAPES[shape]
        ckpt = build_checkpoint(work / shape, layers, hidden=64 if shape == "smoke" else None, vocab=1000 if shape == "smoke" else VOCAB)
        for dtype in dtypes:
            clf = Classifier.from_pretrained(ckpt, device=device, dtype=dtype)
            tok = clf.builder.tokenizer
            text_sets = {"short": make_texts(tok, 40, texts_n, 1), "long": make_texts(tok, 400, texts_n // 4, 2)}
            text_sets["mixed"] = [t for pair in zip(text_sets["short"], text_sets["long"]) for t in pair]
            for budget in plan_budgets:
                clf.token_budget = budget
                for count in label_counts:
                    labels = label_names(count)
                    for set_name in sets:
                        if out_of_time():
                            break
                        if device == "cuda":
                            torch.cuda.reset_peak_memory_stats()
                        before = dict(clf.stats)
                        rate, n = time_calls(
                            clf.classify, text_sets[set_name], labels, device, args.target_s
                        )
                        tokens = clf.stats["tokens"] - before["tokens"]
                        padded = clf.stats["padded_tokens"] - before["padded_tokens"]
                        results.append(
                            {
                                "model": shape,
                                "approach": "engine",
                                "dtype": dtype,
                                "token_budget": budget,
                                "labels": count,
                                "text_set": set_name,
                                "texts_per_s": round(rate, 2),
                                "texts_measured": n,
                                "tokens_per_text": round(tokens / max(clf.stats["rows"] - before["rows"], 1), 1),
                                "padding_fraction": round(1 - tokens / padded, 4) if padded else 0.0,
                                "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)
                                if device == "cuda"
                                else None,
                            }
                        )
                        logger.info("%s", results[-1])
                        save()
            del clf
            if device == "cuda":
                torch.cuda.empty_cache()
        # the reference pipeline on the same checkpoint, its own batching (16 rows in input order)
        if shape in ("deberta-v3-base", "smoke") and not out_of_time():
            try:
                import gliclass
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(str(ckpt))
                ref_model = gliclass.GLiClassModel.from_pretrained(str(ckpt)).eval()
                texts_short = make_texts(tok, 40, texts_n, 1)
                texts_long = make_texts(tok, 400, texts_n // 4, 2)
                for dtype in ("bfloat16", "float32") if device == "cuda" else ("float32",):
                    ref_model = ref_model.to(device=device, dtype=getattr(torch, dtype))
                    pipe = gliclass.ZeroShotClassificationPipeline(
                        ref_model, tok, classification_type="multi-label", device=f"{device}:0" if device == "cuda" else "cpu",
                        max_length=1024, max_classes=1024, progress_bar=False,
                    )
                    for count in (5, 128):
                        for set_name, texts in (("short", texts_short), ("long", texts_long)):
                            if out_of_time():
                                break

                            def call(t, lb, pipe=pipe):
                                with torch.inference_mode():
                                    return pipe(t, lb, threshold=0.0, batch_size=16)

                            rate, n = time_calls(call, texts, label_names(count), device, args.target_s)
                            results.append(
                                {
                                    "model": shape, "approach": "reference", "dtype": dtype, "token_budget": None,
                                    "labels": count, "text_set": set_name, "texts_per_s": round(rate, 2),
                                    "texts_measured": n,
                                }
                            )
                            logger.info("%s", results[-1])
                            save()
            except Exception as exc:  # noqa: BLE001 - the engine results still count
                logger.exception("reference pipeline failed")
                info["reference_error"] = f"{type(exc).__name__}: {exc}"
    info["stopped_early"] = out_of_time()
    save()
    logger.info("wrote %s in %.0fs", args.out, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
