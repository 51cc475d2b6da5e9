"""The GLiClass uni-encoder network (PyTorch), with the published state-dict names.

``GLiClassModel`` holds the network under the attribute ``model`` so that parameter names are
``model.encoder_model.*``, ``model.text_projector.*``, ``model.classes_projector.*``,
``model.scorer.*``, ``model.logit_scale``, ``model.lstm.*``, ``model.segment_embeddings.*``
exactly as in the released checkpoints.

Where we deliberately differ from the reference implementation: text pooling honours the
attention mask (so a row's scores do not depend on its batch-mates). For most settings that equals
the reference run one text at a time; with ``extract_text_features`` + ``avg`` pooling the reference
divides by the whole sequence length even for one text, and the scores differ
(``tests/test_parity.py`` pins the difference). ``gliclass_dist/model/README.md`` lists every
option and where it differs (``squeeze_layers``: the reference fails, we follow its intended math).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import AutoModel
from transformers.activations import ACT2FN

from gliclass_dist.model.config import GLiClassConfig

# A scorer's optional masks: label_mask [B, K] (1 = a real label slot), text_mask [B, T] (cross-attn's tokens).
Mask = Tensor | None


@dataclass
class GLiClassOutput:
    """Model outputs: ``logits[B, K]`` (K = most labels in the batch) and ``label_mask[B, K]``."""

    logits: torch.Tensor
    label_mask: torch.Tensor
    text_embeddings: torch.Tensor | None = None
    class_embeddings: torch.Tensor | None = None
    uncalibrated_logits: torch.Tensor | None = None  # set when the checkpoint has a calibrator head


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


def funnel_mlp(in_features: int, hidden: int, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """The scorers' MLP: in -> hidden -> hidden // 2 -> 1 (weights at indices 0, 2, 4, as the reference names them)."""
    return nn.Sequential(
        nn.Linear(in_features, hidden), activation(), nn.Linear(hidden, hidden // 2), activation(), nn.Linear(hidden // 2, 1)
    )


class DotScorer(nn.Module):
    """``simple``: dot product of text and label vectors."""

    def forward(self, text: Tensor, labels: Tensor, label_mask: Mask = None, text_mask: Mask = None) -> Tensor:
        return torch.einsum("bd,bkd->bk", text, labels)


class MLPScorer(nn.Module):
    """``mlp``: MLP over [text, label]; 2D -> 256 -> 128 -> 1 (the reference always uses 256)."""

    def __init__(self, hidden_size: int, mlp_hidden_size: int = 256) -> None:
        super().__init__()
        self.mlp = funnel_mlp(hidden_size * 2, mlp_hidden_size)

    def forward(self, text: Tensor, labels: Tensor, label_mask: Mask = None, text_mask: Mask = None) -> Tensor:
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

    def forward(self, text: Tensor, labels: Tensor, label_mask: Mask = None, text_mask: Mask = None) -> Tensor:
        batch, num_labels, dim = labels.shape
        t1, t2 = self.proj_text(text).view(batch, 1, 2, dim).unbind(dim=2)
        l1, l2 = self.proj_label(labels).view(batch, num_labels, 2, dim).unbind(dim=2)
        t1 = t1.expand(-1, num_labels, -1)
        t2 = t2.expand(-1, num_labels, -1)
        return self.out_mlp(torch.cat([t1, l1, t2 * l2], dim=-1)).squeeze(-1)


class HopfieldScorer(nn.Module):
    """``hopfield``: each label vector takes one Hopfield step towards the text, then an MLP (D -> 256 -> 128 -> 1).

    The step's attention is a softmax over the row's labels (beta 4, one iteration, as in the reference), so
    a label's score depends on the other labels of its pass; padded label slots are left out of the softmax.
    """

    def __init__(
        self, hidden_size: int, mlp_hidden_size: int = 256, beta: float = 4.0, iterations: int = 1
    ) -> None:
        super().__init__()
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.mlp = funnel_mlp(hidden_size, mlp_hidden_size)
        self.beta = beta
        self.iterations = iterations

    def forward(self, text: Tensor, labels: Tensor, label_mask: Mask = None, text_mask: Mask = None) -> Tensor:
        key = self.k_proj(text)
        value = self.v_proj(text)
        for _ in range(self.iterations):
            attn = torch.einsum("bkd,bd->bk", self.q_proj(labels), key) * self.beta
            if label_mask is not None:
                attn = attn.masked_fill(~label_mask.bool(), torch.finfo(attn.dtype).min)
            labels = labels + attn.softmax(dim=1).unsqueeze(-1) * value.unsqueeze(1)
        return self.mlp(labels).squeeze(-1)


class CrossAttnScorer(nn.Module):
    """``cross-attn``: each label attends to the text's tokens (pooling ``pass``), then an MLP over [context, label].

    Multi-head attention with pre-norms (queries from the labels, keys from the text), an output projection
    and a LayerNorm; the MLP is 2D -> ``scorer_mlp_hidden_size`` -> half -> 1 with GELU.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_hidden_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_norm = nn.LayerNorm(hidden_size)
        self.kv_norm = nn.LayerNorm(hidden_size)
        self.q = nn.Linear(hidden_size, hidden_size)
        self.k = nn.Linear(hidden_size, hidden_size)
        self.v = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size)
        self.score_mlp = funnel_mlp(hidden_size * 2, mlp_hidden_size, nn.GELU)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        return x.view(batch, length, self.num_heads, dim // self.num_heads).transpose(1, 2)

    def forward(self, text: Tensor, labels: Tensor, label_mask: Mask = None, text_mask: Mask = None) -> Tensor:
        batch, num_labels, dim = labels.shape
        query = self.heads(self.q(self.q_norm(labels)))
        key = self.heads(self.k(self.kv_norm(text)))
        value = self.heads(self.v(text))
        attn_mask = None if text_mask is None else text_mask.bool()[:, None, None, :]
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask)
        context = self.norm(self.out(context.transpose(1, 2).reshape(batch, num_labels, dim)))
        return self.score_mlp(torch.cat([context, labels], dim=-1)).squeeze(-1)


def build_scorer(config: GLiClassConfig) -> nn.Module:
    """The scorer module of ``config.scorer_type`` (sizes as the reference builds them)."""
    if config.scorer_type == "simple":
        return DotScorer()
    if config.scorer_type == "mlp":
        return MLPScorer(config.hidden_size)
    if config.scorer_type == "weighted-dot":
        return WeightedDotScorer(config.hidden_size)
    if config.scorer_type == "hopfield":
        return HopfieldScorer(config.hidden_size)
    if config.scorer_type == "cross-attn":
        return CrossAttnScorer(config.hidden_size, config.scorer_num_heads, config.scorer_mlp_hidden_size)
    raise NotImplementedError(f"scorer_type {config.scorer_type!r} is not supported yet")


class LayerwiseAttention(nn.Module):
    """``squeeze_layers``: a squeeze-and-excitation weighting of the encoder's layer outputs, summed and projected.

    Reads the outputs of the N transformer layers (not the embedding output: the reference passes all
    N + 1 hidden states to weights sized for N and fails). The squeeze averages each layer's scores over
    the row's tokens (the reference averages over padding too; one text at a time that is the same).
    """

    def __init__(self, num_layers: int, hidden_size: int) -> None:
        super().__init__()
        self.squeeze = nn.Linear(hidden_size, 1)
        self.W1 = nn.Linear(num_layers, num_layers // 2)
        self.W2 = nn.Linear(num_layers // 2, num_layers)
        self.output_projection = nn.Linear(hidden_size, hidden_size)

    def forward(self, layers: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack(list(layers), dim=1)  # [B, N, T, D]
        weights = mask.to(stacked.dtype).unsqueeze(1)  # [B, 1, T]
        squeezed = (self.squeeze(stacked).squeeze(-1) * weights).sum(-1) / weights.sum(-1).clamp(min=1.0)
        excitation = torch.sigmoid(self.W2(F.relu(self.W1(squeezed))))  # [B, N]
        return self.output_projection((stacked * excitation[:, :, None, None]).sum(dim=1))


NUM_LOGIT_FEATURES = 6


def logit_features(logits: torch.Tensor, label_mask: torch.Tensor) -> torch.Tensor:
    """Per (text, label) statistics the calibrator reads: ``[B, K, 6]``, zero on padded slots.

    z, |z|, z - the row's max z, z - the row's mean z, the row's mean binary entropy, log(labels in the row).
    """
    mask = label_mask.bool()
    weights = mask.to(logits.dtype)
    count = weights.sum(dim=-1, keepdim=True).clamp(min=1.0)
    top = logits.masked_fill(~mask, float("-inf")).amax(dim=-1, keepdim=True)
    top = torch.where(mask.any(dim=-1, keepdim=True), top, torch.zeros_like(top))
    mean = (logits * weights).sum(dim=-1, keepdim=True) / count
    probs = torch.sigmoid(logits)
    entropy = -(probs * F.logsigmoid(logits) + (1 - probs) * F.logsigmoid(-logits))
    mean_entropy = (entropy * weights).sum(dim=-1, keepdim=True) / count
    features = [
        logits,
        logits.abs(),
        logits - top,
        logits - mean,
        mean_entropy.expand_as(logits),
        count.log().expand_as(logits),
    ]
    return torch.stack(features, dim=-1) * weights.unsqueeze(-1)


class Calibrator(nn.Module):
    """``use_calibrator``: per (text, label) an inverse temperature beta in (0, beta_max) and optionally a bias;
    the calibrated logit is ``beta * z + bias`` (what the reference's pipeline scores)."""

    def __init__(self, config: GLiClassConfig) -> None:
        super().__init__()
        size = (
            config.hidden_size
            if config.architecture_type == "decoder-kv"
            else config.encoder_config.hidden_size
        )
        hidden = int(config.calibrator_hidden_size)
        self.beta_max = float(config.calibrator_beta_max)
        self.use_bias = bool(config.calibrator_use_bias)
        self.text_norm = nn.LayerNorm(size)
        self.label_norm = nn.LayerNorm(size)
        self.mlp = nn.Sequential(
            nn.Linear(4 * size + NUM_LOGIT_FEATURES, hidden),
            nn.GELU(),
            nn.Dropout(config.calibrator_dropout),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Dropout(config.calibrator_dropout),
            nn.Linear(hidden, 2 if self.use_bias else 1),
        )
        with (
            torch.no_grad()
        ):  # a fresh calibrator is the identity: beta 1, bias 0 (as the reference starts it)
            ratio = min(max(1.0 / self.beta_max, 1e-4), 1 - 1e-4)
            self.mlp[-1].weight.zero_()
            self.mlp[-1].bias.zero_()
            self.mlp[-1].bias[0] = math.log(ratio / (1 - ratio))

    def forward(
        self, text: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor, label_mask: torch.Tensor
    ) -> torch.Tensor:
        """The calibrated logits ``[B, K]`` (padded slots unchanged)."""
        mask = label_mask.bool()
        dtype = self.mlp[0].weight.dtype
        text_n = self.text_norm(text.to(dtype)).unsqueeze(1).expand_as(labels)
        label_n = self.label_norm(labels.to(dtype))
        stats = logit_features(logits.float(), mask).to(dtype)
        out = self.mlp(
            torch.cat([text_n, label_n, text_n * label_n, (text_n - label_n).abs(), stats], dim=-1)
        ).float()
        beta = (self.beta_max * torch.sigmoid(out[..., 0])).masked_fill(~mask, 1.0)
        bias = out[..., 1].masked_fill(~mask, 0.0) if self.use_bias else torch.zeros_like(beta)
        return (beta * logits.float() + bias).to(logits.dtype)


def front_align(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's masked positions to the front, in order: ``(x, mask)`` gathered (for the LSTM)."""
    order = torch.sort((~mask.bool()).to(torch.int8), dim=1, stable=True).indices
    return x.gather(1, order.unsqueeze(-1).expand_as(x)), mask.gather(1, order)


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
        if config.squeeze_layers:
            enc = config.encoder_config
            self.layer_wise_attention = LayerwiseAttention(enc.num_hidden_layers, enc.hidden_size)
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
            span = (
                (ordinal.unsqueeze(1) == slots + 1)
                & before_text.unsqueeze(1)
                & attention_mask.bool().unsqueeze(1)
            )
            if not cfg.embed_class_token:
                span = span & ~is_class.unsqueeze(1)
            weights = span.to(hidden.dtype)
            vectors = torch.einsum("bks,bsd->bkd", weights, hidden) / weights.sum(-1, keepdim=True).clamp(
                min=1
            )
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

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The token states the heads read: the last layer, ``encoder_layer_id``'s, or the ``squeeze_layers`` mix.

        ``layer_wise`` changes only training (a loss per layer); at inference it reads these same states.
        """
        cfg = self.config
        all_layers = cfg.encoder_layer_id != -1 or cfg.squeeze_layers
        kwargs = {"output_hidden_states": True} if all_layers else {}
        if cfg.use_segment_embeddings:
            embeds = self.encoder_model.get_input_embeddings()(input_ids)
            embeds = embeds + self.segment_embeddings(self.segment_ids(input_ids))
            out = self.encoder_model(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)
        else:
            out = self.encoder_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if cfg.encoder_layer_id != -1:
            return out.hidden_states[cfg.encoder_layer_id]
        if cfg.squeeze_layers:
            return self.layer_wise_attention(out.hidden_states[1:], attention_mask)
        return out[0]

    def text_features(
        self, hidden: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The projected text: ``[B, D]`` pooled, or ``[B, T, D]`` per token with pooling ``pass``; and its mask."""
        cfg = self.config
        tokens = hidden
        if cfg.use_lstm:  # the reference's LSTM reads the text tokens from position 0 on: align them there
            tokens, text_mask = front_align(hidden, text_mask)
            tokens = self.lstm(tokens * text_mask.unsqueeze(-1).to(tokens.dtype), text_mask)
        if cfg.pooling_strategy == "pass":
            return self.dropout(self.text_projector(tokens)), text_mask
        return self.dropout(
            self.text_projector(masked_pool(tokens, text_mask, cfg.pooling_strategy))
        ), text_mask

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, return_embeddings: bool = False
    ) -> GLiClassOutput:
        cfg = self.config
        hidden = self.encode(input_ids, attention_mask)
        classes, label_mask = self.class_vectors(hidden, input_ids, attention_mask)
        text_vec, text_mask = self.text_features(hidden, self.text_mask(input_ids, attention_mask))
        class_vecs = self.classes_projector(classes)
        if cfg.normalize_features:
            text_vec = text_vec / (text_vec.norm(p=2, dim=-1, keepdim=True) + self.epsilon)
            class_vecs = class_vecs / (class_vecs.norm(p=2, dim=-1, keepdim=True) + self.epsilon)
        logits = self.scorer(text_vec, class_vecs, label_mask=label_mask, text_mask=text_mask)
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
        self.calibrator = Calibrator(config) if config.use_calibrator else None
        init_heads(self, config.initializer_range)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, return_embeddings: bool = False
    ) -> GLiClassOutput:
        if self.calibrator is None:
            return self.model(input_ids, attention_mask, return_embeddings=return_embeddings)
        out = self.model(input_ids, attention_mask, return_embeddings=True)
        out.uncalibrated_logits = out.logits
        out.logits = self.calibrator(out.text_embeddings, out.class_embeddings, out.logits, out.label_mask)
        if not return_embeddings:
            out.text_embeddings = out.class_embeddings = None
        return out

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
