"""``Classifier``: the one batched inference core that every front end (CLI, Ray, Spark, Serve) shares.

It loads a checkpoint once and classifies texts against label sets, from Python lists or Arrow.
It owns what makes inference fast and safe:

- batched tokenization, with each label's ids cached and concatenated to the text's ids;
- rows (and label chunks) sorted by length and packed into micro-batches under a token budget,
  so padding stays small; pooling honours the attention mask, so a row's scores never depend on
  its batch-mates;
- the text is truncated, never a label; label sets too long for the window are split and merged;
- ``torch.inference_mode``, device and dtype choice (bf16/fp16 on GPU, fp32 on CPU), and an optional
  faster CPU backend (``backend="int8"``: dynamic int8 quantization of the encoder's linear layers);
- out-of-memory back-off: the token budget is halved and the remaining work re-planned under it; the
  reduced budget is kept (across calls too) and doubles back after ``RECOVER_AFTER_BATCHES`` good batches;
- per-row fault isolation: a batch failing otherwise is split down to single rows, and a row that still
  fails gets ``status = "error: ..."``; a row whose scores are NaN/inf gets ``error: non-finite scores``;
- a per-row status for bad input (null/empty/non-string text, no labels), never a dropped row;
- no repeated work: rows with the same model input in one call are scored once, and an optional bounded
  LRU cache (``result_cache_rows``, ``gliclass_dist.result_cache``) answers rows seen in earlier calls;
- results built column-wise from the merged logits (``result_table``): one path, encode -> score -> Arrow,
  for ``classify_arrow``, ``score_arrow`` (Ray's model stage, Serve) and ``classify``/``__call__``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from gliclass_dist.backends import BACKENDS, apply_backend, check_backend, quantize_encoder_int8
from gliclass_dist.calibration import Calibration, load_calibration
from gliclass_dist.encode import (  # has_content, prepare_rows, text_values: re-exported (__all__)
    EncodedBatch,
    encode_arrow,
    has_content,
    prepare_rows,
    text_values,
)
from gliclass_dist.labels import (
    LabelSpec,
    Mode,
    check_mode,
    check_threshold,
    validate_fixed_labels,
)
from gliclass_dist.model.bi_scoring import is_out_of_memory, merge_units, score_bi_encoder_rows
from gliclass_dist.model.inputs import EncodedRow, InputBuilder
from gliclass_dist.model.loading import load_input_builder, load_model, load_tokenizer, resolve_model_ref
from gliclass_dist.model.modeling import GLiClassModel
from gliclass_dist.result_cache import ResultCache, row_key
from gliclass_dist.schema import RESULT_SCHEMA, SCORE_TYPE, Status, output_schema
from gliclass_dist.settings import EngineSettings

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MAX_BATCH_ROWS = 1024
# A micro-batch also closes early when the next (shorter) row would be padded by more than PAD_TOLERANCE
# of the batch's width, once the batch holds MIN_FILL of the token budget (so batches stay large enough
# to keep the device busy). Row scores never depend on batch-mates, so this changes speed, not results.
# On CPU a matmul over ~2k tokens already runs near peak, so batches may close early from there on.
PAD_TOLERANCE = 0.10
MIN_FILL = 0.25
CPU_MIN_FILL_TOKENS = 2048
# Default padded tokens per forward pass. On a GPU, large batches keep the device busy; on CPU, batches
# of ~2k tokens are faster per token than larger ones (activations stay in cache): measured in
# bench/NOTES.md (BBC articles, 5 labels: 1.56x the reference at 2,048 tokens vs 1.26x at 16,384).
GPU_TOKEN_BUDGET = 16_384
CPU_TOKEN_BUDGET = 2_048
# Out-of-memory back-off: the budget is halved (not below MIN_TOKEN_BUDGET) and the remaining batches are
# re-planned under it; after RECOVER_AFTER_BATCHES successful forward passes it doubles, up to token_budget.
MIN_TOKEN_BUDGET = 64
RECOVER_AFTER_BATCHES = 16
# Rows per encode + score round of ``Classifier.classify`` when no ``batch_size`` is given.
CLASSIFY_BATCH_ROWS = 1024


def default_token_budget(device: torch.device) -> int:
    """The token budget used when none is given: ``CPU_TOKEN_BUDGET`` on CPU, ``GPU_TOKEN_BUDGET`` otherwise."""
    return CPU_TOKEN_BUDGET if device.type == "cpu" else GPU_TOKEN_BUDGET


@dataclass
class Prediction:
    """The result for one text."""

    scores: dict[str, float] = field(default_factory=dict)  # every label of the row, input order
    labels: list[str] = field(default_factory=list)  # predicted labels
    top_label: str | None = None
    top_score: float | None = None
    status: str = Status.OK


def pick_device(requested: str | None) -> torch.device:
    """``auto``/``cuda`` use a GPU when one is usable; otherwise CPU, with a warning if one was expected."""
    requested = (requested or "auto").lower()
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda" if requested in ("auto", "cuda") else requested)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if requested.startswith("cuda") or visible not in ("", "-1"):
        logger.warning(
            "a GPU was requested (device=%s, CUDA_VISIBLE_DEVICES=%r) but torch sees no usable CUDA device; "
            "falling back to CPU",
            requested,
            visible,
        )
    return torch.device("cpu")


def pick_dtype(requested: str | None, device: torch.device) -> torch.dtype:
    requested = (requested or "auto").lower()
    if requested != "auto":
        if requested not in DTYPES:
            raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {requested!r}")
        return DTYPES[requested]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class Classifier:
    """GLiClass inference over batches of texts and label sets.

    ``fault_hook`` (tests and drills, None by default): a callable run before every forward pass with the
    batch's padded token count (rows x longest row); whatever it raises is handled exactly like an error
    of the forward pass itself (e.g. ``torch.OutOfMemoryError`` drives the out-of-memory back-off).
    ``active_budget`` is the token budget in use: ``token_budget``, or less after an out-of-memory error.
    """

    fault_hook: Callable[[int], None] | None = None
    # Rows with the same model input (token id chunks) in one scoring call are scored once; False (with the
    # result cache off) scores every row (benchmarks and parity checks compare the two).
    deduplicate: bool = True

    def __init__(
        self,
        model: GLiClassModel,
        builder: InputBuilder,
        *,
        model_name: str,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        token_budget: int | None = None,
        backend: str = "torch",
        calibration: Calibration | None = None,
        result_cache_rows: int = 0,
    ) -> None:
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.dtype = dtype if isinstance(dtype, torch.dtype) else pick_dtype(dtype, self.device)
        self.backend = check_backend(backend, self.device, self.dtype)
        self.model = apply_backend(model.to(device=self.device, dtype=self.dtype).eval(), backend)
        self.builder = builder
        self.model_name = model_name
        self.settings: EngineSettings | None = None  # what it was loaded from (set by from_settings)
        # post-hoc logit calibration (gliclass_dist.calibration), applied to every row before the sigmoid/softmax
        self.calibration = None if calibration is None or calibration.is_identity else calibration
        # rows kept in the cross-batch result cache (0: off); see the result cache in _predict
        self.result_cache_rows = int(result_cache_rows)
        self.token_budget = int(token_budget or default_token_budget(self.device))
        self._backoff_budget: int | None = None  # set by an out-of-memory error, cleared once recovered
        self._good_batches = 0  # successful forward passes since the budget last changed
        self.stats: dict[str, int] = {
            "rows": 0,
            "forward_passes": 0,
            "tokens": 0,
            "padded_tokens": 0,
            "row_errors": 0,
            "oom_backoffs": 0,
            "cache_hits": 0,
            "duplicate_rows": 0,
        }
        logger.info(
            "classifier ready: model=%s device=%s dtype=%s backend=%s window=%d token_budget=%d",
            model_name,
            self.device,
            str(self.dtype).replace("torch.", ""),
            backend,
            builder.max_length,
            self.token_budget,
        )

    @classmethod
    def from_pretrained(
        cls,
        ref: str | os.PathLike[str],
        *,
        device: str | None = "auto",
        dtype: str | None = "auto",
        max_length: int | None = None,
        token_budget: int | None = None,
        revision: str | None = None,
        allow_pickle: bool = False,
        model_name: str | None = None,
        backend: str = "torch",
        threads: int | None = None,
        result_cache_rows: int = 0,
    ) -> Classifier:
        """Load a checkpoint (local folder or hub id) once; every check runs here, before any batch.

        The keywords are the fields of ``gliclass_dist.settings.EngineSettings`` (see ``from_settings``).
        ``token_budget`` caps the padded tokens of one forward pass (default: 2,048 on CPU, 16,384 on GPU).

        ``backend="int8"`` (CPU, float32 only) quantizes the encoder's linear layers to int8 for a
        faster CPU path; scores move slightly (see bench/NOTES.md for the measured F1 change).
        """
        settings = EngineSettings(
            ref=str(ref),
            revision=revision,
            device=device or "auto",
            dtype=dtype or "auto",
            backend=backend,
            max_length=max_length,
            token_budget=token_budget,
            threads=threads,
            allow_pickle=allow_pickle,
            model_name=model_name,
            result_cache_rows=result_cache_rows,
        )
        return cls.from_settings(settings)

    @classmethod
    def from_settings(cls, settings: EngineSettings) -> Classifier:
        """Load the checkpoint ``settings`` describe, on its device, dtype and backend; applies ``threads``.

        The OpenMP wait policy is a worker's start-up setting (``gliclass_dist.worker.configure_worker``):
        front ends apply it before this module imports torch.
        """
        from gliclass_dist.worker import configure_worker

        started = time.perf_counter()
        if settings.threads is not None:
            configure_worker(threads=settings.threads)
        path = resolve_model_ref(settings.ref, settings.revision)
        model = load_model(path, allow_pickle=settings.allow_pickle)
        tokenizer = load_tokenizer(path, model.config)
        builder = load_input_builder(path, model.config, settings.max_length, tokenizer)
        clf = cls(
            model,
            builder,
            model_name=settings.display_name,
            device=settings.device,
            dtype=settings.dtype,
            token_budget=settings.token_budget,
            backend=settings.backend,
            calibration=load_calibration(path),
            result_cache_rows=settings.result_cache_rows,
        )
        clf.settings = settings
        logger.info("loaded %s from %s in %.1fs", clf.model_name, path, time.perf_counter() - started)
        return clf

    # -- scoring -------------------------------------------------------------------------------
    @property
    def active_budget(self) -> int:
        """Padded tokens per forward pass now: ``token_budget``, or less while backing off from an OOM."""
        if self._backoff_budget is None:
            return self.token_budget
        return min(self._backoff_budget, self.token_budget)

    def _forward(self, units: list[list[int]]) -> list[np.ndarray]:
        longest = max(len(u) for u in units)
        ids = torch.full((len(units), longest), self.builder.pad_id, dtype=torch.long)
        mask = torch.zeros((len(units), longest), dtype=torch.long)
        for i, u in enumerate(units):
            ids[i, : len(u)] = torch.tensor(u, dtype=torch.long)
            mask[i, : len(u)] = 1
        if self.fault_hook is not None:
            self.fault_hook(ids.numel())
        with torch.inference_mode():
            out = self.model(ids.to(self.device), mask.to(self.device))
        logits = out.logits.float().cpu().numpy()
        counts = out.label_mask.sum(dim=1).cpu().tolist()
        self.stats["forward_passes"] += 1
        self.stats["tokens"] += int(mask.sum())
        self.stats["padded_tokens"] += ids.numel()
        return [logits[i, : int(counts[i])] for i in range(len(units))]

    def _plan(self, lengths: Sequence[int], budget: int) -> list[list[int]]:
        """Indices grouped into micro-batches, longest first (see ``plan_batches``)."""
        min_fill = MIN_FILL * budget
        if self.device.type == "cpu":
            min_fill = min(min_fill, CPU_MIN_FILL_TOKENS)
        return plan_batches(lengths, budget, min_fill)

    def _score_units(self, units: list[list[int]]) -> list[np.ndarray | Exception]:
        """Logits per unit; a unit that cannot be scored gets its exception instead."""
        results: list[np.ndarray | Exception | None] = [None] * len(units)
        lengths = [len(u) for u in units]

        def replan(remaining: list[list[int]], budget: int) -> list[list[int]]:
            todo = [i for batch in remaining for i in batch]
            return [[todo[j] for j in batch] for batch in self._plan([lengths[i] for i in todo], budget)]

        budget = self.active_budget
        pending = self._plan(lengths, budget)
        while pending:
            batch = pending.pop()
            try:
                for i, logits in zip(batch, self._forward([units[i] for i in batch])):
                    results[i] = logits
            except Exception as exc:  # noqa: BLE001 - isolate the failure to the rows that cause it
                oom = is_out_of_memory(exc)
                if oom and self.device.type == "cuda":
                    torch.cuda.empty_cache()
                if len(batch) == 1:
                    results[batch[0]] = exc
                    self.stats["row_errors"] += 1
                    logger.warning("row failed on its own: %s: %s", type(exc).__name__, exc)
                    continue
                padded = len(batch) * max(lengths[i] for i in batch)
                smaller = max(min(budget, padded) // 2, MIN_TOKEN_BUDGET)
                if oom and smaller < padded:
                    # every later batch, in this call and the next ones, runs under the halved budget
                    budget = self._backoff_budget = smaller
                    self._good_batches = 0
                    self.stats["oom_backoffs"] += 1
                    logger.warning("out of memory on %d rows; halving the token budget to %d", len(batch), budget)
                    pending = replan([*pending, batch], budget)
                    continue
                logger.warning("batch of %d failed (%s: %s); retrying in halves", len(batch), type(exc).__name__, exc)
                half = len(batch) // 2
                pending.extend([batch[half:], batch[:half]])
                continue
            if self._backoff_budget is not None:
                self._good_batches += 1
                if self._good_batches >= RECOVER_AFTER_BATCHES:  # recover slowly: double, up to token_budget
                    self._good_batches = 0
                    budget = min(budget * 2, self.token_budget)
                    self._backoff_budget = None if budget >= self.token_budget else budget
                    logger.info("token budget back up to %d after %d good batches", budget, RECOVER_AFTER_BATCHES)
                    pending = replan(pending, budget)
        return results  # type: ignore[return-value]

    @property
    def result_cache(self) -> ResultCache | None:
        """The cross-call result cache (``result_cache_rows`` rows, LRU), or None when that is 0."""
        rows = int(self.result_cache_rows or 0)
        cache: ResultCache | None = getattr(self, "_result_cache", None)
        if rows <= 0:
            return None
        if cache is None or cache.max_rows != rows:
            cache = self._result_cache = ResultCache(rows)
        return cache

    def score_encoded(self, rows: Sequence[EncodedRow]) -> list[np.ndarray | Exception]:
        """Merged logits per row (all chunks, label order), or the exception that row raised.

        Rows with the same model input (``row_key`` of their chunks) are scored once per call
        (``deduplicate``), and rows found in the result cache (``result_cache_rows`` > 0) are not scored
        again; either way a row gets the logits its own forward pass would give.
        """
        if getattr(self.model, "label_cache", None) is not None:  # a bi-encoder: its row keys omit the labels
            return score_bi_encoder_rows(
                self.model, self.builder, rows, device=self.device, budget=self.active_budget, plan=self._plan,
                stats=self.stats, fault_hook=self.fault_hook,
            )
        cache = self.result_cache
        if not (self.deduplicate or cache is not None):
            return self._score_rows(rows)
        keys = [row_key(row.chunks) for row in rows]
        out: list[np.ndarray | Exception | None] = [None] * len(rows)
        first: dict[bytes, int] = {}  # key -> the row that is scored for it
        hits = 0
        for i, key in enumerate(keys):
            if key in first:
                continue
            cached = cache.get(key) if cache is not None else None
            if cached is not None:
                out[i] = cached
                hits += 1
            first[key] = i
        todo = [i for i in first.values() if out[i] is None]
        for i, result in zip(todo, self._score_rows([rows[i] for i in todo])):
            out[i] = result
            if cache is not None and not isinstance(result, Exception):
                cache.put(keys[i], result)
        for i, key in enumerate(keys):
            if out[i] is None:
                out[i] = out[first[key]]
        self.stats["cache_hits"] += hits
        self.stats["duplicate_rows"] += len(rows) - len(first)
        return out  # type: ignore[return-value]

    def _score_rows(self, rows: Sequence[EncodedRow]) -> list[np.ndarray | Exception]:
        """Merged logits per row, every row scored (the work ``score_encoded`` leaves after de-duplication)."""
        units: list[list[int]] = []
        owner: list[int] = []
        for r, row in enumerate(rows):
            for chunk in row.chunks:
                units.append(chunk)
                owner.append(r)
        return merge_units(rows, owner, self._score_units(units) if units else [])

    # -- Python API ----------------------------------------------------------------------------
    def __call__(
        self,
        texts: str | Sequence[Any],
        candidate_labels: Sequence[str] | Sequence[Sequence[str]],
        **kwargs: Any,
    ) -> Prediction | list[Prediction]:
        """Like a Hugging Face pipeline: one text gives one ``Prediction``, a list gives a list (see ``classify``)."""
        preds = self.classify(texts, candidate_labels, **kwargs)
        return preds[0] if isinstance(texts, str) else preds

    def classify(
        self,
        texts: Sequence[Any],
        labels: Sequence[str] | Sequence[Sequence[str]],
        *,
        mode: Mode = "multi-label",
        threshold: float | Mapping[str, float] = 0.5,
        prompt: str | None = None,
        examples: Sequence[Mapping[str, Any]] | None = None,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
    ) -> list[Prediction]:
        """Classify ``texts`` against one label list for all, or one list per text.

        ``mode`` is ``"multi-label"`` or ``"single-label"``; ``threshold`` (or each value of a per-label
        mapping) a number within [0, 1]; ``prompt`` and ``examples`` may not contain a marker string
        (``<<LABEL>>``, ``<<SEP>>``, ``<<EXAMPLE>>``). Anything else raises ``ValueError`` naming it.

        Rows take the path of ``classify_arrow`` (encoding step, scoring step, Arrow result columns),
        ``batch_size`` rows at a time (default ``CLASSIFY_BATCH_ROWS``); the predictions are read from the
        result columns at the end. ``show_progress_bar`` shows a tqdm bar over the rows (default: when this
        module logs at INFO or below, stderr is a terminal and there is more than one batch).
        """
        mode = check_mode(mode)
        if isinstance(threshold, Mapping):
            default_t = 0.5
            per_label = {label: check_threshold(t, f"threshold[{label!r}]") for label, t in threshold.items()}
        else:
            default_t, per_label = check_threshold(threshold), {}
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if labels and all(isinstance(x, str) for x in labels):
            fixed = validate_fixed_labels(labels)  # type: ignore[arg-type]
            row_labels: list[Any] = [fixed] * len(texts)
        else:
            if len(labels) != len(texts):
                raise ValueError(f"got {len(texts)} texts but {len(labels)} label lists")
            row_labels = list(labels)
        size = CLASSIFY_BATCH_ROWS if batch_size is None else batch_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"batch_size must be a positive number of rows, got {batch_size!r}")
        starts = range(0, max(len(texts), 1), size)  # one (empty) batch for no texts: prompt and examples checked
        if show_progress_bar is None:
            show_progress_bar = logger.isEnabledFor(logging.INFO) and sys.stderr.isatty() and len(starts) > 1
        from tqdm.auto import tqdm

        parts: list[pa.Table] = []
        with tqdm(total=len(texts), unit="rows", desc="classify", disable=not show_progress_bar) as bar:
            for start in starts:
                stop = start + size
                statuses, rows = prepare_rows(self.builder, texts[start:stop], row_labels[start:stop], prompt, examples)
                parts.append(self._score(statuses, rows, mode, default_t, per_label, ""))
                bar.update(len(statuses))
        return predictions_from_arrow(pa.concat_tables(parts))

    def _score(
        self,
        statuses: Sequence[str],
        rows: Sequence[EncodedRow | None],
        mode: Mode,
        threshold: float,
        per_label: Mapping[str, float],
        label_set: str,
    ) -> pa.Table:
        """The scoring step on the encoding step's rows: the result columns (``RESULT_SCHEMA``), one row per row.

        Encoded rows are scored (``score_encoded``), their logits calibrated, then turned into results
        column-wise (``result_table``); the other rows keep their status.
        """
        scorable = [i for i, row in enumerate(rows) if row is not None]
        logits: list[np.ndarray | Exception | None] = [None] * len(rows)
        for i, row_logits in zip(scorable, self.score_encoded([rows[i] for i in scorable])):  # type: ignore[misc]
            if self.calibration is not None and not isinstance(row_logits, Exception):
                row_logits = self.calibration.apply(rows[i].labels, row_logits)  # type: ignore[union-attr]
            logits[i] = row_logits
        self.stats["rows"] += len(statuses)
        return result_table(statuses, rows, logits, mode, threshold, per_label, self.model_name, label_set)

    # -- Arrow API -----------------------------------------------------------------------------
    def score_arrow(self, encoded: EncodedBatch | pa.Table | pa.RecordBatch, spec: LabelSpec) -> pa.Table:
        """The scoring step: encoded rows (``gliclass_dist.encode``) -> the kept columns + the result columns.

        ``encoded`` is an ``EncodedBatch`` or its Arrow form (``EncodedBatch.to_arrow``, e.g. from Ray's
        tokenize stage). ``spec`` gives the mode, thresholds and label set id (each row's labels come with
        its encoded row); one row out per row in.
        """
        if not isinstance(encoded, EncodedBatch):
            encoded = EncodedBatch.from_arrow(encoded)
        results = self._score(
            encoded.statuses, encoded.rows, spec.mode, spec.threshold, spec.thresholds, spec.label_set_id
        )
        kept = encoded.kept
        schema = output_schema(kept.schema, kept.column_names)
        return pa.Table.from_arrays(kept.columns + results.columns, schema=schema)

    def classify_arrow(
        self,
        data: pa.Table | pa.RecordBatch,
        spec: LabelSpec | Sequence[str],
        *,
        text_column: str = "text",
        keep: Sequence[str] = (),
        examples: Sequence[Mapping[str, Any]] | None = None,
    ) -> pa.Table:
        """Classify an Arrow table/batch; returns ``keep`` columns + results, one row per input row.

        ``spec`` is a ``LabelSpec`` or a plain label list (every row scored against it, multi-label at 0.5).
        The encoding step (``gliclass_dist.encode.encode_arrow``) then the scoring step (``score_arrow``).
        """
        spec = as_label_spec(spec)
        encoded = encode_arrow(data, self.builder, spec, text_column=text_column, keep=keep, examples=examples)
        return self.score_arrow(encoded, spec)


def as_label_spec(spec: LabelSpec | Sequence[str]) -> LabelSpec:
    """``spec`` itself, or a ``LabelSpec`` of a plain label list; anything else raises ``ValueError``."""
    if isinstance(spec, LabelSpec):
        return spec
    if isinstance(spec, str) or not isinstance(spec, Sequence):
        raise ValueError(f"labels must be a LabelSpec or a list of label strings, got {spec!r:.200}")
    return LabelSpec(labels=list(spec))


def result_table(
    statuses: Sequence[str],
    rows: Sequence[EncodedRow | None],
    logits: Sequence[np.ndarray | Exception | None],
    mode: Mode,
    threshold: float,
    per_label: Mapping[str, float],
    model_name: str = "",
    label_set: str = "",
) -> pa.Table:
    """The result columns (``RESULT_SCHEMA``) built column-wise from each row's merged (calibrated) logits.

    ``rows[i]`` None: row ``i`` was not scored and keeps ``statuses[i]``. ``logits[i]`` an exception: the
    row gets ``error: <type>: <message>``; logits that are not all finite (NaN/inf, e.g. an fp16 overflow):
    ``Status.NON_FINITE`` and no scores. Otherwise scores are the sigmoid (softmax for single-label) of
    the logits, in the row's label order; ``labels`` those at or over their threshold (the top label for
    single-label); ``truncated`` replaces an ``ok`` status of a row whose text was cut.
    """
    n = len(statuses)
    status = list(statuses)
    scored: list[int] = []
    for i, (row, row_logits) in enumerate(zip(rows, logits)):
        if row is None:
            continue
        if isinstance(row_logits, Exception):
            status[i] = Status.error(f"{type(row_logits).__name__}: {row_logits}")
        elif row_logits is not None:
            scored.append(i)
    counts = np.array([len(logits[i]) for i in scored], dtype=np.int64)  # type: ignore[arg-type]
    flat = np.concatenate([logits[i] for i in scored]).astype(np.float64) if scored else np.zeros(0)  # type: ignore[misc]
    if scored:  # every scored row has at least one label, as reduceat needs
        finite = np.logical_and.reduceat(np.isfinite(flat), np.cumsum(counts) - counts)
        if not finite.all():
            flat = flat[np.repeat(finite, counts)]
            for i in np.asarray(scored)[~finite]:
                status[i] = Status.NON_FINITE
            scored = [i for i, ok in zip(scored, finite) if ok]
            counts = counts[finite]
    for i in scored:
        if rows[i].truncated and status[i] == Status.OK:  # type: ignore[union-attr]
            status[i] = Status.TRUNCATED
    names = pa.array([label for i in scored for label in rows[i].labels], pa.string())  # type: ignore[union-attr]
    lengths = np.zeros(n, dtype=np.int32)
    lengths[scored] = counts
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    top_index = np.full(n, -1, dtype=np.int64)
    selected_counts = np.zeros(n, dtype=np.int32)
    probs = np.zeros(0)
    selected = np.zeros(0, dtype=bool)
    if scored:
        starts = offsets[scored]
        if mode == "single-label":
            shifted = np.exp(flat - np.repeat(np.maximum.reduceat(flat, starts), counts))
            probs = shifted / np.repeat(np.add.reduceat(shifted, starts), counts)
        else:
            probs = 1.0 / (1.0 + np.exp(-flat))
        best = np.repeat(np.maximum.reduceat(probs, starts), counts)
        top = np.minimum.reduceat(np.where(probs == best, np.arange(len(probs)), len(probs)), starts)
        top_index[scored] = top
        if mode == "single-label":
            selected = np.zeros(len(probs), dtype=bool)
            selected[top] = True
        elif per_label:
            bars = [per_label.get(label, threshold) for label in names.to_pylist()]
            selected = probs >= np.asarray(bars, dtype=np.float64)
        else:
            selected = probs >= threshold
        selected_counts[scored] = np.add.reduceat(selected.astype(np.int32), starts)
    selected_offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(selected_counts, out=selected_offsets[1:])
    scores = pa.array(probs.astype(np.float32), pa.float32())
    score_fields = [SCORE_TYPE.field(k) for k in range(SCORE_TYPE.num_fields)]
    top_at = pa.array(top_index, mask=top_index < 0)
    columns = [
        pa.ListArray.from_arrays(pa.array(selected_offsets), names.filter(pa.array(selected, pa.bool_()))),
        pa.ListArray.from_arrays(pa.array(offsets), pa.StructArray.from_arrays([names, scores], fields=score_fields)),
        names.take(top_at),
        scores.take(top_at),
        pa.array(status, pa.string()),
        pa.repeat(pa.scalar(model_name, pa.string()), n),
        pa.repeat(pa.scalar(label_set, pa.string()), n),
    ]
    return pa.Table.from_arrays(columns, schema=RESULT_SCHEMA)


def predictions_from_arrow(results: pa.Table) -> list[Prediction]:
    """One ``Prediction`` per row of a table holding the result columns (``RESULT_SCHEMA``)."""
    scores = results.column("scores").combine_chunks()
    if isinstance(scores, pa.ChunkedArray):  # an empty table has no chunk to combine
        scores = pa.array([], scores.type)
    offsets = scores.offsets.to_numpy().tolist()
    names = scores.values.field("label").to_pylist()
    values = scores.values.field("score").to_pylist()
    columns = zip(
        results.column("labels").to_pylist(),
        results.column("top_label").to_pylist(),
        results.column("top_score").to_pylist(),
        results.column("status").to_pylist(),
    )
    return [
        Prediction(
            scores=dict(zip(names[offsets[i] : offsets[i + 1]], values[offsets[i] : offsets[i + 1]])),
            labels=labels,
            top_label=top_label,
            top_score=top_score,
            status=status,
        )
        for i, (labels, top_label, top_score, status) in enumerate(columns)
    ]


def fill_prediction(
    pred: Prediction,
    labels: list[str],
    logits: np.ndarray,
    mode: Mode,
    threshold: float,
    per_label: Mapping[str, float],
    truncated: bool,
) -> None:
    """Set one row's scores, labels, top label and status from its merged logits (see ``result_table``)."""
    row = EncodedRow(chunk_labels=[list(labels)], truncated=truncated)
    (done,) = predictions_from_arrow(result_table([pred.status], [row], [logits], mode, threshold, per_label))
    pred.scores, pred.labels, pred.status = done.scores, done.labels, done.status
    pred.top_label, pred.top_score = done.top_label, done.top_score


def predictions_to_arrow(preds: Sequence[Prediction], model_name: str, label_set: str) -> pa.Table:
    """Result columns (labels .. label_set) for a list of predictions."""
    n = len(preds)
    scores = [[{"label": k, "score": v} for k, v in p.scores.items()] for p in preds]
    return pa.table(
        {
            "labels": pa.array([p.labels for p in preds], pa.list_(pa.string())),
            "scores": pa.array(scores, pa.list_(SCORE_TYPE)),
            "top_label": pa.array([p.top_label for p in preds], pa.string()),
            "top_score": pa.array([p.top_score for p in preds], pa.float32()),
            "status": pa.array([p.status for p in preds], pa.string()),
            "model": pa.array([model_name] * n, pa.string()),
            "label_set": pa.array([label_set] * n, pa.string()),
        }
    )


def plan_batches(lengths: Sequence[int], budget: int, min_fill: float | None = None) -> list[list[int]]:
    """Indices grouped into micro-batches over the rows sorted longest first.

    A batch holds at most ``budget`` padded tokens (rows x its longest row) and ``MAX_BATCH_ROWS``
    rows; it also closes when the next row is more than ``PAD_TOLERANCE`` shorter than the batch's
    longest row, once the batch already holds ``min_fill`` padded tokens (default ``MIN_FILL`` of the
    budget). So short rows of varied lengths (titles, chat lines) are not padded to the longest of
    hundreds of rows, while batches stay large enough to keep the device busy.
    """
    min_fill = MIN_FILL * budget if min_fill is None else min_fill
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current:
            width = lengths[current[0]]
            full = (len(current) + 1) * width > budget or len(current) >= MAX_BATCH_ROWS
            spread = lengths[i] < (1.0 - PAD_TOLERANCE) * width and len(current) * width >= min_fill
            if full or spread:
                batches.append(current)
                current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def expected_padding_ratio(lengths: Sequence[int], budget: int, min_fill: float | None = None) -> float:
    """Share of padding tokens the planner would produce for these lengths (for benchmarks)."""
    padded = real = 0
    for batch in plan_batches(lengths, budget, min_fill):
        width = max(lengths[i] for i in batch)
        padded += width * len(batch)
        real += sum(lengths[i] for i in batch)
    return 0.0 if padded == 0 else 1.0 - real / padded


__all__ = [
    "BACKENDS",
    "CLASSIFY_BATCH_ROWS",
    "Classifier",
    "Prediction",
    "as_label_spec",
    "default_token_budget",
    "fill_prediction",
    "text_values",
    "has_content",
    "prepare_rows",
    "expected_padding_ratio",
    "pick_device",
    "pick_dtype",
    "plan_batches",
    "predictions_from_arrow",
    "predictions_to_arrow",
    "result_table",
    "quantize_encoder_int8",
    "math",
]
