"""GLiClass bi-encoders (``bi-encoder``, ``bi-encoder-fused``): a text encoder and a separate label encoder.

State-dict names follow the reference package: ``model.encoder_model.*`` (text backbone),
``model.label_encoder.*`` (label backbone), ``model.biencoder_projector.linear_1/linear_2.*`` (label
hidden -> ``hidden_size`` -> text hidden, no dropout), ``model.text_projector.*``,
``model.classes_projector.*``, ``model.scorer.*``, ``model.logit_scale``.

- ``bi-encoder``: text vector = text_projector(pool(text encoder)); label vector =
  classes_projector(biencoder_projector(pool(label encoder(label)))); both L2-normalised with
  ``normalize_features``; logits = scorer(text, labels) * logit_scale (always, unlike the uni-encoder).
  A label's vector does not depend on the text, so it is computed once and cached (``LabelVectorCache``).
- ``bi-encoder-fused``: the same label vectors replace the word embeddings of the ``<<LABEL>>`` markers
  in the text sequence; the text encoder's outputs at the markers are the label vectors scored (not
  projected again) and its pooled output the text vector.

Pooling honours the attention mask (text and labels). The reference pools without it: for the text,
one text at a time, that is the same; for labels it pads a row's labels to the longest, so with
``avg``/``sum``/``max``/``rms``/``abs_*``/``last`` pooling its label vectors change with the other labels'
lengths, ours do not (``first`` pooling, the default, is unaffected).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import torch
from torch import nn
from transformers import AutoModel
from transformers.activations import ACT2FN

from gliclass_dist.model.config import BI_ENCODER_ARCHITECTURES, GLiClassConfig
from gliclass_dist.model.modeling import FeaturesProjector, build_scorer, masked_pool

# Label vectors kept per model (least recently used dropped first): ~1.5 KB each at 384 dims in float32.
LABEL_CACHE_SIZE = 65_536
# Scorers that read one pooled text vector (``cross-attn`` reads text tokens, which a bi-encoder does not keep).
BI_ENCODER_SCORERS = ("simple", "mlp", "weighted-dot", "hopfield")


class BiEncoderProjector(nn.Module):
    """Label hidden -> ``hidden_size`` -> text hidden (Linear, activation, Linear; no dropout)."""

    def __init__(self, config: GLiClassConfig) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(config.label_model_config.hidden_size, config.hidden_size)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(config.hidden_size, config.encoder_config.hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


class LabelVectorCache:
    """A bounded LRU map from (model, label text) to the label's vector, as the scorer reads it.

    One lives on each loaded bi-encoder, so in a worker (a Ray actor, a Spark Python worker, a Serve
    replica) a fixed label set is encoded once, not once per row. Keys carry the model's identity as
    well, so a cache handed to another model never returns a vector of the wrong model.
    """

    def __init__(self, owner: nn.Module, maxsize: int = LABEL_CACHE_SIZE) -> None:
        self.owner_id = id(owner)
        self.maxsize = int(maxsize)
        self.entries: OrderedDict[tuple[int, str], torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, label: str) -> torch.Tensor | None:
        key = (self.owner_id, label)
        vector = self.entries.get(key)
        if vector is None:
            return None
        self.entries.move_to_end(key)
        self.hits += 1
        return vector

    def put(self, label: str, vector: torch.Tensor) -> None:
        key = (self.owner_id, label)
        self.entries[key] = vector
        self.entries.move_to_end(key)
        while len(self.entries) > self.maxsize:
            self.entries.popitem(last=False)

    def missing(self, labels: Iterable[str]) -> list[str]:
        """The distinct labels (first-seen order) that have no vector yet (each counted as a miss)."""
        absent = [label for label in dict.fromkeys(labels) if (self.owner_id, label) not in self.entries]
        self.misses += len(absent)
        return absent

    def clear(self) -> None:
        self.entries.clear()


class BiEncoder(nn.Module):
    """The network (held as ``GLiClassBiEncoderModel.model``, so names start with ``model.``)."""

    def __init__(self, config: GLiClassConfig) -> None:
        super().__init__()
        self.config = config
        self.fused = config.architecture_type == "bi-encoder-fused"
        self.encoder_model = AutoModel.from_config(config.encoder_config)
        self.label_encoder = AutoModel.from_config(config.label_model_config)
        self.biencoder_projector = BiEncoderProjector(config)
        self.text_projector = FeaturesProjector(config)
        self.classes_projector = FeaturesProjector(config)
        self.scorer = build_scorer(config)
        self.dropout = nn.Dropout(config.dropout)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.epsilon = 1e-8

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if not self.config.normalize_features:
            return x
        return nn.functional.normalize(x, p=2, dim=-1, eps=self.epsilon)

    def encode_labels(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Label vectors ``[L, D]`` from the label tokenizer's ids (one label per row)."""
        hidden = self.label_encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        pooled = masked_pool(hidden, attention_mask, self.config.pooling_strategy)
        return self.normalize(self.classes_projector(self.biencoder_projector(pooled)))

    def text_vector(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pooled = masked_pool(hidden, attention_mask, self.config.pooling_strategy)
        return self.normalize(self.dropout(self.text_projector(pooled)))

    def encode_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``bi-encoder``: text vectors ``[B, D]``."""
        hidden = self.encoder_model(input_ids=input_ids, attention_mask=attention_mask)[0]
        return self.text_vector(hidden, attention_mask)

    def encode_fused(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, marker_vectors: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``bi-encoder-fused``: text vectors ``[B, D]`` and the encoder's outputs at the markers ``[M, D]``.

        ``marker_vectors[M, D]`` replace the word embeddings of the ``<<LABEL>>`` markers, row-major
        (every marker of row 0, then of row 1, ...).
        """
        is_marker = input_ids == self.config.class_token_index
        if int(is_marker.sum()) != marker_vectors.shape[0]:
            raise ValueError(f"{int(is_marker.sum())} label markers but {marker_vectors.shape[0]} label vectors")
        embeds = self.encoder_model.get_input_embeddings()(input_ids)
        embeds = embeds.masked_scatter(is_marker.unsqueeze(-1), marker_vectors.to(embeds.dtype))
        hidden = self.encoder_model(inputs_embeds=embeds, attention_mask=attention_mask)[0]
        return self.text_vector(hidden, attention_mask), hidden[is_marker]

    def score(self, text: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K]`` of text vectors ``[B, D]`` against label vectors ``[B, K, D]``."""
        return self.scorer(text, labels) * self.logit_scale


class GLiClassBiEncoderModel(nn.Module):
    """A GLiClass bi-encoder; load with ``gliclass_dist.model.loading.load_model``.

    ``label_cache`` maps label texts to their vectors for this model; it is emptied whenever the
    model switches between training and evaluation mode (weights may have changed).
    """

    def __init__(self, config: GLiClassConfig) -> None:
        super().__init__()
        check_bi_encoder_config(config)
        self.config = config
        self.model = BiEncoder(config)
        init_bi_encoder_heads(self, config.initializer_range)
        self.label_cache = LabelVectorCache(self)

    @property
    def fused(self) -> bool:
        return self.model.fused

    @property
    def encoder(self) -> nn.Module:
        return self.model.encoder_model

    def train(self, mode: bool = True) -> GLiClassBiEncoderModel:
        self.label_cache.clear()
        return super().train(mode)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        label_input_ids: torch.Tensor,
        label_attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Logits ``[B, K]`` of every text against the same K labels (no cache; for training and checks)."""
        labels = self.model.encode_labels(label_input_ids, label_attention_mask)
        batch = input_ids.shape[0]
        if self.fused:
            text, at_markers = self.model.encode_fused(input_ids, attention_mask, labels.repeat(batch, 1))
            return self.model.score(text, at_markers.view(batch, labels.shape[0], -1))
        text = self.model.encode_texts(input_ids, attention_mask)
        return self.model.score(text, labels.unsqueeze(0).expand(batch, -1, -1))


def check_bi_encoder_config(config: GLiClassConfig) -> None:
    """Refuse, naming the field, bi-encoder settings that cannot be scored as the reference scores them."""
    if config.architecture_type not in BI_ENCODER_ARCHITECTURES:
        raise ValueError(f"architecture_type {config.architecture_type!r} is not a bi-encoder")
    if config.label_model_config is None:
        raise ValueError(f"architecture_type {config.architecture_type!r} needs label_model_config (the label encoder)")
    if config.scorer_type not in BI_ENCODER_SCORERS:
        raise NotImplementedError(
            f"scorer_type {config.scorer_type!r} with a bi-encoder is not supported "
            f"(supported: {', '.join(BI_ENCODER_SCORERS)}; the reference's cross-attn scorer needs text tokens)"
        )
    if config.pooling_strategy == "pass":
        raise NotImplementedError("pooling_strategy 'pass' with a bi-encoder is not supported (no single text vector)")
    if config.architecture_type == "bi-encoder-fused" and not 0 <= config.class_token_index < config.encoder_config.vocab_size:
        raise ValueError(
            f"bi-encoder-fused needs the <<LABEL>> token inside the text encoder's vocabulary: class_token_index "
            f"{config.class_token_index} is outside 0..{config.encoder_config.vocab_size - 1}"
        )


def init_bi_encoder_heads(model: GLiClassBiEncoderModel, std: float) -> None:
    """Normal(std) weights and zero biases for the heads; the two backbones keep their own initialisation."""
    for name, module in model.model.named_modules():
        if name.startswith(("encoder_model", "label_encoder")):
            continue
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

