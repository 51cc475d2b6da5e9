"""``GLiClassConfig``: reads and writes the published ``config.json`` unchanged.

It is a transformers ``PretrainedConfig`` with ``model_type = "GLiClass"``. It is deliberately
not registered with ``AutoConfig``, so it never clashes with the reference package loaded in the
same process. Unknown keys are kept as attributes (and written back on save).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from transformers import PretrainedConfig
from transformers.models.auto import CONFIG_MAPPING

ARCHITECTURES = ("uni-encoder", "bi-encoder", "bi-encoder-fused", "encoder-decoder", "encoder-decoder-cls", "decoder-kv")
SUPPORTED_ARCHITECTURES = ("uni-encoder", "bi-encoder", "bi-encoder-fused", "decoder-kv")
BI_ENCODER_ARCHITECTURES = ("bi-encoder", "bi-encoder-fused")
POOLING_STRATEGIES = ("first", "last", "avg", "max", "sum", "rms", "abs_max", "abs_avg", "pass")
SCORERS = ("simple", "mlp", "weighted-dot", "hopfield", "cross-attn", "decoder-kv")
SUPPORTED_SCORERS = ("simple", "mlp", "weighted-dot", "hopfield", "cross-attn")
TOKEN_SCORERS = ("cross-attn",)  # scorers that read every text token: they need pooling_strategy "pass", others forbid it
CLASS_TOKEN_POOLINGS = ("first", "average")
MAX_LABELS_ALLOCS = ("dynamic", "fixed")

# Fields of the reference's config that change nothing in a uni-encoder's scores (training settings, or
# settings of other architectures that their own code reads): accepted, kept and written back as they are.
INERT_FIELDS = (
    "ignore_index",
    "focal_loss_reduction",
    "scorer_encoder_num_layers",
    "scorer_full_sequence",
    "recurrent_steps",
    "recurrent_min_steps",
    "recurrent_inference",
    "recurrent_inference_max_steps",
    "recurrent_halt_threshold",
    "recurrent_improvement_coef",
    "recurrent_improvement_margin",
    "recurrent_bptt_steps",
    "recurrent_read_text",
    "recurrent_confidence_coef",
    "recurrent_confidence_mode",
    "recurrent_confidence_margin",
    "freeze_media_encoders",
)
# Keys every transformers config may carry (current and 4.x releases): never reported as unknown.
GENERIC_CONFIG_KEYS = frozenset(PretrainedConfig().to_dict()) | {
    "torch_dtype", "use_bfloat16", "tf_legacy_loss", "pruned_heads", "tie_word_embeddings", "is_decoder",
    "add_cross_attention", "cross_attention_hidden_size", "tie_encoder_decoder", "finetuning_task",
    "tokenizer_class", "prefix", "bos_token_id", "pad_token_id", "eos_token_id", "sep_token_id",
    "decoder_start_token_id", "task_specific_params", "torchscript", "num_labels", "max_length", "min_length",
    "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k",
    "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "use_cache",
    "gradient_checkpointing", "_attn_implementation_autoset", "_commit_hash", "is_composition",
}  # fmt: skip

LABEL_TOKEN = "<<LABEL>>"
SEP_TOKEN = "<<SEP>>"
EXAMPLE_TOKEN = "<<EXAMPLE>>"
SPECIAL_TOKENS = (LABEL_TOKEN, SEP_TOKEN, EXAMPLE_TOKEN)

logger = logging.getLogger(__name__)


def build_encoder_config(encoder_config: Any) -> PretrainedConfig:
    """Turn the nested ``encoder_config`` dict of a checkpoint into the backbone's config object."""
    if isinstance(encoder_config, PretrainedConfig):
        return encoder_config
    if encoder_config is None:
        return CONFIG_MAPPING["deberta-v2"]()
    if not isinstance(encoder_config, dict):
        raise ValueError(f"encoder_config must be a mapping, got {type(encoder_config).__name__}")
    data = dict(encoder_config)
    model_type = data.get("model_type", "deberta-v2")
    if model_type not in CONFIG_MAPPING:
        raise ValueError(
            f"encoder_config.model_type {model_type!r} is not known to this transformers version; "
            "upgrade transformers or use another backbone"
        )
    data["model_type"] = model_type
    return CONFIG_MAPPING[model_type](**data)


def check_choice(field: str, value: Any, known: Sequence[str], supported: Sequence[str], unsupported: str) -> None:
    """``ValueError`` when ``value`` is none of the reference's ``known`` values; ``NotImplementedError`` saying
    ``unsupported`` when it is known but not in ``supported`` here."""
    if value not in known:
        raise ValueError(f"unknown {field} {value!r} (known: {', '.join(known)})")
    if value not in supported:
        raise NotImplementedError(f"{field} {value!r} {unsupported}")


class GLiClassConfig(PretrainedConfig):
    """Configuration of a GLiClass model (field names and defaults as in the published checkpoints)."""

    model_type = "GLiClass"
    has_no_defaults_at_init = False

    def __init__(
        self,
        encoder_config: Any = None,
        encoder_model: str | None = None,
        label_model_config: Any = None,
        label_model_name: str | None = None,
        class_token_index: int = -1,
        text_token_index: int = -1,
        example_token_index: int = -1,
        sep_token_index: int | None = None,
        hidden_size: int | None = None,
        projector_hidden_act: str = "gelu",
        vocab_size: int | None = None,
        problem_type: str = "single_label_classification",
        max_num_classes: int = 25,
        use_lstm: bool = False,
        initializer_range: float = 0.03,
        scorer_type: str = "simple",
        scorer_num_heads: int = 16,
        scorer_mlp_hidden_size: int = 1024,
        pooling_strategy: str = "first",
        class_token_pooling: str = "first",
        focal_loss_alpha: float = 0.5,
        focal_loss_gamma: float = 2,
        logit_scale_init_value: float = 2.6592,
        normalize_features: bool = False,
        extract_text_features: bool = False,
        contrastive_loss_coef: float = 0,
        architecture_type: str = "uni-encoder",
        prompt_first: bool = False,
        squeeze_layers: bool = False,
        layer_wise: bool = False,
        encoder_layer_id: int = -1,
        embed_class_token: bool = True,
        dropout: float = 0.1,
        use_segment_embeddings: bool = False,
        scorer_attn_dropout: float = 0.1,
        max_labels_alloc: str | int = "dynamic",
        use_calibrator: bool = False,
        calibrator_hidden_size: int = 256,
        calibrator_beta_max: float = 3.0,
        calibrator_dropout: float = 0.1,
        calibrator_use_bias: bool = False,
        multimodal: bool = False,
        use_embedding_projection: bool | None = None,
        **kwargs: Any,
    ) -> None:
        self.encoder_config = build_encoder_config(encoder_config)
        self.encoder_model_name = encoder_model if encoder_model is not None else kwargs.pop("encoder_model_name", None)
        kwargs.pop("encoder_model_name", None)
        # bi-encoders: the label encoder's backbone config and the name/path its tokenizer is loaded from
        self.label_model_config = None if label_model_config is None else build_encoder_config(label_model_config)
        self.label_model_name = label_model_name
        enc = self.encoder_config
        self.hidden_size = hidden_size if hidden_size is not None else enc.hidden_size
        self.vocab_size = vocab_size if vocab_size is not None else enc.vocab_size
        self.class_token_index = self.vocab_size if class_token_index == -1 else class_token_index
        self.text_token_index = self.vocab_size + 1 if text_token_index == -1 else text_token_index
        self.example_token_index = self.vocab_size + 2 if example_token_index == -1 else example_token_index
        self.sep_token_index = sep_token_index  # decoder-kv: the <<SEP>> id
        self.projector_hidden_act = projector_hidden_act
        self.max_num_classes = max_num_classes
        self.use_lstm = use_lstm
        self.initializer_range = initializer_range
        self.scorer_type = scorer_type
        self.scorer_num_heads = scorer_num_heads
        self.scorer_mlp_hidden_size = scorer_mlp_hidden_size
        self.pooling_strategy = pooling_strategy
        self.class_token_pooling = class_token_pooling
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.logit_scale_init_value = logit_scale_init_value
        self.normalize_features = normalize_features
        self.extract_text_features = extract_text_features
        self.contrastive_loss_coef = contrastive_loss_coef
        self.architecture_type = architecture_type
        self.prompt_first = prompt_first
        self.squeeze_layers = squeeze_layers
        self.layer_wise = layer_wise
        self.encoder_layer_id = encoder_layer_id
        self.embed_class_token = embed_class_token
        self.dropout = dropout
        self.use_segment_embeddings = use_segment_embeddings
        self.scorer_attn_dropout = scorer_attn_dropout
        self.max_labels_alloc = max_labels_alloc
        self.use_calibrator = use_calibrator
        self.calibrator_hidden_size = calibrator_hidden_size
        self.calibrator_beta_max = calibrator_beta_max
        self.calibrator_dropout = calibrator_dropout
        self.calibrator_use_bias = calibrator_use_bias
        self.multimodal = multimodal
        self.use_embedding_projection = use_embedding_projection
        unknown = sorted(k for k in kwargs if k not in INERT_FIELDS and k not in GENERIC_CONFIG_KEYS)
        if unknown:
            logger.warning("GLiClass config: ignoring unknown field(s) %s (kept as attributes)", ", ".join(unknown))
        kwargs.setdefault("pad_token_id", getattr(enc, "pad_token_id", None))
        super().__init__(problem_type=problem_type, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["encoder_config"] = self.encoder_config.to_dict()
        # The reference package needs a name here (it joins it into a path), so never write null.
        out["encoder_model_name"] = self.encoder_model_name or self.encoder_config.model_type
        out.pop("encoder_model", None)
        if self.label_model_config is not None:
            out["label_model_config"] = self.label_model_config.to_dict()
        return out

    def check_supported(self) -> None:
        """Fail fast, with a message that says what is wrong, on settings this implementation lacks."""
        check_choice(
            "architecture_type", self.architecture_type, ARCHITECTURES, SUPPORTED_ARCHITECTURES,
            f"is not supported yet (supported: {', '.join(SUPPORTED_ARCHITECTURES)})",
        )
        if self.architecture_type != "decoder-kv":
            self.check_heads()
        if self.multimodal:
            raise NotImplementedError("multimodal is true: image/audio inputs (decoder-kv only) are not supported")
        if self.use_embedding_projection:
            raise NotImplementedError(
                "use_embedding_projection is true: the EmbeddingGemma projection head is not supported"
            )
        if not (self.max_labels_alloc in MAX_LABELS_ALLOCS or _is_int(self.max_labels_alloc)):
            raise ValueError(f"max_labels_alloc must be 'dynamic', 'fixed' or an integer; got {self.max_labels_alloc!r}")

    def check_heads(self) -> None:
        """The scorer, pooling and layer options of the encoder architectures (uni- and bi-encoders)."""
        check_choice(
            "scorer_type", self.scorer_type, SCORERS, SUPPORTED_SCORERS,
            f"needs architecture_type 'decoder-kv' (with {self.architecture_type!r}: {', '.join(SUPPORTED_SCORERS)})",
        )
        if self.pooling_strategy not in POOLING_STRATEGIES:
            raise NotImplementedError(
                f"pooling_strategy {self.pooling_strategy!r} is not supported (supported: {', '.join(POOLING_STRATEGIES)})"
            )
        if (self.pooling_strategy == "pass") != (self.scorer_type in TOKEN_SCORERS):
            raise NotImplementedError(
                f"pooling_strategy {self.pooling_strategy!r} with scorer_type {self.scorer_type!r}: the reference "
                "fails on this pair (pooling 'pass' keeps every text token, which only scorer 'cross-attn' reads, "
                "and 'cross-attn' needs pooling 'pass')"
            )
        if self.class_token_pooling not in CLASS_TOKEN_POOLINGS:
            raise NotImplementedError(f"class_token_pooling {self.class_token_pooling!r} is not supported")
        if self.scorer_type == "cross-attn" and (
            not _is_int(self.scorer_num_heads) or self.scorer_num_heads < 1 or self.hidden_size % self.scorer_num_heads
        ):
            raise ValueError(
                f"scorer_num_heads {self.scorer_num_heads!r} must divide hidden_size {self.hidden_size} (scorer 'cross-attn')"
            )
        if self.scorer_type == "hopfield" and self.max_labels_alloc != "dynamic":
            raise NotImplementedError(
                f"max_labels_alloc {self.max_labels_alloc!r} with scorer 'hopfield': the reference's softmax over "
                "labels then also covers empty label slots; only 'dynamic' (the default) is supported"
            )
        if self.use_calibrator and self.pooling_strategy == "pass":
            raise NotImplementedError("use_calibrator with pooling_strategy 'pass': the reference fails on this pair")
        layers = int(getattr(self.encoder_config, "num_hidden_layers", 0) or 0)
        if not _is_int(self.encoder_layer_id) or not -(layers + 1) <= self.encoder_layer_id <= layers:
            raise ValueError(
                f"encoder_layer_id {self.encoder_layer_id!r} is out of range: the encoder has {layers} layers "
                f"(hidden states -{layers + 1}..{layers}; -1 is the last)"
            )
        if self.squeeze_layers and layers < 2:
            raise ValueError(f"squeeze_layers needs an encoder of at least 2 layers; this one has {layers}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
