"""The input builder for bi-encoders: texts -> token ids; labels are tokenized apart, for the label encoder.

An encoded row has the same shape as a uni-encoder's (``EncodedRow``: chunks of ids and the labels each
chunk scores), so it crosses Ray's tokenize -> model stages in the same Arrow form:

- ``bi-encoder``: one chunk, the text's ids alone (``"{prompt} {text}"`` with a prompt, as the reference
  writes it), and all the row's labels. Labels never share the window with the text, so they are never split.
- ``bi-encoder-fused``: the reference's string, ``[prompt ]<<LABEL>>...<<LABEL>><<SEP>>`` before the text
  (``prompt_first``) or after it, then the few-shot examples; one ``<<LABEL>>`` marker per label. Labels are
  split into chunks only when their markers would leave the text less than a quarter of the window.

Only the text is truncated (from the end), never a label; a label longer than the label encoder's window
is reported for its row. Like the uni-encoder builder, marker strings are removed from user text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

from transformers import PreTrainedTokenizerBase

from gliclass_dist.model.config import LABEL_TOKEN, SEP_TOKEN, GLiClassConfig
from gliclass_dist.model.inputs import (
    MAX_CHARS_PER_TOKEN,
    MIN_TEXT_TOKENS,
    TEXT_SHARE,
    EncodedRow,
    Examples,
    LabelTooLongError,
    RowExamples,
    default_max_length,
    format_examples,
    scrub_text,
)

TRUNCATION_ROUNDS = 8  # re-tokenizing rounds when cutting a fused row's text to fit the window


class BiEncoderInputBuilder:
    """Turns texts and label sets into bi-encoder inputs; ``label_ids`` gives a label's label-encoder ids."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        label_tokenizer: PreTrainedTokenizerBase,
        config: GLiClassConfig,
        max_length: int | None = None,
        label_max_length: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.label_tokenizer = label_tokenizer
        self.config = config
        self.fused = config.architecture_type == "bi-encoder-fused"
        self.prompt_first = bool(config.prompt_first)
        self.max_length = int(max_length or default_max_length(tokenizer, config))
        self.label_max_length = int(label_max_length or label_window(label_tokenizer, config))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.label_pad_id = label_tokenizer.pad_token_id if label_tokenizer.pad_token_id is not None else 0
        self.suffix_length = special_suffix_length(tokenizer)
        self._label_ids = lru_cache(maxsize=65536)(self._label_ids_uncached)

    # -- labels --------------------------------------------------------------------------------
    def _label_ids_uncached(self, label: str) -> tuple[int, ...]:
        return tuple(self.label_tokenizer(label, add_special_tokens=True)["input_ids"])

    def label_ids(self, label: str) -> tuple[int, ...]:
        """The label encoder's ids of ``label`` (with its special tokens; cached)."""
        return self._label_ids(label)

    def check_labels(self, labels: Sequence[str]) -> None:
        """``LabelTooLongError`` for the first label longer than the label encoder's window."""
        for label in labels:
            n = len(self.label_ids(label))
            if n > self.label_max_length:
                raise LabelTooLongError(
                    f"label {label[:60]!r} ({n} tokens) does not fit the label encoder's {self.label_max_length}-token window"
                )

    # -- rows ----------------------------------------------------------------------------------
    def encode(
        self, texts: Sequence[str], labels: Sequence[Sequence[str]], prompt: str | None = None,
        examples: Examples | None = None, row_examples: RowExamples | None = None,
    ) -> list[EncodedRow | LabelTooLongError]:
        """Encode rows (texts already validated as strings; label lists already cleaned and non-empty).

        ``examples`` are few-shot examples for every row; ``row_examples`` (one entry per row) replace them
        for the rows whose entry is non-empty. Only ``bi-encoder-fused`` reads examples.
        """
        if not self.fused and (examples or any(row_examples or ())):
            raise ValueError(
                "a bi-encoder checkpoint does not read few-shot examples (the reference ignores them); "
                "drop `examples`, or use a uni-encoder or bi-encoder-fused checkpoint"
            )
        cap = self.max_length * MAX_CHARS_PER_TOKEN
        clean = [scrub_text(t) for t in texts]
        cut = [len(t) > cap for t in clean]
        clean = [t[:cap] for t in clean]
        if self.fused:
            shared = format_examples(examples)
            per_row = [format_examples(own) if own else shared for own in (row_examples or [None] * len(clean))]
            return self._encode_fused(clean, labels, prompt, per_row, cut)
        strings = [f"{prompt} {t}" if prompt else t for t in clean]
        out: list[EncodedRow | LabelTooLongError] = []
        for ids, row_labels, was_cut in zip(self.tokenizer(strings)["input_ids"], labels, cut):
            try:
                self.check_labels(row_labels)
            except LabelTooLongError as exc:
                out.append(exc)
                continue
            truncated = was_cut or len(ids) > self.max_length
            if len(ids) > self.max_length:  # what the tokenizer's own truncation keeps: the start + the end tokens
                ids = ids[: self.max_length - self.suffix_length] + ids[len(ids) - self.suffix_length :]
            out.append(EncodedRow(chunks=[list(ids)], chunk_labels=[list(row_labels)], truncated=truncated))
        return out

    def fused_string(self, text: str, num_labels: int, prompt: str | None, examples: str) -> str:
        """The reference's fused input: ``[prompt ]`` + one marker per label + ``<<SEP>>``, around the text."""
        block = (f"{prompt} " if prompt else "") + LABEL_TOKEN * num_labels + SEP_TOKEN
        return (block + text if self.prompt_first else text + block) + examples

    def _encode_fused(
        self, texts: list[str], labels: Sequence[Sequence[str]], prompt: str | None, examples: list[str], cut: list[bool]
    ) -> list[EncodedRow | LabelTooLongError]:
        base = {ex: len(self.tokenizer(self.fused_string("", 0, prompt, ex))["input_ids"]) for ex in set(examples)}
        text_lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        out: list[EncodedRow | LabelTooLongError] = []
        for text, row_labels, text_length, was_cut, row_examples in zip(texts, labels, text_lengths, cut, examples):
            try:
                self.check_labels(row_labels)
                groups = self._fused_groups(len(row_labels), base[row_examples], text_length)
            except LabelTooLongError as exc:
                out.append(exc)
                continue
            row = EncodedRow(truncated=was_cut)
            for start, stop in groups:
                ids, truncated = self._fit(text, stop - start, prompt, row_examples)
                row.chunks.append(ids)
                row.chunk_labels.append(list(row_labels[start:stop]))
                row.truncated |= truncated
            out.append(row)
        return out

    def _fused_groups(self, num_labels: int, base: int, text_length: int) -> list[tuple[int, int]]:
        """Label index ranges, one per pass: all labels unless their markers leave too little text."""
        text_share = min(text_length, max(self.max_length // TEXT_SHARE, MIN_TEXT_TOKENS))
        if base + num_labels + text_share <= self.max_length:
            return [(0, num_labels)]
        per_chunk = self.max_length - base - text_share
        if per_chunk < 1:
            raise LabelTooLongError(f"the prompt and examples ({base} tokens) leave no room in the {self.max_length}-token window")
        chunks = math.ceil(num_labels / per_chunk)
        bounds = [round(i * num_labels / chunks) for i in range(chunks + 1)]
        return list(zip(bounds[:-1], bounds[1:]))

    def _fit(self, text: str, num_labels: int, prompt: str | None, examples: str) -> tuple[list[int], bool]:
        """The fused ids with the text cut (at a token boundary, from the end) until the row fits the window."""
        ids = self.tokenizer(self.fused_string(text, num_labels, prompt, examples))["input_ids"]
        truncated = False
        for _ in range(TRUNCATION_ROUNDS):
            over = len(ids) - self.max_length
            if over <= 0:
                return ids, truncated
            truncated = True
            offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            keep = max(len(offsets) - over, 0)
            text = text[: offsets[keep - 1][1]] if keep > 0 else ""
            ids = self.tokenizer(self.fused_string(text, num_labels, prompt, examples))["input_ids"]
        if len(ids) > self.max_length:
            raise LabelTooLongError(f"{num_labels} labels do not fit the {self.max_length}-token window with any text")
        return ids, truncated


def label_window(label_tokenizer: PreTrainedTokenizerBase, config: GLiClassConfig) -> int:
    """The label encoder's window: its position limit, capped by its tokenizer's ``model_max_length``."""
    limit = int(getattr(config.label_model_config, "max_position_embeddings", 512) or 512)
    tok_limit = getattr(label_tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < 100_000:
        limit = min(limit, tok_limit)
    return limit


def special_suffix_length(tokenizer: PreTrainedTokenizerBase) -> int:
    """How many special tokens the tokenizer appends after a single sequence (1 for BERT's [SEP])."""
    full = tokenizer("probe", add_special_tokens=True)["input_ids"]
    bare = tokenizer("probe", add_special_tokens=False)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return len(full) - start - len(bare)
    raise ValueError("cannot locate the text inside the tokenizer's special-token template")
