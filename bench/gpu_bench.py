"""GPU benchmark (issue #17): the engine on one GPU against the reference, and kept fed by CPU processes.

One call on a lent GPU machine (no network; ``bench/gpu.sh`` sets up the Python path) measures, for three
model shapes with random weights built on the spot (MiniLM-L6 = the demo model's shape, ModernBERT-base,
DeBERTa-v3-base; one BERT-uncased WordPiece tokenizer for all, so every shape reads the same tokens):

- ``engine`` (bf16, default token budget): rows/s on ``bbc_mixed``, ``bbc_long`` and ``bbc_titles`` at 1, 5,
  32 and 128 labels, with GPU busy (NVML, sampled in a thread) and MFU (useful FLOPs / the device's bf16 peak);
- ``reference``: the ``gliclass`` package's pipeline on the same checkpoint and GPU, at its best batch size
  and dtype (searched on ``bbc_mixed`` at 5 labels);
- engine variants (``variant``): token budgets 32k/64k, a prefetching tokenize thread, SDPA off, the Rust
  tokenizer's own threads, and scoring pre-encoded rows only (the GPU-side ceiling);
- ``fed_engine``: the Ray job's two stages without Ray: N spawned CPU processes run the Ray tokenize stage
  (``gliclass_dist.ray.predictor.tokenize_batch``) and this process runs the Ray model stage
  (``GLiClassPredictor``) on what they produce, N in 2/4/8; from it the CPU cores per GPU needed to stay
  above 85% busy;
- ``ray_job`` / ``spark_job``: recorded as skipped with the reason (Ray and pyspark are not on that machine).

Every cell has a time target (``--target-s``); each model shape gets an equal share of the global deadline
(``--deadline-s``), its cells run in priority order and the ones past the share are recorded as skipped.
The JSON is rewritten after every cell, so a killed run still leaves its figures.

Writes ``--out`` (``{"device", "results": [{workload, model_shape, approach, labels, rows_per_s, gpu_busy,
mfu, ...}], "derived", "targets", ...}``) and a PNG next to it. ``--smoke`` runs tiny shapes (hidden 32,
2 layers) on CPU with few rows through every code path (1.5-3.5 minutes on the shared 2-core VM).

    python bench/gpu_bench.py --out $OUT/gpu.json [--smoke] [--deadline-s 390]
    python bench/gpu_bench.py --summary $OUT/gpu.json     # table + completeness check
    python bench/gpu_bench.py --plot-only $OUT/gpu.json   # the PNG from a JSON
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402
import torch  # noqa: E402

logger = logging.getLogger("bench.gpu")

WORKLOADS = ("bbc_mixed", "bbc_long", "bbc_titles")
LABEL_COUNTS = (1, 5, 32, 128)
APPROACHES = ("engine", "reference", "ray_job", "spark_job", "fed_engine")
WINDOW = 512  # every shape reads at most 512 tokens (MiniLM's and DeBERTa-v3's position limit)
BUSY_TARGET = 85.0
WARM_ROWS = 32
MAX_ROWS = 60_000
FED_BATCH_ROWS = 256  # the job spec's default batch_rows (rows per Ray block handed to each stage)

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by device name; first match wins.
PEAK_BF16_TFLOPS = (
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("RTX A6000", 155.0),
)

# Model shapes (random weights). ``vocab``: the released model's embedding rows (+3 GLiClass tokens added).
SHAPES: dict[str, dict[str, Any]] = {
    "minilm-l6": {
        "backbone": "bert",
        "vocab": 30522,
        "encoder": dict(
            hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
            max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12,
        ),
    },
    "modernbert-base": {
        "backbone": "modernbert",
        "vocab": 50368,
        "encoder": dict(
            hidden_size=768, num_hidden_layers=22, num_attention_heads=12, intermediate_size=1152,
            max_position_embeddings=8192, global_attn_every_n_layers=3, local_attention=128,
        ),
    },
    "deberta-v3-base": {
        "backbone": "deberta-v2",
        "vocab": 128100,
        "encoder": dict(
            hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
            hidden_act="gelu", max_position_embeddings=512, relative_attention=True, position_buckets=256,
            norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"], layer_norm_eps=1e-7,
            max_relative_positions=-1, position_biased_input=False, type_vocab_size=0,
        ),
    },
}
SMOKE_DIMS = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


# ---------------------------------------------------------------------------------------------- device
def device_peak(device: str) -> tuple[float, str, float]:
    """(peak FLOP/s used for MFU, where it came from, measured matmul FLOP/s)."""
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
        n = 8192
        a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        torch.cuda.synchronize()
        best = 0.0
        for _ in range(10):
            start = time.perf_counter()
            a @ b
            torch.cuda.synchronize()
            best = max(best, 2 * n**3 / (time.perf_counter() - start))
        del a, b
        torch.cuda.empty_cache()
        for key, tflops in PEAK_BF16_TFLOPS:
            if key.lower() in name.lower():
                return tflops * 1e12, f"table: {key} dense bf16 {tflops:g} TFLOP/s", best
        return best, "measured: best 8192^3 bf16 matmul (device not in the table)", best
    measured = common.matmul_peak_gflops(size=512, repeats=3, threads=torch.get_num_threads()) * 1e9
    return measured, "measured: best 512^3 fp32 matmul on the CPU threads (smoke run)", measured


class BusySampler:
    """Mean GPU utilisation (NVML: percent of time a kernel ran) between ``start`` and ``stop``.

    Without NVML (pynvml / nvidia-ml-py missing, no driver, or a CPU run) every reading is ``None``.
    """

    def __init__(self, index: int = 0, period_s: float = 0.02) -> None:
        self.handle: Any = None
        self.source = "none"
        self.period_s = period_s
        self.error: str | None = None
        self.nvml: Any = None
        self.driver_mean: float | None = None
        self._since_us = 0
        self._samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._read = lambda: float(pynvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
            self._read()
            self.nvml = pynvml
            self.source = "nvml"
        except Exception as exc:  # noqa: BLE001 - no NVML: try torch's wrapper, else no figures
            self.error = f"{type(exc).__name__}: {exc}"
            try:
                torch.cuda.utilization(index)
                self._read = lambda: float(torch.cuda.utilization(index))
                self.handle = True
                self.source = "torch.cuda.utilization"
            except Exception as exc2:  # noqa: BLE001
                self.error += f"; torch.cuda.utilization: {type(exc2).__name__}: {exc2}"
                self.handle = None

    def disable(self, why: str) -> None:
        self.handle, self.source, self.error = None, "none", why

    def start(self) -> None:
        self.driver_mean = None
        if self.handle is None:
            return
        self._since_us = int(time.time() * 1e6)
        self._samples = []
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._samples.append(self._read())
            except Exception:  # noqa: BLE001 - a failed reading is skipped
                pass
            self._stop.wait(self.period_s)

    def stop(self) -> float | None:
        if self.handle is None or self._thread is None:
            return None
        self._stop.set()
        self._thread.join()
        self._thread = None
        self.driver_mean = self._driver_samples()
        samples = self._samples[len(self._samples) // 10 :]  # NVML's value lags; skip the ramp-up
        return round(sum(samples) / len(samples), 1) if samples else None

    def _driver_samples(self) -> float | None:
        """Mean of the driver's own utilisation samples taken since ``start`` (finer than polling), if any."""
        if self.nvml is None:
            return None
        try:
            _, samples = self.nvml.nvmlDeviceGetSamples(
                self.handle, self.nvml.NVML_GPU_UTILIZATION_SAMPLES, self._since_us
            )
            values = [float(x.sampleValue.uiVal) for x in samples if x.timeStamp >= self._since_us]
            return round(sum(values) / len(values), 1) if values else None
        except Exception:  # noqa: BLE001 - not every driver keeps samples; the polled mean stays
            return None


class FlopCounter:
    """Useful forward FLOPs of an encoder, from the real (unpadded) length of every sequence it runs.

    2 x non-embedding parameters per token, plus attention scores and values (4 x T x keys x hidden per
    layer; ModernBERT's local layers see at most ``local_attention`` keys). DeBERTa's relative-position
    terms and the GLiClass heads are not counted. Sums stay on the device (no sync per batch).
    """

    def __init__(self, encoder: torch.nn.Module) -> None:
        cfg = encoder.config
        self.params = sum(
            p.numel() for name, p in encoder.named_parameters() if "embed" not in name and "pooler" not in name
        )
        self.hidden = int(cfg.hidden_size)
        layers = int(cfg.num_hidden_layers)
        every = int(getattr(cfg, "global_attn_every_n_layers", 0) or 0)
        self.window = int(getattr(cfg, "local_attention", 0) or 0)
        self.global_layers = sum(1 for i in range(layers) if not every or i % every == 0) if self.window else layers
        self.local_layers = layers - self.global_layers
        self.reset()
        self.handle = encoder.register_forward_pre_hook(self._hook, with_kwargs=True)

    def reset(self) -> None:
        self.tokens: Any = 0
        self.square: Any = 0
        self.local: Any = 0

    def _hook(self, module, args, kwargs) -> None:  # noqa: ANN001 - torch hook signature
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1:
            mask = args[1]
        if mask is not None and mask.dim() == 2:
            lengths = mask.sum(dim=-1).to(torch.int64)
        else:
            ref = kwargs.get("input_ids", args[0] if args else None)
            if ref is None:
                ref = kwargs.get("inputs_embeds")
            if ref is None:
                return
            lengths = torch.full((ref.shape[0],), ref.shape[1], dtype=torch.int64, device=ref.device)
        self.tokens = self.tokens + lengths.sum()
        self.square = self.square + (lengths * lengths).sum()
        if self.local_layers:
            self.local = self.local + (lengths * lengths.clamp(max=self.window)).sum()

    def total(self) -> tuple[float, int]:
        """(FLOPs, tokens) since the last ``reset``."""
        tokens, square, local = (float(x) for x in (self.tokens, self.square, self.local))
        attention = 4.0 * self.hidden * (self.global_layers * square + self.local_layers * local)
        return 2.0 * self.params * tokens + attention, int(tokens)

    def close(self) -> None:
        self.handle.remove()


# ---------------------------------------------------------------------------------------------- data and models
def base_tokenizer(texts: Sequence[str], explicit: str | None = None) -> tuple[Any, str]:
    """The BERT-uncased WordPiece tokenizer of MiniLM, from a carried folder or the demo package.

    Fallback (nothing carried): a 30,522-token WordPiece trained here on the BBC texts, so token counts
    stay realistic for English news.
    """
    from transformers import AutoTokenizer

    candidates = [explicit, os.environ.get("GPU_BENCH_TOKENIZER"), str(ROOT / ".whl" / "minilm-tokenizer")]
    try:
        from gliclass_dist.demo_data import minilm_path

        candidates.append(str(minilm_path()))
    except Exception:  # noqa: BLE001 - the demo package is optional
        pass
    if explicit == "train":  # force the fallback (to test it)
        candidates = []
    for cand in candidates:
        if cand and (Path(cand) / "tokenizer.json").exists():
            return AutoTokenizer.from_pretrained(cand), cand
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(
        list(texts), trainers.WordPieceTrainer(vocab_size=30522, special_tokens=specials, show_progress=False)
    )
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=WINDOW,
    )
    return fast, "fallback: WordPiece (30,522) trained on the BBC texts here"


def build_shape(path: Path, shape: str, tokenizer: Any, smoke: bool, device: str = "cpu") -> tuple[Path, dict[str, Any]]:
    """A random-weight GLiClass uni-encoder of ``shape`` (the demo model's head config), saved at ``path``.

    The random init runs on ``device`` (on a GPU it takes no time; on CPU ModernBERT's takes tens of seconds).
    """
    from transformers import BertConfig, DebertaV2Config, ModernBertConfig

    from gliclass_dist.model.config import GLiClassConfig
    from gliclass_dist.model.loading import save_pretrained
    from gliclass_dist.model.modeling import GLiClassModel
    from gliclass_dist.train.init_model import SIMILARITY_DEFAULTS, add_label_tokens

    ids = add_label_tokens(tokenizer)
    spec = SHAPES[shape]
    dims = dict(spec["encoder"])
    if smoke:
        dims.update(SMOKE_DIMS)
        if spec["backbone"] == "modernbert":
            dims["intermediate_size"] = 48
    vocab = len(tokenizer) if smoke else max(spec["vocab"] + 3, len(tokenizer))
    config_cls = {"bert": BertConfig, "modernbert": ModernBertConfig, "deberta-v2": DebertaV2Config}[spec["backbone"]]
    extra: dict[str, Any] = {"pad_token_id": tokenizer.pad_token_id}
    if spec["backbone"] == "modernbert":
        extra.update(
            bos_token_id=tokenizer.cls_token_id, cls_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id, sep_token_id=tokenizer.sep_token_id,
        )
    encoder = config_cls(vocab_size=vocab, **dims, **extra)
    config = GLiClassConfig(
        encoder_config=encoder.to_dict(),
        encoder_model=f"{shape}-shape-random",
        class_token_index=ids["<<LABEL>>"],
        text_token_index=ids["<<SEP>>"],
        example_token_index=ids["<<EXAMPLE>>"],
        vocab_size=vocab,
        **SIMILARITY_DEFAULTS,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = GLiClassModel(config)
    info = {
        "backbone": spec["backbone"],
        "layers": dims["num_hidden_layers"],
        "hidden": dims["hidden_size"],
        "heads": dims["num_attention_heads"],
        "intermediate": dims["intermediate_size"],
        "vocab": vocab,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
    }
    save_pretrained(model, path, tokenizer)
    del model
    return path, info


def take(texts: Sequence[str], n: int) -> list[str]:
    """The first ``n`` texts, cycling through the set when it is shorter (keeps title/article pairs)."""
    if n <= len(texts):
        return list(texts[:n])
    reps = math.ceil(n / len(texts))
    return (list(texts) * reps)[:n]


def workloads(limit: int | None) -> dict[str, list[str]]:
    sets = common.text_sets()
    out = {name: sets[name] for name in WORKLOADS}
    if limit:
        out = {name: texts[: limit + limit % 2] for name, texts in out.items()}
    return out


# Back-compatible helpers (tests/test_bench_smoke.py): a DeBERTa-v3-shaped checkpoint with the tiny tokenizer.
VOCAB = 128_100 + 3


def build_checkpoint(path: Path, layers: int, hidden: int | None = None, vocab: int = VOCAB) -> Path:
    """A random-weight GLiClass on a DeBERTa-v3 shape with the tiny unigram tokenizer, saved at ``path``."""
    from transformers import DebertaV2Config

    from gliclass_dist.model.config import GLiClassConfig
    from gliclass_dist.model.loading import save_pretrained
    from gliclass_dist.model.modeling import GLiClassModel
    from gliclass_dist.model.tiny import train_tokenizer

    tokenizer = train_tokenizer("unigram")
    ids = tokenizer.get_vocab()
    enc = dict(SHAPES["deberta-v3-base"]["encoder"], num_hidden_layers=layers, vocab_size=vocab, pad_token_id=0)
    if hidden:
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
    return save_pretrained(GLiClassModel(config), path, tokenizer)


def make_texts(tokenizer: Any, target_tokens: int, count: int, seed: int) -> list[str]:
    """Synthetic texts of about ``target_tokens`` tokens from the tiny corpus' words."""
    import random

    from gliclass_dist.model.tiny import CORPUS

    words = " ".join(CORPUS).replace(",", "").replace(".", "").split()
    rng = random.Random(seed)
    per_word = len(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) / len(words)
    return [
        " ".join(rng.choices(words, k=max(3, int(rng.uniform(0.6, 1.4) * target_tokens / per_word))))
        for _ in range(count)
    ]


def label_names(count: int) -> list[str]:
    return common.label_set(count) if count <= len(common.NEWS_LABELS) else [f"label {i}" for i in range(count)]


# ---------------------------------------------------------------------------------------------- fed_engine workers
_TABLES: dict[str, Any] = {}


def fed_init() -> None:
    """Pool initializer: one core per worker, as a Ray tokenize task with ``num_cpus=1``."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    torch.set_num_threads(1)
    import gliclass_dist.ray.predictor  # noqa: F401 - warm the imports before the clock starts


def fed_task(task: tuple[str, int, int, str, int, Any]) -> tuple[Any, float]:
    """The Ray tokenize stage on rows ``start:stop`` of the Arrow file: (encoded table, CPU seconds)."""
    import pyarrow as pa

    from gliclass_dist.ray.predictor import tokenize_batch

    ipc_path, start, stop, model_path, max_length, spec = task
    cpu = time.process_time()
    table = _TABLES.get(ipc_path)
    if table is None:
        _TABLES.clear()
        table = _TABLES[ipc_path] = pa.ipc.open_file(pa.memory_map(ipc_path)).read_all()
    out = tokenize_batch(
        table.slice(start, stop - start), model_path=model_path, max_length=max_length, label_spec=spec,
        text_column="text", keep=["id"],
    )
    return out, time.process_time() - cpu


def fed_warm(task: tuple[str, int, int, str, int, Any]) -> int:
    """Load the tokenizer and the Arrow file in a worker (short pause so that every worker gets one)."""
    fed_task(task)
    time.sleep(0.2)
    return os.getpid()


# ---------------------------------------------------------------------------------------------- the run
class Bench:
    """Results, clock and output of one run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.perf_counter()
        self.deadline = self.started + args.deadline_s
        self.device = "cuda" if torch.cuda.is_available() and args.device != "cpu" and not args.smoke else "cpu"
        self.dtype = "bfloat16" if self.device == "cuda" else "float32"
        self.results: list[dict[str, Any]] = []
        self.meta: dict[str, Any] = {}
        self.out = Path(args.out)
        self.shape_end = self.deadline
        self.sampler: BusySampler | None = None

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def out_of_time(self) -> bool:
        now = time.perf_counter()
        return now > self.deadline or now > self.shape_end

    def add(self, **row: Any) -> dict[str, Any]:
        base = {
            "workload": None, "model_shape": None, "approach": None, "labels": None, "rows_per_s": None,
            "gpu_busy": None, "mfu": None, "variant": "default", "status": "ok",
        }
        base.update(row)
        self.results.append(base)
        if base["status"] == "ok":
            logger.info(
                "%-16s %-10s %-10s %-22s L=%-3s %9.1f rows/s busy=%s mfu=%s",
                base["model_shape"], base["workload"], base["approach"], base["variant"], base["labels"],
                base["rows_per_s"], base["gpu_busy"], base["mfu"],
            )
        else:
            logger.info(
                "%-16s %-10s %-10s %-22s L=%-3s %s: %s", base["model_shape"], base["workload"], base["approach"],
                base["variant"], base["labels"], base["status"], base.get("reason"),
            )
        self.save()
        return base

    def save(self) -> None:
        payload = {
            "device": self.meta.get("device"),
            **self.meta,
            "seconds": round(self.elapsed(), 1),
            "results": self.results,
        }
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        tmp.replace(self.out)

    def measure(
        self,
        fn: Callable[[list[str], list[str]], Any],
        texts: Sequence[str],
        labels: list[str],
        counter: FlopCounter | None,
        sampler: BusySampler,
        target_s: float | None = None,
        even: bool = False,
    ) -> dict[str, Any]:
        """rows/s of one call of ``fn`` sized (from warm-up calls) to last about ``target_s``."""
        target_s = target_s or self.args.target_s
        floor = self.args.min_rows

        def size(rate: float, scale: float = 1.0) -> int:
            n = max(floor, min(MAX_ROWS, int(rate * target_s * scale)))
            return n + n % 2 if even else n

        n = min(len(texts), WARM_ROWS)
        self.sync()
        start = time.perf_counter()
        fn(take(texts, n), labels)
        self.sync()
        wall = time.perf_counter() - start
        if wall < 0.15 * target_s:  # a tiny warm-up under-estimates the rate: size once more
            n = size(n / wall, 0.3)
            start = time.perf_counter()
            fn(take(texts, n), labels)
            self.sync()
            wall = time.perf_counter() - start
        n = size(n / wall)
        batch = take(texts, n)
        if counter:
            counter.reset()
        sampler.start()
        self.sync()
        start = time.perf_counter()
        fn(batch, labels)
        self.sync()
        wall = time.perf_counter() - start
        busy = sampler.stop()
        return self.figures(n, wall, busy, counter)

    def figures(self, rows: int, wall: float, busy: float | None, counter: FlopCounter | None) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": rows, "seconds": round(wall, 3), "rows_per_s": round(rows / wall, 2),
                               "gpu_busy": busy}
        if self.sampler is not None and self.sampler.driver_mean is not None:
            out["gpu_busy_driver_samples"] = self.sampler.driver_mean
        if counter is not None:
            flops, tokens = counter.total()
            out["mfu"] = round(flops / wall / self.meta["peak_flops"], 4)
            out["useful_tflops"] = round(flops / wall / 1e12, 3)
            out["tokens_per_row"] = round(tokens / rows, 1)
        return out


def open_pools(sizes: Sequence[int]) -> dict[int, Any]:
    ctx = mp.get_context("spawn")
    return {n: ctx.Pool(n, initializer=fed_init) for n in sizes}


def run_shape(
    bench: Bench,
    shape: str,
    tokenizer: Any,
    texts: dict[str, list[str]],
    sampler: BusySampler,
    pools: dict[int, Any],
    work: Path,
) -> None:
    """Every cell of one model shape, in priority order, within the shape's share of the deadline."""
    import pyarrow as pa

    from gliclass_dist.engine import Prediction, fill_prediction, prepare_rows
    from gliclass_dist.labels import LabelSpec
    from gliclass_dist.ray.predictor import GLiClassPredictor

    args = bench.args
    common_fields = {"model_shape": shape}
    started = time.perf_counter()
    path, info = build_shape(work / shape, shape, tokenizer, args.smoke, bench.device)
    info["build_s"] = round(time.perf_counter() - started, 1)
    spec5 = LabelSpec(labels=label_names(5))
    options = dict(keep=["id"], device=bench.device, dtype=bench.dtype, max_length=WINDOW)
    predictor = None
    if bench.device == "cuda":
        # The engine's loader builds the network (random init) before loading the weights; with CUDA as the
        # default device that init is instant instead of seconds of CPU. Fall back to a plain load on error.
        try:
            with torch.device("cuda"):
                predictor = GLiClassPredictor(str(path), spec5, **options)
            predictor.classifier.classify(texts["bbc_mixed"][:64], label_names(5))
            info["loaded_with_cuda_default_device"] = True
        except Exception:  # noqa: BLE001
            logger.exception("loading with CUDA as the default device failed; loading plainly")
            predictor = None
            gc.collect()
            torch.cuda.empty_cache()
    if predictor is None:
        predictor = GLiClassPredictor(str(path), spec5, **options)
    clf = predictor.classifier
    encoder = clf.model.model.encoder_model
    info["attn_implementation"] = getattr(encoder.config, "_attn_implementation", None)
    info["default_token_budget"] = clf.token_budget
    info["load_s"] = round(time.perf_counter() - started - info["build_s"], 1)
    bench.meta.setdefault("model_shapes", {})[shape] = info
    counter = FlopCounter(encoder)
    clf.classify(texts["bbc_mixed"][:64], label_names(5))  # CUDA/cuBLAS warm-up
    engine_rates: dict[tuple[str, int], float] = {}

    def engine_call(t: list[str], labels: list[str]) -> Any:
        return clf.classify(t, labels)

    def engine_cell(workload: str, labels: int) -> None:
        fig = bench.measure(engine_call, texts[workload], label_names(labels), counter, sampler,
                            even=workload == "bbc_mixed")
        engine_rates[(workload, labels)] = fig["rows_per_s"]
        bench.add(workload=workload, approach="engine", labels=labels, dtype=bench.dtype,
                  token_budget=clf.token_budget, **common_fields, **fig)

    # -- reference: load, search its best (dtype, batch size) on bbc_mixed at 5 labels
    ref: dict[str, Any] = {}

    def reference_setup() -> None:
        import gliclass
        from transformers import AutoTokenizer

        rt = AutoTokenizer.from_pretrained(str(path))
        model = gliclass.GLiClassModel.from_pretrained(str(path)).eval()
        ref["pipe"] = gliclass.ZeroShotClassificationPipeline(
            model, rt, classification_type="multi-label", device="cuda:0" if bench.device == "cuda" else "cpu",
            max_length=WINDOW, max_classes=1024, progress_bar=False,
        )
        ref["model"] = model
        enc = next(m for m in model.modules() if type(m).__name__ == type(encoder).__name__)
        ref["counter"] = FlopCounter(enc)
        dtypes = ("bfloat16", "float16", "float32") if bench.device == "cuda" else ("float32", "bfloat16")
        sizes = (8, 32, 128) if not args.smoke else (8, 32)
        tried: list[dict[str, Any]] = []

        def trial(dtype: str, bs: int) -> float:
            model.to(dtype=getattr(torch, dtype))
            try:
                fig = bench.measure(reference_fn(bs), texts["bbc_mixed"], label_names(5), None, sampler,
                                    target_s=args.target_s * 0.5, even=True)
                rate = fig["rows_per_s"]
            except Exception as exc:  # noqa: BLE001 - a dtype the reference cannot run
                logger.warning("reference %s batch %d failed: %s", dtype, bs, exc)
                rate, fig = 0.0, {"error": f"{type(exc).__name__}: {exc}"[:300]}
            tried.append({"dtype": dtype, "batch_size": bs, **fig})
            return rate

        mid = sizes[len(sizes) // 2]
        dtype_rates = {d: trial(d, mid) for d in dtypes}
        best_dtype = max(dtype_rates, key=lambda d: dtype_rates[d])
        info["reference_search"] = tried
        if dtype_rates[best_dtype] <= 0:
            raise RuntimeError(f"the reference failed in every dtype: {tried}")
        size_rates = {mid: dtype_rates[best_dtype]}
        for bs in sizes:
            if bs != mid:
                size_rates[bs] = trial(best_dtype, bs)
        best_bs = max(size_rates, key=lambda b: size_rates[b])
        model.to(dtype=getattr(torch, best_dtype))
        ref.update(dtype=best_dtype, batch_size=best_bs)
        info["reference_best"] = {"dtype": best_dtype, "batch_size": best_bs}

    def reference_fn(bs: int) -> Callable[[list[str], list[str]], Any]:
        def call(t: list[str], labels: list[str]) -> Any:
            with torch.inference_mode():
                return ref["pipe"](t, labels, threshold=0.0, batch_size=bs)

        return call

    def reference_cell(workload: str, labels: int) -> None:
        if "pipe" not in ref:
            raise RuntimeError(ref.get("error", "the reference did not load"))
        fig = bench.measure(reference_fn(ref["batch_size"]), texts[workload], label_names(labels), ref["counter"],
                            sampler, even=workload == "bbc_mixed")
        bench.add(workload=workload, approach="reference", labels=labels, dtype=ref["dtype"],
                  batch_size=ref["batch_size"], **common_fields, **fig)

    # -- fed_engine: N tokenize processes feeding the Ray model stage in this process
    fed_files: dict[str, tuple[str, int]] = {}

    def fed_file(workload: str) -> tuple[str, int]:
        if workload not in fed_files:
            rate = engine_rates.get((workload, 5)) or 100.0
            n = max(args.min_rows * 2, min(MAX_ROWS, int(rate * args.target_s * 2)))
            rows = take(texts[workload], n)
            table = pa.table({"id": pa.array(range(n), pa.int64()), "text": pa.array(rows, pa.string())})
            ipc = work / f"{shape}_{workload}.arrow"
            with pa.ipc.new_file(str(ipc), table.schema) as writer:
                writer.write_table(table)
            fed_files[workload] = (str(ipc), n)
        return fed_files[workload]

    def fed_cell(workload: str, n_workers: int, batch: int | None = None) -> None:
        ipc, n = fed_file(workload)
        batch = batch or args.fed_batch_rows
        tasks = [(ipc, s, min(s + batch, n), str(path), WINDOW, spec5) for s in range(0, n, batch)]
        pool = pools[n_workers]
        pool.map(fed_warm, [tasks[0]] * n_workers, chunksize=1)
        counter.reset()
        sampler.start()
        bench.sync()
        start = time.perf_counter()
        done = 0
        cpu = 0.0
        for table, cpu_s in pool.imap_unordered(fed_task, tasks, chunksize=1):
            done += predictor(table).num_rows
            cpu += cpu_s
        bench.sync()
        wall = time.perf_counter() - start
        busy = sampler.stop()
        if done != n:
            raise RuntimeError(f"fed_engine landed {done} rows of {n}")
        fig = bench.figures(n, wall, busy, counter)
        engine = engine_rates.get((workload, 5))
        variant = f"workers={n_workers}" + ("" if batch == args.fed_batch_rows else f",batch_rows={batch}")
        bench.add(workload=workload, approach="fed_engine", labels=5, variant=variant,
                  workers=n_workers, batch_rows=batch, dtype=bench.dtype, token_budget=clf.token_budget,
                  tokenize_cpu_s_per_row=round(cpu / n, 6),
                  over_engine=round(fig["rows_per_s"] / engine, 3) if engine else None, **common_fields, **fig)

    # -- engine variants (knobs the engine exposes, or that sit outside it)
    def budget_cell(budget: int) -> None:
        old = clf.token_budget
        clf.token_budget = budget
        try:
            fig = bench.measure(engine_call, texts["bbc_mixed"], label_names(5), counter, sampler, even=True)
        finally:
            clf.token_budget = old
        bench.add(workload="bbc_mixed", approach="engine", labels=5, variant=f"token_budget={budget}",
                  dtype=bench.dtype, token_budget=budget, **common_fields, **fig)

    def prefetch_call(t: list[str], labels: list[str], chunk: int = 512) -> list[Prediction]:
        """Tokenize chunk k+1 in a thread while chunk k is scored (prepare_rows + score_encoded)."""
        chunks = [t[i : i + chunk] for i in range(0, len(t), chunk)]
        preds: list[Prediction] = []
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(prepare_rows, clf.builder, chunks[0], [labels] * len(chunks[0]))
            for k in range(len(chunks)):
                statuses, encoded = pending.result()
                if k + 1 < len(chunks):
                    pending = pool.submit(prepare_rows, clf.builder, chunks[k + 1], [labels] * len(chunks[k + 1]))
                rows = [r for r in encoded if r is not None]
                logits = clf.score_encoded(rows)
                for row, row_logits in zip(rows, logits):
                    if isinstance(row_logits, Exception):
                        raise row_logits
                    pred = Prediction()
                    fill_prediction(pred, row.labels, row_logits, "multi-label", 0.5, {}, row.truncated)
                    preds.append(pred)
        return preds

    def prefetch_cell(workload: str) -> None:
        fig = bench.measure(prefetch_call, texts[workload], label_names(5), counter, sampler,
                            even=workload == "bbc_mixed")
        bench.add(workload=workload, approach="engine", labels=5, variant="prefetch_thread", dtype=bench.dtype,
                  token_budget=clf.token_budget, **common_fields, **fig)

    def eager_cell() -> None:
        current = getattr(encoder.config, "_attn_implementation", None)
        if current != "sdpa":
            bench.add(workload="bbc_mixed", approach="engine", labels=5, variant="sdpa_off", status="skipped",
                      reason=f"the backbone runs {current!r} attention here (no SDPA path to turn off)",
                      **common_fields)
            return
        encoder.set_attn_implementation("eager")
        try:
            fig = bench.measure(engine_call, texts["bbc_mixed"], label_names(5), counter, sampler, even=True)
        finally:
            encoder.set_attn_implementation(current)
        bench.add(workload="bbc_mixed", approach="engine", labels=5, variant="sdpa_off", dtype=bench.dtype,
                  token_budget=clf.token_budget, **common_fields, **fig)

    def tok_parallel_cell() -> None:
        old = os.environ.get("TOKENIZERS_PARALLELISM", "false")
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
        try:
            fig = bench.measure(engine_call, texts["bbc_mixed"], label_names(5), counter, sampler, even=True)
        finally:
            os.environ["TOKENIZERS_PARALLELISM"] = old
        bench.add(workload="bbc_mixed", approach="engine", labels=5, variant="tokenizer_threads", dtype=bench.dtype,
                  token_budget=clf.token_budget, cpu_threads=os.cpu_count(), **common_fields, **fig)

    def score_only_cell(workload: str) -> None:
        """The GPU-side ceiling: score rows encoded beforehand (the model stage's work, no tokenization)."""
        rate = engine_rates.get((workload, 5)) or 100.0
        n = max(args.min_rows, min(MAX_ROWS, int(rate * args.target_s * 1.5)))
        rows_text = take(texts[workload], n)
        cpu = time.process_time()
        _, encoded = prepare_rows(clf.builder, rows_text, [label_names(5)] * n)
        encode_cpu = time.process_time() - cpu
        rows = [r for r in encoded if r is not None]
        clf.score_encoded(rows[:WARM_ROWS])
        counter.reset()
        sampler.start()
        bench.sync()
        start = time.perf_counter()
        clf.score_encoded(rows)
        bench.sync()
        wall = time.perf_counter() - start
        fig = bench.figures(n, wall, sampler.stop(), counter)
        bench.add(workload=workload, approach="engine", labels=5, variant="score_only", dtype=bench.dtype,
                  token_budget=clf.token_budget, encode_cpu_s_per_row=round(encode_cpu / n, 6),
                  **common_fields, **fig)

    def skipped_frameworks() -> None:
        for approach, module, name in (("ray_job", "ray", "Ray"), ("spark_job", "pyspark", "pyspark")):
            try:
                __import__(module)
                reason = (f"{name} is installed here, but gpu_bench.py does not start it; bench/distributed.py "
                          "measures the real job")
            except ImportError:
                reason = f"{name} is not installed on this machine; fed_engine runs the Ray job's stages without it"
            for workload in WORKLOADS:
                bench.add(workload=workload, approach=approach, labels=5, status="skipped", reason=reason,
                          **common_fields)

    cells: list[tuple[str, Callable[[], None], dict[str, Any]]] = []

    def cell(name: str, fn: Callable[[], None], **where: Any) -> None:
        cells.append((name, fn, where))

    cell("frameworks", skipped_frameworks)
    cell("engine", lambda: engine_cell("bbc_mixed", 5), workload="bbc_mixed", approach="engine", labels=5)
    cell("reference setup", reference_setup, approach="reference", variant="setup")
    cell("reference", lambda: reference_cell("bbc_mixed", 5), workload="bbc_mixed", approach="reference", labels=5)
    for labels in (1, 128):
        cell("engine", lambda lb=labels: engine_cell("bbc_long", lb), workload="bbc_long", approach="engine",
             labels=labels)
    for n_workers in args.fed_workers:
        cell("fed_engine", lambda k=n_workers: fed_cell("bbc_mixed", k), workload="bbc_mixed",
             approach="fed_engine", labels=5, variant=f"workers={n_workers}")
    cell("score_only", lambda: score_only_cell("bbc_mixed"), workload="bbc_mixed", approach="engine", labels=5,
         variant="score_only")
    for labels in (1, 128):
        cell("reference", lambda lb=labels: reference_cell("bbc_long", lb), workload="bbc_long",
             approach="reference", labels=labels)
    grid = [(w, lb) for w in WORKLOADS for lb in args.labels]
    for workload, labels in grid:
        if (workload, labels) not in (("bbc_mixed", 5), ("bbc_long", 1), ("bbc_long", 128)):
            cell("engine", lambda w=workload, lb=labels: engine_cell(w, lb), workload=workload, approach="engine",
                 labels=labels)
    cell("prefetch", lambda: prefetch_cell("bbc_mixed"), workload="bbc_mixed", approach="engine", labels=5,
         variant="prefetch_thread")
    for budget in args.budgets:
        cell("budget", lambda b=budget: budget_cell(b), workload="bbc_mixed", approach="engine", labels=5,
             variant=f"token_budget={budget}")
    cell("sdpa_off", eager_cell, workload="bbc_mixed", approach="engine", labels=5, variant="sdpa_off")
    for workload, labels in grid:
        if (workload, labels) not in (("bbc_mixed", 5), ("bbc_long", 1), ("bbc_long", 128)):
            cell("reference", lambda w=workload, lb=labels: reference_cell(w, lb), workload=workload,
                 approach="reference", labels=labels)
    for workload in ("bbc_titles", "bbc_long"):
        for n_workers in args.fed_workers:
            cell("fed_engine", lambda w=workload, k=n_workers: fed_cell(w, k), workload=workload,
                 approach="fed_engine", labels=5, variant=f"workers={n_workers}")
    cell("tokenizer_threads", tok_parallel_cell, workload="bbc_mixed", approach="engine", labels=5,
         variant="tokenizer_threads")
    cell("prefetch", lambda: prefetch_cell("bbc_long"), workload="bbc_long", approach="engine", labels=5,
         variant="prefetch_thread")
    top, big = max(args.fed_workers), args.fed_batch_rows * 4  # larger Ray blocks: fewer model-stage calls
    cell("fed_engine", lambda: fed_cell("bbc_mixed", top, big), workload="bbc_mixed", approach="fed_engine",
         labels=5, variant=f"workers={top},batch_rows={big}")

    for name, fn, where in cells:
        if name != "frameworks" and bench.out_of_time():
            bench.add(status="skipped", reason="time budget of this shape used up", **common_fields, **where)
            continue
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - one failing cell must not cost the others
            logger.exception("%s %s failed", shape, name)
            if name == "reference setup":
                ref["error"] = f"reference setup failed: {type(exc).__name__}: {exc}"[:400]
            if device_lost(exc):
                raise
            bench.add(status="error", reason=f"{type(exc).__name__}: {exc}"[:400], **common_fields, **where)
    counter.close()
    if "counter" in ref:
        ref["counter"].close()
    ref.clear()


def stop_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def device_lost(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "cuda error" in text and ("illegal" in text or "launch failure" in text or "unspecified" in text)


# ---------------------------------------------------------------------------------------------- analysis
def ok_rows(results: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [r for r in results if r["status"] == "ok" and all(r.get(k) == v for k, v in match.items())]


def rate_of(results: list[dict[str, Any]], **match: Any) -> float | None:
    rows = ok_rows(results, **match)
    return rows[0]["rows_per_s"] if rows else None


def derive(results: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Per shape: CPU cores per GPU to stay above 85% busy; and the issue's target checks."""
    derived: dict[str, Any] = {}
    targets: list[dict[str, Any]] = []

    def check(shape: str, name: str, value: float | None, threshold: float) -> None:
        targets.append({"model_shape": shape, "target": name, "value": None if value is None else round(value, 3),
                        "threshold": threshold, "met": None if value is None else value >= threshold})

    shapes = sorted({r["model_shape"] for r in results if r.get("model_shape")})
    for shape in shapes:
        eng = {(r["workload"], r["labels"]): r for r in ok_rows(results, model_shape=shape, approach="engine",
                                                                variant="default")}
        ref = {(r["workload"], r["labels"]): r for r in ok_rows(results, model_shape=shape, approach="reference")}
        m5 = ("bbc_mixed", 5)
        check(shape, "engine / reference, bbc_mixed, 5 labels",
              eng[m5]["rows_per_s"] / ref[m5]["rows_per_s"] if m5 in eng and m5 in ref else None, 3.0)
        long1, long128 = eng.get(("bbc_long", 1)), eng.get(("bbc_long", 128))
        check(shape, "engine 128 labels / 1 label, bbc_long",
              long128["rows_per_s"] / long1["rows_per_s"] if long1 and long128 else None, 0.8)
        check(shape, "engine GPU busy %, bbc_mixed, 5 labels", eng[m5]["gpu_busy"] if m5 in eng else None,
              BUSY_TARGET)
        fed_all = ok_rows(results, model_shape=shape, approach="fed_engine", workload="bbc_mixed")
        fed = sorted((r for r in fed_all if "," not in r["variant"]), key=lambda r: r["workers"])  # default blocks
        best_fed = max((r["rows_per_s"] for r in fed_all), default=None)
        check(shape, "fed_engine (best N) / engine, bbc_mixed, 5 labels",
              best_fed / eng[m5]["rows_per_s"] if best_fed and m5 in eng else None, 0.8)
        entry: dict[str, Any] = {"fed_engine": [{"workers": r["workers"], "batch_rows": r["batch_rows"],
                                                 "rows_per_s": r["rows_per_s"], "gpu_busy": r["gpu_busy"]}
                                                for r in sorted(fed_all, key=lambda r: (r["workers"], r["batch_rows"]))]}
        busy_known = [r for r in fed if r["gpu_busy"] is not None]
        above = [r for r in busy_known if r["gpu_busy"] >= BUSY_TARGET]
        if above:
            entry["cores_per_gpu_measured"] = above[0]["workers"] + 1
            entry["note_measured"] = "smallest N with the GPU >= 85% busy, plus the core of the model process"
        elif busy_known:
            top = max(busy_known, key=lambda r: r["gpu_busy"])
            entry["cores_per_gpu_measured"] = None
            entry["note_measured"] = (f"not reached: at most {top['gpu_busy']}% busy (N={top['workers']}); "
                                      "see cores_per_gpu_model")
        else:
            entry["cores_per_gpu_measured"] = None
            entry["note_measured"] = "no GPU busy figures (no NVML or a CPU run)"
        so = ok_rows(results, model_shape=shape, variant="score_only", workload="bbc_mixed")
        cpu_per_row = [r["tokenize_cpu_s_per_row"] for r in fed if r.get("tokenize_cpu_s_per_row")]
        c = (sum(cpu_per_row) / len(cpu_per_row)) if cpu_per_row else (so[0]["encode_cpu_s_per_row"] if so else None)
        entry["tokenize_cpu_s_per_row"] = c
        if so and c:
            rate, busy = so[0]["rows_per_s"], so[0]["gpu_busy"]
            entry["score_only_rows_per_s"], entry["score_only_gpu_busy"] = rate, busy
            if busy is None:
                entry["cores_per_gpu_model"] = None
                entry["note_model"] = "no GPU busy figures (no NVML or a CPU run)"
            elif busy >= BUSY_TARGET:
                need = rate * BUSY_TARGET / busy
                entry["cores_per_gpu_model"] = math.ceil(need * c) + 1
                entry["note_model"] = (f"feed {need:.0f} rows/s (the model stage's rate at 85% busy) x {c * 1e3:.2f} "
                                       "tokenize CPU-ms per row, plus the model process's core")
            else:
                entry["cores_per_gpu_model"] = None
                entry["note_model"] = (f"the model stage alone keeps the GPU only {busy}% busy on pre-encoded rows "
                                       f"({rate:.0f} rows/s): more tokenize cores cannot reach 85%; it needs "
                                       "more model processes per GPU or less Python per batch")
        derived[shape] = entry
    return derived, targets


def summary(path: Path) -> int:
    """Print a compact table of a gpu.json and check that every workload and approach is present."""
    data = json.loads(path.read_text())
    results = data["results"]
    print(f"device: {data.get('device')}  smoke: {data.get('smoke')}  seconds: {data.get('seconds')}  "
          f"rows: {len(results)}  stopped_early: {data.get('stopped_early')}")
    for r in results:
        if r["status"] == "ok":
            print(f"  {r['model_shape']:16s} {r['workload'] or '-':10s} {r['approach']:10s} {r['variant']:22s} "
                  f"L={r['labels']!s:4s} {r['rows_per_s']:10.1f} rows/s  busy={r['gpu_busy']}  mfu={r['mfu']}")
    counts: dict[str, int] = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print("status counts:", counts)
    for t in data.get("targets", []):
        print(f"  target {t['model_shape']:16s} {t['target']:52s} {t['value']} (>= {t['threshold']}) met={t['met']}")
    for shape, d in data.get("derived", {}).items():
        print(f"  cores/GPU {shape:16s} measured={d.get('cores_per_gpu_measured')} model={d.get('cores_per_gpu_model')}")
    missing = []
    for shape in data.get("model_shapes", {}) or {r["model_shape"] for r in results}:
        for workload in WORKLOADS:
            for approach in APPROACHES:
                if not any(r["model_shape"] == shape and r["workload"] == workload and r["approach"] == approach
                           for r in results):
                    missing.append((shape, workload, approach))
    if missing:
        print("MISSING (shape, workload, approach):", missing)
        return 1
    print("every model shape x workload x approach is present (ok, skipped or error)")
    return 0


def plot(data: dict[str, Any], path: Path) -> Path | None:
    """rows/s vs labels (engine vs reference) per shape; fed_engine rows/s and GPU busy vs N per shape."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plot")
        return None
    results = data["results"]
    shapes = [s for s in SHAPES if any(r["model_shape"] == s for r in results)]
    if not shapes:
        return None
    fig, axes = plt.subplots(2, len(shapes), figsize=(5.2 * len(shapes), 8.5), squeeze=False)
    colors = {"bbc_mixed": "tab:blue", "bbc_long": "tab:orange", "bbc_titles": "tab:green"}
    for col, shape in enumerate(shapes):
        ax = axes[0][col]
        for workload in WORKLOADS:
            for approach, style in (("engine", "-"), ("reference", "--")):
                pts = sorted((r["labels"], r["rows_per_s"]) for r in ok_rows(
                    results, model_shape=shape, workload=workload, approach=approach, variant="default"))
                if pts:
                    ax.plot(*zip(*pts), style, marker="o", color=colors[workload], label=f"{approach} {workload}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(list(LABEL_COUNTS), [str(x) for x in LABEL_COUNTS])
        ax.set_xlabel("labels per text")
        ax.set_ylabel("rows / s")
        ax.set_title(f"{shape}: engine (solid) vs reference (dashed)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        ax = axes[1][col]
        fed = sorted((r for r in ok_rows(results, model_shape=shape, approach="fed_engine", workload="bbc_mixed")
                      if "," not in r["variant"]), key=lambda r: r["workers"])
        if fed:
            xs = list(range(len(fed)))
            ax.bar(xs, [r["rows_per_s"] for r in fed], color="tab:blue", alpha=0.7, label="fed_engine rows/s")
            ax.set_xticks(xs, [str(r["workers"]) for r in fed])
            engine = rate_of(results, model_shape=shape, approach="engine", variant="default", workload="bbc_mixed",
                             labels=5)
            if engine:
                ax.axhline(engine, color="k", linestyle="--", label="engine alone")
            ax.set_xlabel("tokenize processes (N)")
            ax.set_ylabel("rows / s (bbc_mixed, 5 labels)")
            busy = [r["gpu_busy"] for r in fed]
            if any(b is not None for b in busy):
                twin = ax.twinx()
                twin.plot(xs, [b if b is not None else float("nan") for b in busy], "r-o", label="GPU busy %")
                twin.axhline(BUSY_TARGET, color="r", linestyle=":", alpha=0.6)
                twin.set_ylim(0, 100)
                twin.set_ylabel("GPU busy % (NVML)")
            ax.legend(fontsize=7, loc="upper left")
        else:
            ax.text(0.5, 0.5, "no fed_engine results", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"{shape}: engine fed by N CPU processes")
    tag = " (SMOKE: tiny shapes on CPU, not GPU figures)" if data.get("smoke") else ""
    fig.suptitle(f"GLiClass engine on {data.get('device')}{tag}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_out = Path(os.environ["OUT"]) / "gpu.json" if os.environ.get("OUT") else common.RESULTS / "gpu.json"
    parser.add_argument("--out", default=str(default_out))
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU, few rows, about a minute")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present) or cpu")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--labels", nargs="+", type=int, default=list(LABEL_COUNTS))
    parser.add_argument("--target-s", type=float, default=None, help="seconds per measured call (1.2; smoke 0.1)")
    parser.add_argument("--deadline-s", type=float, default=None,
                        help="stop starting new cells after this many seconds (390; smoke 300)")
    parser.add_argument("--rows", type=int, default=None, help="texts per workload (all; smoke 32)")
    parser.add_argument("--min-rows", type=int, default=None, help="smallest measured call (64; smoke 8)")
    parser.add_argument("--fed-workers", nargs="+", type=int, default=None, help="N for fed_engine (2 4 8; smoke 2)")
    parser.add_argument("--fed-batch-rows", type=int, default=None, help=f"rows per tokenize task ({FED_BATCH_ROWS})")
    parser.add_argument("--budgets", nargs="+", type=int, default=None, help="token budgets tried (32768 65536)")
    parser.add_argument("--tokenizer", default=None, help="folder with the MiniLM tokenizer.json")
    parser.add_argument("--summary", type=Path, default=None, help="print a table of this JSON and check it")
    parser.add_argument("--plot-only", type=Path, default=None, help="draw the PNG of this JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.summary:
        return summary(args.summary)
    if args.plot_only:
        out = plot(json.loads(args.plot_only.read_text()), args.plot_only.with_suffix(".png"))
        logger.info("plot: %s", out)
        return 0
    smoke = args.smoke
    args.target_s = args.target_s or (0.1 if smoke else 1.2)
    args.deadline_s = args.deadline_s or (300.0 if smoke else 390.0)
    args.rows = args.rows or (32 if smoke else None)
    args.min_rows = args.min_rows or (8 if smoke else 64)
    args.fed_workers = args.fed_workers or ([2] if smoke else [2, 4, 8])
    args.fed_batch_rows = args.fed_batch_rows or (8 if smoke else FED_BATCH_ROWS)
    args.budgets = args.budgets or ([4096, 8192] if smoke else [32768, 65536])

    signal.signal(signal.SIGTERM, stop_on_signal)  # `timeout` sends TERM: still write the JSON and the plot
    bench = Bench(args)
    pools = open_pools(args.fed_workers)  # spawned now, so they import while the first model builds
    work = Path(tempfile.mkdtemp(prefix="gliclass_gpu_"))
    try:
        import transformers

        if bench.device == "cpu":
            torch.set_num_threads(max(1, min(os.cpu_count() or 1, 4)))
        texts = workloads(args.rows)
        tokenizer, tok_source = base_tokenizer(texts["bbc_long"], args.tokenizer)
        peak, peak_source, measured = device_peak(bench.device)
        sampler = BusySampler()  # tried on every run, so a smoke run takes the "no NVML" path too
        nvml_error = sampler.error
        if bench.device != "cuda":
            sampler.disable("CPU run: GPU busy is not sampled")
        bench.sampler = sampler
        bench.meta.update(
            device=torch.cuda.get_device_name(0) if bench.device == "cuda" else "cpu (smoke)" if smoke else "cpu",
            smoke=smoke,
            peak_flops=peak,
            peak_source=peak_source,
            measured_matmul_flops=measured,
            gpu_busy_source=sampler.source,
            gpu_busy_unavailable=sampler.error if sampler.handle is None else None,
            nvml_error=nvml_error,
            units={"rows_per_s": "rows per second over the measured call",
                   "gpu_busy": "percent of time a kernel ran (NVML), mean over the call; null without NVML",
                   "mfu": "useful FLOPs (real tokens, no padding) per second / peak_flops"},
            torch=torch.__version__,
            cuda=torch.version.cuda,
            transformers=transformers.__version__,
            python=sys.version.split()[0],
            cpu_cores=os.cpu_count(),
            dtype=bench.dtype,
            window=WINDOW,
            tokenizer=tok_source,
            rows_per_workload={k: len(v) for k, v in texts.items()},
            settings={k: v for k, v in vars(args).items() if k not in ("summary", "plot_only")},
            knobs={
                "engine_exposes": ["token_budget", "dtype", "max_length", "device", "backend (int8: CPU only)"],
                "measured_outside_the_engine": [
                    "prefetching tokenize thread (prepare_rows + score_encoded, variant prefetch_thread)",
                    "SDPA off (transformers' set_attn_implementation on the loaded encoder, variant sdpa_off)",
                    "the Rust tokenizer's own threads (TOKENIZERS_PARALLELISM=true, variant tokenizer_threads)",
                ],
                "not_exposed": [
                    "pinned host memory / non_blocking copies",
                    "CUDA graphs, torch.compile",
                    "unpadded (varlen) execution",
                    "flash-attention kernels (flash_attn is not installed)",
                ],
            },
        )
        bench.save()
        shapes = list(args.shapes)
        for i, shape in enumerate(shapes):
            bench.shape_end = time.perf_counter() + (bench.deadline - time.perf_counter()) / (len(shapes) - i)
            logger.info("== %s (share ends at %.0fs)", shape, bench.shape_end - bench.started)
            try:
                run_shape(bench, shape, tokenizer, texts, sampler, pools, work)
                gc.collect()  # the shape's models go before the next one loads
                if bench.device == "cuda":
                    torch.cuda.empty_cache()
            except Exception as exc:  # noqa: BLE001 - the next shape may still run
                logger.exception("shape %s failed", shape)
                reason = f"the {shape} model could not be built or loaded: {type(exc).__name__}: {exc}"[:400]
                for workload in WORKLOADS:
                    for approach in APPROACHES:
                        bench.add(model_shape=shape, workload=workload, approach=approach, status="skipped",
                                  reason=reason)
                if device_lost(exc):
                    break
        bench.meta["stopped_early"] = any(r.get("reason") == "time budget of this shape used up"
                                          for r in bench.results)
    finally:
        for pool in pools.values():
            pool.terminate()
            pool.join()
        shutil.rmtree(work, ignore_errors=True)
        derived, targets = derive(bench.results)
        bench.meta["derived"] = derived
        bench.meta["targets"] = targets
        bench.save()
        try:
            png = plot(json.loads(bench.out.read_text()), bench.out.with_suffix(".png"))
            logger.info("plot: %s", png)
        except Exception:  # noqa: BLE001 - the JSON is what counts
            logger.exception("plot failed")
        logger.info("wrote %s in %.0fs", bench.out, bench.elapsed())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
