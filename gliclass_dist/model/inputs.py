"""The input builder: (text, labels, prompt, few-shot examples) -> token ids with label markers.

Sequence layout (uni-encoder, as the checkpoints were trained)::

    prompt_first=False:  [CLS] text <<LABEL>>l1<<LABEL>>l2...<<SEP>>prompt [examples] [SEP]
    prompt_first=True:   [CLS] <<LABEL>>l1<<LABEL>>l2...<<SEP>>prompt text [examples] [SEP]
    examples:            <<EXAMPLE>>text \\nLabels:\\n a, b ... <<SEP>>   (job-wide, or per row)

Each label's ids (``<<LABEL>>label``) are tokenized once and cached, then concatenated with the
text's ids; at start-up a self-check verifies on probe strings that this gives exactly the ids of
tokenizing the whole string (otherwise the builder falls back to whole-string tokenization).

Only the text is truncated, never a label. A row's labels share one pass while they leave the text
at least a quarter of the window (``TEXT_SHARE``); longer label sets are split into as few chunks of
about equal size as leave that much text, each run with the text; the caller merges the scores.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from transformers import PreTrainedTokenizerBase

from gliclass_dist.model.config import EXAMPLE_TOKEN, LABEL_TOKEN, SEP_TOKEN, SPECIAL_TOKENS, GLiClassConfig

logger = logging.getLogger(__name__)

MAX_CHARS_PER_TOKEN = 16  # texts are cut to max_length * this many characters before tokenizing
MIN_TEXT_TOKENS = 16
# Labels are split into chunks only when they would leave the text less than this share of the window.
# A larger share gives each label more text to read but costs extra passes: at 1/2, 128 news labels
# (313 tokens) on a 512 window took two passes per article (0.5x the reference's speed); at 1/4 one.
TEXT_SHARE = 4


# Few-shot examples: ``{"text": ..., "labels": [...]}`` mappings; per row, one list (or None) per row.
Example = Mapping[str, Any]
Examples = Sequence[Example]
RowExamples = Sequence[Examples | None]


class LabelTooLongError(ValueError):
    """A single label does not fit the model window together with any text."""


class ExamplesTooLongError(LabelTooLongError):
    """A row's few-shot examples leave no room in the window for its labels and some text."""


@dataclass
class EncodedRow:
    """One row ready for the model: ``chunks`` of token ids and the labels they score, in order."""

    chunks: list[list[int]] = field(default_factory=list)
    chunk_labels: list[list[str]] = field(default_factory=list)
    truncated: bool = False

    @property
    def labels(self) -> list[str]:
        return [label for chunk in self.chunk_labels for label in chunk]


def format_examples(examples: Sequence[Mapping[str, Any]] | None) -> str:
    """Few-shot examples in the training format; empty string when there are none."""
    if not examples:
        return ""
    parts = []
    for ex in examples:
        labels = ex.get("labels", ex.get("true_labels", []))
        labels_text = ", ".join(labels) if isinstance(labels, (list, tuple)) else str(labels)
        parts.append(f"{EXAMPLE_TOKEN}{ex.get('text', '')} \nLabels:\n {labels_text}")
    return "".join(parts) + SEP_TOKEN


def scrub_text(text: str) -> str:
    """Remove GLiClass marker strings from user text, so text can never forge a label slot."""
    for token in SPECIAL_TOKENS:
        if token in text:
            text = text.replace(token, " ")
    return text


class InputBuilder:
    """Turns texts and label sets into model inputs for one tokenizer and config."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: GLiClassConfig, max_length: int | None = None):
        self.tokenizer = tokenizer
        self.config = config
        self.prompt_first = bool(config.prompt_first)
        self.max_length = int(max_length or default_max_length(tokenizer, config))
        probe = tokenizer("probe", add_special_tokens=True)["input_ids"]
        bare = tokenizer("probe", add_special_tokens=False)["input_ids"]
        start = _find_sublist(probe, bare)
        self.prefix = probe[:start]
        self.suffix = probe[start + len(bare) :]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.sep_id = tokenizer.convert_tokens_to_ids(SEP_TOKEN)
        self._label_ids = lru_cache(maxsize=65536)(self._label_ids_uncached)
        self._examples_ids = lru_cache(maxsize=4096)(self._ids_tuple)
        self.exact = self._self_check()
        if not self.exact:
            logger.warning("tokenizer: piecewise tokenization differs from whole strings; using whole-string mode")

    # -- tokenization pieces -------------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _ids_tuple(self, text: str) -> tuple[int, ...]:
        return tuple(self._ids(text)) if text else ()

    def _label_ids_uncached(self, label: str) -> tuple[int, ...]:
        return tuple(self._ids(LABEL_TOKEN + label))

    def label_ids(self, label: str) -> tuple[int, ...]:
        """Token ids of ``<<LABEL>>label`` (cached)."""
        return self._label_ids(label)

    def tail_ids(self, prompt: str | None) -> list[int]:
        """``<<SEP>>`` plus the prompt when the prompt follows the label block."""
        if self.prompt_first or not prompt:
            return [self.sep_id]
        return self._ids(SEP_TOKEN + prompt)

    def text_ids_batch(self, texts: Sequence[str], prompt: str | None) -> list[list[int]]:
        """Token ids of each text segment (with the prompt in front when ``prompt_first``)."""
        cap = self.max_length * MAX_CHARS_PER_TOKEN
        if self.prompt_first:
            segments = [SEP_TOKEN + (prompt or "") + t[:cap] for t in texts]
            return [ids[1:] for ids in self.tokenizer(segments, add_special_tokens=False)["input_ids"]]
        return self.tokenizer([t[:cap] for t in texts], add_special_tokens=False)["input_ids"]

    def whole_string(self, text: str, labels: Sequence[str], prompt: str | None, examples: str) -> str:
        block = "".join(LABEL_TOKEN + label for label in labels) + SEP_TOKEN + (prompt or "")
        return (block + text if self.prompt_first else text + block) + examples

    def _self_check(self) -> bool:
        probes = [
            ("The bank raised rates.", ["finance", "sport news"], None, ""),
            ("  spaced text  ", ["a b", "c"], "Classify the topic:", ""),
            ("x", ["l"], "topic", format_examples([{"text": "ex one", "labels": ["a", "b"]}])),
        ]
        for text, labels, prompt, examples in probes:
            expected = self.tokenizer(self.whole_string(text, labels, prompt, examples), add_special_tokens=True)[
                "input_ids"
            ]
            text_ids = self.text_ids_batch([text], prompt)[0]
            got = self.assemble(text_ids, [self.label_ids(lb) for lb in labels], self.tail_ids(prompt), self._ids(examples) if examples else [])
            if got != expected:
                return False
        return True

    def assemble(
        self, text_ids: Sequence[int], label_ids: Sequence[Sequence[int]], tail: Sequence[int], examples: Sequence[int]
    ) -> list[int]:
        block = [i for ids in label_ids for i in ids] + list(tail)
        body = block + list(text_ids) if self.prompt_first else list(text_ids) + block
        return self.prefix + body + list(examples) + self.suffix

    # -- rows ----------------------------------------------------------------------------------
    def encode(
        self, texts: Sequence[str], labels: Sequence[Sequence[str]], prompt: str | None = None,
        examples: Examples | None = None, row_examples: RowExamples | None = None,
    ) -> list[EncodedRow | LabelTooLongError]:
        """Encode rows (texts already validated as strings; label lists already cleaned and non-empty).

        ``examples`` are few-shot examples for every row; ``row_examples`` (one entry per row, already
        validated) replace them for the rows whose entry is non-empty, as the reference's per-text examples.
        """
        texts = [scrub_text(t) for t in texts]
        shared = format_examples(examples)
        if row_examples is None:
            examples_texts = [shared] * len(texts)
        else:
            examples_texts = [format_examples(ex) if ex else shared for ex in row_examples]
        if not self.exact:
            return [
                self._encode_whole(t, list(ls), prompt, ex) for t, ls, ex in zip(texts, labels, examples_texts)
            ]
        tail = self.tail_ids(prompt)
        out: list[EncodedRow | LabelTooLongError] = []
        rows = zip(texts, self.text_ids_batch(texts, prompt), labels, examples_texts)
        for text, text_ids, row_labels, examples_text in rows:
            examples_ids = list(self._examples_ids(examples_text))
            available = self.max_length - len(self.prefix) - len(self.suffix) - len(examples_ids)
            cut = len(text) > self.max_length * MAX_CHARS_PER_TOKEN
            try:
                if examples_ids and available < len(tail) + MIN_TEXT_TOKENS:
                    raise ExamplesTooLongError(
                        f"the few-shot examples ({len(examples_ids)} tokens) leave no room for labels and text in "
                        f"the {self.max_length}-token window; give fewer or shorter examples"
                    )
                out.append(self._encode_row(text_ids, list(row_labels), tail, examples_ids, available, cut))
            except LabelTooLongError as exc:
                out.append(exc)
        return out

    def _encode_row(
        self,
        text_ids: list[int],
        labels: list[str],
        tail: list[int],
        examples_ids: list[int],
        available: int,
        cut: bool,
    ) -> EncodedRow:
        per_label = [self.label_ids(label) for label in labels]
        block_len = sum(len(ids) for ids in per_label) + len(tail)
        row = EncodedRow(truncated=cut)
        text_share = min(len(text_ids), max(available // TEXT_SHARE, MIN_TEXT_TOKENS))
        if block_len + text_share <= available:
            groups = [list(range(len(labels)))]
        else:
            groups = split_labels([len(ids) for ids in per_label], available - text_share - len(tail))
        for group in groups:
            ids_group = [per_label[i] for i in group]
            room = available - sum(len(ids) for ids in ids_group) - len(tail)
            if room < min(len(text_ids), 1):
                longest = max(group, key=lambda i: len(per_label[i]))
                raise LabelTooLongError(
                    f"label {labels[longest][:60]!r} ({len(per_label[longest])} tokens) does not fit the "
                    f"{self.max_length}-token window"
                )
            kept = text_ids[:room]
            row.truncated |= len(kept) < len(text_ids)
            row.chunks.append(self.assemble(kept, ids_group, tail, examples_ids))
            row.chunk_labels.append([labels[i] for i in group])
        return row

    def _encode_whole(self, text: str, labels: list[str], prompt: str | None, examples: str) -> EncodedRow:
        """Fallback for tokenizers where pieces do not concatenate exactly: tokenize whole strings."""
        cut = len(text) > self.max_length * MAX_CHARS_PER_TOKEN
        text = text[: self.max_length * MAX_CHARS_PER_TOKEN]
        row = EncodedRow(truncated=cut)
        groups = [labels]
        for _ in range(64):  # split labels until every chunk leaves room for text
            tok = self.tokenizer
            lengths = [len(tok(self.whole_string("", g, prompt, examples))["input_ids"]) for g in groups]
            too_long = [i for i, n in enumerate(lengths) if n > self.max_length // 2 and len(groups[i]) > 1]
            if not too_long:
                break
            i = too_long[0]
            half = len(groups[i]) // 2
            groups[i : i + 1] = [groups[i][:half], groups[i][half:]]
        for group in groups:
            enc = self.tokenizer(self.whole_string(text, group, prompt, examples), return_offsets_mapping=False)
            ids = enc["input_ids"]
            piece = text
            while len(ids) > self.max_length and piece:
                over = len(ids) - self.max_length
                piece = piece[: max(0, len(piece) - max(8, over * 4))]
                ids = self.tokenizer(self.whole_string(piece, group, prompt, examples))["input_ids"]
                row.truncated = True
            if len(ids) > self.max_length:
                raise LabelTooLongError(f"labels {group[:3]!r}... do not fit the {self.max_length}-token window")
            row.chunks.append(ids)
            row.chunk_labels.append(list(group))
        return row


def split_labels(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Label indices (in order) grouped into as few chunks as fit ``capacity`` tokens each, sizes balanced.

    A greedy pass finds the fewest chunks; the labels are then cut at even shares of the total length,
    so every chunk leaves about the same room for text (greedy chunks are kept if that does not fit).
    A label longer than ``capacity`` gets a chunk of its own (the caller reports it if it cannot fit).
    """
    greedy: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, n in enumerate(lengths):
        if current and used + n > capacity:
            greedy.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    greedy.append(current)
    chunks = len(greedy)
    if chunks == 1:
        return greedy
    share = sum(lengths) / chunks
    balanced: list[list[int]] = [[] for _ in range(chunks)]
    before = 0
    for i, n in enumerate(lengths):
        balanced[min(chunks - 1, int((before + n / 2) / share))].append(i)
        before += n
    if any(not g or sum(lengths[i] for i in g) > capacity for g in balanced):
        return greedy
    return balanced


def default_max_length(tokenizer: PreTrainedTokenizerBase, config: GLiClassConfig) -> int:
    """The model window: the encoder's position limit for absolute positions, else 1024 (as the reference)."""
    enc = config.encoder_config
    relative_only = enc.model_type == "deberta-v2" and not getattr(enc, "position_biased_input", True)
    limit = 1024 if relative_only else int(getattr(enc, "max_position_embeddings", 512) or 512)
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < 100_000 and not relative_only:
        limit = min(limit, tok_limit)
    return limit


def _find_sublist(haystack: list[int], needle: list[int]) -> int:
    for i in range(len(haystack) - len(needle) + 1):
        if haystack[i : i + len(needle)] == needle:
            return i
    raise ValueError("cannot locate the text inside the tokenizer's special-token template")
