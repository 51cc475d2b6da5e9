"""The GLiClass uni-encoder network (PyTorch), with the published state-dict names.

``GLiClassModel`` holds the network under the attribute ``model`` so that parameter names are
``model.encoder_model.*``, ``model.text_projector.*``, ``model.classes_projector.*``,
``model.scorer.*``, ``model.logit_scale``, ``model.lstm.*``, ``model.segment_embeddings.*``
exactly as in the released checkpoints.

Where we deliberately differ from the reference implementation: text pooling honours the
attention mask (so a row's scores do not depend on its batch-mates). For most settings that equals
the reference run one text at a time; with ``extract_text_features`` + ``avg`` pooling the reference
divides by the whole sequence length even for one text, and the scores differ
(``tests/test_parity.py`` pins the difference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import AutoModel
from transformers.activations import ACT2FN

from gliclass_dist.model.config import GLiClassConfig


@dataclass
class GLiClassOutput:
    """Model outputs: ``logits[B, K]`` (K = most labels in the batch) and ``label_mask[B, K]``."""

    logits: torch.Tensor
    label_mask: torch.Tensor
    text_embeddings: torch.Tensor | None = None
    class_embeddings: torch.Tensor | None = None


class FeaturesProjector(nn.Module):
    """Linear(D -> hidden) -> activation -> dropout -> Linear(hidden -> D)."""

    def __init__(self, config: GLiClassConfig) -> None:
        super().__init__()
        enc_hidden = config.encoder_config.hidden_size
        self.linear_1 = nn.Linear(enc_hidden, config.hidden_size)
        self.act = ACT2FN[config.projector_hidden_act]
        self.dropout = nn.Dropout(config.dropout)
        self.linear_2 = nn.Linear(config.hidden_size, enc_hidden)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.dropout(self.act(self.linear_1(features))))


class BiLSTM(nn.Module):
    """Bidirectional LSTM over the valid tokens of each row (parameter names ``lstm.lstm.*``)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(hidden_size, hidden_size // 2, num_layers=1, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(dim=1).clamp(min=1).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out


def masked_pool(x: torch.Tensor, mask: torch.Tensor, strategy: str) -> torch.Tensor:
    """Pool ``x[B, T, D]`` over the positions where ``mask[B, T]`` is set."""
    m = mask.to(x.dtype).unsqueeze(-1)
    count = m.sum(dim=1).clamp(min=1.0)
    if strategy == "first":
        first = mask.to(torch.long).argmax(dim=1)
        return x[torch.arange(x.shape[0], device=x.device), first]
    if strategy == "last":
        positions = torch.arange(x.shape[1], device=x.device).expand_as(mask)
        last = torch.where(mask.bool(), positions, torch.zeros_like(positions)).amax(dim=1)
        return x[torch.arange(x.shape[0], device=x.device), last]
    if strategy == "avg":
        return (x * m).sum(dim=1) / count
    if strategy == "sum":
        return (x * m).sum(dim=1)
    if strategy == "rms":
        return ((x.pow(2) * m).sum(dim=1) / count).sqrt()
    if strategy == "abs_avg":
        return ((x * m).abs()).sum(dim=1) / count
    if strategy == "max":
        return x.masked_fill(~mask.bool().unsqueeze(-1), torch.finfo(x.dtype).min).amax(dim=1)
    if strategy == "abs_max":
        return (x * m).abs().amax(dim=1)
    raise NotImplementedError(f"pooling_strategy {strategy!r}")


class DotScorer(nn.Module):
    """``simple``: dot product of text and label vectors."""

    def forward(self, text: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bd,bkd->bk", text, labels)


class MLPScorer(nn.Module):
    """``mlp``: MLP over [text, label]; 2D -> 256 -> 128 -> 1 (the reference always uses 256)."""

    def __init__(self, hidden_size: int, mlp_hidden_size: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size * 2, mlp_hidden_size),
            nn.ReLU(),
            nn.Linear(mlp_hidden_size, mlp_hidden_size // 2),
            nn.ReLU(),
            nn.Linear(mlp_hidden_size // 2, 1),
        )

    def forward(self, text: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        expanded = text.unsqueeze(1).expand(-1, labels.shape[1], -1)
        return self.mlp(torch.cat([expanded, labels], dim=-1)).squeeze(-1)


class WeightedDotScorer(nn.Module):
    """``weighted-dot``: [t1, l1, t2 * l2] through an MLP, from 2D projections of text and label."""

    def __init__(self, hidden_size: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.proj_text = nn.Linear(hidden_size, hidden_size * 2)
        self.proj_label = nn.Linear(hidden_size, hidden_size * 2)
        self.out_mlp = nn.Sequential(
            nn.Linear(hidden_size * 3, hidden_size * 4),
            nn.Dropout(dropout),
            nn.ReLU(),
            nn.Linear(hidden_size * 4, 1),
        )

    def forward(self, text: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        batch, num_labels, dim = labels.shape
        t1, t2 = self.proj_text(text).view(batch, 1, 2, dim).unbind(dim=2)
        l1, l2 = self.proj_label(labels).view(batch, num_labels, 2, dim).unbind(dim=2)
        t1 = t1.expand(-1, num_labels, -1)
        t2 = t2.expand(-1, num_labels, -1)
        return self.out_mlp(torch.cat([t1, l1, t2 * l2], dim=-1)).squeeze(-1)


def build_scorer(config: GLiClassConfig) -> nn.Module:
    if config.scorer_type == "simple":
        return DotScorer()
    if config.scorer_type == "mlp":
        return MLPScorer(config.hidden_size)
    if config.scorer_type == "weighted-dot":
        return WeightedDotScorer(config.hidden_size)
    raise NotImplementedError(f"scorer_type {config.scorer_type!r} is not supported yet")


class UniEncoder(nn.Module):
    """One encoder reads labels and text together; labels are scored against the pooled text."""

    def __init__(self, config: GLiClassConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder_model = AutoModel.from_config(config.encoder_config)
        if self.encoder_model.config.vocab_size != config.vocab_size:
            self.encoder_model.resize_token_embeddings(config.vocab_size)
        self.text_projector = FeaturesProjector(config)
        self.classes_projector = FeaturesProjector(config)
        self.scorer = build_scorer(config)
        if config.use_lstm:
            self.lstm = BiLSTM(config.hidden_size)
        if config.use_segment_embeddings:
            self.segment_embeddings = nn.Embedding(3, config.encoder_config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.epsilon = 1e-8

    def segment_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Segment ids as the reference computes them (checkpoints were trained with these).

        1 from the first <<SEP>> on, 0 before it; with any <<EXAMPLE>> token in the row, the
        reference's ``argmin`` makes the example start 0, so the whole row is segment 2.
        """
        cfg = self.config
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        text_start = (input_ids == cfg.text_token_index).int().argmax(dim=-1, keepdim=True)
        is_example = input_ids == cfg.example_token_index
        # The reference takes argmin of the example mask: the first position that is NOT an example token.
        example_start = is_example.int().argmin(dim=-1, keepdim=True)
        has_example = is_example.any(dim=-1, keepdim=True)
        seg = (positions >= text_start).long()
        in_examples = has_example & (positions >= example_start)
        seg = torch.where(in_examples, torch.full_like(seg, 2), seg)
        return seg

    def class_vectors(
        self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather one vector per <<LABEL>> marker: ``[B, K, D]`` and the label mask ``[B, K]``."""
        cfg = self.config
        is_class = input_ids == cfg.class_token_index
        counts = is_class.sum(dim=-1)
        num_slots = max(int(counts.max().item()) if counts.numel() else 0, 1)
        ordinal = is_class.long().cumsum(dim=-1)  # k-th marker at or before each position
        slots = torch.arange(num_slots, device=hidden.device).view(1, -1, 1)
        if cfg.class_token_pooling == "average":
            if cfg.extract_text_features:
                before_text = (input_ids == cfg.text_token_index).long().cumsum(dim=-1) == 0
            else:
                before_text = torch.ones_like(is_class)
            span = (ordinal.unsqueeze(1) == slots + 1) & before_text.unsqueeze(1) & attention_mask.bool().unsqueeze(1)
            if not cfg.embed_class_token:
                span = span & ~is_class.unsqueeze(1)
            weights = span.to(hidden.dtype)
            vectors = torch.einsum("bks,bsd->bkd", weights, hidden) / weights.sum(-1, keepdim=True).clamp(min=1)
        else:
            select = is_class.unsqueeze(1) & (ordinal.unsqueeze(1) - 1 == slots)
            if not cfg.embed_class_token:
                shifted = torch.zeros_like(select)
                shifted[:, :, 1:] = select[:, :, :-1]
                select = shifted
            vectors = torch.einsum("bks,bsd->bkd", select.to(hidden.dtype), hidden)
        label_mask = torch.arange(num_slots, device=hidden.device).unsqueeze(0) < counts.unsqueeze(1)
        return vectors, label_mask

    def text_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.bool()
        if self.config.extract_text_features:
            from_sep = (input_ids == self.config.text_token_index).long().cumsum(dim=-1) > 0
            mask = mask & from_sep
        return mask

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, return_embeddings: bool = False
    ) -> GLiClassOutput:
        cfg = self.config
        kwargs = {}
        if cfg.encoder_layer_id != -1:
            kwargs["output_hidden_states"] = True
        if cfg.use_segment_embeddings:
            embeds = self.encoder_model.get_input_embeddings()(input_ids)
            embeds = embeds + self.segment_embeddings(self.segment_ids(input_ids))
            out = self.encoder_model(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)
        else:
            out = self.encoder_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden = out.hidden_states[cfg.encoder_layer_id] if cfg.encoder_layer_id != -1 else out[0]

        classes, label_mask = self.class_vectors(hidden, input_ids, attention_mask)
        text_mask = self.text_mask(input_ids, attention_mask)
        text_tokens = hidden
        if cfg.use_lstm:
            text_tokens = self.lstm(hidden * text_mask.unsqueeze(-1).to(hidden.dtype), text_mask)
        pooled = masked_pool(text_tokens, text_mask, cfg.pooling_strategy)
        text_vec = self.dropout(self.text_projector(pooled))
        class_vecs = self.classes_projector(classes)
        if cfg.normalize_features:
            text_vec = text_vec / (text_vec.norm(p=2, dim=-1, keepdim=True) + self.epsilon)
            class_vecs = class_vecs / (class_vecs.norm(p=2, dim=-1, keepdim=True) + self.epsilon)
        logits = self.scorer(text_vec, class_vecs)
        if cfg.normalize_features:
            logits = logits * self.logit_scale
        return GLiClassOutput(
            logits=logits,
            label_mask=label_mask,
            text_embeddings=text_vec if return_embeddings else None,
            class_embeddings=class_vecs if return_embeddings else None,
        )


class GLiClassModel(nn.Module):
    """A GLiClass model; build with ``GLiClassModel(config)`` or load with ``load_model``."""

    def __init__(self, config: GLiClassConfig) -> None:
        super().__init__()
        config.check_supported()
        self.config = config
        self.model = UniEncoder(config)
        init_heads(self, config.initializer_range)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, return_embeddings: bool = False
    ) -> GLiClassOutput:
        return self.model(input_ids, attention_mask, return_embeddings=return_embeddings)

    @property
    def encoder(self) -> nn.Module:
        return self.model.encoder_model

    def resize_token_embeddings(self, new_size: int) -> None:
        """Grow the vocabulary (e.g. after adding the label tokens) and record it in the config."""
        self.model.encoder_model.resize_token_embeddings(new_size)
        self.config.vocab_size = new_size
        self.config.encoder_config.vocab_size = new_size


def init_heads(model: GLiClassModel, std: float) -> None:
    """Initialise the heads (not the encoder) as the reference does: normal(std) weights, zero biases."""
    for name, module in model.model.named_modules():
        if name.startswith("encoder_model"):
            continue
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LSTM):
            for pname, param in module.named_parameters():
                if "weight" in pname:
                    nn.init.normal_(param, mean=0.0, std=std)
                else:
                    nn.init.zeros_(param)
