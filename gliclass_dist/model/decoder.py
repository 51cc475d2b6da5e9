"""GLiClass ``decoder-kv``: a decoder backbone (Qwen3) reads the text, then the label section; a small
bidirectional DeBERTa-v2 encoder (the scorer) re-reads the label section's states and scores each label.

Sequence (as the reference trains and runs it, no special tokens)::

    [prompt][examples]text<<SEP>>label1<<LABEL>>label2<<LABEL>>...<<SEP>>

The label section starts after the last ``<<SEP>>`` before the first ``<<LABEL>>`` and ends at the last
real token. The scorer's outputs at the section's last ``<<SEP>>`` give the text vector, at each
``<<LABEL>>`` a label vector; ``text_projector``/``label_projector`` (Linear), optional L2 normalisation,
then an MLP over [text, label] (2D -> ``scorer_mlp_hidden_size`` -> half -> 1).

State-dict names as in the reference: ``model.decoder_model.*``, ``model.scorer.scorer_encoder.*``,
``model.scorer.text_projector.*``, ``model.scorer.label_projector.*``, ``model.scorer.mlp.*``.
Recurrent inference (``recurrent_steps`` > 1) and multimodal backbones are refused at load.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers import AutoModel, DebertaV2Config, PreTrainedTokenizerBase
from transformers.models.deberta_v2.modeling_deberta_v2 import DebertaV2Encoder

from gliclass_dist.model.config import LABEL_TOKEN, SEP_TOKEN, GLiClassConfig
from gliclass_dist.model.inputs import (
    MAX_CHARS_PER_TOKEN,
    EncodedRow,
    Examples,
    LabelTooLongError,
    RowExamples,
    format_examples,
    scrub_text,
)
from gliclass_dist.model.modeling import GLiClassOutput

DECODER_WINDOW = 1024  # the reference pipeline's default max_length
DECODER_BACKBONES = ("qwen3",)


def check_decoder_kv_config(config: GLiClassConfig) -> None:
    """Refuse, naming the field, decoder-kv settings this implementation does not score."""
    if config.encoder_config.model_type not in DECODER_BACKBONES:
        raise NotImplementedError(
            f"decoder-kv over encoder_config.model_type {config.encoder_config.model_type!r} is not supported "
            f"(supported: {', '.join(DECODER_BACKBONES)})"
        )
    if getattr(config, "sep_token_index", None) is None:
        raise ValueError("a decoder-kv checkpoint needs sep_token_index (the <<SEP>> id) in config.json")
    if int(getattr(config, "recurrent_steps", 1) or 1) > 1:
        raise NotImplementedError("decoder-kv with recurrent_steps > 1 (recurrent inference) is not supported yet")
    if getattr(config, "multimodal", False):
        raise NotImplementedError("multimodal decoder-kv checkpoints are not supported")


class DecoderKVScorer(nn.Module):
    """DeBERTa-v2 encoder over the label section, then projectors and an MLP per label."""

    def __init__(self, config: GLiClassConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.scorer_encoder = DebertaV2Encoder(
            DebertaV2Config(
                hidden_size=hidden,
                num_hidden_layers=int(getattr(config, "scorer_encoder_num_layers", 2)),
                num_attention_heads=max(1, hidden // 64),
                intermediate_size=hidden * 4,
                relative_attention=True,
                pos_att_type=["p2c", "c2p"],
                max_relative_positions=512,
            )
        )
        self.text_projector = nn.Linear(hidden, hidden)
        self.label_projector = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(config.dropout)
        mlp_hidden = int(config.scorer_mlp_hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(hidden * 2, mlp_hidden),
            nn.ReLU(),
            nn.Linear(mlp_hidden, mlp_hidden // 2),
            nn.ReLU(),
            nn.Linear(mlp_hidden // 2, 1),
        )
        self.epsilon = 1e-8

    def forward(
        self, hidden: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[B, K]`` and label mask ``[B, K]`` from the label section's states ``hidden[B, S, D]``."""
        states = self.scorer_encoder(hidden, attention_mask=mask, return_dict=True).last_hidden_state
        valid = mask.bool()
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        is_sep = input_ids.eq(self.config.sep_token_index) & valid
        last_sep = positions.masked_fill(~is_sep, -1).amax(dim=1)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        text = states[rows, last_sep.clamp(min=0)] * last_sep.ge(0).unsqueeze(-1).to(states.dtype)
        is_label = input_ids.eq(self.config.class_token_index) & valid
        counts = is_label.sum(dim=1)
        num_slots = max(int(counts.max()) if counts.numel() else 0, 1)
        ordinal = is_label.long().cumsum(dim=1) - 1
        select = is_label.unsqueeze(1) & (ordinal.unsqueeze(1) == torch.arange(num_slots, device=states.device).view(1, -1, 1))
        labels = torch.einsum("bks,bsd->bkd", select.to(states.dtype), states)
        text = self.dropout(self.text_projector(text))
        labels = self.label_projector(labels)
        if self.config.normalize_features:
            text = text / (text.norm(p=2, dim=-1, keepdim=True) + self.epsilon)
            labels = labels / (labels.norm(p=2, dim=-1, keepdim=True) + self.epsilon)
        pairs = torch.cat([text.unsqueeze(1).expand(-1, num_slots, -1), labels], dim=-1)
        label_mask = torch.arange(num_slots, device=states.device).unsqueeze(0) < counts.unsqueeze(1)
        return self.mlp(pairs).squeeze(-1), label_mask


class DecoderKV(nn.Module):
    """The network (held as ``GLiClassDecoderKVModel.model``)."""

    def __init__(self, config: GLiClassConfig) -> None:
        super().__init__()
        self.config = config
        self.decoder_model = AutoModel.from_config(config.encoder_config)
        if self.decoder_model.config.vocab_size != config.vocab_size:
            self.decoder_model.resize_token_embeddings(config.vocab_size)
        self.scorer = DecoderKVScorer(config)

    def label_sections(
        self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per row, the states and ids from the last ``<<SEP>>`` before the first ``<<LABEL>>`` on, padded."""
        sep, marker = self.config.sep_token_index, self.config.class_token_index
        states, ids = [], []
        for i in range(input_ids.shape[0]):
            length = int(attention_mask[i].sum())
            row = input_ids[i, :length]
            start = 0
            markers = (row == marker).nonzero().flatten()
            if markers.numel():
                seps = (row[: int(markers[0])] == sep).nonzero().flatten()
                start = int(seps[-1]) + 1 if seps.numel() else 0
            states.append(hidden[i, start:length])
            ids.append(row[start:length])
        lengths = torch.tensor([len(x) for x in ids], device=input_ids.device)
        padded_ids = pad_sequence(ids, batch_first=True)
        mask = (torch.arange(padded_ids.shape[1], device=input_ids.device).unsqueeze(0) < lengths.unsqueeze(1)).long()
        return pad_sequence(states, batch_first=True), padded_ids, mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> GLiClassOutput:
        hidden = self.decoder_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        section, ids, mask = self.label_sections(hidden, input_ids, attention_mask)
        logits, label_mask = self.scorer(section, ids, mask)
        return GLiClassOutput(logits=logits, label_mask=label_mask)


class GLiClassDecoderKVModel(nn.Module):
    """A GLiClass ``decoder-kv`` model; ``forward(input_ids, attention_mask)`` as the uni-encoder's."""

    def __init__(self, config: GLiClassConfig) -> None:
        super().__init__()
        check_decoder_kv_config(config)
        self.config = config
        self.model = DecoderKV(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> GLiClassOutput:
        return self.model(input_ids, attention_mask)


class DecoderKVInputBuilder:
    """Rows in the decoder-kv layout: the context (prompt, examples, text) cut to leave the label section whole."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: GLiClassConfig, max_length: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.max_length = int(max_length or DECODER_WINDOW)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = pad if pad is not None else 0

    def label_section(self, labels: Sequence[str]) -> list[int]:
        text = SEP_TOKEN + "".join(label + LABEL_TOKEN for label in labels) + SEP_TOKEN
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(
        self, texts: Sequence[str], labels: Sequence[Sequence[str]], prompt: str | None = None,
        examples: Examples | None = None, row_examples: RowExamples | None = None,
    ) -> list[EncodedRow | LabelTooLongError]:
        """Encode rows; a label section that leaves no room for the context is reported for its row."""
        shared = format_examples(examples)
        cap = self.max_length * MAX_CHARS_PER_TOKEN
        out: list[EncodedRow | LabelTooLongError] = []
        for i, (text, row_labels) in enumerate(zip(texts, labels)):
            own = row_examples[i] if row_examples else None
            context = (prompt or "") + (format_examples(own) if own else shared) + scrub_text(text)[:cap]
            section = self.label_section(row_labels)
            budget = self.max_length - len(section)
            if budget < 1:
                out.append(LabelTooLongError(f"{len(row_labels)} labels ({len(section)} tokens) do not fit the {self.max_length}-token window"))
                continue
            ids = self.tokenizer(context, add_special_tokens=False)["input_ids"]
            row = EncodedRow(chunks=[ids[:budget] + section], chunk_labels=[list(row_labels)], truncated=len(ids) > budget)
            out.append(row)
        return out
